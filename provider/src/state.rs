//! What every handler can reach.

use std::collections::HashMap;
use std::sync::Arc;

use tenzro_models::embed::Embedder;
use tenzro_models::engine::Engine;
use tokio::sync::Semaphore;

use crate::attestation::{AttestationDocument, Identity};
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::paid::OperatorToken;
use crate::payer::PayerTrust;
use crate::throttle::{Cache, RateLimiter};
use crate::vouchers::Channels;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub chat: Arc<HashMap<String, ChatModel>>,
    pub embedding: Arc<HashMap<String, EmbeddingModel>>,
    pub metrics: Metrics,
    pub started: u64,
    /// The provider's key, evidence source and served weight digests.
    pub identity: Arc<Identity>,
    /// Payment-channel vouchers and unpaid tokens per channel.
    pub channels: Arc<Channels>,
    /// The trusted payer and whether unpaid requests are refused.
    pub payers: Arc<PayerTrust>,
    /// Lets the operator read the channel book.
    pub operator: OperatorToken,
    /// Attestation documents by nonce, and the per-address limit on fresh ones.
    pub evidence: Arc<Cache<Vec<u8>, Arc<AttestationDocument>>>,
    pub evidence_limit: Arc<RateLimiter>,
}

pub struct ChatModel {
    pub engine: Engine,
    pub price_per_token: String,
    pub parameters: u64,
    /// What `/v1/models` says of the weights: `model_type` or GGUF architecture, and
    /// `gguf` or `safetensors`.
    pub architecture: String,
    pub format: &'static str,
}

pub struct EmbeddingModel {
    pub embedder: Arc<Embedder>,
    /// One batch at a time: the CPU is shared with the chat engine.
    pub permits: Arc<Semaphore>,
    pub price_per_token: String,
    pub parameters: u64,
}

impl AppState {
    pub fn chat_model(&self, id: &str) -> Result<&ChatModel, ApiError> {
        self.chat.get(id).ok_or_else(|| self.not_found(id))
    }

    pub fn embedding_model(&self, id: &str) -> Result<&EmbeddingModel, ApiError> {
        self.embedding.get(id).ok_or_else(|| self.not_found(id))
    }

    fn not_found(&self, id: &str) -> ApiError {
        let mut known: Vec<&str> = self
            .chat
            .keys()
            .chain(self.embedding.keys())
            .map(String::as_str)
            .collect();
        known.sort_unstable();
        let shown: String = id.chars().take(200).collect();
        ApiError::ModelNotFound(format!("{shown}` (served here: `{}", known.join("`, `")))
    }
}
