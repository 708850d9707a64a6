//! Slashing (whitepaper §3.2): a provider's recorded stake loses a share for a
//! proven fault, and the record says why.

use serde::{Deserialize, Serialize};

use crate::money::decimal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    InvalidAttestation,
    /// Unreachable for more than 24 hours.
    Downtime,
    FraudulentResults,
    ModelHashMismatch,
    /// Per incident.
    RateLimitAbuse,
    /// Banned: "permanently excluded, stake slashed 100%" (whitepaper §8.2).
    Ban,
}

impl Reason {
    /// The share of the stake slashed, in parts per million.
    pub fn ppm(self) -> u128 {
        match self {
            Reason::InvalidAttestation => 100_000,
            Reason::Downtime => 10_000,
            Reason::FraudulentResults => 250_000,
            Reason::ModelHashMismatch => 50_000,
            Reason::RateLimitAbuse => 1_000,
            Reason::Ban => 1_000_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidAttestation => "invalid_attestation",
            Reason::Downtime => "downtime",
            Reason::FraudulentResults => "fraudulent_results",
            Reason::ModelHashMismatch => "model_hash_mismatch",
            Reason::RateLimitAbuse => "rate_limit_abuse",
            Reason::Ban => "ban",
        }
    }
}

/// One slash, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slash {
    pub id: String,
    pub provider: String,
    pub reason: Reason,
    pub detail: String,
    #[serde(with = "decimal")]
    pub stake_before: u128,
    /// `floor(stake_before × ppm / 10^6)`.
    #[serde(with = "decimal")]
    pub amount: u128,
    #[serde(with = "decimal")]
    pub stake_after: u128,
    pub at: u64,
}

/// Longest `detail` (evidence) a slash record keeps, in bytes; longer text is cut
/// at a character boundary and ends with "…".
pub const MAX_DETAIL: usize = 512;

/// `detail` within [`MAX_DETAIL`] bytes.
pub fn bounded_detail(detail: &str) -> String {
    if detail.len() <= MAX_DETAIL {
        return detail.to_owned();
    }
    let mut end = MAX_DETAIL - '…'.len_utf8();
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &detail[..end])
}

/// Slashes `stake` for `reason`; the amount rounds down, and the parts add up.
pub fn slash(provider: &str, stake: u128, reason: Reason, detail: &str, at: u64) -> Slash {
    let amount =
        (stake / 1_000_000) * reason.ppm() + (stake % 1_000_000) * reason.ppm() / 1_000_000;
    Slash {
        id: format!("slash_{}", uuid::Uuid::new_v4().simple()),
        provider: provider.to_owned(),
        reason,
        detail: bounded_detail(detail),
        stake_before: stake,
        amount,
        stake_after: stake - amount,
        at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_takes_its_share() {
        let stake = 100_000u128 * 10u128.pow(18);
        let cases = [
            (Reason::InvalidAttestation, 10_000u128),
            (Reason::Downtime, 1_000),
            (Reason::FraudulentResults, 25_000),
            (Reason::ModelHashMismatch, 5_000),
            (Reason::RateLimitAbuse, 100),
            (Reason::Ban, 100_000),
        ];
        for (reason, tnzo) in cases {
            let s = slash("p", stake, reason, "", 0);
            assert_eq!(s.amount, tnzo * 10u128.pow(18), "{reason:?}");
            assert_eq!(s.stake_after + s.amount, stake);
        }
        // Rounding down on odd stakes; the parts still add up.
        let s = slash("p", 999, Reason::RateLimitAbuse, "", 0);
        assert_eq!((s.amount, s.stake_after), (0, 999));
        let s = slash("p", u128::MAX, Reason::FraudulentResults, "", 0);
        assert_eq!(s.amount + s.stake_after, u128::MAX);
    }

    #[test]
    fn evidence_is_bounded() {
        let long = "é".repeat(5_000);
        let s = slash("p", 100, Reason::FraudulentResults, &long, 0);
        assert!(s.detail.len() <= MAX_DETAIL && s.detail.ends_with('…'));
        assert!(long.starts_with(s.detail.trim_end_matches('…')));
        let short = slash("p", 100, Reason::FraudulentResults, "short", 0);
        assert_eq!(short.detail, "short");
    }
}
