use proptest::prelude::*;
use tenzro_models::api::Usage;

use super::*;
use crate::pricing::{Asset, ONE, PPM, Quote};
use crate::verify::Bounds;
use crate::verify::SPECIAL_TOKENS_PER_CHOICE as SPECIAL;

fn quote() -> Quote {
    Quote::new(1000, PPM, PPM, PPM, Asset::Tnzo, ONE)
}

#[test]
fn splitter_handles_both_line_endings_and_partial_reads() {
    let mut s = SseSplitter::default();
    assert!(s.push(b"data: {\"a\":1}\n").is_empty());
    assert_eq!(s.push(b"\ndata: [DO"), vec![b"data: {\"a\":1}".to_vec()]);
    assert_eq!(
        s.push(b"NE]\r\n\r\n: c\n\n"),
        vec![b"data: [DONE]".to_vec(), b": c".to_vec()]
    );
    assert_eq!(s.pending(), 0);
}

#[test]
fn splitter_finds_terminators_split_across_reads_and_long_events() {
    let wire = b"data: a\r\n\r\ndata: b\n\n";
    for cut in 0..wire.len() {
        let mut s = SseSplitter::default();
        let mut got = s.push(&wire[..cut]);
        got.extend(s.push(&wire[cut..]));
        assert_eq!(
            got,
            vec![b"data: a".to_vec(), b"data: b".to_vec()],
            "cut at {cut}"
        );
    }
    // A 1 MiB event in 16-byte reads: each read scans only what is new (a
    // rescan from the start would take minutes here).
    let mut s = SseSplitter::default();
    let mut event = b"data: ".to_vec();
    event.resize(1 << 20, b'x');
    for piece in event.chunks(16) {
        assert!(s.push(piece).is_empty());
    }
    assert_eq!(s.pending(), 1 << 20);
    assert_eq!(s.push(b"\r\n\r\n"), vec![event]);
    assert_eq!(s.pending(), 0);
}

fn check(event: &[u8], expect: Option<&[u8]>) {
    assert_eq!(
        event_data(event).as_deref(),
        expect,
        "{}",
        String::from_utf8_lossy(event)
    );
}

#[test]
fn data_lines() {
    check(b"data: x", Some(b"x"));
    check(b"data:x", Some(b"x"));
    check(b"event: e\ndata: a\ndata: b", Some(b"a\nb"));
    check(b": keep-alive", None);
    check(b"data: a\r", Some(b"a"));
}

