//! The statistic of a model audit (issue 16, "Audits"), as plain domain code with
//! no wiring yet: given an auditor's teacher-forced scoring of a served answer
//! (`/v1/completions` with `echo: true, logprobs: k, max_tokens: 0` over prompt +
//! answer), is the answer plausible under the registered model?
//!
//! For each answer token the auditor reports the token's log-probability and its
//! top-k alternatives. A token outside the top k is the evidence. Under the honest
//! hypothesis (the answer was sampled from the registered model at temperature ≤ 1,
//! possibly with top-p/top-k truncation, or greedily), position i falls outside
//! the top k with probability at most `q_i = 1 − Σ top-k probabilities` (the tail
//! mass at temperature 1; lower temperatures and truncation only shrink it, and
//! greedy decoding makes it 0 up to numerical near-ties). So the count X of
//! out-of-top-k tokens is (at most) a Poisson-binomial with mean `μ = Σ q_i` and
//! variance `σ² = Σ q_i (1 − q_i)`. The audit flags the answer when
//! `X > μ + z·σ + slack`: `z` bounds the false-positive rate per audit (normal
//! approximation, made conservative by the bound on q_i), `slack` absorbs
//! near-ties where batched and solo runs pick different top tokens. A swapped model
//! (another size, noised or truncated weights) puts many tokens outside the
//! registered model's top k at positions where it is confident (small q_i), which
//! is exactly where X outgrows μ.
//!
//! The mean log-likelihood is reported too, for calibration, but not decided on:
//! without the full distribution its honest expectation (minus the entropy) is
//! unknown per position, and a cut on it would have to be calibrated per model.

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
    /// One-sided normal quantile (4.0: about 3·10⁻⁵ per audit under the bound).
    pub z: f64,
    /// Out-of-top-k tokens forgiven for near-ties.
    pub slack: f64,
    /// Answers shorter than this are not judged.
    pub min_tokens: usize,
}

impl Default for AuditRule {
    fn default() -> Self {
        AuditRule {
            z: 4.0,
            slack: 2.0,
            min_tokens: 16,
        }
    }
}

/// What an audit found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditFinding {
    /// Answer tokens scored.
    pub tokens: usize,
    /// Tokens outside the auditor's top k.
    pub out_of_top_k: usize,
    /// μ: the expected count under the honest bound.
    pub expected: f64,
    /// The threshold `μ + z·σ + slack`.
    pub threshold: f64,
    /// Mean log-likelihood of the answer under the auditor (for calibration).
    pub mean_logprob: f64,
    /// True: implausible under the registered model (slash for model mismatch).
    pub mismatch: bool,
    /// Why (or why it was not judged).
    pub detail: String,
}

/// Judges one scored answer. Never panics; non-finite inputs count as the worst case
/// for the provider only where the auditor's own numbers are finite.
pub fn judge(tokens: &[ScoredToken], rule: &AuditRule) -> AuditFinding {
    let n = tokens.len();
    let (mut mu, mut var, mut out, mut lp_sum) = (0.0f64, 0.0f64, 0usize, 0.0f64);
    for t in tokens {
        let top_mass: f64 = t
            .top_logprobs
            .iter()
            .filter(|l| l.is_finite())
            .map(|l| l.exp())
            .sum::<f64>()
            .clamp(0.0, 1.0);
        let q = 1.0 - top_mass;
        mu += q;
        var += q * (1.0 - q);
        if !t.in_top_k {
            out += 1;
        }
        lp_sum += if t.logprob.is_finite() {
            t.logprob
        } else {
            -100.0
        };
    }
    let threshold = mu + rule.z * var.sqrt() + rule.slack;
    let mean_logprob = if n == 0 { 0.0 } else { lp_sum / n as f64 };
    let (mismatch, detail) = if n < rule.min_tokens {
        (
            false,
            format!("{n} tokens, fewer than {} to judge", rule.min_tokens),
        )
    } else {
        let m = out as f64 > threshold;
        (
            m,
            format!(
                "{out} of {n} tokens outside the auditor's top k; at most {threshold:.2} expected of the registered model (mean {mu:.2})"
            ),
        )
    };
    AuditFinding {
        tokens: n,
        out_of_top_k: out,
        expected: mu,
        threshold,
        mean_logprob,
        mismatch,
        detail,
    }
}

#[cfg(test)]
#[path = "audit_stat_tests.rs"]
mod tests;
