//! Tenzro's model side.
//!
//! - [`api`]: the OpenAI wire types. Serde only, always built: the gateway uses this
//!   crate with `default-features = false` and gets nothing else.
//! - Behind the default `engine` feature: loading GGUF and safetensors (llama, qwen2, BERT) weights with candle,
//!   the tokenizer and chat template, the sampler and the generation engine.

pub mod api;

#[cfg(feature = "engine")]
pub mod arch;
#[cfg(feature = "engine")]
pub mod detok;
#[cfg(feature = "download")]
pub mod digest;
#[cfg(feature = "download")]
pub mod download;
#[cfg(feature = "engine")]
pub mod embed;
#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "engine")]
pub mod error;
#[cfg(feature = "engine")]
pub mod gguf;
#[cfg(feature = "engine")]
pub mod grammar;
#[cfg(feature = "engine")]
pub mod hf;
#[cfg(feature = "engine")]
pub mod kernels;
#[cfg(feature = "engine")]
pub mod linear;
#[cfg(feature = "engine")]
pub mod llama;
#[cfg(feature = "engine")]
pub mod llm;
#[cfg(feature = "engine")]
pub mod logprobs;
#[cfg(feature = "engine")]
pub mod prefix_cache;
#[cfg(feature = "engine")]
pub mod sampler;
#[cfg(feature = "engine")]
pub mod stop;
#[cfg(feature = "engine")]
pub mod template;
#[cfg(feature = "engine")]
pub mod tools;

#[cfg(feature = "engine")]
pub use error::ModelError;
