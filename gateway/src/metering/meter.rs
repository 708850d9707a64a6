//! The running count and cost of one response, and the usage written back to
//! the client.

use tenzro_models::api::Usage;

use crate::pricing::{PricingError, Quote};
use crate::verify::Bounds;

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
