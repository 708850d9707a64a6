//! The provider's identity and its attestation: the Ed25519 key, the TEE evidence
//! source chosen by `[attestation] kind`, and the document `GET /v1/attestation`
//! answers. Plain functions; the HTTP handler in `info` only extracts and converts.
//!
//! The key lives at `[identity] key_path` (default `.tenzro/provider.key`, relative to
//! the working directory), created with mode 0600 on first start and never logged;
//! only its public half and DID are.
//!
//! The evidence is produced over
//! `report_data(REPORT_DATA_DOMAIN, public_key, weight digests of every served model,
//! nonce)` (see `tenzro_attest::binding` for the exact encoding), so a verifier that
//! recomputes it from the document's `public_key`, `model_digests` and its own nonce
//! knows the evidence speaks for this key and these weights, now.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tenzro_attest::binding::{REPORT_DATA_DOMAIN, report_data};
use tenzro_attest::evidence::none::NoTee;
use tenzro_attest::evidence::tsm::ConfigfsTsm;
use tenzro_attest::evidence::unix_now;
use tenzro_attest::{
    Evidence, EvidenceSource, ProviderKey, PublicKey, Receipt, ReceiptBody, TeeKind,
};

use crate::config::{AttestationConfig, IdentityConfig};

/// Shortest nonce accepted, in bytes: a verifier's challenge must not be guessable.
pub const MIN_NONCE_BYTES: usize = 16;
/// Longest nonce accepted, in bytes.
pub const MAX_NONCE_BYTES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("provider key: {0}")]
    Key(#[source] tenzro_attest::Error),
    #[error("model `{model}`: weight digest `{digest}` is not 64 hex digits")]
    Digest { model: String, digest: String },
    #[error("attestation kind `{0}` needs a provider built with the `nvidia` feature")]
    NotBuilt(TeeKind),
    #[error("attestation kind `{kind}` is configured but evidence cannot be produced: {source}")]
    Evidence {
        kind: TeeKind,
        source: tenzro_attest::Error,
    },
}

/// Why a `nonce` query was refused (answered as 400 naming `nonce`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NonceError {
    #[error(
        "`nonce` is required: GET /v1/attestation?nonce=HEX ({MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes)"
    )]
    Missing,
    #[error("`nonce` must be hex (0-9, a-f), an even number of digits")]
    NotHex,
    #[error("`nonce` must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes ({min} to {max} hex digits), got {0} hex digits", min = 2 * MIN_NONCE_BYTES, max = 2 * MAX_NONCE_BYTES)]
    Length(usize),
}

/// A verifier's challenge, checked: hex, [`MIN_NONCE_BYTES`] to [`MAX_NONCE_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nonce(Vec<u8>);

