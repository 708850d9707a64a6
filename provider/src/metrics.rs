//! Prometheus metrics: requests, tokens, time to first token, decode speed,
//! queue depth.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    kind: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    ttft: Histogram,
    tps: Histogram,
    queue_depth: Gauge,
    active_sequences: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tenzro_provider");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens processed (prompt) and generated (completion)",
            tokens.clone(),
        );
        let ttft = Histogram::new([0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register(
            "time_to_first_token_seconds",
            "Time from admission to the first token",
            ttft.clone(),
        );
        let tps = Histogram::new([5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0]);
        registry.register(
            "tokens_per_second",
            "Decode speed of finished requests",
            tps.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Requests waiting for a sequence slot",
            queue_depth.clone(),
        );
        let active_sequences = Gauge::default();
        registry.register(
            "active_sequences",
            "Sequences being decoded",
            active_sequences.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                tokens,
                ttft,
                tps,
                queue_depth,
                active_sequences,
            }),
        }
    }
}

impl Metrics {
    pub fn request(&self, endpoint: &str, status: u16) {
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                status,
            })
            .inc();
    }

    pub fn tokens(&self, prompt: u64, completion: u64) {
        self.inner
            .tokens
            .get_or_create(&TokenLabels { kind: "prompt" })
            .inc_by(prompt);
        self.inner
            .tokens
            .get_or_create(&TokenLabels { kind: "completion" })
            .inc_by(completion);
    }

    pub fn time_to_first_token(&self, d: Duration) {
        self.inner.ttft.observe(d.as_secs_f64());
    }

    pub fn tokens_per_second(&self, rate: f64) {
        self.inner.tps.observe(rate);
    }

    /// Text exposition, with the gauges read at scrape time.
    pub fn render(&self, queue_depth: usize, active_sequences: usize) -> String {
        self.inner.queue_depth.set(queue_depth as i64);
        self.inner.active_sequences.set(active_sequences as i64);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}