#[test]
fn classify_and_count() {
    fn c(s: &str) -> Event<'_> {
        classify(Some(s.as_bytes()))
    }
    assert!(matches!(c("[DONE]"), Event::Done));
    assert!(matches!(c("not json"), Event::Opaque));
    assert!(matches!(classify(None), Event::Empty));
    let Event::Chunk(p) = c(r#"{"choices":[{"delta":{"content":"hi"}}],"tenzro":{"tokens":3}}"#)
    else {
        panic!()
    };
    assert_eq!(p.tokens(), 3);
    let Event::Chunk(p) = c(r#"{"choices":[{"delta":{"content":"hi"}}]}"#) else {
        panic!()
    };
    assert_eq!(p.tokens(), 1);
    let Event::Chunk(p) = c(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#) else {
        panic!()
    };
    assert_eq!(p.tokens(), 0, "a role-only chunk carries no token");
    let Event::Chunk(p) = c(r#"{"choices":[{"text":"a\"b"},{"text":"c"}]}"#) else {
        panic!()
    };
    assert_eq!(p.tokens(), 2);
    let Event::Chunk(p) =
        c(r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#)
    else {
        panic!()
    };
    assert_eq!(
        (p.tokens(), p.has_choices(), p.usage.unwrap().prompt_tokens),
        (0, false, 5)
    );
    let Event::Chunk(p) = c(r#"{"error":{"message":"x"}}"#) else {
        panic!()
    };
    assert!(p.error.is_some());
}

#[test]
fn tool_call_pieces_are_text() {
    let piece = |s: &str| match classify(Some(s.as_bytes())) {
        Event::Chunk(p) => p
            .choices
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| c.piece().to_owned()),
        _ => None,
    };
    let head = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1",
        "type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#;
    let args = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,
        "function":{"arguments":"{\"city\": \"Paris\"}"}}]}}]}"#;
    assert_eq!(piece(head).as_deref(), Some("get_weather"));
    assert_eq!(piece(args).as_deref(), Some(r#"{"city": "Paris"}"#));
    // Only the head starts a call, and an honest short call's wrapper tokens
    // (stripped by the provider) are paid: `f` + `{}` claimed as 25 tokens.
    let starts = |s: &str| match classify(Some(s.as_bytes())) {
        Event::Chunk(p) => p.tool_calls_started(),
        _ => u64::MAX,
    };
    assert_eq!((starts(head), starts(args)), (1, 0));
    let mut m = Meter::new(quote(), bounds(40, 1, 100));
    m.on_chunk(1, 1, 1).unwrap();
    m.on_chunk(24, 2, 0).unwrap();
    m.on_usage(&Usage::new(5, 25)).unwrap();
    assert_eq!(m.completion_tokens, 25);
}

fn bounds(prompt: u64, choices: u64, max_new: u64) -> Bounds {
    Bounds {
        prompt_estimate: prompt,
        choices,
        max_new,
        hard_cap: true,
        generates: true,
    }
}

#[test]
fn meter_charges_prompt_at_the_end_and_usage_caps_the_chunk_claims() {
    let mut m = Meter::new(quote(), bounds(40, 1, 100));
    assert_eq!(m.on_chunk(2, 5, 0).unwrap(), 2000);
    assert_eq!(m.on_chunk(1, 3, 0).unwrap(), 1000);
    // The provider's usage says fewer completion tokens than its chunks claimed:
    // the usage (which its receipt signs) is what is paid.
    assert_eq!(m.on_usage(&Usage::new(10, 2)).unwrap(), 9_000);
    let u = m.usage();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
        (10, 2, 12)
    );
    assert_eq!(u.cost.as_deref(), Some("12000"));
    // Inflated chunk claims (4x) with honest usage: the usage is charged.
    let mut m = Meter::new(quote(), bounds(40, 1, 100));
    m.on_chunk(8, 8, 0).unwrap();
    assert_eq!(m.on_usage(&Usage::new(0, 2)).unwrap(), 0);
    assert_eq!((m.completion_tokens, m.cost), (2, 2000));
    assert_eq!(u.asset.as_deref(), Some("TNZO"));
}

#[test]
fn meter_believes_no_claim_beyond_what_it_relayed() {
    // "hi" claimed as a billion tokens: bounded by 2 bytes + the allowance.
    let mut m = Meter::new(quote(), bounds(40, 1, 100));
    m.on_chunk(1_000_000_000, 2, 0).unwrap();
    assert_eq!(m.completion_tokens, 2 + SPECIAL);
    m.on_usage(&Usage::new(1_000_000, 1_000_000_000)).unwrap();
    assert_eq!((m.prompt_tokens, m.completion_tokens), (40, 2 + SPECIAL));
    assert_eq!(m.claimed, Some((1_000_000, 1_000_000_000)));
    // Usage above the chunks' own counts is clipped to them.
    let mut m = Meter::new(quote(), bounds(40, 1, 100));
    m.on_chunk(3, 30, 0).unwrap();
    m.on_usage(&Usage::new(5, 50)).unwrap();
    assert_eq!(m.completion_tokens, 3);
    // n x max_tokens caps everything.
    let mut m = Meter::new(quote(), bounds(40, 16, 2));
    m.on_chunk(500, 500, 0).unwrap();
    assert_eq!(m.completion_tokens, 32);
}

