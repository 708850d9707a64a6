#![expect(clippy::unwrap_used, reason = "tests")]

use crate::providers::verdict::Check;
use std::time::Duration;

use tenzro_attest::evidence::none::NoTee;
use tenzro_attest::{EvidenceSource, ProviderKey};
use tenzro_models::api::{ModelCategory, ModelInfo, RegisterRequest};

use super::*;
use crate::clock::ManualClock;
use crate::pricing::{Asset, Rates};
use crate::providers::registry::{ProviderInfo, RegistryConfig};

const W: [u8; 32] = [7; 32];
const NONCE: [u8; 32] = [9; 32];

fn info(id: &str, digest: Option<[u8; 32]>) -> ModelInfo {
    ModelInfo {
        id: id.into(),
        name: None,
        version: None,
        category: ModelCategory::Custom,
        modality: None,
        price_per_token: "1000".into(),
        max_context: None,
        parameters: None,
        formats: vec![],
        tee_required: false,
        weight_sha256: digest.map(hex::encode),
    }
}

fn models(digest: Option<[u8; 32]>) -> Vec<ModelEntry> {
    vec![ModelEntry {
        info: info("m", digest),
        price: 1000,
    }]
}

fn doc(key: &ProviderKey, nonce: &[u8], digest: [u8; 32]) -> AttestationDocument {
    let rd = report_data(REPORT_DATA_DOMAIN, &key.public_key(), &[digest], nonce);
    AttestationDocument {
        tee_kind: TeeKind::None,
        public_key: key.public_key_hex(),
        did: key.did(),
        model_digests: BTreeMap::from([("m".to_owned(), hex::encode(digest))]),
        nonce: hex::encode(nonce),
        report_data: hex::encode(rd),
        evidence: NoTee.evidence(&rd).unwrap(),
        issued_at: 0,
    }
}

fn run(d: &AttestationDocument, key: &ProviderKey, m: &[ModelEntry]) -> AttestationVerdict {
    check(
        d,
        &key.public_key(),
        "none",
        m,
        &NONCE,
        &Policy::default(),
        1_000,
    )
}

#[test]
fn none_evidence_bound_correctly_is_untrusted_but_not_slashed() {
    let key = ProviderKey::from_seed(&[1; 32]);
    let v = run(&doc(&key, &NONCE, W), &key, &models(Some(W)));
    assert!(!v.trusted && !v.slashable, "{v:?}");
    assert!(
        v.reasons.iter().any(|r| r.detail.contains("never trusted")),
        "{v:?}"
    );
    assert!(!v.failed(Check::Binding), "{v:?}");
    assert_eq!(
        (v.verified_at, v.expires_at),
        (1_000, 1_000 + Policy::default().freshness_secs)
    );
    assert!(!v.is_fresh(1_000));
}

#[test]
fn a_wrong_key_is_slashable() {
    let key = ProviderKey::from_seed(&[1; 32]);
    let other = ProviderKey::from_seed(&[2; 32]);
    let v = run(&doc(&other, &NONCE, W), &key, &models(Some(W)));
    assert!(v.slashable && !v.trusted);
    assert!(v.failed(Check::PublicKey), "{v:?}");
}

#[test]
fn a_wrong_binding_is_slashable() {
    let key = ProviderKey::from_seed(&[1; 32]);
    // Bound to another nonce (a replay), echoing ours.
    let mut d = doc(&key, &[8; 32], W);
    d.nonce = hex::encode(NONCE);
    let v = run(&d, &key, &models(Some(W)));
    assert!(v.slashable && !v.trusted);
    assert!(v.failed(Check::Binding), "{v:?}");
    assert!(
        v.reasons
            .iter()
            .any(|r| r.check == Check::Evidence && r.detail.starts_with("binding")),
        "{v:?}"
    );
}

#[test]
fn other_weights_are_slashable() {
    let key = ProviderKey::from_seed(&[1; 32]);
    let v = run(&doc(&key, &NONCE, [6; 32]), &key, &models(Some(W)));
    assert!(v.slashable);
    assert!(v.failed(Check::Weights), "{v:?}");
}

#[test]
fn a_registration_without_digests_is_untrusted_not_slashed() {
    let key = ProviderKey::from_seed(&[1; 32]);
    let v = run(&doc(&key, &NONCE, W), &key, &models(None));
    assert!(!v.trusted && !v.slashable, "{v:?}");
}

