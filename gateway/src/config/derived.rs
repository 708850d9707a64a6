//! What the rest of the gateway is built from: the config's values converted to
//! the domain's types (amounts in base units, rates, stakes, the registry's bounds).

use std::path::PathBuf;
use std::time::Duration;

use crate::pricing::{self, Rates};
use crate::providers::breaker::BreakerConfig;
use crate::providers::registry::RegistryConfig;
use crate::providers::routing::StakeMinimums;
use crate::providers::status::StatusConfig;

use super::{Amounts, Config, ConfigError, StaticProvider};

impl Config {
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
