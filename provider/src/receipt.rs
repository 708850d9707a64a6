//! The digests a provider's receipt signs, defined so a client can recompute them
//! from what it sent and what it received.
//!
//! Every response (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`)
//! carries `"tenzro": {"receipt": {...}}`: a `tenzro_attest::Receipt` signed with the
//! provider's key. Non-streamed, it is on the response body; streamed, it is on the
//! last data chunk before `data: [DONE]` (the usage chunk when
//! `stream_options.include_usage` is set, otherwise the chunk that finishes the last
//! choice). Its fields:
//!
//! - `model`: the model id as the request named it;
//! - `weight_sha256`: SHA-256 of the weight file that served it (as in `/v1/models`
//!   and `/v1/attestation`);
//! - `request_sha256`: SHA-256 of the exact request body bytes received;
//! - `response_sha256`: SHA-256 over the response's items in index order, each
//!   written as its byte length (u64 big-endian) followed by its bytes, where an
//!   item is
//!   - for chat: each choice's whole `message.content` as UTF-8 (streamed: the
//!     concatenation of that choice's `delta.content`);
//!   - for completions: each choice's whole `text` as UTF-8, the echoed prompt
//!     included when `echo` is set (streamed: the concatenation of that choice's
//!     `text` pieces);
//!   - for embeddings: each vector's values as little-endian IEEE-754 f32 (exactly
//!     the bytes `encoding_format: "base64"` carries; `float` JSON values parse back
//!     to the same f32s);
//! - `prompt_tokens`, `completion_tokens`: as in `usage`;
//! - `issued_at`: unix seconds.
//!
//! `tenzro-verify receipt FILE --key PUB` checks the signature.

use sha2::{Digest as _, Sha256};
use tenzro_attest::ReceiptBody;
use tenzro_models::api::TenzroExt;

use crate::attestation::Identity;

/// SHA-256 over `items` in order, each as u64 big-endian byte length then bytes.
pub fn items_digest<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for item in items {
        h.update((item.len() as u64).to_be_bytes());
        h.update(item);
    }
    h.finalize().into()
}

/// The response digest of chat or text choices (their whole texts, in index order).
pub fn texts_digest<S: AsRef<str>>(texts: &[S]) -> [u8; 32] {
    items_digest(texts.iter().map(|t| t.as_ref().as_bytes()))
}

/// The response digest of embeddings (each vector as little-endian f32 bytes).
pub fn embeddings_digest(vectors: &[Vec<f32>]) -> [u8; 32] {
    let bytes: Vec<Vec<u8>> = vectors
        .iter()
        .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    items_digest(bytes.iter().map(Vec::as_slice))
}

/// What one request and its response were: everything a receipt signs but the time.
#[derive(Debug, Clone)]
pub struct Served {
    pub model: String,
    pub request_sha256: [u8; 32],
    pub response_sha256: [u8; 32],
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Signs a receipt for `served` and wraps it as the `tenzro` extension.
pub fn sign(identity: &Identity, served: Served) -> TenzroExt {
    let body = ReceiptBody {
        weight_sha256: identity.weight_digest(&served.model),
        model: served.model,
        request_sha256: served.request_sha256,
        response_sha256: served.response_sha256,
        prompt_tokens: served.prompt_tokens,
        completion_tokens: served.completion_tokens,
        issued_at: tenzro_attest::evidence::unix_now(),
    };
    let receipt = identity.receipt(body);
    TenzroExt {
        receipt: serde_json::to_value(receipt).ok(),
        ..TenzroExt::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tenzro_attest::evidence::none::NoTee;
    use tenzro_attest::{ProviderKey, Receipt};

    fn sha(bytes: &[u8]) -> String {
        hex::encode(tenzro_attest::sha256(bytes))
    }

    #[test]
    fn text_digests_follow_the_documented_encoding() {
        let check = |texts: &[&str], encoded: &[u8]| {
            assert_eq!(hex::encode(texts_digest(texts)), sha(encoded), "{texts:?}")
        };
        check(&[], b"");
        check(&[""], &[0, 0, 0, 0, 0, 0, 0, 0]);
        check(&["Paris"], b"\0\0\0\0\0\0\0\x05Paris");
        check(&["ab", "c"], b"\0\0\0\0\0\0\0\x02ab\0\0\0\0\0\0\0\x01c");
        check(&["é"], b"\0\0\0\0\0\0\0\x02\xc3\xa9");
        // Where one choice ends and the next begins is part of what is signed.
        assert_ne!(texts_digest(&["ab", "c"]), texts_digest(&["a", "bc"]));
        assert_ne!(texts_digest(&["abc"]), texts_digest(&["abc", ""]));
    }

    #[test]
    fn embedding_digests_are_little_endian_f32() {
        let v = vec![vec![1.0f32, -0.5], vec![0.25]];
        let mut encoded = Vec::new();
        encoded.extend_from_slice(&8u64.to_be_bytes());
        encoded.extend_from_slice(&[0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xbf]);
        encoded.extend_from_slice(&4u64.to_be_bytes());
        encoded.extend_from_slice(&[0x00, 0x00, 0x80, 0x3e]);
        assert_eq!(hex::encode(embeddings_digest(&v)), sha(&encoded));
    }

    #[test]
    fn signed_receipts_verify_and_tampering_is_refused() {
        let digest = "ab".repeat(32);
        let identity = Identity::new(
            ProviderKey::from_seed(&[3; 32]),
            Box::new(NoTee),
            [("m".to_owned(), digest.clone())],
        )
        .unwrap();
        let served = Served {
            model: "m".to_owned(),
            request_sha256: tenzro_attest::sha256(b"{}"),
            response_sha256: texts_digest(&["hi"]),
            prompt_tokens: 5,
            completion_tokens: 1,
        };
        let ext = sign(&identity, served);
        assert_eq!(ext.tokens, None);
        let json = ext.receipt.unwrap();
        assert_eq!(json["weight_sha256"], digest);
        assert_eq!(json["response_sha256"], hex::encode(texts_digest(&["hi"])));
        let receipt: Receipt = serde_json::from_value(json.clone()).unwrap();
        receipt.verify(Some(&identity.public_key())).unwrap();
        let mut tampered = json;
        tampered["completion_tokens"] = 2.into();
        let tampered: Receipt = serde_json::from_value(tampered).unwrap();
        assert!(tampered.verify(Some(&identity.public_key())).is_err());
    }
}
