//! What a provider declared, validated: its id, endpoint, key, models with their
//! prices, stake and TEE kind.

use serde::Serialize;
use tenzro_attest::TeeKind;
use tenzro_attest::keys::PublicKey;
use tenzro_models::api::{ModelInfo, RegisterRequest};

use crate::pricing;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("malformed registration: {0}")]
    Malformed(String),
    #[error("bad signature")]
    BadSignature,
    #[error("timestamp is {0} s away from the gateway's clock")]
    Stale(u64),
    #[error("provider {0} is registered with a different public key")]
    KeyMismatch(String),
    #[error("unknown provider {0}; register first")]
    UnknownProvider(String),
    #[error("provider {0} is banned")]
    Banned(String),
    #[error(
        "provider_id `{claimed}` is not the DID of the signing key ({did}); a provider's id is its key's DID"
    )]
    IdNotKey { claimed: String, did: String },
    #[error(
        "provider {0} is configured by the gateway's operator; registrations cannot replace it"
    )]
    ConfigProvider(String),
    #[error("registration refused: {0}")]
    OutOfBounds(String),
    #[error("too many registrations from this address; retry in {0} s")]
    RateLimited(u64),
    #[error("the registry is full ({0} registered providers); retry later")]
    Full(usize),
    #[error("{0} registrations are waiting for the gateway to reach their endpoints; retry later")]
    PendingFull(usize),
}

/// A validated model entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelEntry {
    #[serde(flatten)]
    pub info: ModelInfo,
    #[serde(skip)]
    pub price: u128,
}

/// What a provider declared; fixed until it registers again.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderInfo {
    pub id: String,
    /// Base URL without a trailing slash.
    pub endpoint: String,
    pub public_key: Option<PublicKey>,
    pub models: Vec<ModelEntry>,
    pub stake: u128,
    pub tee: TeeKind,
    pub max_concurrency: u32,
    /// From the config file: no heartbeats expected.
    pub from_config: bool,
}

impl ProviderInfo {
    pub fn has_tee(&self) -> bool {
        self.tee != TeeKind::None
    }

    /// Validates a registration into provider info.
    pub fn from_registration(r: RegisterRequest, from_config: bool) -> Result<Self, RegistryError> {
        let bad = |m: String| RegistryError::Malformed(m);
        if r.provider_id.is_empty() || r.provider_id.len() > 256 {
            return Err(bad("provider_id must be 1 to 256 characters".into()));
        }
        let endpoint = r.endpoint.trim_end_matches('/').to_owned();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(bad(format!("endpoint `{endpoint}` must be an http(s) URL")));
        }
        let public_key = if r.public_key.is_empty() && from_config {
            None
        } else {
            Some(PublicKey::from_hex(&r.public_key).map_err(|e| bad(format!("public_key: {e}")))?)
        };
        let stake = pricing::parse_units(&r.stake).map_err(|e| bad(format!("stake: {e}")))?;
        let tee: TeeKind = r.tee.to_ascii_lowercase().parse().map_err(|_| {
            bad(format!(
                "tee `{}` is not one of none, tdx, sev-snp, nvidia-cc",
                r.tee
            ))
        })?;
        if r.models.is_empty() {
            return Err(bad("models must not be empty".into()));
        }
        let mut models = Vec::with_capacity(r.models.len());
        for m in r.models {
            if m.id.is_empty() {
                return Err(bad("a model has an empty id".into()));
            }
            if m.tee_required && tee == TeeKind::None {
                return Err(bad(format!(
                    "model {} requires a TEE but the provider has none",
                    m.id
                )));
            }
            let price = pricing::parse_units(&m.price_per_token)
                .map_err(|e| bad(format!("price_per_token of {}: {e}", m.id)))?;
            models.push(ModelEntry { info: m, price });
        }
        Ok(ProviderInfo {
            id: r.provider_id,
            endpoint,
            public_key,
            models,
            stake,
            tee,
            max_concurrency: r.max_concurrency.unwrap_or(1).max(1),
            from_config,
        })
    }

    pub fn model(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.info.id == id)
    }

    /// Back to a registration (as stored; `stake` is what routing counts for it).
    pub fn to_registration(&self) -> RegisterRequest {
        RegisterRequest {
            provider_id: self.id.clone(),
            endpoint: self.endpoint.clone(),
            public_key: self.public_key.map(|k| k.to_hex()).unwrap_or_default(),
            models: self.models.iter().map(|m| m.info.clone()).collect(),
            stake: self.stake.to_string(),
            tee: self.tee.as_str().to_owned(),
            max_concurrency: Some(self.max_concurrency),
            heartbeat_interval_s: None,
            timestamp: 0,
        }
    }
}
