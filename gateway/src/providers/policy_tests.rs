//! `[attestation.policy]`: each rule refuses a real vector that breaks it and
//! accepts one that meets it (vectors in `gateway/tests/vectors`, times inside
//! their windows), and a malformed policy names its field.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;

use tenzro_attest::evidence::{self, Collateral, VerifyContext};
use tenzro_attest::{Evidence, ProviderKey, TeeKind, Verdict};

use super::*;
use crate::providers::attestation::{AttestationDocument, check_with};
use crate::providers::collateral::Found;

const TDX_QUOTE: &[u8] = include_bytes!("../../tests/vectors/tdx_quote");
const TDX_COLLATERAL: &str = include_str!("../../tests/vectors/tdx_quote_collateral.json");
const TDX_NOW: u64 = 1_752_919_234;
const TDX_MRTD: &str = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7";
const ZERO48: &str = "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
const MILAN_HEX: &[u8] = include_bytes!("../../tests/vectors/report_milan.hex");
const MILAN_VCEK: &[u8] = include_bytes!("../../tests/vectors/vcek_milan.der");
const MILAN_MEASUREMENT: &str = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";
const DSTACK_BIN: &[u8] = include_bytes!("../../tests/vectors/sev_snp_attestation.bin");
const DSTACK_VCEK: &[u8] = include_bytes!("../../tests/vectors/sev_snp_vcek.pem");
/// 2026-09-21: inside both SEV-SNP VCEKs' validity.
const SNP_NOW: u64 = 1_790_000_000;
const HOPPER_REPORT: &[u8] = include_bytes!("../../tests/vectors/hopperAttestationReport.txt");
const HOPPER_CERTS: &[u8] = include_bytes!("../../tests/vectors/hopperCertChain.txt");

fn policy(text: &str) -> Policy {
    parse_policy(&toml::from_str(text).unwrap()).unwrap()
}

fn verify(p: &Policy, e: &Evidence, now: u64) -> Verdict {
    let col = Collateral::from_json(TDX_COLLATERAL).unwrap();
    let ctx = VerifyContext {
        now,
        policy: p,
        report_data: None,
        tdx_collateral: Some(&col),
    };
    evidence::verify(e, &ctx)
}

fn tdx() -> Evidence {
    Evidence {
        kind: TeeKind::Tdx,
        report: TDX_QUOTE.to_vec(),
        certs: vec![],
    }
}

fn milan() -> Evidence {
    Evidence {
        kind: TeeKind::SevSnp,
        report: tenzro_attest::input::blob(MILAN_HEX),
        certs: MILAN_VCEK.to_vec(),
    }
}

fn dstack() -> Evidence {
    Evidence {
        kind: TeeKind::SevSnp,
        report: DSTACK_BIN[4..1188].to_vec(),
        certs: DSTACK_VCEK.to_vec(),
    }
}

fn hopper() -> Evidence {
    Evidence {
        kind: TeeKind::NvidiaCc,
        report: tenzro_attest::input::blob(HOPPER_REPORT),
        certs: HOPPER_CERTS.to_vec(),
    }
}

/// Trusted, or refused on exactly the named rule.
fn accepts(v: &Verdict) {
    assert!(v.trusted, "{:?}", v.reasons);
}

fn refuses(v: &Verdict, rule: &str) {
    assert!(!v.trusted);
    assert!(
        v.failed(rule),
        "expected a refusal on {rule}: {:?}",
        v.reasons
    );
    assert!(
        v.reasons.iter().all(|r| r.starts_with(&format!("{rule}:"))),
        "only {rule} should fail: {:?}",
        v.reasons
    );
}

#[test]
fn tdx_tcb_status_up_to_date_only_by_default() {
    let p = policy("");
    assert_eq!(p.tdx.accepted_tcb_status, ["UpToDate"]);
    assert_eq!(p.sev_snp.accepted_tcb_status, ["UpToDate"]);
    accepts(&verify(&p, &tdx(), TDX_NOW));
    let only_hardening = policy("[tdx]\naccepted_tcb_status = [\"SWHardeningNeeded\"]");
    refuses(&verify(&only_hardening, &tdx(), TDX_NOW), "tcb");
}

#[test]
fn tdx_mrtd_and_rtmrs() {
    accepts(&verify(
        &policy(&format!(
            "[tdx]\nmrtd = [\"{}\"]\nrtmr3 = [\"{ZERO48}\"]",
            TDX_MRTD.to_uppercase()
        )),
        &tdx(),
        TDX_NOW,
    ));
    refuses(
        &verify(
            &policy(&format!("[tdx]\nmrtd = [\"{ZERO48}\"]")),
            &tdx(),
            TDX_NOW,
        ),
        "mrtd",
    );
    refuses(
        &verify(
            &policy(&format!("[tdx]\nrtmr0 = [\"{ZERO48}\"]")),
            &tdx(),
            TDX_NOW,
        ),
        "rtmr0",
    );
    let not_zero = format!("{}1", &ZERO48[..95]);
    refuses(
        &verify(
            &policy(&format!("[tdx]\nrtmr3 = [\"{not_zero}\"]")),
            &tdx(),
            TDX_NOW,
        ),
        "rtmr3",
    );
}

