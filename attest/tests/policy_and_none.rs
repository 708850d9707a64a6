//! Policy parsing, the `none` backend and the evidence dispatcher.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tenzro_attest::binding::{REPORT_DATA_DOMAIN, report_data};
use tenzro_attest::evidence::{self, VerifyContext, none::NoTee};
use tenzro_attest::{Evidence, EvidenceSource as _, Policy, ProviderKey, TeeKind};

#[test]
fn example_policy_parses() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy.example.toml"))
        .unwrap();
    let p = Policy::from_toml(&text).unwrap();
    assert_eq!(p.freshness_secs, 86_400);
    assert!(!p.allow_debug);
    assert_eq!(p.tdx.mrtd.len(), 1);
    assert_eq!(p.sev_snp.min_tcb.snp, 8);
    assert_eq!(Policy::from_toml("").unwrap(), Policy::default());
}

#[test]
fn bad_policies_are_refused() {
    for bad in [
        "freshnes_secs = 5",
        "freshness_secs = 0",
        "[tdx]\nmrtd = [\"abcd\"]",
        "[sev_snp]\nmeasurements = [\"zz\"]",
        "[nvidia.measurements]\nx = \"00\"",
        "[sev_snp.min_tcb]\nsnp = 300",
        "[tdx]\nunknown = 1",
    ] {
        assert!(Policy::from_toml(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn kinds_have_lowercase_names() {
    for (kind, name) in [
        (TeeKind::None, "none"),
        (TeeKind::Tdx, "tdx"),
        (TeeKind::SevSnp, "sev-snp"),
        (TeeKind::NvidiaCc, "nvidia-cc"),
    ] {
        assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
        assert_eq!(name.parse::<TeeKind>().unwrap(), kind);
    }
}

#[test]
fn none_evidence_binds_but_is_never_trusted() {
    let key = ProviderKey::from_seed(&[9u8; 32]);
    let digests = [tenzro_attest::sha256(b"w")];
    let rd = report_data(REPORT_DATA_DOMAIN, &key.public_key(), &digests, b"nonce");
    let ev = NoTee.evidence(&rd).unwrap();
    let json = serde_json::to_string(&ev).unwrap();
    let back: Evidence = serde_json::from_str(&json).unwrap();
    assert_eq!(back, ev);
    let policy = Policy::default();
    let ctx = VerifyContext {
        now: 100,
        policy: &policy,
        report_data: Some(rd),
        tdx_collateral: None,
    };
    let v = evidence::verify(&back, &ctx);
    assert!(!v.trusted);
    assert!(!v.failed("binding"));
    assert!(v.reasons.iter().any(|r| r.contains("never trusted")));
    assert!(!v.is_fresh(100));
    let wrong = report_data(
        REPORT_DATA_DOMAIN,
        &key.public_key(),
        &[[0u8; 32]],
        b"nonce",
    );
    let ctx = VerifyContext {
        report_data: Some(wrong),
        ..ctx
    };
    assert!(evidence::verify(&back, &ctx).failed("binding"));
}
