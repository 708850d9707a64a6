//! KYC tiers and who has which.
//!
//! The effective tier of an identity at a time `now`:
//! - an identity that is not active (created, suspended, terminated) or unknown has
//!   tier 0;
//! - a human has the higher of the tier given at registration and the tiers of the
//!   KYC credentials it holds that are valid at `now` (issued, not expired) and whose
//!   issuer is a *trusted* issuer of the registry. A credential from any other issuer
//!   is kept but grants nothing, so no one can raise a tier by signing for themselves;
//! - a controlled agent has its controller's effective tier (transitively), so it
//!   drops to 0 the moment the controller's credential expires;
//! - an autonomous agent has tier 0: KYC is about the people behind agents.

use serde::{Deserialize, Serialize};

use crate::credential::Credential;
use crate::did::Did;
use crate::identity::Role;
use crate::{Error, Identities};

/// The credential type that carries a `kycTier` claim.
pub const KYC_CREDENTIAL_TYPE: &str = "KycCredential";

/// The claim in `credentialSubject` that holds the tier.
pub const KYC_TIER_CLAIM: &str = "kycTier";

/// A KYC tier: 0 (nothing checked) to 3 (fully verified).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub struct KycTier(u8);

impl KycTier {
    /// Nothing verified.
    pub const NONE: Self = Self(0);
    /// The highest tier.
    pub const MAX: Self = Self(3);

    /// A tier; refuses anything above 3.
    pub fn new(tier: u8) -> Result<Self, Error> {
        if tier <= Self::MAX.0 {
            Ok(Self(tier))
        } else {
            Err(Error::KycTier(tier))
        }
    }

    /// The tier as a number, 0 to 3.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for KycTier {
    type Error = Error;
    fn try_from(tier: u8) -> Result<Self, Error> {
        Self::new(tier)
    }
}

impl From<KycTier> for u8 {
    fn from(tier: KycTier) -> u8 {
        tier.0
    }
}

impl Credential {
    /// The tier this credential claims: `Some` only for a `KycCredential` whose
    /// `kycTier` claim is an integer 0 to 3.
    pub fn kyc_tier(&self) -> Option<KycTier> {
        if !self.types.iter().any(|t| t == KYC_CREDENTIAL_TYPE) {
            return None;
        }
        let tier = self.subject.claims.get(KYC_TIER_CLAIM)?.as_u64()?;
        KycTier::new(u8::try_from(tier).ok()?).ok()
    }

    /// Whether it is in force at `now`: issued and not yet expired.
    pub fn is_current(&self, now: u64) -> bool {
        self.issued_at <= now && self.expires_at.is_none_or(|expiry| now < expiry)
    }
}

impl Identities {
    /// The KYC tier `did` has at `now`, 0 to 3 (see the module docs for the rules).
    pub fn effective_kyc_tier(&self, did: &Did, now: u64) -> u8 {
        self.effective_tier(did, now).get()
    }

    fn effective_tier(&self, did: &Did, now: u64) -> KycTier {
        let Some(identity) = self.resolve(did).filter(|i| i.is_active()) else {
            return KycTier::NONE;
        };
        match (identity.role(), identity.controller()) {
            (Role::Human(human), _) => identity
                .credentials()
                .iter()
                .filter(|c| c.is_current(now) && self.is_trusted_issuer(&c.issuer))
                .filter_map(Credential::kyc_tier)
                .fold(human.kyc_tier(), KycTier::max),
            // Controllers nest at most `MAX_CONTROLLER_DEPTH` deep, so this recursion is bounded.
            (Role::Agent(_), Some(controller)) => self.effective_tier(controller, now),
            (Role::Agent(_), None) => KycTier::NONE,
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn tiers() {
        for tier in 0..=3 {
            assert_eq!(KycTier::new(tier).unwrap().get(), tier);
        }
        for tier in [4, 200, 255] {
            assert_eq!(
                KycTier::new(tier).unwrap_err().to_string(),
                format!("KYC tier {tier} is out of range 0-3")
            );
        }
        assert!(serde_json::from_str::<KycTier>("4").is_err());
        assert_eq!(serde_json::to_string(&KycTier::MAX).unwrap(), "3");
    }
}
