//! What the gateway pays a provider for: the provider's claim, bounded by what the
//! gateway observed itself, and the check of the provider's signed receipt.
//!
//! **Token bounds.** A response is charged `min(claim, bound)`:
//! - completion tokens ≤ `n × prompts × max new tokens` (the reservation's cap),
//!   ≤ the sum of `tenzro.tokens` over the chunks relayed (streams), and ≤ the
//!   byte length of the text relayed plus [`SPECIAL_TOKENS_PER_CHOICE`] per choice
//!   (every token the engine reports decodes to at least one byte, except special
//!   tokens and the tokens of a matched stop sequence, which the allowance covers),
//!   plus [`TOOL_CALL_WRAPPER_TOKENS`] per tool call relayed (the call's name and
//!   arguments are relayed text; the template tags around them are not);
//! - prompt tokens ≤ the gateway's own prompt estimate (one token per byte plus the
//!   chat template's framing).
//!
//! **Fraud.** A completion claim above the cap the request set (`max_tokens`, or the
//! context the provider declared) cannot be honest; nor can a receipt that is
//! missing, unreadable, signed by another key, or whose model, weights, request
//! digest, response digest or token counts differ from what the gateway sent,
//! relayed and was told in `usage`. Each is a fraud incident the proxy records with
//! `Registry::slash`. Claims above the softer bounds (text length, prompt estimate,
//! per-chunk sums) are only clipped: they are estimates, and an honest provider may
//! cross them by a little.
//!
//! Plain functions, no I/O; the proxy feeds them.

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tenzro_attest::{PublicKey, Receipt};

/// Completion tokens per choice the text-length bound allows beyond one per byte.
pub const SPECIAL_TOKENS_PER_CHOICE: u64 = 16;
/// Completion tokens each relayed tool call may take beyond the bytes of its name
/// and arguments: the wrapper the provider generated and stripped. The default tools
/// block's wrapper (`<tool_call>\n{"name": "`, `", "arguments": `, `}\n</tool_call>`
/// and the `\n` between calls) is 53 bytes, so at most 53 tokens at one per byte;
/// 64 leaves room for a model template's own tags.
pub const TOOL_CALL_WRAPPER_TOKENS: u64 = 64;
/// Tool calls per choice that earn the wrapper allowance at most (providers emit a
/// few; more cannot buy more allowance).
pub const TOOL_CALLS_PER_CHOICE: u64 = 16;
/// Longest receipt text kept in a slash record's evidence.
const EVIDENCE_MAX: usize = 2048;

/// What the gateway knows of a request before it is sent to one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The gateway's upper bound on prompt tokens.
    pub prompt_estimate: u64,
    /// `n` × number of prompts (1 for embeddings).
    pub choices: u64,
    /// New tokens per choice at most.
    pub max_new: u64,
    /// True when `max_new` is certain (the request's `max_tokens`, or the context the
    /// provider itself declared), so exceeding it is fraud rather than a guess.
    pub hard_cap: bool,
    /// False for embeddings (no completion tokens).
    pub generates: bool,
}

impl Bounds {
    /// Completion tokens at most: `choices × max_new` (0 for embeddings).
    pub fn completion_cap(&self) -> u64 {
        if self.generates {
            self.choices.saturating_mul(self.max_new)
        } else {
            0
        }
    }

    /// The worst case a reservation must cover, in tokens.
    pub fn worst_tokens(&self) -> u64 {
        self.prompt_estimate.saturating_add(self.completion_cap())
    }

    /// The completion tokens the gateway can vouch for after relaying `text_bytes`
    /// bytes of text and `tool_calls` tool calls and, for a stream, chunks whose
    /// `tenzro.tokens` sum to `chunk_tokens`.
    pub fn completion_bound(
        &self,
        chunk_tokens: Option<u64>,
        text_bytes: u64,
        tool_calls: u64,
    ) -> u64 {
        let calls = tool_calls.min(self.choices.saturating_mul(TOOL_CALLS_PER_CHOICE));
        let allowance = self
            .choices
            .saturating_mul(SPECIAL_TOKENS_PER_CHOICE)
            .saturating_add(calls.saturating_mul(TOOL_CALL_WRAPPER_TOKENS));
        let by_text = text_bytes.saturating_add(allowance);
        let bound = self.completion_cap().min(by_text);
        match chunk_tokens {
            Some(t) => bound.min(t),
            None => bound,
        }
    }

