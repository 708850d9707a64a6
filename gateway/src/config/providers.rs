//! The provider tables: `[routing]`, `[breaker]`, `[status]`,
//! `[stake_minimums]`, `[registration]`, `[receipts]`, `[[providers]]`.

use std::collections::BTreeMap;

use serde::Deserialize;
use tenzro_models::api::ModelInfo;

use crate::pricing::Asset;
use crate::providers::routing::{Strategy, Weights};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub strategy: Strategy,
    /// `[price, latency, reputation]`.
    pub weights: [f64; 3],
    /// Score multiplier of Degraded providers in the weighted strategy.
    pub degraded_penalty: f64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            strategy: Strategy::Weighted,
            weights: [0.4, 0.3, 0.3],
            degraded_penalty: 0.5,
        }
    }
}

impl RoutingConfig {
    pub fn weights(&self) -> Weights {
        Weights::from_f64(self.weights[0], self.weights[1], self.weights[2])
    }
    pub fn penalty_ppm(&self) -> u64 {
        Weights::from_f64(self.degraded_penalty, 0.0, 0.0).price
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSection {
    pub failure_threshold: u32,
    pub open_for_s: u64,
}

impl Default for BreakerSection {
    fn default() -> Self {
        BreakerSection {
            failure_threshold: 5,
            open_for_s: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusSection {
    /// Outcomes needed in the window before the failure rate counts.
    pub min_samples: u64,
}

impl Default for StatusSection {
    fn default() -> Self {
        StatusSection { min_samples: 10 }
    }
}

/// Minimum stakes in whole TNZO (decimal strings).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StakeSection {
    pub llm: String,
    pub image_gen: String,
    pub speech: String,
    pub embedding: String,
    pub custom: String,
}

impl Default for StakeSection {
    fn default() -> Self {
        StakeSection {
            llm: "100000".into(),
            image_gen: "50000".into(),
            speech: "25000".into(),
            embedding: "25000".into(),
            custom: "10000".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationSection {
    pub heartbeat_interval_s: u64,
    pub max_skew_s: u64,
    /// Development only: accept endpoints on loopback, private and link-local
    /// addresses. Off, such endpoints (and names resolving to them) are refused.
    pub allow_private_endpoints: bool,
    /// Per asset, whole tokens of that asset per token: the highest price a
    /// registration may declare (converted at `pricing.rates`).
    pub max_price_per_token: BTreeMap<Asset, String>,
    /// Highest `max_context` a model may declare.
    pub max_context: u32,
    /// Most models per provider.
    pub max_models: usize,
    /// Highest `max_concurrency` a provider may declare.
    pub max_concurrency: u32,
    /// Registered providers without a heartbeat this long leave memory and routing
    /// (their key binding, bans and slashes stay in the store).
    pub stale_after_s: u64,
    /// Registered providers the gateway has reached, held at most; registrations
    /// past it wait (503). Registrations not reached yet do not count here.
    pub max_providers: usize,
    /// Registrations not reached yet, held at most; registrations past it wait (503).
    pub max_unreached: usize,
    /// A registration whose endpoint the gateway has not reached within this long
    /// leaves memory (the provider registers again).
    pub unreached_ttl_s: u64,
    /// Registrations per source address (IPv6: per /64) per minute; 0: unlimited.
    pub per_source_per_minute: u32,
}

impl Default for RegistrationSection {
    fn default() -> Self {
        RegistrationSection {
            heartbeat_interval_s: 30,
            max_skew_s: 300,
            allow_private_endpoints: false,
            max_price_per_token: BTreeMap::from([
                (Asset::Tnzo, "0.01".into()),
                (Asset::Usdc, "0.01".into()),
                (Asset::Usdt, "0.01".into()),
            ]),
            max_context: 1 << 20,
            max_models: 64,
            max_concurrency: 4096,
            stale_after_s: 7 * 86_400,
            max_providers: 10_000,
            max_unreached: 1_000,
            unreached_ttl_s: 600,
            per_source_per_minute: 60,
        }
    }
}

/// Checking providers' signed receipts (see `verify`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiptsSection {
    /// Share of responses whose receipt is verified, in parts per million
    /// (1,000,000: every response). Token bounds apply to every response regardless.
    pub verify_sample_ppm: u32,
}

impl Default for ReceiptsSection {
    fn default() -> Self {
        ReceiptsSection {
            verify_sample_ppm: 1_000_000,
        }
    }
}

/// A provider named in the config file (no registration, no heartbeats).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticProvider {
    pub id: String,
    pub endpoint: String,
    /// Whole TNZO, decimal string.
    #[serde(default)]
    pub stake: String,
    #[serde(default = "none")]
    pub tee: String,
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    pub models: Vec<ModelInfo>,
}

fn none() -> String {
    "none".into()
}
