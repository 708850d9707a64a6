//! The token bounds: what a provider's claim is clipped to, and the claims that
//! cannot be honest.

use super::{SPECIAL_TOKENS_PER_CHOICE, TOOL_CALL_WRAPPER_TOKENS, TOOL_CALLS_PER_CHOICE};

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