    /// The prompt tokens the gateway can vouch for when the provider claims `claimed`.
    pub fn prompt_bound(&self, claimed: u64) -> u64 {
        claimed.min(self.prompt_estimate)
    }

    /// Why a completion claim cannot be honest, if it cannot.
    pub fn impossible_claim(&self, completion_claimed: u64) -> Option<String> {
        let cap = self.completion_cap();
        (self.hard_cap && completion_claimed > cap).then(|| {
            format!(
                "claimed {completion_claimed} completion tokens; the request allowed at most {cap} ({} choice(s) × {} new tokens)",
                self.choices, self.max_new
            )
        })
    }
}

/// SHA-256 over `items` in order, each written as its byte length (u64 big-endian)
/// then its bytes: the receipt's `response_sha256` (README "Identity, attestation
/// and receipts").
pub fn items_digest<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for item in items {
        h.update((item.len() as u64).to_be_bytes());
        h.update(item);
    }
    h.finalize().into()
}

/// Each choice's text of a stream as the client assembles it, for the response
/// digest. Choice indices at or above `choices` are not kept (a receipt over them
/// cannot match), so memory is bounded by the bytes relayed.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    texts: Vec<Vec<u8>>,
    /// A piece arrived for a choice the request did not ask for.
    pub stray: bool,
}

impl Texts {
    pub fn new(choices: u64) -> Self {
        // One slot per choice (at most 4096; requests ask for at most 128).
        let n = usize::try_from(choices.min(4096)).unwrap_or(0);
        Texts {
            texts: vec![Vec::new(); n],
            stray: false,
        }
    }

    /// Appends a piece of choice `index`'s text.
    pub fn push(&mut self, index: u64, piece: &str, choices: u64) {
        if index >= choices {
            self.stray = true;
            return;
        }
        // Never grows on the provider's word: a choice without a slot is stray
        // (the gateway refuses more than `routes::MAX_CHOICES` choices at parse).
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| self.texts.get_mut(i));
        let Some(slot) = slot else {
            self.stray = true;
            return;
        };
        slot.extend_from_slice(piece.as_bytes());
    }

    pub fn digest(&self) -> [u8; 32] {
        items_digest(self.texts.iter().map(Vec::as_slice))
    }
}

/// What a receipt must say, from what the gateway sent, relayed and was told.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The provider's registered key.
    pub key: &'a PublicKey,
    pub model: &'a str,
    /// The weight digest the provider registered for the model, when it did.
    pub weight_sha256: Option<[u8; 32]>,
    pub request_sha256: [u8; 32],
    pub response_sha256: [u8; 32],
    /// The provider's `usage`, when it sent one.
    pub usage: Option<(u64, u64)>,
}

/// Checks a response's receipt (the JSON under `tenzro.receipt`); the error is the
/// evidence of the fraud, ready for a slash record.
pub fn check_receipt(raw: Option<&serde_json::Value>, e: &Expected<'_>) -> Result<(), String> {
    let raw = raw.ok_or_else(|| "the response carries no receipt".to_owned())?;
    let quoted = || evidence_text(raw);
    let r: Receipt = Receipt::deserialize(raw)
        .map_err(|err| format!("unreadable receipt ({err}): {}", quoted()))?;
    r.verify(Some(e.key))
        .map_err(|err| format!("receipt refused ({err}): {}", quoted()))?;
    let mut wrong = Vec::new();
    if r.model != e.model {
        wrong.push(format!("model '{}' (asked '{}')", r.model, e.model));
    }
    if let Some(w) = e.weight_sha256
        && w != r.weight_sha256
    {
        wrong.push(format!(
            "weight_sha256 {} (registered {})",
            hex::encode(r.weight_sha256),
            hex::encode(w)
        ));
    }
    if r.request_sha256 != e.request_sha256 {
        wrong.push(format!(
            "request_sha256 {} (sent {})",
            hex::encode(r.request_sha256),
            hex::encode(e.request_sha256)
        ));
    }
    if r.response_sha256 != e.response_sha256 {
        wrong.push(format!(
            "response_sha256 {} (relayed {})",
            hex::encode(r.response_sha256),
            hex::encode(e.response_sha256)
        ));
    }
    if let Some((p, c)) = e.usage
        && (r.prompt_tokens, r.completion_tokens) != (p, c)
    {
        wrong.push(format!(
            "tokens {}+{} (usage said {p}+{c})",
            r.prompt_tokens, r.completion_tokens
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "receipt differs from the response: {}; receipt: {}",
            wrong.join(", "),
            quoted()
        ))
    }
}

