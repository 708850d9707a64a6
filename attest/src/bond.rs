//! A provider key's consent to be bonded by an owner account.
//!
//! Stake is money an owner account bonds for a provider key, and the provider's
//! earnings are credited to that owner. So the key itself must name its owner, or
//! anyone could claim a stranger's provider and its earnings. The provider signs the
//! canonical encoding (see `canon`) of: the domain tag `tenzro/bond-owner/v1`, the
//! owner's account id (text, as `GET /v1/account` shows it) and the provider's
//! 32-byte public key.

use crate::canon::Canon;
use crate::{ProviderKey, PublicKey, Signature};

/// Domain tag of the provider's owner consent.
pub const BOND_OWNER_DOMAIN: &[u8] = b"tenzro/bond-owner/v1";

fn signed_bytes(account_id: &str, provider: &PublicKey) -> Vec<u8> {
    Canon::new(BOND_OWNER_DOMAIN)
        .text(account_id)
        .fixed(&provider.to_bytes())
        .finish()
}

/// The provider names `account_id` as its owner.
pub fn sign_owner(provider: &ProviderKey, account_id: &str) -> Signature {
    provider.sign(&signed_bytes(account_id, &provider.public_key()))
}

/// Whether `signature` is `provider`'s consent to be owned by `account_id`.
pub fn verify_owner(provider: &PublicKey, account_id: &str, signature: &Signature) -> bool {
    provider.verify(&signed_bytes(account_id, provider), signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_names_one_owner_and_one_key() {
        let key = ProviderKey::from_seed(&[1; 32]);
        let other = ProviderKey::from_seed(&[2; 32]);
        let sig = sign_owner(&key, "acct-a");
        assert!(verify_owner(&key.public_key(), "acct-a", &sig));
        assert!(!verify_owner(&key.public_key(), "acct-b", &sig));
        assert!(!verify_owner(&other.public_key(), "acct-a", &sig));
        assert!(!verify_owner(
            &key.public_key(),
            "acct-a",
            &sign_owner(&other, "acct-a")
        ));
    }
}
