//! The gateway's verdict on a provider's TEE evidence, with its failures typed by
//! the check that refused (stored and shown to admins as `"check: detail"` text).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which check of a provider's attestation document failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// The document's key is not the registered key.
    PublicKey,
    /// A model's attested weight digest is not the registered one (or none was
    /// registered).
    Weights,
    /// The document does not echo the gateway's nonce.
    Nonce,
    /// `report_data` does not bind the key, the weights and the nonce.
    Binding,
    /// The declared, documented and evidenced TEE kinds disagree.
    TeeKind,
    /// The evidence is older than `max_evidence_age_secs` (or from the future).
    MaxEvidenceAge,
    /// The vendor's collateral is missing (a refusal, not the provider's fault).
    Collateral,
    /// The evidence itself does not verify (`tenzro_attest`'s reasons).
    Evidence,
    /// Anything else: the document could not be fetched or read.
    Other,
}

impl Check {
    const NAMED: [Check; 8] = [
        Check::PublicKey,
        Check::Weights,
        Check::Nonce,
        Check::Binding,
        Check::TeeKind,
        Check::MaxEvidenceAge,
        Check::Collateral,
        Check::Evidence,
    ];

    /// The prefix of the failure's text (none for [`Check::Other`]).
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Check::PublicKey => "public_key",
            Check::Weights => "weights",
            Check::Nonce => "nonce",
            Check::Binding => "binding",
            Check::TeeKind => "tee_kind",
            Check::MaxEvidenceAge => "max_evidence_age_secs",
            Check::Collateral => "collateral",
            Check::Evidence => "evidence",
            Check::Other => return None,
        })
    }
}

/// One failed check and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub check: Check,
    pub detail: String,
}

impl Failure {
    pub fn new(check: Check, detail: impl Into<String>) -> Self {
        Failure {
            check,
            detail: detail.into(),
        }
    }

    /// Reads the stored text back: `"check: detail"`, else [`Check::Other`].
    pub fn parse(text: &str) -> Self {
        for check in Check::NAMED {
            if let Some(detail) = check
                .name()
                .and_then(|n| text.strip_prefix(n))
                .and_then(|r| r.strip_prefix(": "))
            {
                return Failure::new(check, detail);
            }
        }
        Failure::new(Check::Other, text)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.check.name() {
            Some(name) => write!(f, "{name}: {}", self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

impl From<&str> for Failure {
    fn from(text: &str) -> Self {
        Failure::parse(text)
    }
}

impl Serialize for Failure {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Failure {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Failure::parse(&String::deserialize(d)?))
    }
}

/// The gateway's verdict on a provider's evidence, as stored and shown to admins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationVerdict {
    /// True only when every check passed and the evidence is a real TEE's.
    pub trusted: bool,
    /// The evidence's kind, when a document was read.
    pub tee_kind: Option<String>,
    /// Why it is not trusted (empty when trusted).
    pub reasons: Vec<Failure>,
    /// Unix seconds, from the gateway's clock.
    pub verified_at: u64,
    /// Unix seconds after which the verdict no longer counts.
    pub expires_at: u64,
    /// Whether the failure is the provider's fault (a slash was recorded).
    pub slashable: bool,
}

impl AttestationVerdict {
    /// A verdict for a provider whose document could not be had: untrusted, due again
    /// at once, not slashed.
    pub fn unverified(reason: String, now: u64) -> Self {
        AttestationVerdict {
            trusted: false,
            tee_kind: None,
            reasons: vec![Failure::new(Check::Other, reason)],
            verified_at: now,
            expires_at: now,
            slashable: false,
        }
    }

    /// Trusted and within its freshness window at `now` (unix seconds).
    pub fn is_fresh(&self, now: u64) -> bool {
        self.trusted && now >= self.verified_at && now < self.expires_at
    }

    /// Whether `check` is among the failures.
    pub fn failed(&self, check: Check) -> bool {
        self.reasons.iter().any(|f| f.check == check)
    }

    /// Only the weights differ from the registration (a model-hash mismatch, the
    /// lighter slash), as opposed to an invalid attestation.
    pub fn only_weights_differ(&self) -> bool {
        matches!(self.reasons.as_slice(), [f] if f.check == Check::Weights)
    }

    /// The failures as one line.
    pub fn reasons_text(&self) -> String {
        let text: Vec<String> = self.reasons.iter().map(ToString::to_string).collect();
        text.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_back_as_written() {
        for text in [
            "weights: model m is attested with digest aa, registered with bb",
            "evidence: binding: wrong",
            "max_evidence_age_secs: too old",
            "provider unreachable: connection refused",
            "tcb: OutOfDate",
        ] {
            let f = Failure::parse(text);
            assert_eq!(f.to_string(), text);
        }
        assert_eq!(Failure::parse("weights: x").check, Check::Weights);
        assert_eq!(
            Failure::parse("evidence: binding: y").check,
            Check::Evidence
        );
        assert_eq!(Failure::parse("weightsx: y").check, Check::Other);
    }
}