#[test]
fn declared_kind_must_match_the_evidence() {
    let key = ProviderKey::from_seed(&[1; 32]);
    let v = check(
        &doc(&key, &NONCE, W),
        &key.public_key(),
        "tdx",
        &models(Some(W)),
        &NONCE,
        &Policy::default(),
        5,
    );
    assert!(v.failed(Check::TeeKind), "{v:?}");
}

#[test]
fn slash_is_ten_percent() {
    assert_eq!(slash_amount(1_000), 100);
    assert_eq!(slash_amount(1_999_999), 199_999);
    assert_eq!(slash_amount(u128::MAX), u128::MAX / 10);
}

#[test]
fn freshness_window() {
    let v = AttestationVerdict {
        trusted: true,
        tee_kind: None,
        reasons: vec![],
        verified_at: 10,
        expires_at: 20,
        slashable: false,
    };
    assert!(!v.is_fresh(9) && v.is_fresh(10) && v.is_fresh(19) && !v.is_fresh(20));
    assert!(
        !AttestationVerdict {
            trusted: false,
            ..v
        }
        .is_fresh(15)
    );
}

fn registry_with(
    tee: &str,
) -> (
    Registry,
    Arc<ManualClock>,
    Arc<crate::providers::registry::ProviderEntry>,
) {
    let clock = ManualClock::new();
    let reg = Registry::new(RegistryConfig::default(), clock.clone());
    let key = ProviderKey::from_seed(&[1; 32]);
    let r = RegisterRequest {
        provider_id: "p".into(),
        endpoint: "http://127.0.0.1:1".into(),
        public_key: key.public_key_hex(),
        models: vec![info("m", Some(W))],
        stake: "1000000".into(),
        tee: tee.into(),
        max_concurrency: None,
        heartbeat_interval_s: None,
        timestamp: 0,
    };
    let entry = reg
        .upsert(ProviderInfo::from_registration(r, false).unwrap())
        .unwrap();
    // The routing stake of a registered provider is its bond.
    reg.set_bond("p", 1_000_000, false);
    (reg, clock, entry)
}

fn tee_candidate(reg: &Registry) -> bool {
    reg.candidates("m", Asset::Tnzo, &Rates::default())
        .into_iter()
        .any(|(_, c, _)| c.tee)
}

#[test]
fn routing_sees_only_trusted_fresh_verdicts() {
    let (reg, clock, entry) = registry_with("tdx");
    assert!(!tee_candidate(&reg), "a declared TEE alone does not count");
    assert_eq!(reg.attestation_due(), vec!["p".to_owned()]);
    let now = reg.unix_now();
    let v = AttestationVerdict {
        trusted: true,
        tee_kind: Some("tdx".into()),
        reasons: vec![],
        verified_at: now,
        expires_at: now + 100_000,
        slashable: false,
    };
    reg.record_attestation(&entry, v);
    assert!(tee_candidate(&reg));
    assert!(reg.views()[0].tee_verified);
    assert!(reg.attestation_due().is_empty());
    // The default policy's margin is a tenth of 24 h: 8640 s.
    clock.advance(Duration::from_secs(100_000 - 8_640));
    assert_eq!(
        reg.attestation_due(),
        vec!["p".to_owned()],
        "due within the last tenth"
    );
    clock.advance(Duration::from_secs(8_640));
    assert!(!tee_candidate(&reg), "expired");
    assert!(reg.slashes().is_empty());
}

#[test]
fn a_slashable_verdict_records_ten_percent() {
    let (reg, _clock, entry) = registry_with("none");
    let v = AttestationVerdict {
        trusted: false,
        tee_kind: Some("none".into()),
        reasons: vec!["binding: wrong".into()],
        verified_at: 5,
        expires_at: 10,
        slashable: true,
    };
    reg.record_attestation(&entry, v);
    let s = reg.slashes();
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].provider.as_str(), s[0].amount, s[0].detail.as_str()),
        ("p", 100000, "binding: wrong")
    );
    assert_eq!(
        s[0].reason,
        crate::money::slashing::Reason::InvalidAttestation
    );
    assert_eq!(reg.take_unsaved_slashes().len(), 1, "queued for the store");
    assert!(!tee_candidate(&reg));
    assert!(reg.attestation("p").is_some());
}

