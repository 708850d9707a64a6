//! Model audits (issue 16, "Audits"): between attestations nothing else checks that
//! a provider's answers come from the model whose weight digest it registered, so
//! the gateway spot-checks served answers.
//!
//! At `[attestation] audit_rate` the request path offers a served, completed answer
//! ([`Audits::offer`]: one call in the proxy; a full queue drops the sample, never
//! blocks the request). A background task ([`worker`]) takes it off a bounded
//! channel and, at most `[audit] max_concurrent` at a time, asks the auditor, the
//! operator's reference provider (`[audit] reference`), to score prompt + answer
//! teacher-forced (`/v1/completions` with `echo: true, logprobs: k, max_tokens: 0`;
//! [`score`]). The statistic ([`stat`]) judges the scored tokens; on a mismatch the
//! provider is slashed once for `model_hash_mismatch` (5%) with the evidence (the
//! request id, counts, μ, the threshold) and flagged ([`flags`], shown in
//! `/admin/providers` under `audits`).
//!
//! What is audited ([`sample`]): `/v1/completions` answers to a text prompt as they
//! are, and `/v1/chat/completions` answers without tools or `response_format`,
//! streamed or not (a stream is drawn when it starts and its text kept, bounded,
//! until `[DONE]`: [`tap`]; never on the stream's path), whose prompt the auditor renders with its own chat template
//! (`/tokenize` with `messages` answers the rendered `text`): the reference serves the
//! registered model, so its template is the one the provider should have used.
//! Requests whose sampling the statistic's honest bound does not cover are skipped:
//! temperature above 1, `logit_bias`, penalties, grammars, `echo`.

pub mod flags;
pub mod peer;
pub mod sample;
pub mod score;
pub mod seq;
pub mod spend;
pub mod stat;
pub mod tap;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use flags::{Flag, Flags};
pub use sample::Sample;
pub use stat::{AuditFinding, AuditRule, ScoredToken, judge};

/// `[audit]`: how audits are run (their rate is `[attestation] audit_rate`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Base URL of the operator's reference provider serving the registered models
    /// (e.g. `http://10.0.0.5:8000`); empty: no auditor, so no audits.
    pub reference: String,
    /// The operator's account that pays TEE-verified peer auditors (see
    /// `audit::peer`: a peer serves only paid requests); empty: peers are never
    /// asked, only `reference`.
    pub account: String,
    /// Alternatives the auditor reports per position (1 to 20).
    pub top_logprobs: u32,
    /// One auditor call (connect, answer and body), in milliseconds.
    pub timeout_ms: u64,
    /// Audits scored at the same time.
    pub max_concurrent: usize,
    /// Samples waiting for the auditor; more are dropped.
    pub queue: usize,
    /// Requests larger than this are not audited (bytes of the request body).
    pub max_request_bytes: usize,
    /// The answer is cut to this many bytes before scoring (a prefix of a
    /// teacher-forced answer is judged like the whole).
    pub max_answer_bytes: usize,
    /// The auditor's answer is read up to this many bytes.
    pub max_auditor_bytes: usize,
    /// The statistic (see `audit::stat`): one-sided normal quantile.
    pub z: f64,
    /// Out-of-top-k tokens forgiven for near-ties and retokenisation.
    pub slack: f64,
    /// Answers with fewer scored tokens are not judged.
    pub min_tokens: usize,
    /// Greedy answers: a token within this many nats of the auditor's top token is
    /// a near-tie, not a miss.
    pub tie_margin: f64,
    /// Sampled answers' sequential evidence (see `audit::seq`): the CUSUM's drift.
    pub sequential_drift: f64,
    /// The CUSUM slashes at this value; 0: no sequential evidence.
    pub sequential_threshold: f64,
    /// Nats above the k-th top surprisal where a token's surprisal is capped.
    pub sequential_cap: f64,
    /// One answer's score counts at most this much (so none slashes alone).
    pub sequential_clamp: f64,
    /// The most a peer auditor is paid, in whole TNZO per token (e.g.
    /// `"0.000002"`), TEE premium and congestion included; pricier peers are not
    /// asked. Empty: no cap but the reference's own price where the reference is
    /// a registered provider.
    pub max_price_per_token: String,
    /// The most paid to peer auditors per hour, in whole TNZO (holds count until
    /// settled); past it the reference audits. Empty: no limit.
    pub max_spend_per_hour: String,
}

