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

fn ppcie_first() -> (Vec<u8>, Vec<u8>) {
    let json: serde_json::Value =
        serde_json::from_slice(&read("nvidia/ppcie-verifier-sdk-cpp/gpu_evidence.json")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    (
        b64.decode(json[0]["evidence"].as_str().unwrap()).unwrap(),
        b64.decode(json[0]["certificate"].as_str().unwrap())
            .unwrap(),
    )
}

/// `report` with its opaque data replaced by `edit(opaque TLVs)` (the signature
/// no longer matches: for the parser and the mode reading only).
fn with_opaque(report: &[u8], edit: impl FnOnce(&mut Vec<(u16, Vec<u8>)>)) -> Vec<u8> {
    let spdm = SpdmReport::parse(report).unwrap();
    let mut tlvs = spdm.opaque.clone();
    edit(&mut tlvs);
    let old_len: usize = spdm.opaque.iter().map(|(_, v)| 4 + v.len()).sum();
    let start = report.len() - 96 - old_len - 2;
    let mut out = report[..start].to_vec();
    let body: Vec<u8> = tlvs
        .iter()
        .flat_map(|(k, v)| {
            let mut b = k.to_le_bytes().to_vec();
            b.extend((v.len() as u16).to_le_bytes());
            b.extend(v);
            b
        })
        .collect();
    out.extend((body.len() as u16).to_le_bytes());
    out.extend(body);
    out.extend(&report[report.len() - 96..]);
    out
}

#[test]
fn cc_mode_rule_refuses_a_protected_pcie_gpu_and_accepts_cc_on() {
    let mut policy = Policy::default();
    policy.nvidia.require_cc_mode = true;
    // The Hopper sample: no feature flag, protected PCIe status 0x55 (off).
    let (report, certs) = hopper();
    let v = nvidia::verify(
        &report,
        &certs,
        Some(&nonce(HOPPER_NONCE)),
        &ctx(NOW, &policy, None),
    );
    assert!(v.trusted, "{:?}", v.reasons);
    assert_eq!(v.claims["cc_mode"], "on (no feature flag)");
    // The PPCIe HGX sample: FEATURE_FLAG 2 (PPCIE), status 0xAA: CC mode off.
    let (report, certs) = ppcie_first();
    let n = nonce(PPCIE_NONCE);
    let v = nvidia::verify(&report, &certs, Some(&n), &ctx(NOW, &policy, None));
    assert!(!v.trusted);
    assert!(v.failed("cc-mode"), "{:?}", v.reasons);
    assert!(
        v.reasons.iter().all(|r| r.starts_with("cc-mode:")),
        "only cc-mode fails: {:?}",
        v.reasons
    );
    assert!(v.reasons[0].contains("off (PPCIE)"), "{:?}", v.reasons);
    // Without the rule the same evidence is trusted (the library's default).
    let v = nvidia::verify(
        &report,
        &certs,
        Some(&n),
        &ctx(NOW, &Policy::default(), None),
    );
    assert!(v.trusted, "{:?}", v.reasons);
    assert_eq!(v.claims["cc_mode"], "off (PPCIE)");
}

#[test]
fn cc_mode_is_read_from_the_feature_flag_and_the_protected_pcie_status() {
    use tenzro_attest::evidence::nvidia::CcMode;
    let (report, _) = hopper();
    let mode = |r: &[u8]| SpdmReport::parse(r).unwrap().cc_mode();
    assert_eq!(mode(&report), CcMode::Legacy);
    let flag = |v: u16| with_opaque(&report, |t| t.push((36, v.to_le_bytes().to_vec())));
    assert_eq!(mode(&flag(0)), CcMode::Spt);
    assert_eq!(mode(&flag(1)), CcMode::Mpt);
    assert_eq!(mode(&flag(2)), CcMode::Ppcie);
    assert_eq!(mode(&flag(7)), CcMode::Unknown(7));
    assert!(CcMode::Spt.is_on() && CcMode::Mpt.is_on() && CcMode::Legacy.is_on());
    assert!(!CcMode::Ppcie.is_on() && !CcMode::Unknown(7).is_on());
    // SPT by its flag, but the protected-PCIe status byte says on: not CC mode.
    let status_on = with_opaque(&report, |t| {
        t.push((36, vec![0, 0]));
        for (k, v) in t.iter_mut() {
            if *k == 21 {
                *v = vec![0xaa];
            }
        }
    });
    assert_eq!(mode(&status_on), CcMode::Ppcie);
    // The PPCIe sample's own bytes.
    assert_eq!(mode(&ppcie_first().0), CcMode::Ppcie);
    // Constructed evidence through the whole verifier: refused on cc-mode (and on
    // the signature, which no longer covers the edited bytes).
    let mut policy = Policy::default();
    policy.nvidia.require_cc_mode = true;
    let (_, certs) = hopper();
    let v = nvidia::verify(
        &flag(2),
        &certs,
        Some(&nonce(HOPPER_NONCE)),
        &ctx(NOW, &policy, None),
    );
    assert!(
        v.failed("cc-mode") && v.failed("signature"),
        "{:?}",
        v.reasons
    );
}
