//! The gateway's configuration: a TOML file, then `TENZRO_*` environment
//! variables, then command-line flags. Every table refuses unknown fields.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tenzro_models::api::ModelInfo;

use crate::pricing::{self, Asset, Rates};
use crate::providers::breaker::BreakerConfig;
use crate::providers::registry::RegistryConfig;
use crate::providers::routing::{StakeMinimums, Strategy, Weights};
use crate::providers::status::StatusConfig;

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
    pub providers: Vec<StaticProvider>,
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

/// The identity registry (TDIP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitiesSection {
    /// Most agents (not terminated) one owner may have, counting sub-agents.
    pub max_agents_per_owner: usize,
}

impl Default for IdentitiesSection {
    fn default() -> Self {
        IdentitiesSection {
            max_agents_per_owner: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`; empty: SQLite at
    /// `DATA_DIR/gateway.db`.
    pub url: Secret,
    /// Group commit: the book's changes reach the store once per interval.
    pub commit_interval_ms: u64,
    /// An account's lease (one replica serves it at a time) lasts this long and is
    /// renewed by commits.
    pub lease_ttl_s: u64,
    /// Accounts unused this long are released for other replicas (0: never).
    pub lease_idle_s: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            url: Secret::default(),
            commit_interval_ms: 10,
            lease_ttl_s: 30,
            lease_idle_s: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsSection {
    /// Whole tokens moved into a new channel as a standing float ("0": the deposit
    /// grows only as requests need it).
    pub initial_deposit: String,
    pub ttl_days: u64,
    pub challenge_window_s: u64,
    /// Vouchers for ended requests are sent this often.
    pub voucher_interval_ms: u64,
    /// Every changed channel is vouched for this often, even mid-stream.
    pub checkpoint_interval_ms: u64,
    /// The store is searched this often for accounts no replica holds whose
    /// disputes' windows ended or whose open channels expired; this replica takes
    /// them and settles them.
    pub settle_sweep_s: u64,
}

impl Default for ChannelsSection {
    fn default() -> Self {
        ChannelsSection {
            initial_deposit: "0".into(),
            ttl_days: 30,
            challenge_window_s: 86_400,
            voucher_interval_ms: 200,
            checkpoint_interval_ms: 5_000,
            settle_sweep_s: 30,
        }
    }
}

/// Bonded stake (`money::bonds`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BondsSection {
    /// Unbonding waits this long before the amount returns to the owner (7 days).
    pub unbonding_s: u64,
    /// The stakers' pool is paid out to bonds pro rata this often (1 day).
    pub payout_interval_s: u64,
}

impl Default for BondsSection {
    fn default() -> Self {
        BondsSection {
            unbonding_s: crate::money::bonds::DEFAULT_UNBONDING_S,
            payout_interval_s: 86_400,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaucetSection {
    /// Development only: `POST /v1/faucet` funds the caller's account.
    pub enabled: bool,
    /// Whole tokens per grant.
    pub amount: String,
    /// Grants per account per hour.
    pub per_hour: u32,
}

impl Default for FaucetSection {
    fn default() -> Self {
        FaucetSection {
            enabled: false,
            amount: "10".into(),
            per_hour: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where the SQLite store (gateway.db), the payer key and the replica id live.
    pub data_dir: PathBuf,
    /// Bearer token of the admin API; empty disables it.
    pub admin_token: Secret,
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from(".tenzro/gateway"),
            admin_token: Secret::default(),
            max_body_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    /// Until the provider's response headers and first body bytes.
    pub first_byte_timeout_ms: u64,
    /// Longest silence between two chunks of a response.
    pub idle_timeout_ms: u64,
    /// Providers tried per request (the first one and failovers).
    pub max_attempts: usize,
    /// Largest answer relayed, streamed or not; a stream past it is cut.
    pub max_response_bytes: usize,
    /// Largest unterminated SSE event a stream may hold pending; past it the stream
    /// is cut (so one endless event cannot grow the gateway's memory).
    pub max_event_bytes: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout_ms: 2_000,
            first_byte_timeout_ms: 60_000,
            idle_timeout_ms: 60_000,
            max_attempts: 3,
            max_response_bytes: 64 << 20,
            max_event_bytes: 1 << 20,
        }
    }
}

impl UpstreamConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_millis(self.first_byte_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

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
pub struct PricingSection {
    /// How many of each asset one TNZO buys (decimal strings). TNZO is always 1.
    pub rates: BTreeMap<Asset, String>,
}

impl Default for PricingSection {
    fn default() -> Self {
        PricingSection {
            rates: BTreeMap::from([(Asset::Usdc, "1".into()), (Asset::Usdt, "1".into())]),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Per-key defaults; 0 disables the limit.
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
    /// Completion tokens assumed when a request names no `max_tokens` and the model
    /// declares no `max_context`.
    pub default_max_tokens: u32,
    /// Balance of accounts made by `keys create` when `--balance` is not given (TNZO).
    pub dev_balance: String,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            requests_per_minute: 600,
            tokens_per_minute: 2_000_000,
            default_max_tokens: 4096,
            dev_balance: "1000".into(),
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

/// Command-line overrides (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub admin_token: Option<String>,
}

impl Config {
    /// Reads `path` (or the defaults without one), applies `TENZRO_*` variables from
    /// `env`, then `flags`, then validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.into(),
                    source,
                })?;
                Config::parse(&text).map_err(|source| ConfigError::Parse {
                    path: p.into(),
                    source: Box::new(source),
                })?
            }
            None => Config::default(),
        };
        let invalid = |k: &str, v: &str| ConfigError::Invalid(format!("{k}={v} is not valid"));
        if let Some(v) = env("TENZRO_LISTEN") {
            cfg.server.listen = v.parse().map_err(|_| invalid("TENZRO_LISTEN", &v))?;
        }
        if let Some(v) = env("TENZRO_DATA_DIR") {
            cfg.server.data_dir = v.into();
        }
        if let Some(v) = env("TENZRO_ADMIN_TOKEN") {
            cfg.server.admin_token = Secret::new(v);
        }
        if let Some(v) = env("TENZRO_STORE_URL") {
            cfg.store.url = Secret::new(v);
        }
        if let Some(v) = env("TENZRO_ROUTING_STRATEGY") {
            cfg.routing.strategy = serde_json::from_value(serde_json::Value::String(v.clone()))
                .map_err(|_| invalid("TENZRO_ROUTING_STRATEGY", &v))?;
        }
        if let Some(v) = env("TENZRO_REQUESTS_PER_MINUTE") {
            cfg.limits.requests_per_minute = v
                .parse()
                .map_err(|_| invalid("TENZRO_REQUESTS_PER_MINUTE", &v))?;
        }
        if let Some(v) = env("TENZRO_TOKENS_PER_MINUTE") {
            cfg.limits.tokens_per_minute = v
                .parse()
                .map_err(|_| invalid("TENZRO_TOKENS_PER_MINUTE", &v))?;
        }
        if let Some(l) = flags.listen {
            cfg.server.listen = l;
        }
        if let Some(d) = &flags.data_dir {
            cfg.server.data_dir = d.clone();
        }
        if let Some(t) = &flags.admin_token {
            cfg.server.admin_token = Secret::new(t.clone());
        }
        cfg.validate()?;
        cfg.amounts = cfg.amounts()?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.upstream.max_attempts == 0 {
            return bad("upstream.max_attempts must be at least 1".into());
        }
        if self.upstream.max_event_bytes == 0 {
            return bad("upstream.max_event_bytes must be at least 1".into());
        }
        if self.receipts.verify_sample_ppm > 1_000_000 {
            return bad("receipts.verify_sample_ppm must be at most 1000000".into());
        }
        if self.breaker.failure_threshold == 0 {
            return bad("breaker.failure_threshold must be at least 1".into());
        }
        if self
            .routing
            .weights
            .iter()
            .any(|w| !w.is_finite() || *w < 0.0)
        {
            return bad("routing.weights must be non-negative numbers".into());
        }
        self.attestation.validate().map_err(ConfigError::Invalid)?;
        self.audit
            .validate(self.attestation.audit_rate)
            .map_err(ConfigError::Invalid)?;
        self.rates()?;
        self.stakes()?;
        self.registration_bounds()?;
        self.amounts()?;
        for p in &self.providers {
            crate::providers::registry::ProviderInfo::from_registration(
                self.static_registration(p)?,
                true,
            )
            .map_err(|e| ConfigError::Invalid(format!("provider {}: {e}", p.id)))?;
        }
        Ok(())
    }

    /// The token amounts in base units; an error names the field.
    pub fn amounts(&self) -> Result<Amounts, ConfigError> {
        let tokens = |field: &str, v: &str| {
            pricing::parse_tokens(v).map_err(|e| ConfigError::Invalid(format!("{field}: {e}")))
        };
        Ok(Amounts {
            faucet: tokens("faucet.amount", &self.faucet.amount)?,
            initial_deposit: tokens("channels.initial_deposit", &self.channels.initial_deposit)?,
            dev_balance: tokens("limits.dev_balance", &self.limits.dev_balance)?,
        })
    }

    /// `[attestation.policy]` with the gateway's defaults.
    pub fn attest_policy(&self) -> Result<tenzro_attest::Policy, ConfigError> {
        self.attestation.policy().map_err(ConfigError::Invalid)
    }

    pub fn rates(&self) -> Result<Rates, ConfigError> {
        Rates::new(&self.pricing.rates)
            .map_err(|e| ConfigError::Invalid(format!("pricing.rates: {e}")))
    }

    pub fn stakes(&self) -> Result<StakeMinimums, ConfigError> {
        let s = &self.stake_minimums;
        let p = |name: &str, v: &str| {
            pricing::parse_tokens(v)
                .map_err(|e| ConfigError::Invalid(format!("stake_minimums.{name}: {e}")))
        };
        Ok(StakeMinimums {
            llm: p("llm", &s.llm)?,
            image_gen: p("image_gen", &s.image_gen)?,
            speech: p("speech", &s.speech)?,
            embedding: p("embedding", &s.embedding)?,
            custom: p("custom", &s.custom)?,
        })
    }

    pub fn registry(&self) -> Result<RegistryConfig, ConfigError> {
        Ok(RegistryConfig {
            breaker: BreakerConfig {
                failure_threshold: self.breaker.failure_threshold,
                open_for: Duration::from_secs(self.breaker.open_for_s),
            },
            status: StatusConfig {
                min_samples: self.status.min_samples,
                ..StatusConfig::default()
            },
            stakes: self.stakes()?,
            max_skew_s: self.registration.max_skew_s,
            heartbeat_interval_s: self.registration.heartbeat_interval_s,
            bounds: self.registration_bounds()?,
            stale_after: Duration::from_secs(self.registration.stale_after_s.max(1)),
            max_registered: self.registration.max_providers,
            max_unreached: self.registration.max_unreached,
            unreached_ttl: Duration::from_secs(self.registration.unreached_ttl_s.max(1)),
            registrations_per_minute: self.registration.per_source_per_minute,
        })
    }

    /// What a registration may declare (`[registration]`).
    pub fn registration_bounds(
        &self,
    ) -> Result<crate::providers::bounds::RegistrationBounds, ConfigError> {
        let r = &self.registration;
        let rates = self.rates()?;
        let mut max_price_per_token = Vec::new();
        for (asset, cap) in &r.max_price_per_token {
            let cap = pricing::parse_tokens(cap).map_err(|e| {
                ConfigError::Invalid(format!("registration.max_price_per_token.{asset}: {e}"))
            })?;
            // An asset without a rate cannot be paid in; its cap has nothing to bound.
            if let Ok(rate) = rates.get(*asset) {
                max_price_per_token.push((*asset, cap, rate));
            }
        }
        Ok(crate::providers::bounds::RegistrationBounds {
            max_price_per_token,
            max_context: r.max_context,
            max_models: r.max_models,
            max_concurrency: r.max_concurrency,
            allow_private_endpoints: r.allow_private_endpoints,
        })
    }

    /// A config-file provider as a registration (stake converted to base units).
    pub fn static_registration(
        &self,
        p: &StaticProvider,
    ) -> Result<tenzro_models::api::RegisterRequest, ConfigError> {
        let stake = if p.stake.is_empty() {
            0
        } else {
            pricing::parse_tokens(&p.stake)
                .map_err(|e| ConfigError::Invalid(format!("provider {} stake: {e}", p.id)))?
        };
        Ok(tenzro_models::api::RegisterRequest {
            provider_id: p.id.clone(),
            endpoint: p.endpoint.clone(),
            public_key: String::new(),
            models: p.models.clone(),
            stake: stake.to_string(),
            tee: p.tee.clone(),
            max_concurrency: p.max_concurrency,
            heartbeat_interval_s: None,
            timestamp: 0,
        })
    }

    /// The store's URL: the configured one, or SQLite in the data directory.
    pub fn store_url(&self) -> String {
        let url = self.store.url.expose();
        if url.is_empty() {
            format!(
                "sqlite://{}",
                self.server.data_dir.join("gateway.db").display()
            )
        } else {
            url.to_owned()
        }
    }

    /// The gateway's payer key (it signs channel vouchers).
    pub fn payer_key_path(&self) -> PathBuf {
        self.server.data_dir.join("payer.key")
    }

    pub fn book(&self) -> Result<crate::money::book::BookConfig, ConfigError> {
        let initial_deposit = self.amounts()?.initial_deposit;
        Ok(crate::money::book::BookConfig {
            initial_deposit,
            channel_ttl: self.channels.ttl_days.saturating_mul(86_400),
            challenge_window: self.channels.challenge_window_s,
        })
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_parsed_at_load_and_a_bad_one_names_its_field() {
        let cfg = Config::parse("[faucet]\namount = \"2.5\"\n").unwrap();
        assert_eq!(cfg.amounts().unwrap().faucet, 2_500_000_000_000_000_000);
        for (table, field) in [
            ("faucet", "amount"),
            ("channels", "initial_deposit"),
            ("limits", "dev_balance"),
        ] {
            let cfg = Config::parse(&format!("[{table}]\n{field} = \"ten\"\n")).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("{table}.{field}")), "{e}");
        }
    }

    #[test]
    fn the_example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/gateway.toml");
        let cfg = Config::load(Some(&path), |_| None, &Overrides::default()).unwrap();
        assert_eq!(cfg.breaker.failure_threshold, 5);
        assert_eq!(cfg.store_url(), "sqlite://.tenzro/gateway/gateway.db");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/gateway-postgres.toml");
        let env = |k: &str| (k == "TENZRO_STORE_URL").then(|| "postgres://u:p@db/t".to_owned());
        let cfg = Config::load(Some(&path), env, &Overrides::default()).unwrap();
        assert_eq!(
            (cfg.store_url().as_str(), cfg.store.lease_idle_s),
            ("postgres://u:p@db/t", 30)
        );
    }

    /// Every gateway config in configs/ loads; the development example has zero
    /// stake minimums and allows private endpoints, the production one the
    /// whitepaper's minimums and public endpoints only.
    #[test]
    fn every_gateway_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.starts_with("gateway") && name.ends_with(".toml")) {
                continue;
            }
            let cfg = Config::load(Some(&path), |_| None, &Overrides::default())
                .map_err(|e| format!("{name}: {e}"))
                .unwrap();
            seen += 1;
            let (stakes, bounds) = (cfg.stakes().unwrap(), cfg.registration_bounds().unwrap());
            match name.as_str() {
                "gateway.toml" => {
                    assert_eq!(stakes.llm, 0);
                    assert!(bounds.allow_private_endpoints);
                }
                "gateway-production.toml" => {
                    assert_eq!(stakes, StakeMinimums::default());
                    assert_eq!(stakes.llm, 100_000 * crate::pricing::ONE);
                    assert!(!bounds.allow_private_endpoints);
                }
                _ => {}
            }
        }
        assert!(seen >= 3, "{seen} gateway configs");
        // Built in: public endpoints only.
        assert!(
            !Config::default()
                .registration_bounds()
                .unwrap()
                .allow_private_endpoints
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").is_err());
        assert!(Config::parse("[nope]\n").is_err());
    }

    #[test]
    fn precedence_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:1000\"\nadmin_token = \"file\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "TENZRO_LISTEN" => Some("127.0.0.1:2000".to_owned()),
            "TENZRO_ADMIN_TOKEN" => Some("env".to_owned()),
            _ => None,
        };
        let cfg = Config::load(Some(&path), env, &Overrides::default()).unwrap();
        assert_eq!(cfg.server.listen.port(), 2000);
        assert_eq!(cfg.server.admin_token.expose(), "env");
        assert_eq!(format!("{:?}", cfg.server.admin_token), "Secret(***)");
        let flags = Overrides {
            listen: Some("127.0.0.1:3000".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            Config::load(Some(&path), env, &flags)
                .unwrap()
                .server
                .listen
                .port(),
            3000
        );
        assert!(Config::load(Some(&path), |_| Some("x".into()), &Overrides::default()).is_err());
    }
}
