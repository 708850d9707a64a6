//! OpenAI wire types: what clients send and what they get back.
//!
//! Tolerant of fields we do not know (they are ignored, as OpenAI's own SDKs add
//! fields over time), strict about the types of the fields we do: a `"max_tokens":
//! "ten"` is a 400, not a default. Extensions of ours live in fields the SDKs
//! ignore (`tenzro` on chunks and responses, `cost`/`asset` in usage).

mod chat;
mod common;
mod completions;
mod embeddings;
mod error;
mod models;
mod registry;

pub use chat::*;
pub use common::*;
pub use completions::*;
pub use embeddings::*;
pub use error::*;
pub use models::*;
pub use registry::*;
