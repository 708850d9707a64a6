//! OpenAI wire types: what clients send and what they get back.
//!
//! Requests collect the fields we do not implement in `unknown`, and both servers
//! refuse them by name (`check_fields`: a field we would silently ignore is a
//! wrong answer, not a compatible one); responses tolerate unknown fields. Strict
//! about the types of the fields we know: a `"max_tokens": "ten"` is a 400, not a
//! default. Extensions of ours live in fields the SDKs
//! ignore (`tenzro` on chunks and responses, `cost`/`asset` in usage).

mod chat;
mod checks;
mod common;
mod completions;
mod embeddings;
mod error;
mod logprobs;
mod models;
mod registry;
mod structured;

pub use chat::*;
pub use checks::*;
pub use common::*;
pub use completions::*;
pub use embeddings::*;
pub use error::*;
pub use logprobs::*;
pub use models::*;
pub use registry::*;
pub use structured::*;
