//! Metering a response as it passes: SSE framing, the provider's per-chunk token
//! counts (`tenzro.tokens`), the final usage chunk, and the running cost.
//!
//! Plain functions over bytes; the relay in [`crate::proxy`] drives them.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use tenzro_models::api::Usage;

use crate::pricing::{Asset, PricingError, Quote};

/// Cuts a byte stream into SSE events at blank lines (`\n\n` or `\r\n\r\n`).
#[derive(Debug, Default)]
pub struct SseSplitter {
    buf: Vec<u8>,
}

impl SseSplitter {
    /// Appends `bytes` and returns every complete event, each without its
    /// terminating blank line.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i + 1 < self.buf.len() {
            let b = &self.buf[i..];
            let end = if b.starts_with(b"\n\n") {
                Some(2)
            } else if b.starts_with(b"\r\n\r\n") {
                Some(4)
            } else {
                None
            };
            if let Some(n) = end {
                out.push(self.buf[start..i].to_vec());
                i += n;
                start = i;
            } else {
                i += 1;
            }
        }
        self.buf.drain(..start);
        out
    }

    /// Bytes of an event not yet terminated.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The `data` of an SSE event: its `data:` lines joined by `\n`; `None` when the
/// event has none (a comment or a keep-alive).
pub fn event_data(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            match &mut data {
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(rest);
                }
                None => data = Some(rest.to_vec()),
            }
        }
    }
    data
}

/// What the gateway needs to know of one chunk, read without building the chunk.
#[derive(Debug, Default, Deserialize)]
pub struct ChunkPeek<'a> {
    #[serde(default, borrow)]
    pub choices: Option<Vec<ChoicePeek<'a>>>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub tenzro: Option<PeekExt>,
    #[serde(default)]
    pub error: Option<IgnoredAny>,
}

/// A choice of a chunk: only whether it carries text.
#[derive(Debug, Default, Deserialize)]
pub struct ChoicePeek<'a> {
    #[serde(default, borrow)]
    pub delta: Option<DeltaPeek<'a>>,
    /// Text completions stream `text` instead of `delta`.
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DeltaPeek<'a> {
    #[serde(default, borrow)]
    pub content: Option<Cow<'a, str>>,
}

impl ChoicePeek<'_> {
    fn has_text(&self) -> bool {
        let delta = self
            .delta
            .as_ref()
            .and_then(|d| d.content.as_deref())
            .is_some_and(|c| !c.is_empty());
        delta || self.text.as_deref().is_some_and(|t| !t.is_empty())
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct PeekExt {
    #[serde(default)]
    pub tokens: Option<u64>,
}

/// One event, classified.
#[derive(Debug)]
pub enum Event<'a> {
    /// `data: [DONE]`.
    Done,
    /// A JSON chunk.
    Chunk(ChunkPeek<'a>),
    /// Data that is not JSON we understand; relayed untouched, not metered.
    Opaque,
    /// No data (comment, keep-alive).
    Empty,
}

pub fn classify(data: Option<&[u8]>) -> Event<'_> {
    match data {
        None => Event::Empty,
        Some(d) if d.trim_ascii() == b"[DONE]" => Event::Done,
        Some(d) => serde_json::from_slice::<ChunkPeek<'_>>(d)
            .map(Event::Chunk)
            .unwrap_or(Event::Opaque),
    }
}

impl ChunkPeek<'_> {
    /// Completion tokens this chunk carries: the provider's own count when it gives
    /// one, else one per choice that carries text (an estimate for providers without
    /// our extension; the usage chunk corrects it at the end).
    pub fn tokens(&self) -> u64 {
        match &self.tenzro {
            Some(PeekExt { tokens: Some(n) }) => *n,
            _ => self
                .choices
                .as_ref()
                .map_or(0, |c| c.iter().filter(|c| c.has_text()).count() as u64),
        }
    }

    pub fn has_choices(&self) -> bool {
        self.choices.as_ref().is_some_and(|c| !c.is_empty())
    }
}

/// The running count and cost of one response.
#[derive(Debug, Clone)]
pub struct Meter {
    pub quote: Quote,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cost of what was metered so far (never falls).
    pub cost: u128,
    /// Whether the provider's final usage arrived.
    pub complete: bool,
}

impl Meter {
    pub fn new(quote: Quote) -> Self {
        Meter {
            quote,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost: 0,
            complete: false,
        }
    }

    fn recompute(&mut self) -> Result<u128, PricingError> {
        let total = self.prompt_tokens.saturating_add(self.completion_tokens);
        let now = self.quote.cost(total)?.max(self.cost);
        let delta = now - self.cost;
        self.cost = now;
        Ok(delta)
    }

