//! Receipts: what a provider signs for every response it serves.
//!
//! The signature covers the canonical encoding (see `canon`) of, in order: the domain
//! tag `tenzro/receipt/v1`, `model` (text), `weight_sha256`, `request_sha256`,
//! `response_sha256` (32 raw bytes each), `prompt_tokens`, `completion_tokens`,
//! `issued_at` (u64 big-endian each) and the signer's 32-byte public key.

use serde::{Deserialize, Serialize};

use crate::canon::Canon;
use crate::keys::hex32;
use crate::{Error, ProviderKey, PublicKey, Signature};

/// Domain tag of receipt signatures.
pub const RECEIPT_DOMAIN: &[u8] = b"tenzro/receipt/v1";

/// The facts a receipt attests, before signing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptBody {
    /// The model name as served.
    pub model: String,
    /// SHA-256 of the weights that produced the response.
    pub weight_sha256: [u8; 32],
    /// SHA-256 of the request body as received.
    pub request_sha256: [u8; 32],
    /// SHA-256 of the response body as sent (for a stream: the concatenated content).
    pub response_sha256: [u8; 32],
    /// Prompt tokens counted.
    pub prompt_tokens: u64,
    /// Completion tokens generated.
    pub completion_tokens: u64,
    /// When it was issued, unix seconds.
    pub issued_at: u64,
}

impl ReceiptBody {
    fn signed_bytes(&self, signer: &PublicKey) -> Vec<u8> {
        Canon::new(RECEIPT_DOMAIN)
            .text(&self.model)
            .fixed(&self.weight_sha256)
            .fixed(&self.request_sha256)
            .fixed(&self.response_sha256)
            .u64(self.prompt_tokens)
            .u64(self.completion_tokens)
            .u64(self.issued_at)
            .fixed(&signer.to_bytes())
            .finish()
    }

    /// Signs the body with `key`.
    pub fn sign(self, key: &ProviderKey) -> Receipt {
        let provider_key = key.public_key();
        let signature = key.sign(&self.signed_bytes(&provider_key));
        Receipt {
            model: self.model,
            weight_sha256: self.weight_sha256,
            request_sha256: self.request_sha256,
            response_sha256: self.response_sha256,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            issued_at: self.issued_at,
            provider_key,
            signature,
        }
    }
}

/// A signed receipt. JSON: digests, key and signature as lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The model name as served.
    pub model: String,
    /// SHA-256 of the weights, hex.
    #[serde(with = "hex32")]
    pub weight_sha256: [u8; 32],
    /// SHA-256 of the request body, hex.
    #[serde(with = "hex32")]
    pub request_sha256: [u8; 32],
    /// SHA-256 of the response body, hex.
    #[serde(with = "hex32")]
    pub response_sha256: [u8; 32],
    /// Prompt tokens counted.
    pub prompt_tokens: u64,
    /// Completion tokens generated.
    pub completion_tokens: u64,
    /// When it was issued, unix seconds.
    pub issued_at: u64,
    /// The provider's public key, hex.
    pub provider_key: PublicKey,
    /// Ed25519 signature over the canonical encoding, hex.
    pub signature: Signature,
}

impl Receipt {
    /// Signs `body` with `key` (the same as [`ReceiptBody::sign`]).
    pub fn new(body: ReceiptBody, key: &ProviderKey) -> Self {
        body.sign(key)
    }

    /// The signed facts.
    pub fn body(&self) -> ReceiptBody {
        ReceiptBody {
            model: self.model.clone(),
            weight_sha256: self.weight_sha256,
            request_sha256: self.request_sha256,
            response_sha256: self.response_sha256,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            issued_at: self.issued_at,
        }
    }

    /// Checks the signature, and that the signer is `expected_key` when given.
    pub fn verify(&self, expected_key: Option<&PublicKey>) -> Result<(), Error> {
        if let Some(expected) = expected_key
            && *expected != self.provider_key
        {
            return Err(Error::WrongKey {
                what: "receipt",
                expected: expected.to_hex(),
                got: self.provider_key.to_hex(),
            });
        }
        let message = self.body().signed_bytes(&self.provider_key);
        if self.provider_key.verify(&message, &self.signature) {
            Ok(())
        } else {
            Err(Error::BadSignature { what: "receipt" })
        }
    }
}
