//! Payment-channel vouchers: the payer signs how much it has spent in total on a
//! channel; the provider countersigns to acknowledge it.
//!
//! The payer signs the canonical encoding (see `canon`) of: the domain tag
//! `tenzro/voucher/v1`, `channel_id` (text), `nonce` (u64 BE), `cumulative_spent`
//! (u128 BE), `asset` (text) and the payer's 32-byte public key.
//! The provider countersigns: the domain tag `tenzro/voucher-countersign/v1`, the
//! payer's message bytes above (length-prefixed), the payer's 64-byte signature
//! (length-prefixed) and the provider's 32-byte public key.
//! In JSON `cumulative_spent` is a decimal string, since JSON numbers lose u128s.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::canon::Canon;
use crate::{Error, ProviderKey, PublicKey, Signature};

/// Domain tag of the payer's signature.
pub const VOUCHER_DOMAIN: &[u8] = b"tenzro/voucher/v1";
/// Domain tag of the provider's countersignature.
pub const COUNTERSIGN_DOMAIN: &[u8] = b"tenzro/voucher-countersign/v1";

/// What a voucher states, before signing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoucherBody {
    /// The channel this voucher belongs to.
    pub channel_id: String,
    /// Strictly increasing within a channel.
    pub nonce: u64,
    /// Total spent on the channel so far, in the asset's smallest unit.
    pub cumulative_spent: u128,
    /// The asset, e.g. `USDC`.
    pub asset: String,
}

impl VoucherBody {
    fn signed_bytes(&self, payer: &PublicKey) -> Vec<u8> {
        Canon::new(VOUCHER_DOMAIN)
            .text(&self.channel_id)
            .u64(self.nonce)
            .u128(self.cumulative_spent)
            .text(&self.asset)
            .fixed(&payer.to_bytes())
            .finish()
    }

    /// The payer signs the body.
    pub fn sign(self, payer: &ProviderKey) -> Voucher {
        let payer_key = payer.public_key();
        let payer_signature = payer.sign(&self.signed_bytes(&payer_key));
        Voucher {
            channel_id: self.channel_id,
            nonce: self.nonce,
            cumulative_spent: self.cumulative_spent,
            asset: self.asset,
            payer_key,
            payer_signature,
            provider_key: None,
            provider_signature: None,
        }
    }
}

/// A signed (and perhaps countersigned) voucher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Voucher {
    /// The channel.
    pub channel_id: String,
    /// Strictly increasing within a channel.
    pub nonce: u64,
    /// Total spent so far, decimal string in JSON.
    #[serde(with = "decimal_u128")]
    pub cumulative_spent: u128,
    /// The asset.
    pub asset: String,
    /// The payer's key.
    pub payer_key: PublicKey,
    /// The payer's signature.
    pub payer_signature: Signature,
    /// The provider's key, once countersigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<PublicKey>,
    /// The provider's countersignature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_signature: Option<Signature>,
}

impl Voucher {
    /// The signed facts.
    pub fn body(&self) -> VoucherBody {
        VoucherBody {
            channel_id: self.channel_id.clone(),
            nonce: self.nonce,
            cumulative_spent: self.cumulative_spent,
            asset: self.asset.clone(),
        }
    }

    fn countersigned_bytes(&self, provider: &PublicKey) -> Vec<u8> {
        Canon::new(COUNTERSIGN_DOMAIN)
            .bytes(&self.body().signed_bytes(&self.payer_key))
            .bytes(&self.payer_signature.to_bytes())
            .fixed(&provider.to_bytes())
            .finish()
    }

    /// Checks the payer's signature, and that the payer is `expected` when given.
    pub fn verify_payer(&self, expected: Option<&PublicKey>) -> Result<(), Error> {
        expect_key("voucher payer", expected, &self.payer_key)?;
        let message = self.body().signed_bytes(&self.payer_key);
        if self.payer_key.verify(&message, &self.payer_signature) {
            Ok(())
        } else {
            Err(Error::BadSignature {
                what: "voucher payer",
            })
        }
    }

    /// The provider countersigns, after checking the payer's signature.
    pub fn countersign(&mut self, provider: &ProviderKey) -> Result<(), Error> {
        self.verify_payer(None)?;
        let key = provider.public_key();
        self.provider_signature = Some(provider.sign(&self.countersigned_bytes(&key)));
        self.provider_key = Some(key);
        Ok(())
    }

    /// Checks both signatures; the voucher must be countersigned.
    pub fn verify(
        &self,
        payer: Option<&PublicKey>,
        provider: Option<&PublicKey>,
    ) -> Result<(), Error> {
        self.verify_payer(payer)?;
        let (Some(key), Some(signature)) = (&self.provider_key, &self.provider_signature) else {
            return Err(Error::NotCountersigned);
        };
        expect_key("voucher countersignature", provider, key)?;
        if key.verify(&self.countersigned_bytes(key), signature) {
            Ok(())
        } else {
            Err(Error::BadSignature {
                what: "voucher countersignature",
            })
        }
    }

    /// Checks that `self` may follow `previous` in the same channel: same channel,
    /// asset and payer, a larger nonce, and a total spent that never goes down.
    pub fn check_successor(&self, previous: &Voucher) -> Result<(), Error> {
        let refuse = |why: &str| Err(Error::NotSuccessor(why.to_string()));
        if self.channel_id != previous.channel_id {
            return refuse("different channel");
        }
        if self.asset != previous.asset || self.payer_key != previous.payer_key {
            return refuse("different asset or payer");
        }
        if self.nonce <= previous.nonce {
            return refuse("nonce did not increase");
        }
        if self.cumulative_spent < previous.cumulative_spent {
            return refuse("cumulative spend went down");
        }
        Ok(())
    }
}

fn expect_key(
    what: &'static str,
    expected: Option<&PublicKey>,
    got: &PublicKey,
) -> Result<(), Error> {
    match expected {
        Some(e) if e != got => Err(Error::WrongKey {
            what,
            expected: e.to_hex(),
            got: got.to_hex(),
        }),
        _ => Ok(()),
    }
}

mod decimal_u128 {
    use super::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(serde::de::Error::custom(
                "cumulative_spent must be a decimal string",
            ));
        }
        text.parse().map_err(serde::de::Error::custom)
    }
}
