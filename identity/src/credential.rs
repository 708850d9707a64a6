//! Verifiable credentials in the W3C VC data model (v1) with an Ed25519 proof.
//!
//! The JSON shape:
//!
//! ```json
//! {
//!   "@context": ["https://www.w3.org/2018/credentials/v1",
//!                "https://w3id.org/security/suites/ed25519-2020/v1"],
//!   "type": ["VerifiableCredential", "KycCredential"],
//!   "issuer": "did:tenzro:machine:…",
//!   "issuanceDate": "2025-01-01T00:00:00Z",
//!   "expirationDate": "2026-01-01T00:00:00Z",
//!   "credentialSubject": {"id": "did:tenzro:human:…", "kycTier": 2},
//!   "proof": {
//!     "type": "Ed25519Signature2020",
//!     "created": "2025-01-01T00:00:00Z",
//!     "verificationMethod": "did:tenzro:machine:…#key-1",
//!     "proofPurpose": "assertionMethod",
//!     "proofValue": "z…"
//!   }
//! }
//! ```
//!
//! The proof signs [`VC_DOMAIN`] followed by the canonical JSON (see
//! [`crate::canonical`]) of the credential without its `proof` member. `proofValue`
//! is the 64-byte signature in multibase base58btc (`z` then base58). Everything in
//! `proof` is either signed or fixed: the type, purpose and `{issuer}#key-1` method
//! are required as written and `created` must equal `issuanceDate`.
//!
//! Dates are `YYYY-MM-DDTHH:MM:SSZ` (see [`crate::date`]); claims hold strings,
//! integers, booleans, null, arrays and objects, never floats. Unknown members at the
//! top level or in `proof` are refused; `credentialSubject` takes any claims.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tenzro_attest::{ProviderKey, PublicKey, Signature};

use crate::did::Did;
use crate::kyc::{KYC_CREDENTIAL_TYPE, KYC_TIER_CLAIM, KycTier};
use crate::{Error, canonical, date};

/// Domain tag that prefixes the signed bytes of a credential.
pub const VC_DOMAIN: &[u8] = b"tenzro/vc/v1\n";
/// The W3C VC v1 context; it must come first in `@context`.
pub const VC_CONTEXT: &str = "https://www.w3.org/2018/credentials/v1";
/// The Ed25519 2020 suite's context, added as the second `@context` entry.
pub const ED25519_2020_CONTEXT: &str = "https://w3id.org/security/suites/ed25519-2020/v1";
/// The type every credential has.
pub const VC_TYPE: &str = "VerifiableCredential";
/// The only proof type accepted.
pub const PROOF_TYPE: &str = "Ed25519Signature2020";
/// The only proof purpose accepted.
pub const PROOF_PURPOSE: &str = "assertionMethod";

/// A verifiable credential with its proof. Fields are public so that callers can
/// read claims; any change to a signed field makes [`Credential::verify`] fail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// JSON-LD contexts; the first is [`VC_CONTEXT`].
    #[serde(rename = "@context")]
    pub context: Vec<String>,
    /// Types; one is [`VC_TYPE`].
    #[serde(rename = "type")]
    pub types: Vec<String>,
    /// Who vouches for the claims.
    pub issuer: Did,
    /// Unix seconds; written `issuanceDate`. Not valid before it.
    #[serde(rename = "issuanceDate", with = "date::serde_seconds")]
    pub issued_at: u64,
    /// Unix seconds; written `expirationDate`. Valid strictly before it.
    #[serde(
        rename = "expirationDate",
        with = "date::serde_seconds_opt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<u64>,
    /// Whom the claims are about, and the claims.
    #[serde(rename = "credentialSubject")]
    pub subject: CredentialSubject,
    /// The issuer's signature.
    pub proof: Proof,
}

/// `credentialSubject`: the subject's DID and the claims about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CredentialSubject {
    /// The subject.
    pub id: Did,
    /// Every other member, e.g. `"kycTier": 2`.
    #[serde(flatten)]
    pub claims: Map<String, Value>,
}

/// `proof`: an `Ed25519Signature2020` by the issuer's `#key-1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Proof {
    /// [`PROOF_TYPE`].
    #[serde(rename = "type")]
    pub proof_type: String,
    /// Unix seconds; equal to the issuance date.
    #[serde(with = "date::serde_seconds")]
    pub created: u64,
    /// `{issuer}#key-1`.
    pub verification_method: String,
    /// [`PROOF_PURPOSE`].
    pub proof_purpose: String,
    /// `z` and the base58btc signature.
    pub proof_value: String,
}

