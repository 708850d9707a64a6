//! The outcome of verifying evidence: every check with its result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::TeeKind;

/// One named check and its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Short stable name, e.g. `signature`, `cert-chain`, `binding`, `debug`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, or why it failed.
    pub detail: String,
}

/// The result of verifying one piece of evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The kind of evidence.
    pub kind: TeeKind,
    /// True only when every check passed and the kind is a real TEE.
    pub trusted: bool,
    /// Every check that ran, in order.
    pub checks: Vec<Check>,
    /// Why it was refused (empty when trusted): `name: detail` of each failed check.
    pub reasons: Vec<String>,
    /// Facts read from the evidence (measurements, TCB status, versions), for display
    /// and storage. Only meaningful when the signature checks passed.
    pub claims: BTreeMap<String, String>,
    /// Unix time the verification was made at.
    pub verified_at: u64,
    /// Unix time after which the verdict must be renewed (the freshness window).
    pub expires_at: u64,
}

impl Verdict {
    /// An empty verdict; add checks, then [`Verdict::finish`].
    pub fn new(kind: TeeKind, verified_at: u64, freshness_secs: u64) -> Self {
        Self {
            kind,
            trusted: false,
            checks: Vec::new(),
            reasons: Vec::new(),
            claims: BTreeMap::new(),
            verified_at,
            expires_at: verified_at.saturating_add(freshness_secs),
        }
    }

    /// Records a check.
    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) -> bool {
        self.checks.push(Check {
            name: name.to_string(),
            ok,
            detail: detail.into(),
        });
        ok
    }

    /// Records a check from a result: `Ok(detail)` passes, `Err(reason)` fails.
    pub fn check_result(&mut self, name: &str, result: Result<String, String>) -> bool {
        match result {
            Ok(detail) => self.check(name, true, detail),
            Err(reason) => self.check(name, false, reason),
        }
    }

    /// Records a fact read from the evidence.
    pub fn claim(&mut self, key: &str, value: impl Into<String>) {
        self.claims.insert(key.to_string(), value.into());
    }

    /// Computes `trusted` and `reasons` from the checks.
    pub fn finish(mut self) -> Self {
        self.reasons = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        if self.kind == TeeKind::None {
            self.reasons
                .push("kind: `none` evidence is never trusted".to_string());
        }
        if self.checks.is_empty() {
            self.reasons.push("no checks ran".to_string());
        }
        self.trusted = self.reasons.is_empty();
        self
    }

    /// The failed check with this name, if any.
    pub fn failed(&self, name: &str) -> bool {
        self.checks.iter().any(|c| c.name == name && !c.ok)
    }

    /// Whether the verdict may still be relied on at `now` (trusted and fresh).
    pub fn is_fresh(&self, now: u64) -> bool {
        self.trusted && now >= self.verified_at && now < self.expires_at
    }
}