#[test]
fn served_weights_that_differ_cost_five_percent_and_lower_the_recorded_stake() {
    let (reg, _clock, entry) = registry_with("none");
    let stake = reg.stake_of(&entry);
    assert_eq!(stake, 1_000_000);
    let v = AttestationVerdict {
        trusted: false,
        tee_kind: Some("none".into()),
        reasons: vec!["weights: model m is attested with digest aa, registered with bb".into()],
        verified_at: 5,
        expires_at: 5,
        slashable: true,
    };
    reg.record_attestation(&entry, v.clone());
    let s = reg.slashes();
    assert_eq!(
        s[0].reason,
        crate::money::slashing::Reason::ModelHashMismatch
    );
    assert_eq!(s[0].amount, stake / 20);
    assert_eq!(reg.stake_of(&entry), stake - stake / 20);
    // A second offence is computed on the reduced stake.
    reg.record_attestation(&entry, v);
    let s = reg.slashes();
    assert_eq!(s[1].stake_before, stake - stake / 20);
    assert_eq!(reg.stake_of(&entry), s[1].stake_after);
    assert_eq!(reg.views()[0].stake, s[1].stake_after.to_string());
}

/// A hostile endpoint: answers `GET /v1/attestation` with `body` after `status`
/// (`Location` set for redirects); `/health` with 200 when `status` is 200, else 404.
async fn hostile(status: u16, location: Option<String>, body_bytes: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let location = location.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let health = String::from_utf8_lossy(&buf[..n]).starts_with("GET /health");
                let head = if health {
                    format!(
                        "HTTP/1.1 {} X\r\ncontent-length: 0\r\n\r\n",
                        if status == 200 { 200 } else { 404 }
                    )
                } else {
                    let loc = location
                        .map(|l| format!("location: {l}\r\n"))
                        .unwrap_or_default();
                    format!("HTTP/1.1 {status} X\r\n{loc}content-length: {body_bytes}\r\n\r\n")
                };
                if c.write_all(head.as_bytes()).await.is_err() || health {
                    return;
                }
                let zeros = vec![0u8; 64 << 10];
                let mut left = body_bytes;
                while left > 0 {
                    let k = left.min(zeros.len());
                    if c.write_all(&zeros[..k]).await.is_err() {
                        return;
                    }
                    left -= k;
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn fetches_stop_at_the_cap_and_never_follow_redirects() {
    let v = Verifier::new(true).unwrap();
    // 1 GiB of zeros (declared in content-length).
    let big = hostile(200, None, 1 << 30).await;
    let err = fetch(&v.client, &big, &[0; 32]).await.unwrap_err();
    assert!(err.contains("over 1048576 bytes"), "{err}");
    // A redirect to a private address is an answer, not followed.
    let target = hostile(200, None, 10).await;
    let redirect = hostile(302, Some(format!("{target}/v1/attestation")), 0).await;
    let err = fetch(&v.client, &redirect, &[0; 32]).await.unwrap_err();
    assert!(err.contains("302"), "{err}");
    assert!(!probe_health(&v.client, &redirect).await);
}

#[tokio::test]
async fn an_unreachable_or_hostile_endpoint_never_enters_routing() {
    let (reg, _clock, entry) = registry_with("none");
    let v = Verifier::new(true).unwrap();
    let id = entry.info.id.clone();
    let verdict = verify_provider(&reg, &v, &id).await.unwrap();
    assert!(!verdict.trusted && !verdict.slashable);
    assert!(!reg.is_reached(&id), "127.0.0.1:1 answers nothing");
    // Banned providers are not fetched at all.
    reg.ban(&id, "test").unwrap();
    assert!(verify_provider(&reg, &v, &id).await.is_none());
}

#[tokio::test]
async fn names_resolving_to_private_addresses_are_not_fetched() {
    let target = hostile(200, None, 10).await;
    let port = target.rsplit(':').next().unwrap().to_owned();
    let name = format!("http://localhost:{port}");
    assert!(
        probe_health(&Verifier::new(true).unwrap().client, &name).await,
        "development: allowed"
    );
    let v = Verifier::new(false).unwrap();
    assert!(fetch(&v.client, &name, &[0; 32]).await.is_err());
    assert!(
        !probe_health(&v.client, &name).await,
        "localhost resolves to loopback only"
    );
}
