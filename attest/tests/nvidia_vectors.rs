//! NVIDIA H100 SPDM vectors from shared/attest-vectors/nvidia.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine as _;
use common::{ctx, positions, read};
use tenzro_attest::evidence::nvidia::{self, SpdmReport};
use tenzro_attest::input::blob;
use tenzro_attest::{Policy, TeeKind};

const NOW: u64 = 1_782_864_000;
const HOPPER_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
const PPCIE_NONCE: &str = "4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e";

fn hopper() -> (Vec<u8>, Vec<u8>) {
    (
        blob(&read(
            "nvidia/local_gpu_verifier/samples/hopperAttestationReport.txt",
        )),
        read("nvidia/local_gpu_verifier/samples/hopperCertChain.txt"),
    )
}

fn nonce(hex_text: &str) -> [u8; 32] {
    let mut n = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut n).unwrap();
    n
}

#[test]
fn hopper_sample_verifies() {
    let (report, certs) = hopper();
    assert_eq!(report.len(), 4117);
    let policy = Policy::default();
    let v = nvidia::verify(
        &report,
        &certs,
        Some(&nonce(HOPPER_NONCE)),
        &ctx(NOW, &policy, None),
    );
    assert!(v.trusted, "{:#?}", v);
    assert_eq!(v.kind, TeeKind::NvidiaCc);
    assert_eq!(v.claims["driver_version"], "550.90.07");
    assert_eq!(v.claims["vbios_version"], "96.00.9f.00.01");
    let spdm = SpdmReport::parse(&report).unwrap();
    assert_eq!(spdm.measurements.len(), 64);
}

#[test]
fn ppcie_samples_all_verify() {
    let json: serde_json::Value =
        serde_json::from_slice(&read("nvidia/ppcie-verifier-sdk-cpp/gpu_evidence.json")).unwrap();
    let items = json.as_array().unwrap();
    assert_eq!(items.len(), 8);
    let b64 = base64::engine::general_purpose::STANDARD;
    let policy = Policy {
        nvidia: tenzro_attest::policy::NvidiaPolicy {
            driver_versions: vec!["590.12".into()],
            vbios_versions: vec!["96.00.A5.00.01".into()],
            ..Default::default()
        },
        ..Policy::default()
    };
    for item in items {
        let report = b64.decode(item["evidence"].as_str().unwrap()).unwrap();
        let certs = b64.decode(item["certificate"].as_str().unwrap()).unwrap();
        let v = nvidia::verify(
            &report,
            &certs,
            Some(&nonce(PPCIE_NONCE)),
            &ctx(NOW, &policy, None),
        );
        assert!(v.trusted, "{:?}", v.reasons);
    }
}

#[test]
fn wrong_nonce_is_refused() {
    let (report, certs) = hopper();
    let other = nonce("4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e");
    let v = nvidia::verify(
        &report,
        &certs,
        Some(&other),
        &ctx(NOW, &Policy::default(), None),
    );
    assert!(!v.trusted);
    assert!(
        v.failed("nonce") && !v.failed("signature"),
        "{:?}",
        v.reasons
    );
}

#[test]
fn flips_in_the_signed_bytes_are_refused() {
    let (report, certs) = hopper();
    let n = nonce(HOPPER_NONCE);
    let policy = Policy::default();
    for at in positions(0..report.len(), 150) {
        let mut r = report.clone();
        r[at] ^= 0x01;
        let v = nvidia::verify(&r, &certs, Some(&n), &ctx(NOW, &policy, None));
        assert!(!v.trusted, "flip at {at} accepted");
    }
}

#[test]
fn broken_chain_is_refused() {
    let (report, certs) = hopper();
    let n = nonce(HOPPER_NONCE);
    let policy = Policy::default();
    let ders = tenzro_attest::input::certificates(&certs).unwrap();
    assert_eq!(ders.len(), 5);
    let pem = |ders: &[Vec<u8>]| -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        ders.iter()
            .map(|d| {
                format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    b64.encode(d)
                )
            })
            .collect::<String>()
            .into_bytes()
    };
    // Missing intermediate.
    let v = nvidia::verify(
        &report,
        &pem(&[ders[0].clone(), ders[2].clone(), ders[4].clone()]),
        Some(&n),
        &ctx(NOW, &policy, None),
    );
    assert!(v.failed("cert-chain"), "{:?}", v.reasons);
    // A flipped byte in each certificate's signed part.
    for i in 0..4 {
        let mut d = ders.clone();
        let at = d[i].len() / 2;
        d[i][at] ^= 0x01;
        let v = nvidia::verify(&report, &pem(&d), Some(&n), &ctx(NOW, &policy, None));
        assert!(!v.trusted, "flip in cert {i} accepted");
    }
    // Leaf from one GPU, the rest of the chain fine: the report's signature fails.
    let json: serde_json::Value =
        serde_json::from_slice(&read("nvidia/ppcie-verifier-sdk-cpp/gpu_evidence.json")).unwrap();
    let other = base64::engine::general_purpose::STANDARD
        .decode(json[0]["certificate"].as_str().unwrap())
        .unwrap();
    let v = nvidia::verify(&report, &other, Some(&n), &ctx(NOW, &policy, None));
    assert!(v.failed("signature") && v.failed("fwid"), "{:?}", v.reasons);
}

#[test]
fn measurements_against_a_reference() {
    let (report, certs) = hopper();
    let n = nonce(HOPPER_NONCE);
    let spdm = SpdmReport::parse(&report).unwrap();
    let mut policy = Policy::default();
    for m in spdm.measurements.iter().take(5) {
        policy
            .nvidia
            .measurements
            .insert(m.index.to_string(), hex::encode(&m.value));
    }
    assert!(nvidia::verify(&report, &certs, Some(&n), &ctx(NOW, &policy, None)).trusted);
    policy
        .nvidia
        .measurements
        .insert("2".into(), "ab".repeat(48));
    let v = nvidia::verify(&report, &certs, Some(&n), &ctx(NOW, &policy, None));
    assert!(v.failed("measurements"), "{:?}", v.reasons);
    let mut policy = Policy::default();
    policy.nvidia.driver_versions = vec!["545.00".into()];
    assert!(
        nvidia::verify(&report, &certs, Some(&n), &ctx(NOW, &policy, None))
            .failed("driver-version")
    );
}

#[test]
fn unsigned_tool_output_is_not_evidence() {
    let result = read("nvidia/dstack/gpu_attestation_h100.json");
    let v = nvidia::verify(&result, &[], None, &ctx(NOW, &Policy::default(), None));
    assert!(v.failed("parse"));
}
