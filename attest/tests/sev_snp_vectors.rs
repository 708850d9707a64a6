//! AMD SEV-SNP vectors from shared/attest-vectors/sev-snp.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ctx, positions, read};
use tenzro_attest::evidence::sev_snp::{self, REPORT_LEN};
use tenzro_attest::input::blob;
use tenzro_attest::policy::SnpTcb;
use tenzro_attest::{Policy, TeeKind};

/// 2026-07-01: inside every certificate's validity in these vectors.
const NOW: u64 = 1_782_864_000;

fn milan() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    (
        blob(&read("sev-snp/virtee-sev/certs_data/report_milan.hex")),
        read("sev-snp/virtee-sev/certs_data/vcek_milan.der"),
        read("sev-snp/virtee-sev/certs_data/cert_chain_milan"),
    )
}

fn dstack() -> (Vec<u8>, Vec<u8>) {
    let att = read("sev-snp/dstack/sev_snp_attestation.bin");
    (
        att[4..4 + REPORT_LEN].to_vec(),
        read("sev-snp/dstack/sev_snp_vcek.pem"),
    )
}

#[test]
fn milan_report_verifies_with_given_chain_and_builtin_roots() {
    let (report, vcek, chain) = milan();
    assert_eq!(report.len(), REPORT_LEN);
    let policy = Policy::default();
    let v = sev_snp::verify(&report, &vcek, Some(&chain), &ctx(NOW, &policy, None));
    assert!(v.trusted, "{:#?}", v);
    assert_eq!(v.kind, TeeKind::SevSnp);
    assert!(v.claims["measurement"].starts_with("7a1e5c266c0108db"));
    let v = sev_snp::verify(&report, &vcek, None, &ctx(NOW, &policy, None));
    assert!(v.trusted, "{:?}", v.reasons);
}

#[test]
fn dstack_report_verifies() {
    let (report, vcek) = dstack();
    let ask = read("sev-snp/dstack/sev_snp_ask.pem");
    let ark = read("sev-snp/virtee-sev/builtin/milan/ark.pem");
    let chain = [ask, ark].concat();
    let policy = Policy::default();
    let v = sev_snp::verify(&report, &vcek, Some(&chain), &ctx(NOW, &policy, None));
    assert!(v.trusted, "{:#?}", v);
    assert_eq!(v.claims["tcb_status"], "OutOfDate");
    assert!(v.claims["report_data"].starts_with(&hex::encode(b"attest-test-fixture-2026")));
}

#[test]
fn vcek_before_its_validity_is_refused() {
    let (report, vcek) = dstack();
    let policy = Policy::default();
    // 2026-06-16, a day before the VCEK's notBefore.
    let v = sev_snp::verify(&report, &vcek, None, &ctx(1_781_568_000, &policy, None));
    assert!(!v.trusted);
    assert!(v.failed("cert-chain"));
    assert!(
        v.reasons.iter().any(|r| r.contains("not valid before")),
        "{:?}",
        v.reasons
    );
}

#[test]
fn flips_in_the_signed_region_are_refused() {
    for (report, vcek) in [(milan().0, milan().1), dstack()] {
        let policy = Policy::default();
        for at in positions(0..0x2a0 + 2 * 72, 120) {
            let mut r = report.clone();
            r[at] ^= 0x01;
            let v = sev_snp::verify(&r, &vcek, None, &ctx(NOW, &policy, None));
            assert!(!v.trusted, "flip at {at:#x} accepted");
        }
    }
    let (report, vcek, _) = milan();
    let mut r = report.clone();
    r[21] ^= 0x80;
    let v = sev_snp::verify(&r, &vcek, None, &ctx(NOW, &Policy::default(), None));
    assert!(v.failed("signature"), "{:?}", v.reasons);
}

#[test]
fn debug_bit_is_refused_for_its_own_reason() {
    let (report, vcek, _) = milan();
    let mut r = report.clone();
    r[0x08 + 2] |= 0x08; // guest policy bit 19: DEBUG
    let policy = Policy::default();
    let v = sev_snp::verify(&r, &vcek, None, &ctx(NOW, &policy, None));
    assert!(v.failed("debug"), "{:?}", v.reasons);
    assert!(v.failed("signature"));
}

