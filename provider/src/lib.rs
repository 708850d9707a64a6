//! The Tenzro provider node: an OpenAI-compatible HTTP server over the candle
//! engine in `tenzro-models`.
//!
//! `routes` is the whole HTTP surface; handlers (`chat`, `embeddings`, `info`)
//! parse, call `validate`/`generate`, and convert back. `load` builds the state
//! from a `config::Config`.

pub mod chat;
pub mod config;
pub mod embeddings;
pub mod error;
pub mod generate;
pub mod info;
pub mod load;
pub mod metrics;
pub mod routes;
pub mod state;
pub mod validate;