/// What an issuer states, before signing.
#[derive(Clone, Debug, PartialEq)]
pub struct CredentialBody {
    /// The type besides `VerifiableCredential`, e.g. `KycCredential`.
    pub credential_type: String,
    /// The issuer's DID; the proof names its `#key-1`.
    pub issuer: Did,
    /// The subject's DID.
    pub subject: Did,
    /// The claims (no `id`: that is the subject).
    pub claims: Map<String, Value>,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds, or `None` for a credential that does not expire.
    pub expires_at: Option<u64>,
}

impl CredentialBody {
    /// A `KycCredential` stating `{"kycTier": tier}` about `subject`.
    pub fn kyc(issuer: Did, subject: Did, tier: KycTier, issued_at: u64, expires_at: u64) -> Self {
        let mut claims = Map::new();
        claims.insert(KYC_TIER_CLAIM.to_string(), Value::from(tier.get()));
        Self {
            credential_type: KYC_CREDENTIAL_TYPE.to_string(),
            issuer,
            subject,
            claims,
            issued_at,
            expires_at: Some(expires_at),
        }
    }
}

impl Credential {
    /// Signs `body` with the issuer's key.
    pub fn issue(body: CredentialBody, key: &ProviderKey) -> Result<Self, Error> {
        let kind = &body.credential_type;
        if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "the credential type must be printable ASCII without spaces",
            ));
        }
        if body.claims.contains_key("id") {
            return Err(invalid("claims may not hold \"id\"; it is the subject"));
        }
        let mut types = vec![VC_TYPE.to_string()];
        if kind != VC_TYPE {
            types.push(body.credential_type);
        }
        let mut credential = Self {
            context: vec![VC_CONTEXT.to_string(), ED25519_2020_CONTEXT.to_string()],
            types,
            proof: Proof {
                proof_type: PROOF_TYPE.to_string(),
                created: body.issued_at,
                verification_method: body.issuer.key_id(),
                proof_purpose: PROOF_PURPOSE.to_string(),
                proof_value: String::new(),
            },
            issuer: body.issuer,
            issued_at: body.issued_at,
            expires_at: body.expires_at,
            subject: CredentialSubject {
                id: body.subject,
                claims: body.claims,
            },
        };
        credential.check_shape()?;
        let signature = key.sign(&credential.signed_bytes()?);
        credential.proof.proof_value =
            format!("z{}", bs58::encode(signature.to_bytes()).into_string());
        Ok(credential)
    }

    /// Checks the shape and the signature against `issuer_key`, and that the
    /// credential is in force at `now` (unix seconds).
    pub fn verify(&self, issuer_key: &PublicKey, now: u64) -> Result<(), Error> {
        self.verify_signature(issuer_key)?;
        if now < self.issued_at {
            return Err(Error::NotYetValid {
                issued_at: self.issued_at,
                now,
            });
        }
        match self.expires_at {
            Some(expires_at) if now >= expires_at => Err(Error::Expired { expires_at, now }),
            _ => Ok(()),
        }
    }

    /// Checks the shape and the signature against `issuer_key`, whatever the time.
    pub fn verify_signature(&self, issuer_key: &PublicKey) -> Result<(), Error> {
        self.check_shape()?;
        let signature = self.signature()?;
        if issuer_key.verify(&self.signed_bytes()?, &signature) {
            Ok(())
        } else {
            Err(Error::BadSignature(self.issuer.clone()))
        }
    }

    /// Whether `credential_type` is among its types.
    pub fn has_type(&self, credential_type: &str) -> bool {
        self.types.iter().any(|t| t == credential_type)
    }

    /// The rules on every member except the signature itself.
    fn check_shape(&self) -> Result<(), Error> {
        if self.context.first().map(String::as_str) != Some(VC_CONTEXT) {
            return Err(invalid(
                "\"@context\" must start with the W3C credentials v1 context",
            ));
        }
        if !self.has_type(VC_TYPE) {
            return Err(invalid("\"type\" must include VerifiableCredential"));
        }
        if self
            .expires_at
            .is_some_and(|expiry| expiry <= self.issued_at)
        {
            return Err(invalid("it expires before it is issued"));
        }
        if self.issued_at > date::MAX_UNIX_SECONDS
            || self.expires_at.is_some_and(|e| e > date::MAX_UNIX_SECONDS)
        {
            return Err(invalid("dates must be before the year 10000"));
        }
        let proof = &self.proof;
        if proof.proof_type != PROOF_TYPE {
            return Err(invalid("proof type must be Ed25519Signature2020"));
        }
        if proof.proof_purpose != PROOF_PURPOSE {
            return Err(invalid("proof purpose must be assertionMethod"));
        }
        if proof.verification_method != self.issuer.key_id() {
            return Err(invalid(
                "proof verification method must be the issuer's #key-1",
            ));
        }
        if proof.created != self.issued_at {
            return Err(invalid("proof created must equal the issuance date"));
        }
        Ok(())
    }

    /// The signature decoded from `proofValue`.
    fn signature(&self) -> Result<Signature, Error> {
        let text = &self.proof.proof_value;
        // 64 bytes take at most 88 base58 characters; refuse more before decoding.
        let encoded = text
            .strip_prefix('z')
            .filter(|rest| rest.len() <= 88)
            .ok_or_else(|| invalid("proofValue must be 'z' and a base58btc signature"))?;
        let bytes = bs58::decode(encoded)
            .into_vec()
            .map_err(|_| invalid("proofValue is not base58btc"))?;
        let bytes: [u8; 64] = bytes
            .try_into()
            .map_err(|_| invalid("proofValue must hold a 64-byte signature"))?;
        Ok(Signature::from_bytes(&bytes))
    }

    /// [`VC_DOMAIN`] and the canonical JSON of the credential without `proof`.
    fn signed_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut value = serde_json::to_value(self).map_err(|e| invalid(&e.to_string()))?;
        if let Value::Object(members) = &mut value {
            members.remove("proof");
        }
        let text = canonical::to_string(&value)?;
        let mut bytes = Vec::with_capacity(VC_DOMAIN.len() + text.len());
        bytes.extend_from_slice(VC_DOMAIN);
        bytes.extend_from_slice(text.as_bytes());
        Ok(bytes)
    }
}

