//! Intel DCAP vectors from shared/attest-vectors/tdx (times from its README).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{collateral, ctx, positions, read};
use tenzro_attest::evidence::tdx::{self, verify_dcap};
use tenzro_attest::{Policy, TeeKind};

const TDX_NOW: u64 = 1_752_919_234;

#[test]
fn tdx_sample_verifies_up_to_date() {
    let quote = read("tdx/tdx_quote");
    let col = collateral("tdx/tdx_quote_collateral.json");
    let policy = Policy::default();
    let v = tdx::verify(&quote, &ctx(TDX_NOW, &policy, Some(&col)));
    assert!(v.trusted, "{:#?}", v);
    assert_eq!(v.kind, TeeKind::Tdx);
    assert_eq!(v.claims["tcb_status"], "UpToDate");
    assert!(v.claims["mrtd"].starts_with("91eb2b44d141d4ec"));
    assert!(v.claims["report_data"].starts_with("9a9d48e7f6799642"));
}

#[test]
fn tdx_window_edges() {
    let quote = read("tdx/tdx_quote");
    let col = collateral("tdx/tdx_quote_collateral.json");
    let policy = Policy::default();
    assert!(tdx::verify(&quote, &ctx(1_750_329_147, &policy, Some(&col))).trusted);
    let early = tdx::verify(&quote, &ctx(1_750_329_146, &policy, Some(&col)));
    assert!(!early.trusted);
    assert!(early.failed("freshness"), "{:?}", early.reasons);
    let late = tdx::verify(&quote, &ctx(1_752_919_235, &policy, Some(&col)));
    assert!(!late.trusted);
    assert!(late.failed("freshness"), "{:?}", late.reasons);
}

#[test]
fn near_sample_verifies() {
    let quote = tenzro_attest::input::blob(&read("tdx/near-gas-test/quote_hex.txt"));
    let col = collateral("tdx/near-gas-test/quote_collateral.json");
    let policy = Policy::default();
    for now in [1_756_798_919, 1_757_462_400, 1_759_388_630] {
        let v = tdx::verify(&quote, &ctx(now, &policy, Some(&col)));
        assert!(v.trusted, "at {now}: {:?}", v.reasons);
    }
}

#[test]
fn sgx_sample_passes_dcap_but_is_not_a_td() {
    let quote = read("tdx/sgx_quote");
    let col = collateral("tdx/sgx_quote_collateral.json");
    let r = verify_dcap(&quote, &col, 1_752_919_277).unwrap();
    assert_eq!(r.status, "ConfigurationAndSWHardeningNeeded");
    assert_eq!(r.advisory_ids, ["INTEL-SA-00289", "INTEL-SA-00615"]);
    assert!(!r.is_td);
    let policy = Policy::default();
    let v = tdx::verify(&quote, &ctx(1_752_919_277, &policy, Some(&col)));
    assert!(!v.trusted);
    assert!(v.failed("parse"));
    assert!(verify_dcap(&quote, &col, 1_752_919_279).is_err());
}

#[test]
fn outdated_sample_is_refused_for_tcb() {
    let quote = read("tdx/tdx_quote_outdated");
    let col = collateral("tdx/tdx_quote_outdated_collateral.json");
    let policy = Policy::default();
    let v = tdx::verify(&quote, &ctx(1_774_003_274, &policy, Some(&col)));
    assert!(!v.trusted);
    assert!(v.failed("tcb"), "{:?}", v.reasons);
    assert!(
        v.reasons
            .iter()
            .any(|r| r.contains("No matching TCB level"))
    );
}

#[test]
fn wrong_collateral_is_refused() {
    let quote = read("tdx/tdx_quote");
    let policy = Policy::default();
    for other in [
        "tdx/tdx_quote_outdated_collateral.json",
        "tdx/sgx_quote_collateral.json",
    ] {
        let col = collateral(other);
        let v = tdx::verify(&quote, &ctx(TDX_NOW, &policy, Some(&col)));
        assert!(!v.trusted, "{other}");
    }
    let v = tdx::verify(&quote, &ctx(TDX_NOW, &policy, None));
    assert!(v.failed("collateral"));
}

#[test]
fn flipped_bytes_in_the_signed_region_are_refused() {
    let quote = read("tdx/tdx_quote");
    let col = collateral("tdx/tdx_quote_collateral.json");
    let policy = Policy::default();
    // Header and TD report body: bytes 0..632 are signed by the attestation key.
    for at in positions(0..632, 60) {
        let mut q = quote.clone();
        q[at] ^= 0x01;
        let v = tdx::verify(&q, &ctx(TDX_NOW, &policy, Some(&col)));
        assert!(!v.trusted, "flip at {at} accepted");
    }
    let mut q = quote.clone();
    q[631] ^= 0xff;
    let v = tdx::verify(&q, &ctx(TDX_NOW, &policy, Some(&col)));
    assert!(v.failed("signature"), "{:?}", v.reasons);
}

#[test]
fn flipped_bytes_in_the_signature_and_certification_data_are_refused() {
    let quote = read("tdx/tdx_quote");
    let col = collateral("tdx/tdx_quote_collateral.json");
    let policy = Policy::default();
    // Signature, attestation key, QE report and its signature (after the 4-byte length).
    for at in positions(636..636 + 64 + 64 + 6 + 384 + 64, 40) {
        let mut q = quote.clone();
        q[at] ^= 0x80;
        let v = tdx::verify(&q, &ctx(TDX_NOW, &policy, Some(&col)));
        assert!(!v.trusted, "flip at {at} accepted");
    }
}

#[test]
fn policy_measurements_and_binding_are_enforced() {
    let quote = read("tdx/tdx_quote");
    let col = collateral("tdx/tdx_quote_collateral.json");
    let mut policy = Policy::default();
    policy.tdx.mrtd = vec!["00".repeat(48)];
    let v = tdx::verify(&quote, &ctx(TDX_NOW, &policy, Some(&col)));
    assert!(v.failed("mrtd"));
    policy.tdx.mrtd = vec!["91EB2B44D141D4ECE09F0C75C2C53D247A3C68EDD7FAFE8A3520C942A604A407DE03AE6DC5F87F27428B2538873118B7".to_string()];
    assert!(tdx::verify(&quote, &ctx(TDX_NOW, &policy, Some(&col))).trusted);
    policy.tdx.accepted_tcb_status = vec!["SWHardeningNeeded".to_string()];
    assert!(tdx::verify(&quote, &ctx(TDX_NOW, &policy, Some(&col))).failed("tcb"));

    let policy = Policy::default();
    let mut c = ctx(TDX_NOW, &policy, Some(&col));
    c.report_data = Some([7u8; 64]);
    let v = tdx::verify(&quote, &c);
    assert!(v.failed("binding"));
}

#[test]
fn garbage_is_refused_not_panicking() {
    let col = collateral("tdx/tdx_quote_collateral.json");
    let policy = Policy::default();
    let quote = read("tdx/tdx_quote");
    // The sample ends in zero padding, which is outside the signed structure; cut
    // inside the structure.
    for len in [0, 1, 48, 100, 632, 700, 1000, 2000, 3000] {
        let v = tdx::verify(&quote[..len], &ctx(TDX_NOW, &policy, Some(&col)));
        assert!(!v.trusted);
    }
}
