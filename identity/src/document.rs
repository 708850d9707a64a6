//! W3C DID documents for registered identities.
//!
//! ```json
//! {
//!   "@context": ["https://www.w3.org/ns/did/v1",
//!                "https://w3id.org/security/suites/ed25519-2020/v1"],
//!   "id": "did:tenzro:…",
//!   "controller": "did:tenzro:human:…",
//!   "verificationMethod": [{
//!     "id": "did:tenzro:…#key-1",
//!     "type": "Ed25519VerificationKey2020",
//!     "controller": "did:tenzro:…",
//!     "publicKeyMultibase": "z6Mk…"
//!   }],
//!   "authentication": ["did:tenzro:…#key-1"],
//!   "assertionMethod": ["did:tenzro:…#key-1"]
//! }
//! ```
//!
//! `controller` appears only for controlled agents. The document says nothing of
//! the lifecycle state: ask the registry whether the identity is active.

use serde_json::{Value, json};
use tenzro_attest::PublicKey;

use crate::credential::ED25519_2020_CONTEXT;
use crate::identity::Identity;

/// The W3C DID v1 context.
pub const DID_CONTEXT: &str = "https://www.w3.org/ns/did/v1";

/// The multicodec prefix of an Ed25519 public key (0xed as a varint).
const ED25519_MULTICODEC: [u8; 2] = [0xed, 0x01];

/// `z` and base58btc of the multicodec Ed25519 prefix and the 32 key bytes.
pub fn public_key_multibase(key: &PublicKey) -> String {
    let mut bytes = Vec::with_capacity(34);
    bytes.extend_from_slice(&ED25519_MULTICODEC);
    bytes.extend_from_slice(&key.to_bytes());
    format!("z{}", bs58::encode(bytes).into_string())
}

/// The DID document of `identity` (see the module docs).
pub fn did_document(identity: &Identity) -> Value {
    let did = identity.did().to_string();
    let key_id = identity.did().key_id();
    let mut document = json!({
        "@context": [DID_CONTEXT, ED25519_2020_CONTEXT],
        "id": did,
        "verificationMethod": [{
            "id": key_id,
            "type": "Ed25519VerificationKey2020",
            "controller": did,
            "publicKeyMultibase": public_key_multibase(identity.public_key()),
        }],
        "authentication": [key_id],
        "assertionMethod": [key_id],
    });
    if let (Some(controller), Value::Object(members)) = (identity.controller(), &mut document) {
        members.insert(
            "controller".to_string(),
            Value::String(controller.to_string()),
        );
    }
    document
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn multibase_is_an_ed25519_multikey() {
        let key = tenzro_attest::ProviderKey::from_seed(&[3; 32]).public_key();
        let text = public_key_multibase(&key);
        // Every base58btc Ed25519 multikey starts with these characters.
        assert!(text.starts_with("z6Mk"), "{text}");
        let bytes = bs58::decode(&text[1..]).into_vec().unwrap();
        assert_eq!(bytes[..2], ED25519_MULTICODEC);
        assert_eq!(bytes[2..], key.to_bytes());
    }
}
