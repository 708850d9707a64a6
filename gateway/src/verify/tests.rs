use super::*;
use proptest::prelude::*;
use tenzro_attest::{ProviderKey, ReceiptBody};

fn bounds(prompt: u64, choices: u64, max_new: u64) -> Bounds {
    Bounds {
        prompt_estimate: prompt,
        choices,
        max_new,
        hard_cap: true,
        generates: true,
    }
}

/// `(bounds, chunk tokens, text bytes)` → completion bound.
fn check(b: Bounds, chunk_tokens: Option<u64>, text_bytes: u64, expect: u64) {
    assert_eq!(
        b.completion_bound(chunk_tokens, text_bytes, 0),
        expect,
        "{b:?} chunks {chunk_tokens:?} bytes {text_bytes}"
    );
}

#[test]
fn completion_bounds() {
    // "hi": 2 bytes + 16 allowance, well under the cap.
    check(bounds(10, 1, 1000), None, 2, 18);
    // The cap wins when the text is long.
    check(bounds(10, 1, 8), None, 10_000, 8);
    // n = 16 multiplies the cap and the allowance.
    check(bounds(10, 16, 8), None, 10_000, 128);
    check(bounds(10, 16, 1000), None, 0, 256);
    // The relayed chunks' own counts bound a stream.
    check(bounds(10, 1, 1000), Some(3), 500, 3);
    check(bounds(10, 1, 1000), Some(1_000_000_000), 2, 18);
    // Embeddings generate nothing.
    let emb = Bounds {
        generates: false,
        ..bounds(10, 1, 1000)
    };
    check(emb, None, 100, 0);
    // Saturation, never overflow.
    check(
        bounds(u64::MAX, u64::MAX, u64::MAX),
        None,
        u64::MAX,
        u64::MAX,
    );
    assert_eq!(bounds(u64::MAX, 2, u64::MAX).worst_tokens(), u64::MAX);
}

#[test]
fn tool_calls_earn_a_bounded_wrapper_allowance() {
    // A short call (`f` + `{}`, 3 bytes) whose wrapper took ~20 tokens is paid in
    // full: 3 + 16 + 64 = 83.
    assert_eq!(bounds(10, 1, 1000).completion_bound(None, 3, 1), 83);
    assert_eq!(bounds(10, 1, 1000).completion_bound(Some(25), 3, 1), 25);
    // Two calls, two allowances.
    assert_eq!(bounds(10, 1, 1000).completion_bound(None, 3, 2), 147);
    // A provider cannot buy allowance with a flood of empty calls: 16 per choice.
    let capped = 16 * (SPECIAL_TOKENS_PER_CHOICE + 16 * TOOL_CALL_WRAPPER_TOKENS);
    assert_eq!(
        bounds(10, 16, 1_000_000).completion_bound(None, 0, u64::MAX),
        capped
    );
    // The request's cap still wins.
    assert_eq!(bounds(10, 1, 8).completion_bound(None, 3, 4), 8);
    // A whole answer's calls are counted.
    let body = br#"{"choices":[{"index":0,"message":{"content":null,"tool_calls":[
        {"id":"a","type":"function","function":{"name":"f","arguments":"{}"}},
        {"id":"b","type":"function","function":{"name":"g","arguments":"{}"}}]}}],
        "usage":{"prompt_tokens":5,"completion_tokens":30}}"#;
    let w = read_whole(body).unwrap();
    assert_eq!((w.text_bytes, w.tool_calls), (6, 2));
}

#[test]
fn prompt_and_impossible_claims() {
    let b = bounds(40, 2, 8);
    assert_eq!(b.prompt_bound(7), 7);
    assert_eq!(b.prompt_bound(1_000_000), 40);
    assert_eq!(b.impossible_claim(16), None);
    assert!(b.impossible_claim(17).unwrap().contains("at most 16"));
    let soft = Bounds {
        hard_cap: false,
        ..b
    };
    assert_eq!(soft.impossible_claim(1_000_000_000), None);
}

#[test]
fn digest_follows_the_documented_encoding() {
    let sha = |b: &[u8]| tenzro_attest::sha256(b);
    assert_eq!(items_digest([] as [&[u8]; 0]), sha(b""));
    assert_eq!(
        items_digest([b"Paris".as_slice()]),
        sha(b"\0\0\0\0\0\0\0\x05Paris")
    );
    let mut t = Texts::new(2);
    t.push(1, "c", 2);
    t.push(0, "a", 2);
    t.push(0, "b", 2);
    assert_eq!(t.digest(), sha(b"\0\0\0\0\0\0\0\x02ab\0\0\0\0\0\0\0\x01c"));
    t.push(7, "x", 2);
    assert!(t.stray);
    assert_eq!(t.digest(), sha(b"\0\0\0\0\0\0\0\x02ab\0\0\0\0\0\0\0\x01c"));
}

fn signed(key: &ProviderKey, response: [u8; 32], tokens: (u64, u64)) -> serde_json::Value {
    let r = ReceiptBody {
        model: "m".into(),
        weight_sha256: [9; 32],
        request_sha256: tenzro_attest::sha256(b"{}"),
        response_sha256: response,
        prompt_tokens: tokens.0,
        completion_tokens: tokens.1,
        issued_at: 1,
    }
    .sign(key);
    serde_json::to_value(r).unwrap()
}

