//! Loading every configured model into the application state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::Device;
use tenzro_models::embed::{Embedder, EmbedderConfig};
use tenzro_models::engine::{Engine, EngineConfig};
use tenzro_models::llm::{Llm, LlmConfig, Requantize};
use tokio::sync::Semaphore;

use crate::config::{Config, RequantizeSetting};
use crate::metrics::Metrics;
use crate::state::{AppState, ChatModel, EmbeddingModel};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model `{id}`: {source}")]
    Model { id: String, source: tenzro_models::ModelError },
    #[error("starting the engine for `{id}`: {source}")]
    Engine { id: String, source: std::io::Error },
}

/// Load every model (hashing each weight file against its configured digest) and
/// start one engine thread per chat model. Blocking: call it off the async runtime.
pub fn load(config: Config) -> Result<AppState, LoadError> {
    let device = device();
    let mut chat = HashMap::new();
    for m in &config.chat_models {
        let cfg = LlmConfig {
            path: config.resolve(&m.path),
            sha256: m.sha256.clone(),
            tokenizer_json: m.tokenizer.as_ref().map(|p| config.resolve(p)),
            requantize: match m.requantize {
                RequantizeSetting::None => Requantize::None,
                RequantizeSetting::Q8_0 => Requantize::Q8_0,
            },
        };
        let llm = Llm::load(&cfg, &device).map_err(|source| LoadError::Model { id: m.id.clone(), source })?;
        let engine_cfg = EngineConfig {
            queue_capacity: config.engine.queue_capacity,
            max_sequences: config.engine.max_sequences,
        };
        let engine = Engine::spawn(Arc::new(llm), engine_cfg)
            .map_err(|source| LoadError::Engine { id: m.id.clone(), source })?;
        chat.insert(
            m.id.clone(),
            ChatModel { engine, price_per_token: m.price_per_token.clone(), parameters: m.parameters },
        );
    }
    let mut embedding = HashMap::new();
    for m in &config.embedding_models {
        let cfg = EmbedderConfig { dir: config.resolve(&m.path), sha256: m.sha256.clone() };
        let embedder =
            Embedder::load(&cfg, &device).map_err(|source| LoadError::Model { id: m.id.clone(), source })?;
        tracing::info!(id = %m.id, dimensions = embedder.dimensions, "loaded embedding model");
        embedding.insert(
            m.id.clone(),
            EmbeddingModel {
                embedder: Arc::new(embedder),
                permits: Arc::new(Semaphore::new(1)),
                price_per_token: m.price_per_token.clone(),
                parameters: m.parameters,
            },
        );
    }
    Ok(AppState {
        config: Arc::new(config),
        chat: Arc::new(chat),
        embedding: Arc::new(embedding),
        metrics: Metrics::default(),
        started: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    })
}

#[cfg(feature = "cuda")]
fn device() -> Device {
    match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "CUDA requested but unavailable; using the CPU");
            Device::Cpu
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn device() -> Device {
    Device::Cpu
}
