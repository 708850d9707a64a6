//! Metering a response as it passes: SSE framing, the provider's per-chunk token
//! counts (`tenzro.tokens`), the final usage chunk, and the running cost.
//!
//! Plain functions over bytes; the relay in [`crate::proxy`] drives them.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use tenzro_models::api::Usage;

use crate::pricing::{Asset, PricingError, Quote};
use crate::verify::Bounds;

/// Cuts a byte stream into SSE events at blank lines (`\n\n` or `\r\n\r\n`).
///
/// Scanning resumes where the previous push stopped (less the three bytes a
/// terminator split across reads may need), so a long event costs its length once,
/// not once per read. The caller bounds [`SseSplitter::pending`].
#[derive(Debug, Default)]
pub struct SseSplitter {
    buf: Vec<u8>,
    /// Every position before this one was checked with enough bytes after it.
    scanned: usize,
}

impl SseSplitter {
    /// Appends `bytes` and returns every complete event, each without its
    /// terminating blank line.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
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
        self.scanned = self.buf.len().saturating_sub(3);
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

/// A choice of a chunk: its index and the text it carries.
#[derive(Debug, Default, Deserialize)]
pub struct ChoicePeek<'a> {
    #[serde(default)]
    pub index: u64,
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
    /// A tool call's pieces: the provider sends its name, then its arguments, each
    /// in a chunk of its own (one call per chunk).
    #[serde(default, borrow)]
    pub tool_calls: Option<Vec<ToolCallPeek<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ToolCallPeek<'a> {
    #[serde(default, borrow)]
    pub function: Option<FunctionPeek<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FunctionPeek<'a> {
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub arguments: Option<Cow<'a, str>>,
}

impl DeltaPeek<'_> {
    /// The text of the chunk's tool-call piece: its name, else its arguments. The
    /// pieces of a choice, in order, spell each call's name then its arguments,
    /// which is how the receipt counts them.
    fn tool_piece(&self) -> Option<&str> {
        let f = self.tool_calls.as_ref()?.first()?.function.as_ref()?;
        f.name
            .as_deref()
            .filter(|n| !n.is_empty())
            .or(f.arguments.as_deref())
    }
}

