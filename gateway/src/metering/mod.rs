//! Metering a response as it passes: SSE framing, the provider's per-chunk token
//! counts (`tenzro.tokens`), the final usage chunk, and the running cost.
//!
//! Plain functions over bytes; the relay in [`crate::proxy`] drives them.

mod meter;
mod peek;
mod sse;
#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests;

pub use meter::{Meter, rewrite_usage};
pub use peek::{
    ChoicePeek, ChunkPeek, DeltaPeek, Event, FunctionPeek, PeekExt, ToolCallPeek, classify,
};
pub use sse::{SseSplitter, cost_comment, event_data, sse};