    /// Counts a relayed chunk's completion tokens; returns the added cost.
    pub fn on_tokens(&mut self, n: u64) -> Result<u128, PricingError> {
        self.completion_tokens = self.completion_tokens.saturating_add(n);
        self.recompute()
    }

    /// Applies the provider's final usage: prompt tokens are charged from here, and
    /// completion tokens are the larger of the metered sum and the reported count
    /// (so the running cost never falls). Returns the added cost.
    pub fn on_usage(&mut self, usage: &Usage) -> Result<u128, PricingError> {
        self.prompt_tokens = usage.prompt_tokens;
        self.completion_tokens = self.completion_tokens.max(usage.completion_tokens);
        self.complete = true;
        self.recompute()
    }

    /// The usage to report to the client, with our cost fields.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::new(self.prompt_tokens, self.completion_tokens);
        u.cost = Some(self.cost.to_string());
        u.asset = Some(self.quote.asset.as_str().to_owned());
        u
    }
}

/// Replaces (or removes, with `None`) the `usage` of a JSON chunk or body.
pub fn rewrite_usage(data: &[u8], usage: Option<&Usage>) -> Result<Vec<u8>, serde_json::Error> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(data)?;
    match usage {
        Some(u) => {
            v.insert("usage".into(), serde_json::to_value(u)?);
        }
        None => {
            v.remove("usage");
        }
    }
    serde_json::to_vec(&v)
}

/// An SSE event carrying `data`.
pub fn sse(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

/// The trailing SSE comment that tells a stream's cost to clients that did not ask
/// for the usage chunk (SSE comments are ignored by SDKs).
pub fn cost_comment(cost: u128, asset: Asset) -> Vec<u8> {
    format!(": x-tenzro-cost={cost} x-tenzro-asset={asset}\n\n").into_bytes()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests {
    use super::*;
    use crate::pricing::{ONE, PPM};
    use proptest::prelude::*;

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
        let Event::Chunk(p) =
            c(r#"{"choices":[{"delta":{"content":"hi"}}],"tenzro":{"tokens":3}}"#)
        else {
            panic!()
        };
        assert_eq!(p.tokens(), 3);
        let Event::Chunk(p) = c(r#"{"choices":[{"delta":{"content":"hi"}}]}"#) else {
            panic!()
        };
        assert_eq!(p.tokens(), 1);
        let Event::Chunk(p) = c(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#)
        else {
            panic!()
        };
        assert_eq!(p.tokens(), 0, "a role-only chunk carries no token");
        let Event::Chunk(p) = c(r#"{"choices":[{"text":"a\"b"},{"text":"c"}]}"#) else {
            panic!()
        };
        assert_eq!(p.tokens(), 2);
        let Event::Chunk(p) = c(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
        ) else {
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
    fn meter_charges_prompt_at_the_end_and_never_falls() {
        let mut m = Meter::new(quote());
        assert_eq!(m.on_tokens(2).unwrap(), 2000);
        assert_eq!(m.on_tokens(1).unwrap(), 1000);
        // The provider reports fewer completion tokens than metered: keep the metered.
        assert_eq!(m.on_usage(&Usage::new(10, 2)).unwrap(), 10_000);
        let u = m.usage();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (10, 3, 13)
        );
        assert_eq!(u.cost.as_deref(), Some("13000"));
        assert_eq!(u.asset.as_deref(), Some("TNZO"));
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
        let v: serde_json::Value =
            serde_json::from_slice(&rewrite_usage(body, None).unwrap()).unwrap();
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
            let datas: Vec<Vec<u8>> = got.iter().map(|e| event_data(e).unwrap()).collect();
            let expect: Vec<Vec<u8>> = events.iter().map(|e| e.as_bytes().to_vec()).collect();
            prop_assert_eq!(datas, expect);
        }

        /// The per-chunk deltas add up to the final cost.
        #[test]
        fn meter_deltas_sum_to_cost(chunks in proptest::collection::vec(0u64..20, 0..30), prompt in 0u64..500, report in 0u64..400) {
            let mut m = Meter::new(Quote::new(777, 1_234_567, 600_000, 1_200_000, Asset::Tnzo, ONE));
            let mut sum = 0;
            for c in chunks {
                sum += m.on_tokens(c).unwrap();
            }
            sum += m.on_usage(&Usage::new(prompt, report)).unwrap();
            prop_assert_eq!(sum, m.cost);
            prop_assert_eq!(m.cost, m.quote.cost(m.prompt_tokens + m.completion_tokens).unwrap());
        }
    }
}