impl ChoicePeek<'_> {
    /// The text this choice carries in this chunk (`delta.content` or `text`).
    pub fn piece(&self) -> &str {
        self.delta
            .as_ref()
            .and_then(|d| d.content.as_deref())
            .or(self.text.as_deref())
            .or_else(|| self.delta.as_ref().and_then(DeltaPeek::tool_piece))
            .unwrap_or("")
    }

    fn has_text(&self) -> bool {
        !self.piece().is_empty()
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct PeekExt {
    #[serde(default)]
    pub tokens: Option<u64>,
    /// The provider's signed receipt (checked by [`crate::verify`]).
    #[serde(default)]
    pub receipt: Option<serde_json::Value>,
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
    /// Completion tokens this chunk claims: the provider's own count when it gives
    /// one, else one per choice that carries text (an estimate for providers without
    /// our extension).
    pub fn tokens(&self) -> u64 {
        match &self.tenzro {
            Some(PeekExt {
                tokens: Some(n), ..
            }) => *n,
            _ => self
                .choices
                .as_ref()
                .map_or(0, |c| c.iter().filter(|c| c.has_text()).count() as u64),
        }
    }

    /// Bytes of text this chunk carries, over all its choices.
    pub fn text_bytes(&self) -> u64 {
        self.choices
            .as_ref()
            .map_or(0, |c| c.iter().map(|c| c.piece().len() as u64).sum())
    }

    /// Tool calls this chunk starts: choices whose tool-call piece carries the
    /// call's name (the provider sends a call's name in its first piece).
    pub fn tool_calls_started(&self) -> u64 {
        self.choices.as_ref().map_or(0, |c| {
            c.iter()
                .filter_map(|c| {
                    c.delta
                        .as_ref()?
                        .tool_calls
                        .as_ref()?
                        .first()?
                        .function
                        .as_ref()?
                        .name
                        .as_deref()
                })
                .filter(|n| !n.is_empty())
                .count() as u64
        })
    }

    pub fn has_choices(&self) -> bool {
        self.choices.as_ref().is_some_and(|c| !c.is_empty())
    }

    /// The receipt this chunk carries, if any.
    pub fn receipt(&self) -> Option<&serde_json::Value> {
        self.tenzro.as_ref().and_then(|t| t.receipt.as_ref())
    }
}

/// The running count and cost of one response: the provider's claims bounded by
/// what the gateway relayed (see [`crate::verify`]).
#[derive(Debug, Clone)]
pub struct Meter {
    pub quote: Quote,
    pub bounds: Bounds,
    /// Sum of the completion tokens the relayed chunks claimed.
    pub chunk_tokens: u64,
    /// Bytes of text relayed.
    pub text_bytes: u64,
    /// Tool calls relayed.
    pub tool_calls: u64,
    /// Prompt tokens charged.
    pub prompt_tokens: u64,
    /// Completion tokens charged (falls only to the provider's final usage).
    pub completion_tokens: u64,
    /// Cost of what was metered so far (falls only to the provider's final usage).
    pub cost: u128,
    /// Whether the provider's final usage arrived.
    pub complete: bool,
    /// What the provider's usage claimed (prompt, completion), when it arrived.
    pub claimed: Option<(u64, u64)>,
    /// Whether a chunk with choices reached the client (from then on the prompt is
    /// owed, issue 11).
    pub relayed: bool,
}

impl Meter {
    pub fn new(quote: Quote, bounds: Bounds) -> Self {
        Meter {
            quote,
            bounds,
            chunk_tokens: 0,
            text_bytes: 0,
            tool_calls: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost: 0,
            complete: false,
            claimed: None,
            relayed: false,
        }
    }

    fn recompute(&mut self) -> Result<u128, PricingError> {
        let total = self.prompt_tokens.saturating_add(self.completion_tokens);
        let now = self.quote.cost(total)?.max(self.cost);
        let delta = now - self.cost;
        self.cost = now;
        Ok(delta)
    }

    /// Counts a relayed chunk that claims `tokens` completion tokens, carries
    /// `text_bytes` bytes of text and starts `tool_calls` tool calls; returns the
    /// added cost.
    pub fn on_chunk(
        &mut self,
        tokens: u64,
        text_bytes: u64,
        tool_calls: u64,
    ) -> Result<u128, PricingError> {
        self.relayed = true;
        self.chunk_tokens = self.chunk_tokens.saturating_add(tokens);
        self.text_bytes = self.text_bytes.saturating_add(text_bytes);
        self.tool_calls = self.tool_calls.saturating_add(tool_calls);
        let bound =
            self.bounds
                .completion_bound(Some(self.chunk_tokens), self.text_bytes, self.tool_calls);
        self.completion_tokens = self.completion_tokens.max(bound);
        self.recompute()
    }

    /// Applies the provider's final usage: the prompt is charged from here (at most
    /// the gateway's estimate), and completion tokens are the claim bounded by what
    /// was relayed, even below what the chunks claimed (the cost may fall here, and
    /// only here). Returns the added cost (0 when it fell).
    pub fn on_usage(&mut self, usage: &Usage) -> Result<u128, PricingError> {
        self.claimed = Some((usage.prompt_tokens, usage.completion_tokens));
        self.prompt_tokens = self.bounds.prompt_bound(usage.prompt_tokens);
        let bound =
            self.bounds
                .completion_bound(Some(self.chunk_tokens), self.text_bytes, self.tool_calls);
        // The provider's usage (its receipt commits to it) is the most it is paid
        // for, even below what its chunks claimed: a chunk sum above it is a signed
        // contradiction (judged as fraud by `Audit::faults`), never extra pay.
        self.completion_tokens = usage.completion_tokens.min(bound);
        self.complete = true;
        let total = self.prompt_tokens.saturating_add(self.completion_tokens);
        let now = self.quote.cost(total)?;
        let delta = now.saturating_sub(self.cost);
        self.cost = now;
        Ok(delta)
    }

    /// A stream its provider ended (error event, early EOF, broken connection)
    /// before any usage or receipt, while its receipt was to be checked: its chunk
    /// claims cannot be verified, so only the prompt is owed (the provider cannot
    /// dodge the receipt check by ending the stream itself). The cost may fall here.
    pub fn on_unproven_end(&mut self) -> Result<(), PricingError> {
        self.completion_tokens = 0;
        self.cost = self.quote.cost(self.prompt_tokens)?;
        Ok(())
    }

    /// A stream that ends without usage after a chunk reached the client owes its
    /// prompt at the gateway's estimate. Returns the added cost.
    pub fn on_cut(&mut self) -> Result<u128, PricingError> {
        if self.relayed && !self.complete {
            self.prompt_tokens = self.prompt_tokens.max(self.bounds.prompt_estimate);
        }
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
    use crate::verify::SPECIAL_TOKENS_PER_CHOICE as SPECIAL;
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
}