#[test]
fn broken_or_foreign_chain_is_refused() {
    let (report, vcek, chain) = milan();
    let policy = Policy::default();
    let mut bad = vcek.clone();
    bad[40] ^= 0xff;
    let v = sev_snp::verify(&report, &bad, Some(&chain), &ctx(NOW, &policy, None));
    assert!(!v.trusted);
    assert!(v.failed("cert-chain"), "{:?}", v.reasons);
    // Turin chain for a Milan VCEK.
    let turin = read("sev-snp/virtee-sev/certs_data/cert_chain_turin");
    let v = sev_snp::verify(&report, &vcek, Some(&turin), &ctx(NOW, &policy, None));
    assert!(v.failed("cert-chain"));
    // The ASK posing as the VCEK.
    let ask = read("sev-snp/virtee-sev/builtin/milan/ask.pem");
    let v = sev_snp::verify(&report, &ask, None, &ctx(NOW, &policy, None));
    assert!(!v.trusted);
    // A chain whose ARK is not AMD's root: the ASK twice.
    let v = sev_snp::verify(
        &report,
        &vcek,
        Some(&[ask.clone(), ask].concat()),
        &ctx(NOW, &policy, None),
    );
    assert!(v.failed("cert-chain"));
    // The dstack VCEK for the Milan report: chain fine, report not its.
    let (_, other_vcek) = dstack();
    let v = sev_snp::verify(&report, &other_vcek, None, &ctx(NOW, &policy, None));
    assert!(
        v.failed("signature") && v.failed("vcek-match"),
        "{:?}",
        v.reasons
    );
}

#[test]
fn turin_vcek_chains_to_the_pinned_turin_root() {
    // There is no Turin report among the vectors: the Milan report stands in, so the
    // chain passes and the report signature and TCB match do not.
    let (report, _, _) = milan();
    let vcek = read("sev-snp/virtee-sev/certs_data/vcek_turin.der");
    let chain = read("sev-snp/virtee-sev/certs_data/cert_chain_turin");
    let policy = Policy::default();
    for given in [Some(chain.as_slice()), None] {
        let v = sev_snp::verify(&report, &vcek, given, &ctx(NOW, &policy, None));
        let chain_check = v.checks.iter().find(|c| c.name == "cert-chain").unwrap();
        assert!(chain_check.ok, "{:?}", v.reasons);
        assert!(
            chain_check.detail.contains("Turin"),
            "{}",
            chain_check.detail
        );
        assert!(v.failed("signature") && v.failed("vcek-match"));
    }
}

#[test]
fn azure_report_with_wrong_vcek_is_refused() {
    let hcl = read("azure/hcl-report-snp.bin");
    let report = &hcl[32..32 + REPORT_LEN];
    let certs = read("azure/certs.pem");
    let v = sev_snp::verify(report, &certs, None, &ctx(NOW, &Policy::default(), None));
    assert!(!v.trusted);
    assert!(v.failed("signature"), "{:?}", v.reasons);
}

#[test]
fn policy_tcb_measurement_and_binding() {
    let (report, vcek, _) = milan();
    let mut policy = Policy::default();
    policy.sev_snp.min_tcb = SnpTcb {
        bootloader: 3,
        tee: 0,
        snp: 9,
        microcode: 0,
    };
    let v = sev_snp::verify(&report, &vcek, None, &ctx(NOW, &policy, None));
    assert!(v.failed("tcb"));
    policy.sev_snp.min_tcb = SnpTcb {
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
    };
    policy.sev_snp.measurements = vec!["00".repeat(48)];
    let v = sev_snp::verify(&report, &vcek, None, &ctx(NOW, &policy, None));
    assert!(v.failed("measurement") && !v.failed("tcb"));
    policy.sev_snp.measurements = vec!["7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f".into()];
    assert!(sev_snp::verify(&report, &vcek, None, &ctx(NOW, &policy, None)).trusted);

    let mut c = ctx(NOW, &policy, None);
    let mut expected = [0u8; 64];
    expected.copy_from_slice(&report[0x50..0x90]);
    c.report_data = Some(expected);
    assert!(sev_snp::verify(&report, &vcek, None, &c).trusted);
    expected[0] ^= 1;
    c.report_data = Some(expected);
    assert!(sev_snp::verify(&report, &vcek, None, &c).failed("binding"));
}

#[test]
fn truncated_and_zero_reports_are_refused() {
    let (report, vcek, _) = milan();
    let policy = Policy::default();
    for r in [vec![0u8; REPORT_LEN], report[..200].to_vec(), Vec::new()] {
        let v = sev_snp::verify(&r, &vcek, None, &ctx(NOW, &policy, None));
        assert!(v.failed("parse"), "{:?}", v.reasons);
    }
}
