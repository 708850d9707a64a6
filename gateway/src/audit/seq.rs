//! Sequential evidence across audits (issue 16): one sampled answer (0 < T ≤ 1)
//! carries little evidence against a mildly perturbed model, but a provider's
//! audited answers accumulate.
//!
//! Per sampled answer, [`answer_score`] is `Z = (S − E) / √V`: `S` the answer's
//! surprisal under the auditor (each token's −logprob, capped at `M = −l_k + cap`,
//! `l_k` the k-th top logprob), `E` and `V` the mean and variance of that capped
//! surprisal under an honest sampler at the request's temperature, position by
//! position. The auditor reports only the top k, so the tail is bounded: every tail
//! token is at the cap (the largest value the capped score takes) with the largest
//! tail weight at T (`q·p_k^{1/T−1}`, as in `stat::tail_bound`), which only raises
//! `E`. Given the prefix, each honest token's capped surprisal has mean at most its
//! `E_i`, so `S − E` is a supermartingale for an honest provider and `Z` is at most
//! standard normal in the limit; a substitute picks tokens the registered model
//! finds less likely, and `Z` grows. (`V` is floored at 1 so that an answer of
//! near-certain tokens cannot weigh more than one of ordinary ones.)
//!
//! Per (provider, model, digest) a one-sided CUSUM `C = max(0, C + Z' − drift)`, `Z'`
//! being `Z` clamped to ±clamp, is kept ([`Sequences`]); when `C ≥ threshold` the provider is slashed
//! once, the evidence being the audits since `C` last left 0 (at most
//! [`MAX_EVIDENCE`] kept). Were honest scores exactly N(0, 1) (the bound met with
//! equality, as it is at T = 1 with cap 0), the CUSUM with drift 0.5 and threshold
//! 12 would falsely alarm after about 10⁶ sampled audits on average (Siegmund's
//! approximation; more than 2·10⁵ in simulation); real honest scores sit below
//! (mean −0.5 at T = 0.8: the tail bound is conservative). The clamp keeps one
//! answer from slashing on its own (the per-answer rule of `stat` does that for
//! greedy answers), and from below keeps near-greedy answers mixed in from
//! resetting the statistic at will. Without a reference, a crossing needs the
//! scorings of two owners (peers bonded by one owner are one voice).
//! benches/audit/sequential.py replays the calibration through this statistic.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use super::stat::ScoredToken;

/// Audits kept as evidence per running statistic (the latest).
pub const MAX_EVIDENCE: usize = 32;
/// Running statistics kept in memory (the stalest leave first).
pub const MAX_SEQUENCES: usize = 10_000;
/// The floor of `V` (see the module doc).
const MIN_VARIANCE: f64 = 1.0;

/// The sequential rule's parameters (`[audit] sequential_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeqRule {
    /// Subtracted from each answer's score (the CUSUM's reference value).
    pub drift: f64,
    /// The CUSUM slashes at this value; 0: no sequential audits.
    pub threshold: f64,
    /// Nats above the k-th top surprisal where a token's surprisal is capped.
    pub cap: f64,
    /// One answer's score counts at most this much.
    pub clamp: f64,
}

impl Default for SeqRule {
    fn default() -> Self {
        SeqRule {
            drift: 0.5,
            threshold: 12.0,
            cap: 0.0,
            clamp: 5.0,
        }
    }
}

/// The score `Z` of a sampled answer served at `temperature` (see the module doc);
/// `None` for greedy answers, temperatures above 1, or fewer than `min_tokens`
/// scorable tokens. Non-finite numbers from the auditor skip the token.
pub fn answer_score(
    tokens: &[ScoredToken],
    temperature: f64,
    cap: f64,
    min_tokens: usize,
) -> Option<f64> {
    if !(temperature > 1e-6 && temperature <= 1.0) {
        return None;
    }
    let inv = 1.0 / temperature;
    let (mut s, mut e, mut v, mut n) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for t in tokens {
        let top: Vec<f64> = t
            .top_logprobs
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .map(|l| l.min(0.0))
            .collect();
        let Some(low) = top.iter().copied().reduce(f64::min) else {
            continue;
        };
        if !t.logprob.is_finite() {
            continue;
        }
        let hi = top.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let q = 1.0 - top.iter().map(|l| l.exp()).sum::<f64>().clamp(0.0, 1.0);
        let m = -low + cap.max(0.0);
        // Weights at T relative to the top token's; the tail's at its largest.
        let w: Vec<f64> = top.iter().map(|l| ((l - hi) * inv).exp()).collect();
        let b = q * (low * (inv - 1.0) - hi * inv).exp();
        let z: f64 = w.iter().sum::<f64>() + b;
        let mean = (w.iter().zip(&top).map(|(w, l)| w * -l).sum::<f64>() + b * m) / z;
        let second = (w.iter().zip(&top).map(|(w, l)| w * l * l).sum::<f64>() + b * m * m) / z;
        s += (-t.logprob).min(m);
        e += mean;
        v += (second - mean * mean).max(0.0);
        n += 1;
    }
    if n < min_tokens {
        return None;
    }
    Some((s - e) / v.max(MIN_VARIANCE).sqrt())
}

