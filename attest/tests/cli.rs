//! The `tenzro-verify` binary: exit codes and output on real vectors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use tenzro_attest::{ProviderKey, ReceiptBody, VoucherBody};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenzro-verify"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn v(rel: &str) -> String {
    common::vectors().join(rel).display().to_string()
}

#[test]
fn tdx_sample_and_expired_time() {
    let q = v("tdx/tdx_quote");
    let c = v("tdx/tdx_quote_collateral.json");
    let (code, out) = run(&["tdx", &q, "--collateral", &c, "--at", "1752919234"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[ok  ] dcap") && out.contains("TRUSTED"));
    let (code, out) = run(&["tdx", &q, "--collateral", &c, "--at", "1800000000"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("[FAIL] freshness") && out.contains("REFUSED"));
}

#[test]
fn sev_snp_and_nvidia_samples() {
    let (code, out) = run(&[
        "sev-snp",
        &v("sev-snp/virtee-sev/certs_data/report_milan.hex"),
        "--vcek",
        &v("sev-snp/virtee-sev/certs_data/vcek_milan.der"),
        "--chain",
        &v("sev-snp/virtee-sev/certs_data/cert_chain_milan"),
        "--at",
        "1782864000",
    ]);
    assert_eq!(code, 0, "{out}");
    let report = v("nvidia/local_gpu_verifier/samples/hopperAttestationReport.txt");
    let certs = v("nvidia/local_gpu_verifier/samples/hopperCertChain.txt");
    let good = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
    let (code, out) = run(&[
        "nvidia", &report, "--certs", &certs, "--nonce", good, "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"trusted\": true"));
    let (code, out) = run(&[
        "nvidia",
        &report,
        "--certs",
        &certs,
        "--nonce",
        &"00".repeat(32),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("[FAIL] nonce"));
    let (code, _) = run(&["nvidia", &report, "--certs", &certs, "--nonce", "xyz"]);
    assert_eq!(code, 2);
}

#[test]
fn receipts_and_vouchers() {
    let dir = tempfile::tempdir().unwrap();
    let key = ProviderKey::from_seed(&[1u8; 32]);
    let receipt = ReceiptBody {
        model: "m".into(),
        weight_sha256: [1; 32],
        request_sha256: [2; 32],
        response_sha256: [3; 32],
        prompt_tokens: 1,
        completion_tokens: 2,
        issued_at: 3,
    }
    .sign(&key);
    let path = dir.path().join("receipt.json");
    std::fs::write(&path, serde_json::to_vec(&receipt).unwrap()).unwrap();
    let p = path.display().to_string();
    assert_eq!(run(&["receipt", &p, "--key", &key.public_key_hex()]).0, 0);
    let other = ProviderKey::from_seed(&[2u8; 32]).public_key_hex();
    assert_eq!(run(&["receipt", &p, "--key", &other]).0, 1);
    let tampered = serde_json::to_string(&receipt)
        .unwrap()
        .replace("\"prompt_tokens\":1", "\"prompt_tokens\":9");
    std::fs::write(&path, tampered).unwrap();
    assert_eq!(run(&["receipt", &p, "--key", &key.public_key_hex()]).0, 1);

    let provider = ProviderKey::from_seed(&[3u8; 32]);
    let mut voucher = VoucherBody {
        channel_id: "c".into(),
        nonce: 1,
        cumulative_spent: 10,
        asset: "USDC".into(),
    }
    .sign(&key);
    voucher.countersign(&provider).unwrap();
    let path = dir.path().join("voucher.json");
    std::fs::write(&path, serde_json::to_vec(&voucher).unwrap()).unwrap();
    let p = path.display().to_string();
    let (code, out) = run(&[
        "voucher",
        &p,
        "--key",
        &key.public_key_hex(),
        "--provider-key",
        &provider.public_key_hex(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(run(&["voucher", &p, "--key", &other]).0, 1);
}
