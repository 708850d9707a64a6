//! The payer's authorization of a request to a provider.
//!
//! A provider attached to a gateway serves only requests its trusted payer (the
//! gateway's voucher key) has paid for, and shows its channel book only to that payer.
//! The payer proves both with one header, `x-tenzro-payer-auth`:
//!
//! ```text
//! x-tenzro-payer-auth: <unix seconds>.<signature hex>
//! ```
//!
//! The signature is the payer's Ed25519 signature over the canonical encoding (see
//! `canon`) of: the domain tag `tenzro/payer-auth/v1`, the HTTP method (text), the
//! path with its query (text), the channel id (text; empty for reads that name no
//! channel), the SHA-256 of the exact body bytes (32 bytes; the digest of the empty
//! string for a body-less request), the unix seconds (u64 BE) and the payer's 32-byte
//! public key. The provider accepts it within [`MAX_SKEW_S`] seconds of its clock.
//! The body digest ties the signature to one request: replaying it replays the same
//! paid request on the same channel, which the channel's metering charges again.

use crate::canon::Canon;
use crate::{ProviderKey, PublicKey, Signature};

/// Domain tag of the payer's request signature.
pub const PAYER_AUTH_DOMAIN: &[u8] = b"tenzro/payer-auth/v1";
/// The header that carries it.
pub const PAYER_AUTH_HEADER: &str = "x-tenzro-payer-auth";
/// How far the signed time may be from the verifier's clock, either way.
pub const MAX_SKEW_S: u64 = 300;

/// What the payer authorizes: one request, on one channel, at one time.
#[derive(Clone, Copy, Debug)]
pub struct PaidRequest<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path with its query string, e.g. `/v1/chat/completions`.
    pub path_and_query: &'a str,
    /// The channel the request is paid from (empty for reads naming no channel).
    pub channel_id: &'a str,
    /// The exact body bytes sent.
    pub body: &'a [u8],
}

/// Why a payer authorization was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayerAuthError {
    /// The header is absent.
    #[error(
        "missing {PAYER_AUTH_HEADER} header: this provider serves only requests paid through its gateway"
    )]
    Missing,
    /// The header is not `<seconds>.<hex signature>`.
    #[error("{PAYER_AUTH_HEADER} must be '<unix seconds>.<signature hex>'")]
    Malformed,
    /// The signed time is too far from now.
    #[error("{PAYER_AUTH_HEADER} is stale or from the future (more than {MAX_SKEW_S} s off)")]
    Stale,
    /// The signature does not verify under the trusted payer's key.
    #[error("{PAYER_AUTH_HEADER} is not signed by the trusted payer")]
    BadSignature,
}

impl PaidRequest<'_> {
    fn signed_bytes(&self, at: u64, payer: &PublicKey) -> Vec<u8> {
        Canon::new(PAYER_AUTH_DOMAIN)
            .text(self.method)
            .text(self.path_and_query)
            .text(self.channel_id)
            .fixed(&crate::sha256(self.body))
            .u64(at)
            .fixed(&payer.to_bytes())
            .finish()
    }

    /// The header value the payer sends, signed at unix time `at`.
    pub fn sign(&self, payer: &ProviderKey, at: u64) -> String {
        let signature = payer.sign(&self.signed_bytes(at, &payer.public_key()));
        format!("{at}.{}", signature.to_hex())
    }

    /// Checks a header value against the trusted payer's key at unix time `now`.
    pub fn verify(
        &self,
        header: Option<&str>,
        payer: &PublicKey,
        now: u64,
    ) -> Result<(), PayerAuthError> {
        let header = header.ok_or(PayerAuthError::Missing)?;
        let (at, sig) = header.split_once('.').ok_or(PayerAuthError::Malformed)?;
        if at.len() > 20 || sig.len() != 128 {
            return Err(PayerAuthError::Malformed);
        }
        let at: u64 = at.parse().map_err(|_| PayerAuthError::Malformed)?;
        let sig = Signature::from_hex(sig).map_err(|_| PayerAuthError::Malformed)?;
        if at.abs_diff(now) > MAX_SKEW_S {
            return Err(PayerAuthError::Stale);
        }
        if payer.verify(&self.signed_bytes(at, payer), &sig) {
            Ok(())
        } else {
            Err(PayerAuthError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: &[u8]) -> PaidRequest<'_> {
        PaidRequest {
            method: "POST",
            path_and_query: "/v1/chat/completions",
            channel_id: "ch-1",
            body,
        }
    }

    #[test]
    fn signed_by_the_payer_verifies_and_nothing_else_does() {
        let payer = ProviderKey::from_seed(&[7; 32]);
        let other = ProviderKey::from_seed(&[8; 32]);
        let header = req(b"{}").sign(&payer, 1_000);
        let pk = payer.public_key();
        assert_eq!(req(b"{}").verify(Some(&header), &pk, 1_100), Ok(()));
        // Another body, channel, path or signer is refused.
        assert_eq!(
            req(b"{ }").verify(Some(&header), &pk, 1_000),
            Err(PayerAuthError::BadSignature)
        );
        let mut other_channel = req(b"{}");
        other_channel.channel_id = "ch-2";
        assert_eq!(
            other_channel.verify(Some(&header), &pk, 1_000),
            Err(PayerAuthError::BadSignature)
        );
        let forged = req(b"{}").sign(&other, 1_000);
        assert_eq!(
            req(b"{}").verify(Some(&forged), &pk, 1_000),
            Err(PayerAuthError::BadSignature)
        );
        assert_eq!(
            req(b"{}").verify(Some(&header), &pk, 1_000 + MAX_SKEW_S + 1),
            Err(PayerAuthError::Stale)
        );
        assert_eq!(
            req(b"{}").verify(None, &pk, 1_000),
            Err(PayerAuthError::Missing)
        );
        for bad in ["", "x", "1.zz", "99999999999999999999999.00"] {
            assert_eq!(
                req(b"{}").verify(Some(bad), &pk, 1_000),
                Err(PayerAuthError::Malformed),
                "{bad}"
            );
        }
    }
}