/// One audit in a running statistic's evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    pub request_id: String,
    /// The answer's score `Z`.
    pub z: f64,
    /// Who scored it: `reference` or the peer's id.
    pub auditor: String,
    /// Who vouches for that scoring: `reference`, or the peer's bond owner (its
    /// id when unbonded). Peers of one owner are one voice.
    pub owner: String,
}

/// The running statistic of one (provider, model, digest).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sequence {
    /// The CUSUM's value.
    pub value: f64,
    /// Sampled audits scored in all.
    pub audits: u64,
    /// The audits since the value last left 0 (the latest [`MAX_EVIDENCE`]).
    pub evidence: Vec<Scored>,
    /// The largest value reached.
    pub peak: f64,
    /// Unix seconds of the last update.
    pub at: u64,
    /// Whether it crossed the threshold (then it stops: one slash per offence).
    pub crossed: bool,
}

impl Sequence {
    /// Adds one audit's score; true when this one crosses `rule.threshold`.
    pub fn add(&mut self, rule: &SeqRule, scored: Scored, now: u64) -> bool {
        self.audits += 1;
        self.at = now;
        if self.crossed || rule.threshold <= 0.0 || !scored.z.is_finite() {
            return false;
        }
        // Clamped on both sides: one answer moves C by at most `clamp`, so neither a
        // single wild score nor a run of near-greedy answers mixed in (Z far below
        // 0) decides it.
        let z = scored.z.min(rule.clamp).max(-rule.clamp);
        let next = (self.value + z - rule.drift).max(0.0);
        if next <= 0.0 {
            self.evidence.clear();
        } else {
            if self.evidence.len() >= MAX_EVIDENCE {
                self.evidence.remove(0);
            }
            self.evidence.push(scored);
        }
        self.value = next;
        self.peak = self.peak.max(next);
        self.crossed = next >= rule.threshold;
        self.crossed
    }

    /// Distinct voices among the evidence: owners, not peer ids.
    pub fn auditors(&self) -> usize {
        let mut a: Vec<&str> = self.evidence.iter().map(|s| s.owner.as_str()).collect();
        a.sort_unstable();
        a.dedup();
        a.len()
    }

    /// The evidence in words, for the slash's record.
    pub fn describe(&self, rule: &SeqRule) -> String {
        // The latest 16, so the slash record stays short.
        let skip = self.evidence.len().saturating_sub(16);
        let list: Vec<String> = self
            .evidence
            .iter()
            .skip(skip)
            .map(|s| format!("{} z {:.2} by {}", s.request_id, s.z, s.auditor))
            .collect();
        format!(
            "sampled answers' CUSUM {:.2} reached the threshold {:.2} (drift {}, clamp {}) after {} sampled audits; the audits that made it: {}",
            self.value,
            rule.threshold,
            rule.drift,
            rule.clamp,
            self.audits,
            list.join(", ")
        )
    }
}

/// The key of a running statistic: (provider, model, declared digest).
pub type Key = (String, String, String);

/// Every running statistic, in memory (bounded).
#[derive(Debug, Default)]
pub struct Sequences {
    inner: Mutex<BTreeMap<Key, Sequence>>,
}

impl Sequences {
    /// Adds a score to `key`'s statistic; the statistic as it is when this score
    /// crossed the threshold (once per key).
    pub fn add(&self, key: Key, rule: &SeqRule, scored: Scored, now: u64) -> Option<Sequence> {
        let mut map = self.inner.lock().ok()?;
        if !map.contains_key(&key)
            && map.len() >= MAX_SEQUENCES
            && let Some(stale) = map.iter().min_by_key(|(_, s)| s.at).map(|(k, _)| k.clone())
        {
            map.remove(&stale);
        }
        let seq = map.entry(key).or_default();
        seq.add(rule, scored, now).then(|| seq.clone())
    }

    /// Un-crosses `key` (its crossing could not be acted on, e.g. unconfirmed):
    /// it keeps counting from its value.
    pub fn reopen(&self, key: &Key) {
        if let Ok(mut map) = self.inner.lock()
            && let Some(s) = map.get_mut(key)
        {
            s.crossed = false;
        }
    }

    /// A copy of `key`'s statistic.
    pub fn get(&self, key: &Key) -> Option<Sequence> {
        self.inner.lock().ok()?.get(key).cloned()
    }

    /// Every statistic with a positive value or a crossing, for the admin API.
    pub fn active(&self) -> Vec<serde_json::Value> {
        let Ok(map) = self.inner.lock() else {
            return Vec::new();
        };
        map.iter()
            .filter(|(_, s)| s.value > 0.0 || s.crossed)
            .map(|((p, m, d), s)| {
                serde_json::json!({
                    "provider": p, "model": m, "weight_sha256": d,
                    "value": s.value, "peak": s.peak, "audits": s.audits,
                    "crossed": s.crossed, "evidence": s.evidence.len(),
                })
            })
            .collect()
    }
}