#[test]
fn a_cut_stream_owes_its_prompt_once_a_chunk_was_relayed() {
    let mut m = Meter::new(quote(), bounds(40, 1, 100));
    m.on_cut().unwrap();
    assert_eq!(m.cost, 0, "nothing relayed, nothing owed");
    m.on_chunk(1, 3, 0).unwrap();
    assert_eq!(m.on_cut().unwrap(), 40_000);
    assert_eq!((m.prompt_tokens, m.completion_tokens), (40, 1));
    // With usage, the verified prompt count stands.
    let mut m = Meter::new(quote(), bounds(40, 1, 100));
    m.on_chunk(1, 3, 0).unwrap();
    m.on_usage(&Usage::new(7, 1)).unwrap();
    assert_eq!(m.on_cut().unwrap(), 0);
    assert_eq!(m.prompt_tokens, 7);
}

#[test]
fn an_unproven_end_owes_only_the_prompt() {
    let mut m = Meter::new(quote(), bounds(40, 1, 100));
    m.on_chunk(5, 20, 0).unwrap();
    assert_eq!(m.cost, 5000);
    m.on_unproven_end().unwrap();
    assert_eq!((m.completion_tokens, m.cost), (0, 0));
    m.on_cut().unwrap();
    assert_eq!(
        (m.prompt_tokens, m.completion_tokens, m.cost),
        (40, 0, 40_000)
    );
}

#[test]
fn usage_rewrite() {
    let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    let mut u = Usage::new(1, 1);
    u.cost = Some("5".into());
    u.asset = Some("TNZO".into());
    let v: serde_json::Value =
        serde_json::from_slice(&rewrite_usage(body, Some(&u)).unwrap()).unwrap();
    assert_eq!(v["usage"]["cost"], "5");
    assert_eq!(v["id"], "x");
    let v: serde_json::Value = serde_json::from_slice(&rewrite_usage(body, None).unwrap()).unwrap();
    assert!(v.get("usage").is_none());
}

proptest! {
    /// However the bytes are cut, the same events come out.
    #[test]
    fn splitting_is_independent_of_read_boundaries(
        events in proptest::collection::vec("[a-z0-9 {}:\"]{0,20}", 0..10),
        cuts in proptest::collection::vec(0usize..200, 0..10),
    ) {
        let mut wire = Vec::new();
        for e in &events {
            wire.extend_from_slice(&sse(e.as_bytes()));
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(wire.len())).collect();
        cuts.sort_unstable();
        let mut s = SseSplitter::default();
        let mut got = Vec::new();
        let mut prev = 0;
        for c in cuts.into_iter().chain([wire.len()]) {
            got.extend(s.push(&wire[prev..c]));
            prev = c;
        }
        let datas: Vec<Vec<u8>> = got
            .iter()
            .map(|e| event_data(e).unwrap().into_owned())
            .collect();
        let expect: Vec<Vec<u8>> = events.iter().map(|e| e.as_bytes().to_vec()).collect();
        prop_assert_eq!(datas, expect);
    }

    /// The per-chunk deltas add up to the final cost, which never exceeds the
    /// worst case the reservation covered, whatever the provider claims.
    #[test]
    fn meter_deltas_sum_to_cost_within_the_reservation(
        chunks in proptest::collection::vec((0u64..20, 0u64..40), 0..30),
        prompt in 0u64..5000, report in 0u64..4000, cut in any::<bool>(),
        estimate in 0u64..500, choices in 1u64..17, max_new in 0u64..64,
    ) {
        let q = Quote::new(777, 1_234_567, 600_000, 1_200_000, Asset::Tnzo, ONE);
        let b = bounds(estimate, choices, max_new);
        let mut m = Meter::new(q, b);
        let mut sum = 0;
        for (t, bytes) in chunks {
            sum += m.on_chunk(t, bytes, 0).unwrap();
        }
        if !cut {
            sum += m.on_usage(&Usage::new(prompt, report)).unwrap();
        }
        sum += m.on_cut().unwrap();
        // Equal unless the final usage lowered the chunks' claims.
        prop_assert!(sum >= m.cost);
        if cut {
            prop_assert_eq!(sum, m.cost);
        }
        prop_assert_eq!(m.cost, m.quote.cost(m.prompt_tokens + m.completion_tokens).unwrap());
        prop_assert!(m.cost <= q.cost(b.worst_tokens()).unwrap());
        prop_assert!(m.completion_tokens <= m.chunk_tokens);
        prop_assert!(m.prompt_tokens <= estimate);
    }
}
