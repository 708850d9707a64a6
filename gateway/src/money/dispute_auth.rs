//! The provider's signature over a dispute it submits.
//!
//! A dispute is submitted by the channel's payer (its API key) or by the channel's
//! provider. The provider proves it is acting with one header,
//! `x-tenzro-provider-auth: <unix seconds>.<signature hex>`: its registered key's
//! Ed25519 signature over the domain tag `tenzro/dispute-auth/v1`, then the HTTP
//! method, the path with its query and the channel id (each as a u32 big-endian
//! length and its bytes), the SHA-256 of the exact body bytes, the unix seconds
//! (u64 big-endian) and the provider's 32-byte public key. It is accepted within
//! [`MAX_SKEW_S`] seconds of the gateway's clock. A countersigned voucher alone is
//! not enough: the payer holds those too (`GET /v1/channels/{id}/voucher`).
//! Replaying a signed dispute within the skew resubmits the same state, which
//! changes nothing.

use tenzro_attest::{ProviderKey, PublicKey, Signature};

/// Domain tag of the provider's dispute signature.
pub const DOMAIN: &[u8] = b"tenzro/dispute-auth/v1";
/// The header that carries it.
pub const HEADER: &str = "x-tenzro-provider-auth";
/// How far the signed time may be from the gateway's clock, either way.
pub const MAX_SKEW_S: u64 = tenzro_attest::payer::MAX_SKEW_S;

/// What the provider signs: one dispute request on one channel.
#[derive(Clone, Copy, Debug)]
pub struct SignedDispute<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub channel_id: &'a str,
    pub body: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisputeAuthError {
    #[error("{HEADER} must be '<unix seconds>.<signature hex>'")]
    Malformed,
    #[error("{HEADER} is stale or from the future (more than {MAX_SKEW_S} s off)")]
    Stale,
    #[error("{HEADER} is not signed by the channel's provider")]
    BadSignature,
}

fn field(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
}

impl SignedDispute<'_> {
    fn signed_bytes(&self, at: u64, provider: &PublicKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(DOMAIN.len() + 128 + self.path_and_query.len());
        field(&mut out, DOMAIN);
        field(&mut out, self.method.as_bytes());
        field(&mut out, self.path_and_query.as_bytes());
        field(&mut out, self.channel_id.as_bytes());
        out.extend_from_slice(&tenzro_attest::sha256(self.body));
        out.extend_from_slice(&at.to_be_bytes());
        out.extend_from_slice(&provider.to_bytes());
        out
    }

    /// The header value a provider sends, signed at unix time `at`.
    pub fn sign(&self, provider: &ProviderKey, at: u64) -> String {
        let signature = provider.sign(&self.signed_bytes(at, &provider.public_key()));
        format!("{at}.{}", signature.to_hex())
    }

    /// Checks a header value against the channel provider's key at unix time `now`.
    pub fn verify(
        &self,
        header: &str,
        provider: &PublicKey,
        now: u64,
    ) -> Result<(), DisputeAuthError> {
        let (at, sig) = header.split_once('.').ok_or(DisputeAuthError::Malformed)?;
        if at.len() > 20 || sig.len() != 128 {
            return Err(DisputeAuthError::Malformed);
        }
        let at: u64 = at.parse().map_err(|_| DisputeAuthError::Malformed)?;
        let sig = Signature::from_hex(sig).map_err(|_| DisputeAuthError::Malformed)?;
        if at.abs_diff(now) > MAX_SKEW_S {
            return Err(DisputeAuthError::Stale);
        }
        if provider.verify(&self.signed_bytes(at, provider), &sig) {
            Ok(())
        } else {
            Err(DisputeAuthError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: &[u8]) -> SignedDispute<'_> {
        SignedDispute {
            method: "POST",
            path_and_query: "/v1/channels/ch_1/dispute",
            channel_id: "ch_1",
            body,
        }
    }

    #[test]
    fn only_the_signing_provider_on_that_request_verifies() {
        let p = ProviderKey::from_seed(&[5; 32]);
        let other = ProviderKey::from_seed(&[6; 32]);
        let h = req(b"{}").sign(&p, 1000);
        assert_eq!(req(b"{}").verify(&h, &p.public_key(), 1200), Ok(()));
        assert_eq!(
            req(b"{ }").verify(&h, &p.public_key(), 1000),
            Err(DisputeAuthError::BadSignature)
        );
        let mut elsewhere = req(b"{}");
        elsewhere.channel_id = "ch_2";
        assert_eq!(
            elsewhere.verify(&h, &p.public_key(), 1000),
            Err(DisputeAuthError::BadSignature)
        );
        assert_eq!(
            req(b"{}").verify(&h, &other.public_key(), 1000),
            Err(DisputeAuthError::BadSignature)
        );
        assert_eq!(
            req(b"{}").verify(&h, &p.public_key(), 1000 + MAX_SKEW_S + 1),
            Err(DisputeAuthError::Stale)
        );
        // A payer-auth signature by the same key is not a dispute signature.
        let paid = tenzro_attest::payer::PaidRequest {
            method: "POST",
            path_and_query: "/v1/channels/ch_1/dispute",
            channel_id: "ch_1",
            body: b"{}",
        }
        .sign(&p, 1000);
        assert_eq!(
            req(b"{}").verify(&paid, &p.public_key(), 1000),
            Err(DisputeAuthError::BadSignature)
        );
        for bad in ["", "1", "x.y", "1.zz", "99999999999999999999999.00"] {
            assert_eq!(
                req(b"{}").verify(bad, &p.public_key(), 1000),
                Err(DisputeAuthError::Malformed),
                "{bad}"
            );
        }
    }
}