impl Default for AuditSection {
    fn default() -> Self {
        let rule = AuditRule::default();
        let seq = seq::SeqRule::default();
        AuditSection {
            reference: String::new(),
            account: String::new(),
            top_logprobs: 5,
            timeout_ms: 30_000,
            max_concurrent: 2,
            queue: 64,
            max_request_bytes: 65_536,
            max_answer_bytes: 4096,
            max_auditor_bytes: 4 << 20,
            z: rule.z,
            slack: rule.slack,
            min_tokens: rule.min_tokens,
            tie_margin: rule.tie_margin,
            sequential_drift: seq.drift,
            sequential_threshold: seq.threshold,
            sequential_cap: seq.cap,
            sequential_clamp: seq.clamp,
            max_price_per_token: String::new(),
            max_spend_per_hour: String::new(),
        }
    }
}

impl AuditSection {
    /// Checks the section (and the rate from `[attestation]`); `Err` names the field.
    pub fn validate(&self, rate: f64) -> Result<(), String> {
        if !(rate.is_finite() && (0.0..=1.0).contains(&rate)) {
            return Err(format!(
                "attestation.audit_rate must be between 0 and 1, not {rate}"
            ));
        }
        let r = self.reference.as_str();
        if !(r.is_empty() || r.starts_with("http://") || r.starts_with("https://")) {
            return Err(format!("audit.reference: `{r}` is not an http(s) URL"));
        }
        let acct = self.account.as_str();
        if acct.len() > 256 || acct.chars().any(char::is_whitespace) {
            return Err(format!("audit.account: `{acct}` is not an account id"));
        }
        if !(1..=20).contains(&self.top_logprobs) {
            return Err("audit.top_logprobs must be 1 to 20".into());
        }
        if self.max_concurrent == 0 || self.queue == 0 || self.timeout_ms == 0 {
            return Err(
                "audit.max_concurrent, audit.queue and audit.timeout_ms must be at least 1".into(),
            );
        }
        if [self.z, self.slack, self.tie_margin]
            .iter()
            .any(|v| !(v.is_finite() && *v >= 0.0))
        {
            return Err(
                "audit.z, audit.slack and audit.tie_margin must be non-negative numbers".into(),
            );
        }
        let s = self.seq_rule();
        if [s.drift, s.threshold, s.cap, s.clamp]
            .iter()
            .any(|v| !(v.is_finite() && *v >= 0.0))
        {
            return Err("audit.sequential_drift, audit.sequential_threshold, audit.sequential_cap and audit.sequential_clamp must be non-negative numbers".into());
        }
        self.price_cap()?;
        self.spend_limit()?;
        Ok(())
    }

    pub fn seq_rule(&self) -> seq::SeqRule {
        seq::SeqRule {
            drift: self.sequential_drift,
            threshold: self.sequential_threshold,
            cap: self.sequential_cap,
            clamp: self.sequential_clamp,
        }
    }

    /// `max_price_per_token` in TNZO base units per token (`None`: not set).
    pub fn price_cap(&self) -> Result<Option<u128>, String> {
        parse_amount(&self.max_price_per_token, "audit.max_price_per_token")
    }

    /// `max_spend_per_hour` in TNZO base units (`None`: not set).
    pub fn spend_limit(&self) -> Result<Option<u128>, String> {
        parse_amount(&self.max_spend_per_hour, "audit.max_spend_per_hour")
    }

    pub fn rule(&self) -> AuditRule {
        AuditRule {
            z: self.z,
            slack: self.slack,
            min_tokens: self.min_tokens,
            tie_margin: self.tie_margin,
        }
    }
}

fn parse_amount(s: &str, field: &str) -> Result<Option<u128>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    crate::pricing::parse_tokens(s.trim())
        .map(Some)
        .map_err(|e| format!("{field}: `{s}` is not an amount of TNZO: {e}"))
}

