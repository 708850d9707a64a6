//! The Tenzro provider node: an OpenAI-compatible HTTP server over the candle
//! engine in `tenzro-models`.
//!
//! `routes` is the whole HTTP surface; handlers (`chat`, `embeddings`, `info`)
//! parse, call `validate`/`generate`, and convert back. `load` builds the state
//! from a `config::Config`. `attestation` holds the provider's key and evidence
//! (`GET /v1/attestation`); `receipt` defines the digests of the receipt signed
//! onto every response. `vouchers` is the payment-channel book (verify,
//! countersign, store, credit); `channels` its HTTP surface and the
//! `x-tenzro-channel` credit check. `payer` says whom the provider is paid by,
//! `paid` refuses unpaid requests when attached to a gateway and guards the channel
//! book; `throttle` bounds `/v1/attestation`. `register` and `bond` are the gateway
//! client (registration, heartbeats, the owner's bond).

pub mod attestation;
pub mod bond;
pub mod channels;
pub mod chat;
pub mod config;
pub mod embeddings;
pub mod error;
pub mod generate;
pub mod info;
pub mod load;
pub mod logprob_wire;
pub mod metrics;
pub mod paid;
pub mod payer;
pub mod receipt;
pub mod register;
pub mod registration;
pub mod routes;
pub mod state;
pub mod structured;
pub mod throttle;
pub mod toolcalls;
pub mod validate;
pub mod vouchers;
