//! Providers caught by an audit: the flag (with the evidence) and the one slash
//! per offence. An offence is a (provider, model, declared weight digest): a second
//! failed audit of the same offence counts, but does not slash again, in memory or
//! after a restart (a stored `model_hash_mismatch` slash whose evidence names the
//! same audit target counts as done). The auditor is never slashed: only the
//! audited sample's provider is.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use super::sample::Sample;
use super::stat::AuditFinding;
use crate::money::slashing::{Reason, Slash};
use crate::providers::registry::Registry;

/// Offences kept in memory at most (the oldest leave first; their slash records
/// stay in the store and still prevent a second slash).
pub const MAX_FLAGS: usize = 10_000;

/// A provider flagged by a failed audit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flag {
    pub provider: String,
    pub model: String,
    pub weight_sha256: Option<String>,
    /// The first failed audit's request and finding (the evidence).
    pub request_id: String,
    pub finding: AuditFinding,
    /// Unix seconds of the first failed audit.
    pub at: u64,
    /// The slash made for it (`None`: it had been slashed before, e.g. before a
    /// restart, or the provider is no longer registered).
    pub slash_id: Option<String>,
    /// Failed audits of this offence so far.
    pub failed_audits: u64,
}

#[derive(Debug, Default)]
pub struct Flags {
    inner: Mutex<BTreeMap<(String, String, String), Flag>>,
}

/// The start of a slash's evidence for an audit of `model` with `digest`: a stored
/// record starting with it is this offence's slash.
pub fn evidence_prefix(model: &str, digest: Option<&str>) -> String {
    format!(
        "audit of {model} (weights {}):",
        digest.unwrap_or("undeclared")
    )
}

impl Flags {
    /// Records a failed audit of `s`: flags the provider and slashes it for model
    /// hash mismatch unless this offence was slashed already. Returns the new slash.
    pub fn record(&self, registry: &Registry, s: &Sample, finding: &AuditFinding) -> Option<Slash> {
        let body = format!(
            "{} tokens scored, {} outside the auditor's top k, μ {:.2}, σ {:.2}, threshold {:.2}, mean logprob {:.3}",
            finding.tokens,
            finding.out_of_top_k,
            finding.expected,
            finding.sigma,
            finding.threshold,
            finding.mean_logprob,
        );
        self.record_with(registry, s, finding, &body)
    }

    /// [`Flags::record`] with the evidence's words after the request id (`body`:
    /// e.g. the sequential statistic's audits).
    pub fn record_with(
        &self,
        registry: &Registry,
        s: &Sample,
        finding: &AuditFinding,
        body: &str,
    ) -> Option<Slash> {
        let key = (
            s.provider.clone(),
            s.model.clone(),
            s.weight_sha256.clone().unwrap_or_default(),
        );
        let mut map = self.inner.lock().ok()?;
        if let Some(f) = map.get_mut(&key) {
            f.failed_audits += 1;
            return None;
        }
        let prefix = evidence_prefix(&s.model, s.weight_sha256.as_deref());
        let before = registry.slashes().into_iter().any(|x| {
            x.provider == s.provider
                && x.reason == Reason::ModelHashMismatch
                && x.detail.starts_with(&prefix)
        });
        let detail = format!(
            "{prefix} request {}{}: {body}",
            s.request_id,
            if s.streamed { " (streamed)" } else { "" },
        );
        let slash = if before {
            None
        } else {
            registry.slash(&s.provider, Reason::ModelHashMismatch, &detail)
        };
        if map.len() >= MAX_FLAGS
            && let Some(oldest) = map.iter().min_by_key(|(_, f)| f.at).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            key,
            Flag {
                provider: s.provider.clone(),
                model: s.model.clone(),
                weight_sha256: s.weight_sha256.clone(),
                request_id: s.request_id.clone(),
                finding: finding.clone(),
                at: registry.unix_now(),
                slash_id: slash.as_ref().map(|x| x.id.clone()),
                failed_audits: 1,
            },
        );
        slash
    }

    /// Every flag, by provider.
    pub fn all(&self) -> Vec<Flag> {
        self.inner
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether provider `id` is flagged for any model.
    pub fn is_flagged(&self, id: &str) -> bool {
        self.inner
            .lock()
            .map(|m| m.keys().any(|k| k.0 == id))
            .unwrap_or(false)
    }
}