impl Nonce {
    /// The nonce from a raw query string (`nonce=HEX`, other parameters ignored).
    pub fn from_query(query: Option<&str>) -> Result<Nonce, NonceError> {
        let value = query
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("nonce="))
            .ok_or(NonceError::Missing)?;
        Nonce::from_hex(value)
    }

    pub fn from_hex(text: &str) -> Result<Nonce, NonceError> {
        if text.is_empty() {
            return Err(NonceError::Missing);
        }
        if text.len() < 2 * MIN_NONCE_BYTES || text.len() > 2 * MAX_NONCE_BYTES {
            return Err(NonceError::Length(text.len()));
        }
        hex::decode(text).map(Nonce).map_err(|_| NonceError::NotHex)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What `GET /v1/attestation` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttestationDocument {
    /// Always `tenzro.attestation`.
    pub object: String,
    /// `none`, `tdx`, `sev-snp` or `nvidia-cc`.
    pub tee_kind: TeeKind,
    /// The provider's Ed25519 public key, hex.
    pub public_key: PublicKey,
    /// `did:tenzro:machine:{uuid}`, derived from the public key.
    pub did: String,
    /// Every served model id and the SHA-256 (hex) of its weights.
    pub model_digests: BTreeMap<String, String>,
    /// The verifier's nonce, echoed (hex).
    pub nonce: String,
    /// The domain tag of the binding (`tenzro/attest/report-data/v1`).
    pub domain: String,
    /// `report_data(domain, public_key, model digests, nonce)`, hex (64 bytes).
    pub report_data: String,
    /// The evidence, produced over `report_data`.
    pub evidence: Evidence,
    /// When it was produced, unix seconds.
    pub issued_at: u64,
}

/// The provider's key, its evidence source and the digests of what it serves.
pub struct Identity {
    key: ProviderKey,
    source: Box<dyn EvidenceSource>,
    /// Model id -> SHA-256 of its weights.
    digests: BTreeMap<String, [u8; 32]>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.key.public_key_hex())
            .field("tee_kind", &self.source.kind())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads (or makes) the key, opens the evidence source and produces one piece of
    /// evidence, so a provider configured for a TEE it does not have refuses to start.
    /// `digests` maps each served model id to its weights' SHA-256 in hex.
    pub fn load(
        identity: &IdentityConfig,
        attestation: &AttestationConfig,
        digests: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Identity, IdentityError> {
        let key = ProviderKey::load_or_create(&identity.key_path).map_err(IdentityError::Key)?;
        let me = Identity::new(key, evidence_source(attestation)?, digests)?;
        me.document(&Nonce(vec![0; MIN_NONCE_BYTES]))
            .map_err(|source| IdentityError::Evidence {
                kind: attestation.kind,
                source,
            })?;
        Ok(me)
    }

    /// An identity from parts (tests, and evidence built by tests).
    pub fn new(
        key: ProviderKey,
        source: Box<dyn EvidenceSource>,
        digests: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Identity, IdentityError> {
        let mut parsed = BTreeMap::new();
        for (model, digest) in digests {
            let mut bytes = [0u8; 32];
            if hex::decode_to_slice(&digest, &mut bytes).is_err() {
                return Err(IdentityError::Digest { model, digest });
            }
            parsed.insert(model, bytes);
        }
        Ok(Identity {
            key,
            source,
            digests: parsed,
        })
    }

    pub fn key(&self) -> &ProviderKey {
        &self.key
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    pub fn did(&self) -> String {
        self.key.did()
    }

    pub fn tee_kind(&self) -> TeeKind {
        self.source.kind()
    }

    /// The SHA-256 of `model`'s weights; all zeros for a model not served (never
    /// reached: handlers look the model up first).
    pub fn weight_digest(&self, model: &str) -> [u8; 32] {
        self.digests.get(model).copied().unwrap_or([0; 32])
    }

    /// The report data for `nonce`: binds this key and every served weight digest.
    pub fn report_data(&self, nonce: &Nonce) -> [u8; 64] {
        let digests: Vec<[u8; 32]> = self.digests.values().copied().collect();
        report_data(
            REPORT_DATA_DOMAIN,
            &self.public_key(),
            &digests,
            nonce.as_bytes(),
        )
    }

    /// Produces evidence for `nonce` and the document around it. May block (TEE
    /// devices): call it off the async runtime.
    pub fn document(&self, nonce: &Nonce) -> Result<AttestationDocument, tenzro_attest::Error> {
        let data = self.report_data(nonce);
        let evidence = self.source.evidence(&data)?;
        Ok(AttestationDocument {
            object: "tenzro.attestation".to_owned(),
            tee_kind: self.source.kind(),
            public_key: self.public_key(),
            did: self.did(),
            model_digests: self
                .digests
                .iter()
                .map(|(m, d)| (m.clone(), hex::encode(d)))
                .collect(),
            nonce: hex::encode(nonce.as_bytes()),
            domain: String::from_utf8_lossy(REPORT_DATA_DOMAIN).into_owned(),
            report_data: hex::encode(data),
            evidence,
            issued_at: unix_now(),
        })
    }

    /// Signs a receipt for one response (see `receipt` for the digests).
    pub fn receipt(&self, body: ReceiptBody) -> Receipt {
        body.sign(&self.key)
    }
}

/// The evidence source `[attestation]` selects.
pub fn evidence_source(cfg: &AttestationConfig) -> Result<Box<dyn EvidenceSource>, IdentityError> {
    match cfg.kind {
        TeeKind::None => Ok(Box::new(NoTee)),
        kind @ (TeeKind::Tdx | TeeKind::SevSnp) => {
            let source = ConfigfsTsm::new(kind, cfg.tsm_dir.clone())
                .map_err(|source| IdentityError::Evidence { kind, source })?;
            Ok(Box::new(source))
        }
        TeeKind::NvidiaCc => nvidia(cfg),
    }
}

#[cfg(feature = "nvidia")]
fn nvidia(cfg: &AttestationConfig) -> Result<Box<dyn EvidenceSource>, IdentityError> {
    let source = tenzro_attest::evidence::nvml::Nvml::new(cfg.gpu_index).map_err(|source| {
        IdentityError::Evidence {
            kind: TeeKind::NvidiaCc,
            source,
        }
    })?;
    Ok(Box::new(source))
}

#[cfg(not(feature = "nvidia"))]
fn nvidia(_cfg: &AttestationConfig) -> Result<Box<dyn EvidenceSource>, IdentityError> {
    Err(IdentityError::NotBuilt(TeeKind::NvidiaCc))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tenzro_attest::evidence::{self, VerifyContext};
    use tenzro_attest::{Policy, check_binding};

    const D1: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
    const D2: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

    fn identity() -> Identity {
        let digests = [
            ("chat".to_owned(), D1.to_owned()),
            ("embed".to_owned(), D2.to_owned()),
        ];
        Identity::new(ProviderKey::from_seed(&[7; 32]), Box::new(NoTee), digests).unwrap()
    }

    #[test]
    fn nonces_are_checked() {
        let check = |query: Option<&str>, expect: Result<usize, NonceError>| {
            assert_eq!(
                Nonce::from_query(query).map(|n| n.as_bytes().len()),
                expect,
                "{query:?}"
            );
        };
        let ok32 = "ab".repeat(32);
        check(Some(&format!("nonce={ok32}")), Ok(32));
        check(Some(&format!("x=1&nonce={}&y=2", "00".repeat(16))), Ok(16));
        check(Some(&format!("nonce={}", "ff".repeat(64))), Ok(64));
        check(None, Err(NonceError::Missing));
        check(Some(""), Err(NonceError::Missing));
        check(Some("nonce="), Err(NonceError::Missing));
        check(Some("other=abcd"), Err(NonceError::Missing));
        check(
            Some(&format!("nonce={}", "ab".repeat(15))),
            Err(NonceError::Length(30)),
        );
        check(
            Some(&format!("nonce={}", "ab".repeat(65))),
            Err(NonceError::Length(130)),
        );
        check(
            Some(&format!("nonce={}g", "a".repeat(33))),
            Err(NonceError::NotHex),
        );
        check(
            Some(&format!("nonce={}", "a".repeat(33))),
            Err(NonceError::NotHex),
        );
        check(
            Some(&format!("nonce=%20{}", "ab".repeat(16))),
            Err(NonceError::NotHex),
        );
    }

    #[test]
    fn document_binds_key_weights_and_nonce() {
        let id = identity();
        let nonce = Nonce::from_hex(&"5a".repeat(32)).unwrap();
        let doc = id.document(&nonce).unwrap();
        assert_eq!(doc.tee_kind, TeeKind::None);
        assert_eq!(doc.did, id.did());
        assert_eq!(doc.model_digests["chat"], D1);
        assert_eq!(doc.nonce, "5a".repeat(32));
        // The none evidence is the report data itself.
        assert_eq!(hex::encode(&doc.evidence.report), doc.report_data);
        let digests: Vec<[u8; 32]> = [D2, D1]
            .iter()
            .map(|d| hex::decode(d).unwrap().try_into().unwrap())
            .collect();
        check_binding(
            &doc.evidence.report,
            REPORT_DATA_DOMAIN,
            &id.public_key(),
            &digests,
            nonce.as_bytes(),
        )
        .unwrap();
        // Another nonce, another key or other weights do not bind.
        assert!(
            check_binding(
                &doc.evidence.report,
                REPORT_DATA_DOMAIN,
                &id.public_key(),
                &digests,
                &[0; 32]
            )
            .is_err()
        );
        assert!(
            check_binding(
                &doc.evidence.report,
                REPORT_DATA_DOMAIN,
                &id.public_key(),
                &digests[..1],
                nonce.as_bytes()
            )
            .is_err()
        );
        let other = ProviderKey::from_seed(&[8; 32]).public_key();
        assert!(
            check_binding(
                &doc.evidence.report,
                REPORT_DATA_DOMAIN,
                &other,
                &digests,
                nonce.as_bytes()
            )
            .is_err()
        );
        // The attest crate's verifier agrees: binding holds, but `none` is never trusted.
        let policy = Policy::default();
        let ctx = VerifyContext {
            now: unix_now(),
            policy: &policy,
            report_data: Some(id.report_data(&nonce)),
            tdx_collateral: None,
        };
        let verdict = evidence::verify(&doc.evidence, &ctx);
        assert!(!verdict.trusted);
        assert!(
            verdict.checks.iter().any(|c| c.name == "binding" && c.ok),
            "{verdict:?}"
        );
    }

    #[test]
    fn document_round_trips_through_json() {
        let doc = identity()
            .document(&Nonce::from_hex(&"01".repeat(16)).unwrap())
            .unwrap();
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["tee_kind"], "none");
        assert_eq!(json["public_key"].as_str().unwrap().len(), 64);
        assert!(
            json["did"]
                .as_str()
                .unwrap()
                .starts_with("did:tenzro:machine:")
        );
        let back: AttestationDocument = serde_json::from_value(json).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn key_is_made_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = IdentityConfig {
            key_path: dir.path().join("sub/provider.key"),
        };
        let a = Identity::load(
            &cfg,
            &AttestationConfig::default(),
            [("m".to_owned(), D1.to_owned())],
        )
        .unwrap();
        let b = Identity::load(&cfg, &AttestationConfig::default(), []).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&cfg.key_path)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The secret never shows in Debug.
        let secret = std::fs::read_to_string(&cfg.key_path).unwrap();
        assert!(!format!("{a:?}").contains(secret.trim()));
    }

    #[test]
    fn unusable_configs_refuse_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let key = IdentityConfig {
            key_path: dir.path().join("k"),
        };
        let tdx = AttestationConfig {
            kind: TeeKind::Tdx,
            tsm_dir: dir.path().join("no-tsm"),
            ..Default::default()
        };
        let err = Identity::load(&key, &tdx, []).unwrap_err();
        assert!(
            matches!(
                err,
                IdentityError::Evidence {
                    kind: TeeKind::Tdx,
                    ..
                }
            ),
            "{err}"
        );
        let bad = Identity::new(
            ProviderKey::from_seed(&[1; 32]),
            Box::new(NoTee),
            [("m".to_owned(), "xyz".to_owned())],
        );
        assert!(matches!(bad, Err(IdentityError::Digest { .. })));
        #[cfg(not(feature = "nvidia"))]
        {
            let nv = AttestationConfig {
                kind: TeeKind::NvidiaCc,
                ..Default::default()
            };
            assert!(matches!(
                Identity::load(&key, &nv, []),
                Err(IdentityError::NotBuilt(TeeKind::NvidiaCc))
            ));
        }
    }
}