#[test]
fn receipts() {
    let key = ProviderKey::from_seed(&[1; 32]);
    let other = ProviderKey::from_seed(&[2; 32]);
    let pk = key.public_key();
    let response = items_digest([b"hi".as_slice()]);
    let expect = Expected {
        key: &pk,
        model: "m",
        weight_sha256: Some([9; 32]),
        request_sha256: tenzro_attest::sha256(b"{}"),
        response_sha256: response,
        usage: Some((5, 1)),
    };
    let good = signed(&key, response, (5, 1));
    let check = |raw: Option<&serde_json::Value>, e: &Expected<'_>, want: Option<&str>| {
        let got = check_receipt(raw, e);
        match want {
            None => assert_eq!(got, Ok(())),
            Some(w) => {
                let err = got.unwrap_err();
                assert!(err.contains(w), "{err} should contain {w}");
            }
        }
    };
    check(Some(&good), &expect, None);
    // Usage absent: the counts are not compared.
    check(
        Some(&good),
        &Expected {
            usage: None,
            ..expect
        },
        None,
    );
    check(None, &expect, Some("no receipt"));
    check(
        Some(&serde_json::json!({"x": 1})),
        &expect,
        Some("unreadable"),
    );
    check(
        Some(&signed(&other, response, (5, 1))),
        &expect,
        Some("refused"),
    );
    check(
        Some(&signed(&key, [0; 32], (5, 1))),
        &expect,
        Some("response_sha256"),
    );
    check(
        Some(&signed(&key, response, (5, 1_000_000_000))),
        &expect,
        Some("usage said 5+1"),
    );
    check(
        Some(&good),
        &Expected {
            model: "n",
            ..expect
        },
        Some("model 'm'"),
    );
    check(
        Some(&good),
        &Expected {
            weight_sha256: Some([8; 32]),
            ..expect
        },
        Some("weight_sha256"),
    );
    check(
        Some(&good),
        &Expected {
            request_sha256: [0; 32],
            ..expect
        },
        Some("request_sha256"),
    );
    // A signature over other counts is refused.
    let mut forged = good.clone();
    forged["completion_tokens"] = 9.into();
    check(Some(&forged), &expect, Some("refused"));
}

#[test]
fn whole_answers() {
    let body = br#"{"choices":[{"index":1,"message":{"content":"c"}},{"index":0,"message":{"content":"ab"}}],
        "usage":{"prompt_tokens":3,"completion_tokens":2},"tenzro":{"receipt":{"a":1}}}"#;
    let w = read_whole(body).unwrap();
    assert_eq!(w.usage, Some((3, 2)));
    assert_eq!(w.text_bytes, 3);
    assert_eq!(w.response_sha256, items_digest([b"ab".as_slice(), b"c"]));
    assert!(w.receipt.is_some());
    let text = read_whole(br#"{"choices":[{"index":0,"text":"xyz"}]}"#).unwrap();
    assert_eq!((text.text_bytes, text.usage), (3, None));
    // Embeddings: floats and base64 give the same digest.
    let floats = read_whole(br#"{"data":[{"index":0,"embedding":[1.0,-0.5]}]}"#).unwrap();
    let b64 = read_whole(br#"{"data":[{"index":0,"embedding":"AACAPwAAAL8="}]}"#).unwrap();
    assert_eq!(floats.response_sha256, b64.response_sha256);
    assert_eq!(
        floats.response_sha256,
        items_digest([[0, 0, 0x80, 0x3f, 0, 0, 0, 0xbf].as_slice()])
    );
    assert!(read_whole(b"not json").is_none());
}

#[test]
fn whole_answers_count_tool_calls_as_text() {
    let body = br#"{"choices":[{"index":0,"message":{"content":null,"tool_calls":[
        {"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\": 1}"}},
        {"id":"call_2","type":"function","function":{"name":"g","arguments":"{}"}}]}}]}"#;
    let w = read_whole(body).unwrap();
    assert_eq!(w.text_bytes, 12);
    assert_eq!(
        w.response_sha256,
        items_digest([b"f{\"a\": 1}g{}".as_slice()])
    );
}

#[test]
fn sampling() {
    assert!(sampled(1_000_000, u64::MAX));
    assert!(!sampled(0, 0));
    let hits = (0..1_000_000u64)
        .step_by(1000)
        .filter(|d| sampled(250_000, *d))
        .count();
    assert_eq!(hits, 250);
}

proptest! {
    /// The bound never exceeds the claim-independent caps, whatever is observed.
    #[test]
    fn bound_never_exceeds_the_caps(
        prompt in any::<u64>(), choices in 1u64..64, max_new in 0u64..100_000,
        chunks in proptest::option::of(any::<u64>()), bytes in any::<u64>(), claim in any::<u64>(),
        calls in any::<u64>(),
    ) {
        let b = bounds(prompt, choices, max_new);
        let c = b.completion_bound(chunks, bytes, calls);
        prop_assert!(c <= b.completion_cap());
        let per_choice = SPECIAL_TOKENS_PER_CHOICE + TOOL_CALLS_PER_CHOICE * TOOL_CALL_WRAPPER_TOKENS;
        prop_assert!(c <= bytes.saturating_add(choices * per_choice));
        if let Some(t) = chunks { prop_assert!(c <= t); }
        prop_assert!(b.prompt_bound(claim) <= prompt);
        prop_assert!(b.prompt_bound(claim) <= claim);
        prop_assert!(b.worst_tokens() >= b.prompt_bound(claim).saturating_add(c));
    }
}
