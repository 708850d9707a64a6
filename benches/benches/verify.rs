//! Verification time per evidence kind, on the real vendor samples in
//! `../shared/attest-vectors` (see its README for the times used), plus receipts.
//!
//! Run: `cargo bench -p tenzro-benches --bench verify`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use tenzro_attest::evidence::{Collateral, VerifyContext, nvidia, sev_snp, tdx};
use tenzro_attest::{Policy, ProviderKey, ReceiptBody, input};

fn read(rel: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/attest-vectors")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bench_verify(c: &mut Criterion) {
    let policy = Policy::default();
    let mut group = c.benchmark_group("verify");

    let quote = read("tdx/tdx_quote");
    let collateral =
        Collateral::from_json(&String::from_utf8(read("tdx/tdx_quote_collateral.json")).unwrap())
            .unwrap();
    let ctx = VerifyContext {
        now: 1_752_919_234,
        policy: &policy,
        report_data: None,
        tdx_collateral: Some(&collateral),
    };
    assert!(tdx::verify(&quote, &ctx).trusted);
    group.bench_function("tdx", |b| b.iter(|| tdx::verify(black_box(&quote), &ctx)));

    let report = input::blob(&read("sev-snp/virtee-sev/certs_data/report_milan.hex"));
    let vcek = read("sev-snp/virtee-sev/certs_data/vcek_milan.der");
    let chain = read("sev-snp/virtee-sev/certs_data/cert_chain_milan");
    let ctx = VerifyContext {
        now: 1_782_864_000,
        policy: &policy,
        report_data: None,
        tdx_collateral: None,
    };
    assert!(sev_snp::verify(&report, &vcek, Some(&chain), &ctx).trusted);
    group.bench_function("sev-snp", |b| {
        b.iter(|| sev_snp::verify(black_box(&report), &vcek, Some(&chain), &ctx))
    });

    let spdm = input::blob(&read(
        "nvidia/local_gpu_verifier/samples/hopperAttestationReport.txt",
    ));
    let certs = read("nvidia/local_gpu_verifier/samples/hopperCertChain.txt");
    let mut nonce = [0u8; 32];
    hex::decode_to_slice(
        "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
        &mut nonce,
    )
    .unwrap();
    assert!(nvidia::verify(&spdm, &certs, Some(&nonce), &ctx).trusted);
    group.bench_function("nvidia-cc", |b| {
        b.iter(|| nvidia::verify(black_box(&spdm), &certs, Some(&nonce), &ctx))
    });

    let key = ProviderKey::from_seed(&[1u8; 32]);
    let receipt = ReceiptBody {
        model: "m".into(),
        weight_sha256: [1; 32],
        request_sha256: [2; 32],
        response_sha256: [3; 32],
        prompt_tokens: 10,
        completion_tokens: 20,
        issued_at: 1,
    }
    .sign(&key);
    let pk = key.public_key();
    group.bench_function("receipt", |b| {
        b.iter(|| black_box(&receipt).verify(Some(&pk)))
    });
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
