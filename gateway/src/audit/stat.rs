//! The statistic of a model audit (issue 16, "Audits"): given an auditor's
//! teacher-forced scoring of a served answer (`/v1/completions` with `echo: true,
//! logprobs: k, max_tokens: 0` over prompt + answer), is the answer plausible under
//! the registered model at the temperature the request asked for?
//!
//! For each answer token the auditor reports the token's log-probability and its
//! top-k alternatives (at temperature 1). The evidence is a *miss*:
//! - greedy requests (temperature 0): a token that is not the auditor's top token
//!   by more than `tie_margin` nats (batched and solo runs may order near-ties
//!   differently, so near-ties are forgiven). An honest greedy answer has none;
//! - sampled requests (0 < T ≤ 1): a token outside the auditor's top k. Position i
//!   leaves the top k with probability at most `q_i(T)`, the tail mass at T:
//!   every tail token has p ≤ p_k (the k-th probability), so its weight p^{1/T} is
//!   at most p·p_k^{1/T−1} and `q_i(T) ≤ B / (A + B)` with `A = Σ_top p^{1/T}` and
//!   `B = (1 − Σ_top p)·p_k^{1/T−1}` (at T = 1 the plain tail mass; top-p, top-k and
//!   min-p truncation only shrink it). The count X of misses is then (at most) a
//!   Poisson-binomial with mean `μ = Σ q_i` and variance `σ² = Σ q_i (1 − q_i)`.
//!
//! The answer fails when `X > μ + z·σ + slack` (for greedy answers μ = σ = 0): `z`
//! bounds the false-positive rate per audit (normal approximation, conservative by
//! the bound on q_i), `slack` forgives a few retokenisation and near-tie misses. A
//! swapped model (another size, noised or truncated weights) picks other tokens
//! exactly where the registered model is confident (q_i small), which is where X
//! outgrows μ. benches/audit/README.md has the calibration.
//!
//! The mean log-likelihood is reported for the evidence, not decided on: its honest
//! expectation depends on each position's entropy, which top-k does not give.

use serde::Serialize;

/// One answer token as the auditor scored it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredToken {
    /// The auditor's log-probability of the token that was served.
    pub logprob: f64,
    /// Whether the served token is among the auditor's top k.
    pub in_top_k: bool,
    /// The auditor's top-k log-probabilities at this position (the served token's
    /// included when it is in the top k).
    pub top_logprobs: Vec<f64>,
}

/// The decision's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuditRule {
    /// One-sided normal quantile (3.0: about 1.3·10⁻³ per audit under the bound,
    /// which itself overstates an honest sampler's tail; 0 of 189 honest answers
    /// failed in calibration, see benches/audit/README.md).
    pub z: f64,
    /// Misses forgiven (retokenisation, near-ties).
    pub slack: f64,
    /// Answers shorter than this are not judged.
    pub min_tokens: usize,
    /// Greedy answers: a token within this many nats of the top one is no miss.
    pub tie_margin: f64,
}

impl Default for AuditRule {
    fn default() -> Self {
        AuditRule {
            z: 3.0,
            slack: 2.0,
            min_tokens: 16,
            tie_margin: 0.5,
        }
    }
}

/// What an audit found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditFinding {
    /// Answer tokens scored.
    pub tokens: usize,
    /// Misses: tokens outside the auditor's top k (sampled answers) or not its
    /// top token beyond the tie margin (greedy ones).
    pub out_of_top_k: usize,
    /// μ: the expected count under the honest bound.
    pub expected: f64,
    /// σ: its standard deviation.
    pub sigma: f64,
    /// The threshold `μ + z·σ + slack`.
    pub threshold: f64,
    /// Mean log-likelihood of the answer under the auditor (for calibration).
    pub mean_logprob: f64,
    /// True: implausible under the registered model (slash for model mismatch).
    pub mismatch: bool,
    /// Why (or why it was not judged).
    pub detail: String,
}

/// The probability that an honest sampler at `temperature` leaves the top k at a
/// position with these top-k log-probabilities (an upper bound; see the module doc).
pub fn tail_bound(top_logprobs: &[f64], temperature: f64) -> f64 {
    let top: Vec<f64> = top_logprobs
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .map(|l| l.min(0.0))
        .collect();
    let mass: f64 = top.iter().map(|l| l.exp()).sum::<f64>().clamp(0.0, 1.0);
    let q = 1.0 - mass;
    if temperature >= 1.0 || q <= 0.0 {
        return q;
    }
    let Some(low) = top.iter().copied().reduce(f64::min) else {
        return 1.0;
    };
    let inv = 1.0 / temperature.max(1e-3);
    // In log space: A = Σ exp(l/T), B = q·exp(low·(1/T − 1)), relative to max l/T.
    let hi = top.iter().copied().fold(f64::NEG_INFINITY, f64::max) * inv;
    let a: f64 = top.iter().map(|l| (l * inv - hi).exp()).sum();
    let b = q * (low * (inv - 1.0) - hi).exp();
    if a + b > 0.0 { b / (a + b) } else { q }
}

/// Judges one scored answer, served at `temperature` (0: greedy). Never panics;
/// non-finite numbers from the auditor count in the provider's favour.
pub fn judge(tokens: &[ScoredToken], temperature: f64, rule: &AuditRule) -> AuditFinding {
    let greedy = temperature <= 1e-6;
    let n = tokens.len();
    let (mut mu, mut var, mut out, mut lp_sum) = (0.0f64, 0.0f64, 0usize, 0.0f64);
    for t in tokens {
        let miss = if greedy {
            let best = t
                .top_logprobs
                .iter()
                .copied()
                .filter(|l| l.is_finite())
                .fold(f64::NEG_INFINITY, f64::max);
            best.is_finite() && t.logprob.is_finite() && t.logprob < best - rule.tie_margin
        } else {
            let q = tail_bound(&t.top_logprobs, temperature);
            mu += q;
            var += q * (1.0 - q);
            !t.in_top_k
        };
        if miss {
            out += 1;
        }
        lp_sum += if t.logprob.is_finite() {
            t.logprob
        } else {
            -100.0
        };
    }
    let sigma = var.sqrt();
    let threshold = mu + rule.z * sigma + rule.slack;
    let mean_logprob = if n == 0 { 0.0 } else { lp_sum / n as f64 };
    let what = if greedy {
        "not the auditor's top token (greedy)"
    } else {
        "outside the auditor's top k"
    };
    let (mismatch, detail) = if n < rule.min_tokens {
        (
            false,
            format!("{n} tokens, fewer than {} to judge", rule.min_tokens),
        )
    } else {
        (
            out as f64 > threshold,
            format!(
                "{out} of {n} tokens {what} at temperature {temperature}; at most {threshold:.2} expected of the registered model (mean {mu:.2})"
            ),
        )
    };
    AuditFinding {
        tokens: n,
        out_of_top_k: out,
        expected: mu,
        sigma,
        threshold,
        mean_logprob,
        mismatch,
        detail,
    }
}

#[cfg(test)]
#[path = "stat_tests.rs"]
mod tests;