#[test]
fn snp_tcb_status() {
    // dstack's report: reported TCB snp 23, current/committed/launch 24: OutOfDate.
    let v = verify(&policy(""), &dstack(), SNP_NOW);
    assert_eq!(v.claims["tcb_status"], "OutOfDate");
    refuses(&v, "tcb-status");
    let opt_in = policy("[sev_snp]\naccepted_tcb_status = [\"UpToDate\", \"OutOfDate\"]");
    accepts(&verify(&opt_in, &dstack(), SNP_NOW));
    accepts(&verify(&policy(""), &milan(), SNP_NOW));
}

#[test]
fn snp_measurement_tcb_and_guest_policy_bits() {
    let ok = policy(&format!(
        "[sev_snp]\nmeasurements = [\"{MILAN_MEASUREMENT}\"]\nmax_vmpl = 0\nallow_migration_agent = false\n[sev_snp.min_tcb]\nbootloader = 3\nsnp = 8\nmicrocode = 115"
    ));
    let v = verify(&ok, &milan(), SNP_NOW);
    accepts(&v);
    // Guest policy 0x30000: debug off and no migration agent, checked and passed.
    assert!(v.checks.iter().any(|c| c.name == "debug" && c.ok));
    assert!(v.checks.iter().any(|c| c.name == "migration-agent" && c.ok));
    refuses(
        &verify(
            &policy(&format!("[sev_snp]\nmeasurements = [\"{ZERO48}\"]")),
            &milan(),
            SNP_NOW,
        ),
        "measurement",
    );
    refuses(
        &verify(&policy("[sev_snp.min_tcb]\nsnp = 9"), &milan(), SNP_NOW),
        "tcb",
    );
}

#[test]
fn nvidia_minimum_versions() {
    // The sample: driver 550.90.07, VBIOS 96.00.9f.00.01.
    let ok = policy(
        "[nvidia]\nmin_driver_version = \"550.90.07\"\nmin_vbios_version = \"96.00.9F.00.01\"",
    );
    accepts(&verify(&ok, &hopper(), 1_750_000_000));
    let older_ok =
        policy("[nvidia]\nmin_driver_version = \"535\"\nmin_vbios_version = \"96.00.5e\"");
    accepts(&verify(&older_ok, &hopper(), 1_750_000_000));
    refuses(
        &verify(
            &policy("[nvidia]\nmin_driver_version = \"550.90.8\""),
            &hopper(),
            1_750_000_000,
        ),
        "min-driver-version",
    );
    refuses(
        &verify(
            &policy("[nvidia]\nmin_vbios_version = \"96.00.a0\""),
            &hopper(),
            1_750_000_000,
        ),
        "min-vbios-version",
    );
}

/// The first GPU of NVIDIA's protected-PCIe HGX sample (FEATURE_FLAG PPCIE).
fn ppcie() -> Evidence {
    use base64::Engine as _;
    let json: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/vectors/gpu_evidence.json")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    Evidence {
        kind: TeeKind::NvidiaCc,
        report: b64.decode(json[0]["evidence"].as_str().unwrap()).unwrap(),
        certs: b64
            .decode(json[0]["certificate"].as_str().unwrap())
            .unwrap(),
    }
}

#[test]
fn nvidia_cc_mode_required_by_default() {
    let p = policy("");
    assert!(p.nvidia.require_cc_mode);
    // CC mode on (no feature flag, protected PCIe off): accepted.
    accepts(&verify(&p, &hopper(), 1_750_000_000));
    // Protected PCIe (CC mode off): refused on exactly that rule.
    let v = verify(&p, &ppcie(), 1_782_864_000);
    refuses(&v, "cc-mode");
    assert!(v.reasons[0].contains("PPCIE"), "{:?}", v.reasons);
    // An operator may opt out.
    let off = policy("[nvidia]\nrequire_cc_mode = false");
    accepts(&verify(&off, &ppcie(), 1_782_864_000));
}

