//! Prometheus metrics: requests, errors by type, gateway overhead, upstream latency,
//! breaker state, tokens.
//!
//! Label sets are bounded: endpoints are route patterns, error types a fixed set,
//! and provider ids (which registrants choose, one per key) label at most
//! [`MAX_PROVIDER_LABELS`] upstream series (the rest share `provider="other"`);
//! breaker gauges are rebuilt from the registry's current providers at each scrape.

use parking_lot::Mutex;
use std::collections::HashSet;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as PromRegistry;

use crate::providers::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Distinct provider ids that get their own upstream latency series.
pub const MAX_PROVIDER_LABELS: usize = 256;

#[derive(Debug)]
pub struct Metrics {
    registry: PromRegistry,
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    overhead: Family<Labels, Histogram>,
    upstream: Family<Labels, Histogram>,
    breaker: Family<Labels, Gauge>,
    tokens: Family<Labels, Counter>,
    /// Provider ids with their own upstream series.
    upstream_ids: Mutex<HashSet<String>>,
    /// The last hour by minute, for the console's operator page (`GET /admin/stats`).
    pub recent: crate::console::recent::Recent,
}

fn seconds_histogram() -> Histogram {
    // 10 µs to about 40 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 22))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = PromRegistry::with_prefix("tenzro_gateway");
        let requests = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let overhead = Family::<Labels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let upstream = Family::<Labels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let breaker = Family::<Labels, Gauge>::default();
        let tokens = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Requests by endpoint and status",
            requests.clone(),
        );
        registry.register(
            "errors",
            "Error responses by OpenAI error type",
            errors.clone(),
        );
        registry.register(
            "overhead_seconds",
            "Time spent in the gateway, not waiting on a provider",
            overhead.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time to a provider's first byte",
            upstream.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker per provider: 0 closed, 1 open, 2 half-open",
            breaker.clone(),
        );
        registry.register("tokens", "Tokens metered, by kind", tokens.clone());
        Metrics {
            registry,
            requests,
            errors,
            overhead,
            upstream,
            breaker,
            tokens,
            upstream_ids: Mutex::default(),
            recent: Default::default(),
        }
    }

    pub fn request(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("endpoint", endpoint.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&vec![("type", kind.to_owned())])
            .inc();
    }

    pub fn overhead(&self, endpoint: &str, d: Duration) {
        self.overhead
            .get_or_create(&vec![("endpoint", endpoint.to_owned())])
            .observe(d.as_secs_f64());
    }

    pub fn upstream(&self, provider: &str, d: Duration) {
        let label = {
            let mut ids = self.upstream_ids.lock();
            if ids.contains(provider) || ids.len() < MAX_PROVIDER_LABELS {
                ids.insert(provider.to_owned());
                provider.to_owned()
            } else {
                "other".to_owned()
            }
        };
        self.upstream
            .get_or_create(&vec![("provider", label)])
            .observe(d.as_secs_f64());
    }

    pub fn tokens(&self, prompt: u64, completion: u64) {
        self.tokens
            .get_or_create(&vec![("kind", "prompt".to_owned())])
            .inc_by(prompt);
        self.tokens
            .get_or_create(&vec![("kind", "completion".to_owned())])
            .inc_by(completion);
    }

    /// The text exposition, with breaker gauges read from the registry now.
    pub fn render(&self, providers: &Registry) -> String {
        let now = providers.now();
        // Only the providers in memory now (stale ones were dropped).
        self.breaker.clear();
        for p in providers.all() {
            self.breaker
                .get_or_create(&vec![("provider", p.info.id.clone())])
                .set(p.breaker_state(now).as_gauge());
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::providers::registry::RegistryConfig;

    /// A registrant choosing new ids cannot grow the label sets without bound.
    #[test]
    fn provider_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..(MAX_PROVIDER_LABELS + 500) {
            m.upstream(&format!("did:tenzro:machine:{i}"), Duration::from_millis(1));
        }
        let reg = Registry::new(RegistryConfig::default(), ManualClock::new());
        let out = m.render(&reg);
        let series: std::collections::HashSet<&str> = out
            .lines()
            .filter(|l| l.starts_with("tenzro_gateway_upstream_latency_seconds_count"))
            .collect();
        assert_eq!(
            series.len(),
            MAX_PROVIDER_LABELS + 1,
            "plus provider=\"other\""
        );
        assert!(out.contains("provider=\"other\""));
        assert_eq!(m.upstream_ids.lock().len(), MAX_PROVIDER_LABELS);
    }
}
