//! Loading every configured model into the application state.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::Device;
use tenzro_models::embed::{Embedder, EmbedderConfig};
use tenzro_models::engine::{Engine, EngineConfig};
use tenzro_models::llm::{Llm, LlmConfig, Requantize};
use tokio::sync::Semaphore;

use crate::attestation::{Identity, IdentityError};
use crate::config::{Config, RequantizeSetting};
use crate::metrics::Metrics;
use crate::paid::OperatorToken;
use crate::payer::PayerTrust;
use crate::state::{AppState, ChatModel, EmbeddingModel};
use crate::throttle::{Cache, RateLimiter};
use crate::vouchers::{BookSettings, Channels, StoreError};

/// Source addresses whose attestation requests are counted separately.
const MAX_LIMITED_ADDRESSES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model `{id}`: {source}")]
    Model {
        id: String,
        source: tenzro_models::ModelError,
    },
    #[error("model `{id}`: {source}")]
    Download {
        id: String,
        source: tenzro_models::download::DownloadError,
    },
    #[error("starting the engine for `{id}`: {source}")]
    Engine { id: String, source: std::io::Error },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Vouchers(#[from] StoreError),
}

/// Open the voucher store, load every model (hashing each weight file against its configured digest),
/// start one engine thread per chat model, then load the provider's identity over
/// those digests. Blocking: call it off the async runtime.
pub fn load(config: Config) -> Result<AppState, LoadError> {
    // The voucher store first: a corrupt one stops the provider before minutes of
    // model loading.
    // With a gateway the provider serves only what its payer signed (see `payer`).
    let payers = Arc::new(PayerTrust::new(
        config.gateway.url.is_some(),
        config.channels.trusted_payers.clone(),
    ));
    let channels = Channels::open(BookSettings {
        path: config.channels.path.clone(),
        credit_limit_tokens: config.channels.credit_limit_tokens,
        trust: payers.clone(),
        max_channels: config.channels.max_channels,
        max_store_bytes: config.channels.max_store_bytes,
    })?;
    let device = device();
    let mut chat = HashMap::new();
    for m in &config.chat_models {
        let path = model_file(&config, &m.path, m.sha256.as_ref()).map_err(|source| {
            LoadError::Download {
                id: m.id.clone(),
                source,
            }
        })?;
        let (architecture, format) = describe(&path);
        let cfg = LlmConfig {
            path,
            sha256: m.sha256.clone(),
            tokenizer_json: m.tokenizer.as_ref().map(|p| config.resolve(p)),
            requantize: match m.requantize {
                RequantizeSetting::None => Requantize::None,
                RequantizeSetting::Q8_0 => Requantize::Q8_0,
                RequantizeSetting::Auto => Requantize::Auto,
            },
        };
        let llm = Llm::load(&cfg, &device).map_err(|source| LoadError::Model {
            id: m.id.clone(),
            source,
        })?;
        let engine_cfg = EngineConfig {
            queue_capacity: config.engine.queue_capacity,
            max_sequences: config.engine.max_sequences,
            prefix_cache_bytes: config.engine.prefix_cache_mib << 20,
            ..EngineConfig::default()
        };
        let engine =
            Engine::spawn(Arc::new(llm), engine_cfg).map_err(|source| LoadError::Engine {
                id: m.id.clone(),
                source,
            })?;
        chat.insert(
            m.id.clone(),
            ChatModel {
                engine,
                price_per_token: m.price_per_token.clone(),
                parameters: m.parameters,
                architecture,
                format,
            },
        );
    }
    let mut embedding = HashMap::new();
    for m in &config.embedding_models {
        let cfg = EmbedderConfig {
            dir: config.resolve(&m.path),
            sha256: m.sha256.clone(),
        };
        let embedder = Embedder::load(&cfg, &device).map_err(|source| LoadError::Model {
            id: m.id.clone(),
            source,
        })?;
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
    let digests = chat
        .iter()
        .map(|(id, m)| (id.clone(), m.engine.llm().sha256.clone()))
        .chain(
            embedding
                .iter()
                .map(|(id, m)| (id.clone(), m.embedder.sha256.clone())),
        );
    let identity = Identity::load(&config.identity, &config.attestation, digests)?;
    let a = &config.attestation;
    let evidence = Arc::new(Cache::new(a.cache_entries));
    let evidence_limit = Arc::new(RateLimiter::new(
        a.fresh_per_minute,
        a.fresh_burst,
        MAX_LIMITED_ADDRESSES,
    ));
    Ok(AppState {
        identity: Arc::new(identity),
        channels: Arc::new(channels),
        payers,
        operator: OperatorToken::from_env(&config.operator.token_env),
        evidence,
        evidence_limit,
        config: Arc::new(config),
        chat: Arc::new(chat),
        embedding: Arc::new(embedding),
        metrics: Metrics::default(),
        started: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
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

/// A configured model path: `hf://owner/repo[@revision]/file`, `hf://owner/repo[@revision]`
/// (a safetensors checkpoint) or `hf://owner/repo[@revision]:QUANT` (a GGUF by
/// quantisation) comes from the Hugging Face cache (`HF_HOME`, `HF_HUB_CACHE`),
/// downloaded into it when missing (`HF_TOKEN`, `HF_ENDPOINT`; `HF_HUB_OFFLINE=1`
/// never downloads); anything else is a local path resolved against `models_dir`.
fn model_file(
    config: &Config,
    path: &Path,
    sha256: Option<&String>,
) -> Result<PathBuf, tenzro_models::download::DownloadError> {
    use std::io::IsTerminal;
    use tenzro_models::download::{self, FetchOptions, ModelSource};
    let source = path.to_string_lossy().parse::<ModelSource>()?;
    if let ModelSource::Local(_) = source {
        return Ok(config.resolve(path));
    }
    // Before the Hugging Face cache, single files were kept in `models_dir/hf`;
    // one there with the configured digest is still served.
    if let (ModelSource::Hub(file), Some(expected)) = (&source, sha256) {
        let legacy = file.legacy_cache_path(&config.models_dir.join("hf"));
        if legacy.is_file()
            && download::sha256_file(&legacy).is_ok_and(|d| d.eq_ignore_ascii_case(expected))
        {
            return Ok(legacy);
        }
    }
    let fetched = download::resolve(
        &source,
        &download::hub_cache_dir(),
        &FetchOptions {
            expected_sha256: sha256.cloned(),
            progress: std::io::stderr().is_terminal(),
            ..FetchOptions::default()
        },
    )?;
    tracing::info!(
        source = %path.display(),
        path = %fetched.path.display(),
        commit = ?fetched.commit,
        weights_sha256 = ?fetched.weights_sha256,
        downloaded_bytes = fetched.downloaded_bytes,
        "model files ready"
    );
    Ok(fetched.path)
}

/// The weights' architecture (`config.json`'s `model_type`, or the GGUF's
/// `general.architecture`; `unknown` when unreadable) and format.
fn describe(path: &Path) -> (String, &'static str) {
    if path.is_dir() {
        let model_type = std::fs::read(path.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("model_type")?.as_str().map(str::to_owned));
        (
            model_type.unwrap_or_else(|| "unknown".into()),
            "safetensors",
        )
    } else {
        let arch = tenzro_models::gguf::read_content(path)
            .ok()
            .and_then(|(content, _)| {
                tenzro_models::gguf::md_string(&content, "general.architecture")
            });
        (arch.unwrap_or_else(|| "unknown".into()), "gguf")
    }
}
