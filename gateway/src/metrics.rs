//! Prometheus metrics: requests, errors by type, gateway overhead, upstream latency,
//! breaker state, tokens.
//!
//! Label sets are bounded: endpoints are route patterns, error types a fixed set,
//! and provider ids (which registrants choose, one per key) label at most
//! [`MAX_PROVIDER_LABELS`] upstream series (the rest share `provider="other"`);
//! breaker gauges are rebuilt from the registry's current providers at each scrape.

use parking_lot::RwLock;
use std::collections::HashMap;
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
    /// The series every request touches, found without building a label set (a
    /// `Family` lookup allocates its labels each time): counters and histograms
    /// are handles on the family's own series.
    hot: Hot,
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
        let prompt_tokens = tokens.get_or_create(&kind("prompt")).clone();
        let completion_tokens = tokens.get_or_create(&kind("completion")).clone();
        Metrics {
            registry,
            requests,
            errors,
            overhead,
            upstream,
            breaker,
            hot: Hot {
                requests: RwLock::default(),
                overhead: RwLock::default(),
                upstream: RwLock::default(),
                prompt_tokens,
                completion_tokens,
            },
            recent: Default::default(),
        }
    }

    pub fn request(&self, endpoint: &str, status: u16) {
        let cached = self
            .hot
            .requests
            .read()
            .get(endpoint)
            .and_then(|by_status| by_status.get(&status).cloned());
        let counter = cached.unwrap_or_else(|| {
            let c = self
                .requests
                .get_or_create(&vec![
                    ("endpoint", endpoint.to_owned()),
                    ("status", status.to_string()),
                ])
                .clone();
            let mut hot = self.hot.requests.write();
            hot.entry(endpoint.to_owned())
                .or_default()
                .insert(status, c.clone());
            c
        });
        counter.inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&vec![("type", kind.to_owned())])
            .inc();
    }

    pub fn overhead(&self, endpoint: &str, d: Duration) {
        let cached = self.hot.overhead.read().get(endpoint).cloned();
        let h = cached.unwrap_or_else(|| {
            let h = self
                .overhead
                .get_or_create(&vec![("endpoint", endpoint.to_owned())])
                .clone();
            self.hot
                .overhead
                .write()
                .insert(endpoint.to_owned(), h.clone());
            h
        });
        h.observe(d.as_secs_f64());
    }

    /// Time to a provider's first byte; past [`MAX_PROVIDER_LABELS`] ids, new
    /// providers share `provider="other"`.
    pub fn upstream(&self, provider: &str, d: Duration) {
        let cached = self.hot.upstream.read().get(provider).cloned();
        let h = cached.or_else(|| {
            let mut hot = self.hot.upstream.write();
            if hot.len() >= MAX_PROVIDER_LABELS && !hot.contains_key(provider) {
                return None;
            }
            let h = self
                .upstream
                .get_or_create(&vec![("provider", provider.to_owned())])
                .clone();
            hot.insert(provider.to_owned(), h.clone());
            Some(h)
        });
        match h {
            Some(h) => h.observe(d.as_secs_f64()),
            None => self
                .upstream
                .get_or_create(&vec![("provider", "other".to_owned())])
                .observe(d.as_secs_f64()),
        }
    }

    pub fn tokens(&self, prompt: u64, completion: u64) {
        self.hot.prompt_tokens.inc_by(prompt);
        self.hot.completion_tokens.inc_by(completion);
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

/// Handles on the series of the request path, by label.
#[derive(Debug)]
struct Hot {
    /// Endpoint → status → `requests` counter.
    requests: RwLock<HashMap<String, HashMap<u16, Counter>>>,
    /// Endpoint → `overhead_seconds` histogram.
    overhead: RwLock<HashMap<String, Histogram>>,
    /// Provider id → `upstream_latency_seconds` histogram (at most
    /// [`MAX_PROVIDER_LABELS`]).
    upstream: RwLock<HashMap<String, Histogram>>,
    prompt_tokens: Counter,
    completion_tokens: Counter,
}

fn kind(kind: &str) -> Labels {
    vec![("kind", kind.to_owned())]
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
        assert_eq!(m.hot.upstream.read().len(), MAX_PROVIDER_LABELS);
    }

    /// The handles kept for the request path count in the exposed series.
    #[test]
    fn cached_series_are_the_exposed_ones() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.request("/v1/chat/completions", 200);
            m.overhead("/v1/chat/completions", Duration::from_micros(50));
            m.upstream("p1", Duration::from_millis(1));
        }
        m.request("/v1/chat/completions", 402);
        m.tokens(12, 8);
        m.tokens(1, 2);
        let reg = Registry::new(RegistryConfig::default(), ManualClock::new());
        let out = m.render(&reg);
        for line in [
            "tenzro_gateway_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 3",
            "tenzro_gateway_requests_total{endpoint=\"/v1/chat/completions\",status=\"402\"} 1",
            "tenzro_gateway_overhead_seconds_count{endpoint=\"/v1/chat/completions\"} 3",
            "tenzro_gateway_upstream_latency_seconds_count{provider=\"p1\"} 3",
            "tenzro_gateway_tokens_total{kind=\"prompt\"} 13",
            "tenzro_gateway_tokens_total{kind=\"completion\"} 10",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
    }
}
