//! Loading: the file, then `TENZRO_*` variables, then flags; then validation.

use std::path::Path;

use super::{Config, ConfigError, Overrides, Secret};

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
        if let Some(v) = env("TENZRO_CLUSTER_ADVERTISE") {
            cfg.cluster.advertise = v;
        }
        if let Some(v) = env("TENZRO_CLUSTER_SECRET") {
            cfg.cluster.secret = v;
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
        self.a2a.validate().map_err(ConfigError::Invalid)?;
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
}