/// Counters of the audits, for the admin API.
#[derive(Debug, Default)]
pub struct Counters {
    pub sampled: AtomicU64,
    pub dropped: AtomicU64,
    pub skipped: AtomicU64,
    pub errors: AtomicU64,
    pub passed: AtomicU64,
    pub failed: AtomicU64,
    pub by_peer: AtomicU64,
    pub disputed: AtomicU64,
    pub sequential: AtomicU64,
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CountersView {
    /// Answers offered to the auditor.
    pub sampled: u64,
    /// Offered while the queue was full (not audited).
    pub dropped: u64,
    /// Not auditable (tools, temperature > 1, too short...).
    pub skipped: u64,
    /// The auditor failed (unreachable, timeout, malformed answer).
    pub errors: u64,
    pub passed: u64,
    /// Judged implausible under the registered model.
    pub failed: u64,
    /// Scored by a TEE-verified peer (the rest by the reference).
    pub by_peer: u64,
    /// A peer's failing score the confirming auditor did not share (no slash;
    /// counted among `passed`, or `errors` when the confirmation failed).
    pub disputed: u64,
    /// Slashes by sampled answers' sequential evidence (counted among `failed`).
    pub sequential: u64,
}

impl Counters {
    pub fn view(&self) -> CountersView {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersView {
            sampled: g(&self.sampled),
            dropped: g(&self.dropped),
            skipped: g(&self.skipped),
            errors: g(&self.errors),
            passed: g(&self.passed),
            failed: g(&self.failed),
            by_peer: g(&self.by_peer),
            disputed: g(&self.disputed),
            sequential: g(&self.sequential),
        }
    }
}

/// The audits' handle in the gateway's state (cheap to clone).
#[derive(Clone)]
pub struct Audits {
    /// Share of served answers audited, in parts per million.
    rate_ppm: u32,
    tx: Option<mpsc::Sender<Sample>>,
    rx: Arc<std::sync::Mutex<Option<mpsc::Receiver<Sample>>>>,
    pub config: Arc<AuditSection>,
    pub flags: Arc<Flags>,
    pub counters: Arc<Counters>,
    /// Sampled answers' running statistics (`seq`).
    pub sequences: Arc<seq::Sequences>,
    /// What peer auditors were paid this hour (`spend`).
    pub spend: Arc<spend::Spend>,
}

impl Audits {
    /// Audits at `rate` (0 to 1) with `config`; none without an auditor (a
    /// reference, or an account paying peers).
    pub fn new(rate: f64, config: AuditSection) -> Self {
        let on = rate > 0.0 && !(config.reference.is_empty() && config.account.is_empty());
        let (tx, rx) = if on {
            let (tx, rx) = mpsc::channel(config.queue.max(1));
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        Audits {
            rate_ppm: (rate.clamp(0.0, 1.0) * 1e6).round() as u32,
            tx,
            rx: Arc::new(std::sync::Mutex::new(rx)),
            config: Arc::new(config),
            flags: Arc::new(Flags::default()),
            counters: Arc::new(Counters::default()),
            sequences: Arc::new(seq::Sequences::default()),
            spend: Arc::new(spend::Spend::default()),
        }
    }

    /// Offers a served answer: at the configured rate, `make` builds the sample and
    /// it is queued for the auditor; a full queue drops it. Never waits.
    pub fn offer(&self, make: impl FnOnce() -> Sample) {
        if self.pick() {
            self.queue(make());
        }
    }

    /// Draws at the configured rate whether an answer is audited (never with
    /// audits off).
    fn pick(&self) -> bool {
        self.tx.is_some() && crate::verify::sampled(self.rate_ppm, rand_seed())
    }

    /// Queues a picked sample for the auditor; a full queue drops it.
    fn queue(&self, sample: Sample) {
        let Some(tx) = &self.tx else { return };
        self.counters.sampled.fetch_add(1, Ordering::Relaxed);
        if tx.try_send(sample).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The queue's receiving end, once (the worker takes it).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Sample>> {
        self.rx.lock().ok()?.take()
    }

    /// What `/admin/providers` shows under `audits`.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "rate_ppm": self.rate_ppm,
            "reference": self.config.reference,
            "account": self.config.account,
            "counters": self.counters.view(),
            "flags": self.flags.all(),
            "sequential": self.sequences.active(),
            "peer_spend_this_hour": self.spend.spent().to_string(),
        })
    }
}

/// A draw from rand's thread-local CSPRNG (seeded from the OS): no syscall per
/// request, as uuid's `new_v4` made.
fn rand_seed() -> u64 {
    rand::random()
}

#[cfg(test)]
mod tests;
