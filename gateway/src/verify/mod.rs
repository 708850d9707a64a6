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

mod bounds;
mod receipt;
#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests;
mod whole;

pub use bounds::Bounds;
pub use receipt::{Expected, Texts, check_receipt, items_digest, sampled};
pub use whole::{Whole, read_whole};

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