fn invalid(reason: &str) -> Error {
    Error::Credential(reason.to_string())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use serde_json::json;

    use super::*;

    const T0: u64 = 1_735_689_600; // 2025-01-01T00:00:00Z
    const YEAR: u64 = 365 * 86_400;

    fn issuer_key() -> ProviderKey {
        ProviderKey::from_seed(&[1; 32])
    }

    fn issuer() -> Did {
        issuer_key().did().parse().unwrap()
    }

    fn subject() -> Did {
        "did:tenzro:human:0f8fad5b-d9cb-469f-a165-70867728950e"
            .parse()
            .unwrap()
    }

    fn kyc(tier: u8) -> Credential {
        let body = CredentialBody::kyc(
            issuer(),
            subject(),
            KycTier::new(tier).unwrap(),
            T0,
            T0 + YEAR,
        );
        Credential::issue(body, &issuer_key()).unwrap()
    }

    #[test]
    fn w3c_shape() {
        let vc = serde_json::to_value(kyc(2)).unwrap();
        assert_eq!(vc["@context"][0], VC_CONTEXT);
        assert_eq!(vc["type"], json!(["VerifiableCredential", "KycCredential"]));
        assert_eq!(vc["issuer"], issuer().to_string());
        assert_eq!(vc["issuanceDate"], "2025-01-01T00:00:00Z");
        assert_eq!(vc["expirationDate"], "2026-01-01T00:00:00Z");
        assert_eq!(
            vc["credentialSubject"],
            json!({"id": subject().to_string(), "kycTier": 2})
        );
        let proof = &vc["proof"];
        assert_eq!(proof["type"], "Ed25519Signature2020");
        assert_eq!(proof["created"], "2025-01-01T00:00:00Z");
        assert_eq!(proof["verificationMethod"], format!("{}#key-1", issuer()));
        assert_eq!(proof["proofPurpose"], "assertionMethod");
        assert!(proof["proofValue"].as_str().unwrap().starts_with('z'));
    }

    #[test]
    fn verifies_and_survives_json() {
        let vc = kyc(2);
        let key = issuer_key().public_key();
        vc.verify(&key, T0).unwrap();
        assert_eq!(vc.kyc_tier(), Some(KycTier::new(2).unwrap()));
        let text = serde_json::to_string_pretty(&vc).unwrap();
        let back: Credential = serde_json::from_str(&text).unwrap();
        assert_eq!(back, vc);
        back.verify(&key, T0 + 1).unwrap();
    }

    #[test]
    fn time_window() {
        let vc = kyc(1);
        let key = issuer_key().public_key();
        assert!(matches!(
            vc.verify(&key, T0 - 1),
            Err(Error::NotYetValid { .. })
        ));
        vc.verify(&key, T0 + YEAR - 1).unwrap();
        assert!(matches!(
            vc.verify(&key, T0 + YEAR),
            Err(Error::Expired { .. })
        ));
    }

    /// Applies `tamper` to a fresh credential and expects verification to fail.
    fn check_tamper(what: &str, tamper: impl FnOnce(&mut Credential)) {
        let mut vc = kyc(2);
        tamper(&mut vc);
        let result = vc.verify(&issuer_key().public_key(), T0 + 10);
        assert!(result.is_err(), "{what}: tampered credential verified");
    }

    #[test]
    fn tampering_fails() {
        check_tamper("claim", |vc| {
            vc.subject.claims.insert("kycTier".into(), json!(3));
        });
        check_tamper("extra claim", |vc| {
            vc.subject.claims.insert("admin".into(), json!(true));
        });
        check_tamper("subject", |vc| {
            vc.subject.id = "did:tenzro:human:7c9e6679-7425-40de-944b-e07fc1f90ae7"
                .parse()
                .unwrap();
        });
        check_tamper("expiry", |vc| vc.expires_at = Some(T0 + 2 * YEAR));
        check_tamper("no expiry", |vc| vc.expires_at = None);
        check_tamper("issuance", |vc| {
            vc.issued_at -= 1;
            vc.proof.created -= 1;
        });
        check_tamper("type", |vc| vc.types[1] = "EmailCredential".into());
        check_tamper("context", |vc| {
            vc.context.push("https://example.invalid".into())
        });
        check_tamper("created", |vc| vc.proof.created += 1);
        check_tamper("purpose", |vc| {
            vc.proof.proof_purpose = "authentication".into()
        });
        check_tamper("issuer", |vc| {
            let other: Did = ProviderKey::from_seed(&[2; 32]).did().parse().unwrap();
            vc.proof.verification_method = other.key_id();
            vc.issuer = other;
        });
        check_tamper("signature", |vc| {
            let z = vc.proof.proof_value.strip_prefix('z').unwrap();
            let mut sig = bs58::decode(z).into_vec().unwrap();
            sig[10] ^= 1;
            vc.proof.proof_value = format!("z{}", bs58::encode(sig).into_string());
        });
        check_tamper("signature encoding", |vc| {
            vc.proof.proof_value.remove(0);
        });
        check_tamper("signature junk", |vc| vc.proof.proof_value = "z0OIl".into());
        check_tamper("signature length", |vc| {
            vc.proof.proof_value.push_str(&"1".repeat(200))
        });
    }

    #[test]
    fn wrong_key_fails() {
        let other = ProviderKey::from_seed(&[9; 32]).public_key();
        assert!(matches!(
            kyc(1).verify(&other, T0),
            Err(Error::BadSignature(_))
        ));
    }

    #[test]
    fn tampered_json_text_fails() {
        let key = issuer_key().public_key();
        let text = serde_json::to_string(&kyc(2)).unwrap();
        let tampered = text.replace("\"kycTier\":2", "\"kycTier\":3");
        assert_ne!(tampered, text);
        let vc: Credential = serde_json::from_str(&tampered).unwrap();
        assert!(matches!(vc.verify(&key, T0), Err(Error::BadSignature(_))));
        let with_float = text.replace("\"kycTier\":2", "\"kycTier\":2.0");
        let vc: Credential = serde_json::from_str(&with_float).unwrap();
        assert!(matches!(vc.verify(&key, T0), Err(Error::Canonical(_))));
        let extra = text.replacen('{', "{\"id\":\"urn:x\",", 1);
        assert!(serde_json::from_str::<Credential>(&extra).is_err());
    }

    #[test]
    fn issue_refuses_bad_bodies() {
        let mut body = CredentialBody::kyc(issuer(), subject(), KycTier::MAX, T0, T0);
        assert!(
            Credential::issue(body.clone(), &issuer_key()).is_err(),
            "expires at issuance"
        );
        body.expires_at = None;
        body.claims.insert("score".into(), json!(0.5));
        assert!(matches!(
            Credential::issue(body.clone(), &issuer_key()),
            Err(Error::Canonical(_))
        ));
        body.claims.remove("score");
        body.claims.insert("id".into(), json!("x"));
        assert!(Credential::issue(body.clone(), &issuer_key()).is_err());
        body.claims.remove("id");
        body.credential_type = "two words".into();
        assert!(Credential::issue(body.clone(), &issuer_key()).is_err());
        body.credential_type = "EmailCredential".into();
        let vc = Credential::issue(body, &issuer_key()).unwrap();
        assert_eq!(vc.expires_at, None);
        vc.verify(&issuer_key().public_key(), u64::MAX).unwrap();
        assert_eq!(vc.kyc_tier(), None, "not a KycCredential");
    }
}
