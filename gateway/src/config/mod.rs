//! The gateway's configuration: a TOML file, then `TENZRO_*` environment
//! variables, then command-line flags. Every table refuses unknown fields.

mod a2a;
mod derived;
mod load;
mod money;
mod providers;
mod server;
#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use a2a::A2aSection;
pub use money::{BondsSection, ChannelsSection, FaucetSection, PricingSection};
pub use providers::{
    BreakerSection, ReceiptsSection, RegistrationSection, RoutingConfig, StakeSection,
    StaticProvider, StatusSection,
};
pub use server::{IdentitiesSection, LimitsSection, ServerConfig, StoreSection, UpstreamConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A secret string: never printed, never serialized.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(empty)"
        } else {
            "Secret(***)"
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub routing: RoutingConfig,
    pub breaker: BreakerSection,
    pub status: StatusSection,
    pub stake_minimums: StakeSection,
    pub pricing: PricingSection,
    pub limits: LimitsSection,
    pub registration: RegistrationSection,
    pub store: StoreSection,
    pub channels: ChannelsSection,
    pub faucet: FaucetSection,
    pub identities: IdentitiesSection,
    pub receipts: ReceiptsSection,
    pub bonds: BondsSection,
    /// TEE collateral sources and the attestation policy (`crate::providers::policy`).
    pub attestation: crate::providers::policy::AttestationSection,
    /// Model audits' auditor and bounds (`crate::audit`; the rate is
    /// `[attestation] audit_rate`).
    pub audit: crate::audit::AuditSection,
    /// The A2A agent: its card's URL, default model and task retention.
    pub a2a: A2aSection,
    pub providers: Vec<StaticProvider>,
    /// Several replicas on one PostgreSQL: forwarding to the lease holder, the
    /// replicas' shared secret (`crate::cluster`).
    pub cluster: crate::cluster::ClusterSection,
    /// The amounts above in base units, parsed once at load ([`Config::amounts`]).
    #[serde(skip)]
    pub amounts: Amounts,
}

/// The config's token amounts (whole tokens as decimal strings in the file), in
/// base units: parsed when the config is loaded, so a bad one stops the start
/// naming its field instead of failing a request later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    /// `faucet.amount`.
    pub faucet: u128,
    /// `channels.initial_deposit`.
    pub initial_deposit: u128,
    /// `limits.dev_balance`.
    pub dev_balance: u128,
}

/// Command-line overrides (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub admin_token: Option<String>,
}