#[test]
fn max_evidence_age() {
    let key = ProviderKey::from_seed(&[3; 32]);
    let nonce = [5u8; 32];
    let digest = [7u8; 32];
    let rd = tenzro_attest::report_data(
        tenzro_attest::binding::REPORT_DATA_DOMAIN,
        &key.public_key(),
        &[digest],
        &nonce,
    );
    let doc = |issued_at: u64| AttestationDocument {
        tee_kind: TeeKind::None,
        public_key: key.public_key_hex(),
        did: key.did(),
        model_digests: BTreeMap::from([("m".to_owned(), hex::encode(digest))]),
        nonce: hex::encode(nonce),
        report_data: hex::encode(rd),
        evidence: Evidence {
            kind: TeeKind::None,
            report: rd.to_vec(),
            certs: vec![],
        },
        issued_at,
    };
    let models = vec![crate::providers::registry::ModelEntry {
        info: tenzro_models::api::ModelInfo {
            id: "m".into(),
            name: None,
            version: None,
            category: tenzro_models::api::ModelCategory::Custom,
            modality: None,
            price_per_token: "1".into(),
            max_context: None,
            parameters: None,
            formats: vec![],
            tee_required: false,
            weight_sha256: Some(hex::encode(digest)),
        },
        price: 1,
    }];
    let p = policy("max_evidence_age_secs = 600");
    let age_refused = |issued_at: u64| {
        check_with(
            &doc(issued_at),
            &key.public_key(),
            "none",
            &models,
            &nonce,
            &p,
            10_000,
            &Found::Nothing,
        )
        .reasons
        .iter()
        .any(|r| r.check == crate::providers::verdict::Check::MaxEvidenceAge)
    };
    assert!(!age_refused(10_000 - 600));
    assert!(age_refused(10_000 - 601));
    assert!(!age_refused(10_005), "a few seconds ahead is clock skew");
    assert!(age_refused(10_006), "from the future");
    assert!(age_refused(0), "no issue time");
}

#[test]
fn missing_collateral_refuses_without_a_slash_and_is_retried_soon() {
    let key = ProviderKey::from_seed(&[4; 32]);
    let nonce = [6u8; 32];
    let doc = AttestationDocument {
        tee_kind: TeeKind::Tdx,
        public_key: key.public_key_hex(),
        did: key.did(),
        model_digests: BTreeMap::new(),
        nonce: hex::encode(nonce),
        report_data: hex::encode(tenzro_attest::report_data(
            tenzro_attest::binding::REPORT_DATA_DOMAIN,
            &key.public_key(),
            &[],
            &nonce,
        )),
        evidence: tdx(),
        issued_at: 0,
    };
    let p = policy("");
    let missing = Found::Missing("PCCS unreachable; no cached collateral".into());
    let v = check_with(
        &doc,
        &key.public_key(),
        "tdx",
        &[],
        &nonce,
        &p,
        TDX_NOW,
        &missing,
    );
    assert!(!v.trusted && !v.slashable, "{v:?}");
    assert!(
        v.reasons
            .iter()
            .any(|r| r.to_string() == "collateral: PCCS unreachable; no cached collateral"),
        "{v:?}"
    );
    assert_eq!(v.expires_at, TDX_NOW + p.freshness_secs / 10 + 300);
    // With the collateral, a TDX verdict lasts no longer than it.
    let found = Found::Tdx {
        collateral: Box::new(Collateral::from_json(TDX_COLLATERAL).unwrap()),
        next_update: TDX_NOW + 1,
    };
    let v = check_with(
        &doc,
        &key.public_key(),
        "tdx",
        &[],
        &nonce,
        &p,
        TDX_NOW,
        &found,
    );
    assert_eq!(v.expires_at, TDX_NOW + 1);
    // The sample quote is bound to someone else's report data: refused on binding.
    assert!(
        v.reasons.iter().any(|r| r.to_string().contains("binding")),
        "{v:?}"
    );
}

#[test]
fn malformed_policies_name_the_field() {
    let err = |text: &str| parse_policy(&toml::from_str(text).unwrap()).unwrap_err();
    for (text, field) in [
        ("[tdx]\nmrdt = []", "mrdt"),
        ("[tdx]\nmrtd = [\"zz\"]", "attestation.policy.tdx.mrtd"),
        (
            "[tdx]\naccepted_tcb_status = [\"Fine\"]",
            "attestation.policy.tdx.accepted_tcb_status",
        ),
        (
            "[sev_snp]\naccepted_tcb_status = [\"Fine\"]",
            "attestation.policy.sev_snp.accepted_tcb_status",
        ),
        (
            "[nvidia]\nmin_driver_version = \"new\"",
            "attestation.policy.nvidia.min_driver_version",
        ),
        ("freshness_secs = 0", "attestation.policy.freshness_secs"),
        ("max_evidence_age_secs = \"old\"", "max_evidence_age_secs"),
    ] {
        let e = err(text);
        assert!(e.contains(field), "{text:?}: {e}");
    }
    // Through the whole config, as the gateway starts.
    let cfg = crate::config::Config::parse("[attestation.policy.tdx]\nmrtd = [\"12\"]\n").unwrap();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("attestation.policy.tdx.mrtd"), "{e}");
    let e = crate::config::Config::parse("[attestation]\npccs = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("pccs"), "{e}");
}
