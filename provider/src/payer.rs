//! Whom this provider is paid by. No HTTP in it.
//!
//! Attached to a gateway (`--gateway` or `[gateway] url`) the provider is *closed*:
//! it serves only requests its trusted payer signed (`x-tenzro-payer-auth`, see
//! `tenzro_attest::payer`) and takes vouchers from that payer only. The trusted
//! payer is `[channels] trusted_payers` when the config pins any, else the
//! `payer_key` the gateway answered at registration; until that answer arrives no
//! payer is trusted, so nothing is served for free in between.
//!
//! Standalone (no gateway) the provider is open: inference is served to anyone,
//! and vouchers come from the pinned payers, or, when none are pinned, each channel
//! trusts the key of its first voucher (trust on first use).

use parking_lot::RwLock;

use tenzro_attest::PublicKey;

/// The trusted payer keys and whether unpaid requests are refused.
#[derive(Debug)]
pub struct PayerTrust {
    attached: bool,
    pinned: Vec<PublicKey>,
    learned: RwLock<Option<PublicKey>>,
}

/// What [`PayerTrust::learn`] did with a gateway's payer key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    /// The first key learned: it is trusted from now on.
    New,
    /// The key already trusted.
    Same,
    /// The gateway answered another key (its data directory was replaced?): the new
    /// one replaces the old.
    Replaced { previous: PublicKey },
    /// The config pins the payers: the gateway's key is not trusted unless pinned.
    Pinned,
}

impl PayerTrust {
    pub fn new(attached: bool, pinned: Vec<PublicKey>) -> PayerTrust {
        PayerTrust {
            attached,
            pinned,
            learned: RwLock::new(None),
        }
    }

    /// Whether the provider is attached to a gateway (inference needs payment).
    pub fn attached(&self) -> bool {
        self.attached
    }

    /// Whether vouchers must come from a trusted payer (rather than trust on first use).
    pub fn closed(&self) -> bool {
        self.attached || !self.pinned.is_empty()
    }

    /// The payer keys trusted now (empty until a gateway answered one, unless pinned).
    pub fn trusted(&self) -> Vec<PublicKey> {
        if !self.pinned.is_empty() {
            return self.pinned.clone();
        }
        let learned = *self.learned.read();
        learned.into_iter().collect()
    }

    pub fn is_trusted(&self, key: &PublicKey) -> bool {
        if !self.pinned.is_empty() {
            return self.pinned.contains(key);
        }
        self.learned.read().as_ref() == Some(key)
    }

    /// Takes the payer key a gateway answered at registration.
    pub fn learn(&self, key: PublicKey) -> Learned {
        if !self.pinned.is_empty() {
            return if self.pinned.contains(&key) {
                Learned::Same
            } else {
                Learned::Pinned
            };
        }
        let mut learned = self.learned.write();
        match learned.replace(key) {
            None => Learned::New,
            Some(previous) if previous == key => Learned::Same,
            Some(previous) => Learned::Replaced { previous },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenzro_attest::ProviderKey;

    fn key(seed: u8) -> PublicKey {
        ProviderKey::from_seed(&[seed; 32]).public_key()
    }

    #[test]
    fn an_attached_provider_trusts_nobody_until_its_gateway_answers() {
        let t = PayerTrust::new(true, vec![]);
        assert!(t.attached() && t.closed());
        assert!(t.trusted().is_empty() && !t.is_trusted(&key(1)));
        assert_eq!(t.learn(key(1)), Learned::New);
        assert!(t.is_trusted(&key(1)) && !t.is_trusted(&key(2)));
        assert_eq!(t.learn(key(1)), Learned::Same);
        assert_eq!(t.learn(key(2)), Learned::Replaced { previous: key(1) });
        assert_eq!(t.trusted(), [key(2)]);
        assert!(!t.is_trusted(&key(1)));
    }

    #[test]
    fn pinned_payers_win_over_what_a_gateway_says() {
        let t = PayerTrust::new(true, vec![key(1)]);
        assert_eq!(t.learn(key(2)), Learned::Pinned);
        assert_eq!(t.trusted(), [key(1)]);
        assert!(!t.is_trusted(&key(2)));
        assert_eq!(t.learn(key(1)), Learned::Same);
    }

    #[test]
    fn standalone_is_open_unless_payers_are_pinned() {
        let open = PayerTrust::new(false, vec![]);
        assert!(!open.attached() && !open.closed());
        let pinned = PayerTrust::new(false, vec![key(1)]);
        assert!(!pinned.attached() && pinned.closed() && pinned.is_trusted(&key(1)));
    }
}