fn evidence_text(v: &serde_json::Value) -> String {
    let mut s = v.to_string();
    if s.len() > EVIDENCE_MAX {
        let mut cut = EVIDENCE_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Whether a response is sampled for receipt verification, from a uniform random
/// `draw`, at `ppm` parts per million (1,000,000: every response).
pub fn sampled(ppm: u32, draw: u64) -> bool {
    draw % 1_000_000 < u64::from(ppm)
}

/// What the gateway reads of a whole (non-streamed) answer.
#[derive(Debug, Default)]
pub struct Whole {
    /// The provider's `usage` (prompt, completion).
    pub usage: Option<(u64, u64)>,
    /// Byte length of the text the answer carries (all choices).
    pub text_bytes: u64,
    /// Tool calls the answer carries (all choices).
    pub tool_calls: u64,
    /// The response digest as the receipt defines it.
    pub response_sha256: [u8; 32],
    pub receipt: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WholePeek {
    #[serde(default)]
    choices: Vec<ChoicePeek>,
    #[serde(default)]
    data: Vec<EmbeddingPeek>,
    #[serde(default)]
    usage: Option<UsagePeek>,
    #[serde(default)]
    tenzro: Option<ExtPeek>,
}

#[derive(Deserialize)]
struct ChoicePeek {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    message: Option<MessagePeek>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct MessagePeek {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallPeek>,
}

#[derive(Deserialize)]
struct ToolCallPeek {
    #[serde(default)]
    function: FunctionPeek,
}

#[derive(Deserialize, Default)]
struct FunctionPeek {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

impl MessagePeek {
    /// The message's text as the receipt signs it: the content, then each tool
    /// call's name and arguments.
    fn text(&self) -> String {
        let mut t = self.content.clone().unwrap_or_default();
        for c in &self.tool_calls {
            t.push_str(&c.function.name);
            t.push_str(&c.function.arguments);
        }
        t
    }
}

#[derive(Deserialize)]
struct EmbeddingPeek {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    embedding: Option<Vector>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Vector {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Deserialize)]
struct UsagePeek {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct ExtPeek {
    #[serde(default)]
    receipt: Option<serde_json::Value>,
}

/// Reads a whole answer's usage, text length, response digest and receipt; `None`
/// when the body is not a JSON object of that shape.
pub fn read_whole(body: &[u8]) -> Option<Whole> {
    use base64::Engine as _;
    let mut p: WholePeek = serde_json::from_slice(body).ok()?;
    let usage = p.usage.map(|u| (u.prompt_tokens, u.completion_tokens));
    let receipt = p.tenzro.and_then(|t| t.receipt);
    let mut tool_calls = 0;
    let (text_bytes, response_sha256) = if p.data.is_empty() {
        p.choices.sort_by_key(|c| c.index);
        let texts: Vec<String> = p
            .choices
            .iter()
            .map(|c| match (&c.message, &c.text) {
                (Some(m), _) => m.text(),
                (None, Some(t)) => t.clone(),
                (None, None) => String::new(),
            })
            .collect();
        let bytes = texts.iter().map(|t| t.len() as u64).sum();
        tool_calls = p
            .choices
            .iter()
            .filter_map(|c| c.message.as_ref())
            .map(|m| m.tool_calls.len() as u64)
            .sum();
        (bytes, items_digest(texts.iter().map(|t| t.as_bytes())))
    } else {
        p.data.sort_by_key(|d| d.index);
        let vectors: Vec<Vec<u8>> = p
            .data
            .iter()
            .map(|d| match &d.embedding {
                Some(Vector::Floats(v)) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Some(Vector::Base64(s)) => base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .unwrap_or_default(),
                None => Vec::new(),
            })
            .collect();
        (0, items_digest(vectors.iter().map(Vec::as_slice)))
    };
    Some(Whole {
        usage,
        text_bytes,
        tool_calls,
        response_sha256,
        receipt,
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
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
}
