//! Provider registration and heartbeats: what `tenzro-provider --gateway URL` sends
//! to the gateway's `POST /v1/providers/register` and `POST /v1/providers/heartbeat`.
//!
//! Both travel inside a [`Signed`] envelope: `payload` is the JSON text of the
//! message and `signature` is the provider's Ed25519 signature (hex) over
//! [`REGISTER_DOMAIN`] or [`HEARTBEAT_DOMAIN`] followed by the payload's bytes. The
//! gateway verifies the exact bytes it received, so nobody has to agree on a
//! canonical JSON form.
//!
//! Money is a decimal string of base units (18 decimals: 1 TNZO = 10^18), never a
//! JSON number, so no client rounds it through a float.

use serde::{Deserialize, Serialize};

/// Prefix of the signed bytes of a registration.
pub const REGISTER_DOMAIN: &[u8] = b"tenzro-provider-register-v1\n";
/// Prefix of the signed bytes of a heartbeat.
pub const HEARTBEAT_DOMAIN: &[u8] = b"tenzro-provider-heartbeat-v1\n";

/// Base units in one whole token of any asset (18 decimals).
pub const BASE_UNITS_PER_TOKEN: u128 = 1_000_000_000_000_000_000;

/// A message and the signature over its domain tag and bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The JSON text of a [`RegisterRequest`] or a [`Heartbeat`].
    pub payload: String,
    /// Ed25519 signature, hex, over `DOMAIN || payload`.
    pub signature: String,
}

impl Signed {
    /// The bytes that are signed for `payload` under `domain`.
    pub fn signed_bytes(domain: &[u8], payload: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(domain.len() + payload.len());
        out.extend_from_slice(domain);
        out.extend_from_slice(payload.as_bytes());
        out
    }
}

/// What a provider tells the gateway about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The provider's DID, e.g. `did:tenzro:machine:{uuid}`. The gateway binds it to
    /// `public_key` on first registration.
    pub provider_id: String,
    /// Base URL the gateway calls, e.g. `http://10.0.0.5:8000` (without `/v1`).
    pub endpoint: String,
    /// The provider's Ed25519 public key, hex (32 bytes).
    pub public_key: String,
    pub models: Vec<ModelInfo>,
    /// Staked TNZO in base units, decimal string.
    pub stake: String,
    /// `none`, `tdx`, `sev-snp` or `nvidia-cc`.
    #[serde(default = "default_tee")]
    pub tee: String,
    /// How many requests the provider runs at once (used for congestion pricing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Seconds between heartbeats the provider will send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_s: Option<u64>,
    /// Unix seconds when this was signed; the gateway refuses stale registrations.
    pub timestamp: u64,
}

fn default_tee() -> String {
    "none".to_owned()
}

/// One model a provider serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The id clients put in `model`.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub category: ModelCategory,
    /// `text`, `text-embedding`, `image`... Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality: Option<String>,
    /// TNZO base units per token, decimal string.
    pub price_per_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context: Option<u32>,
    /// Parameter count (not billions), e.g. `135000000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
    /// `gguf`, `safetensors`...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<String>,
    #[serde(default)]
    pub tee_required: bool,
    /// SHA-256 of the weights, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ModelCategory {
    #[serde(rename = "LLM", alias = "llm")]
    Llm,
    #[serde(rename = "ImageGen", alias = "imagegen")]
    ImageGen,
    #[serde(rename = "Speech", alias = "speech")]
    Speech,
    #[serde(rename = "Embedding", alias = "embedding")]
    Embedding,
    #[serde(rename = "Custom", alias = "custom")]
    Custom,
}

impl ModelCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelCategory::Llm => "LLM",
            ModelCategory::ImageGen => "ImageGen",
            ModelCategory::Speech => "Speech",
            ModelCategory::Embedding => "Embedding",
            ModelCategory::Custom => "Custom",
        }
    }
}

/// The gateway's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub provider_id: String,
    /// `Active`, `Degraded`, `Inactive` or `Banned`.
    pub status: String,
    /// Seconds between heartbeats the gateway expects.
    pub heartbeat_interval_s: u64,
}

/// A provider's periodic proof of life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub provider_id: String,
    /// Unix seconds when this was signed.
    pub timestamp: u64,
    /// Requests running now, if the provider reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u32>,
}

/// The gateway's answer to a heartbeat. A provider that gets HTTP 404 back (the
/// gateway forgot it, e.g. after a restart) registers again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub status: String,
}
