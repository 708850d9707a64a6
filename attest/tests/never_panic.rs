//! Arbitrary bytes never make a parser or verifier panic. This complements the
//! cargo-fuzz target in `attest/fuzz` and runs on stable in every `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use proptest::prelude::*;
use tenzro_attest::evidence::{nvidia, sev_snp, tdx};
use tenzro_attest::{Policy, input};

const NOW: u64 = 1_752_919_234;

fn mutate(base: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut b = base.to_vec();
    for (at, x) in edits {
        if !b.is_empty() {
            let i = at % b.len();
            b[i] ^= x;
        }
    }
    b.truncate(b.len().saturating_sub(cut % 64));
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..6000)) {
        let policy = Policy::default();
        let col = common::collateral("tdx/tdx_quote_collateral.json");
        let ctx = common::ctx(NOW, &policy, Some(&col));
        let _ = tdx::verify(&bytes, &ctx);
        let _ = sev_snp::verify(&bytes, &bytes, Some(&bytes), &ctx);
        let _ = nvidia::verify(&bytes, &bytes, None, &ctx);
        let _ = nvidia::SpdmReport::parse(&bytes);
        let _ = input::blob(&bytes);
        let _ = input::certificates(&bytes);
        let _ = tenzro_attest::evidence::Collateral::from_json(&String::from_utf8_lossy(&bytes));
        let _ = serde_json::from_slice::<tenzro_attest::Receipt>(&bytes);
        let _ = serde_json::from_slice::<tenzro_attest::Voucher>(&bytes);
        let _ = serde_json::from_slice::<tenzro_attest::Evidence>(&bytes);
        let _ = Policy::from_toml(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_real_evidence(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let policy = Policy::default();
        let col = common::collateral("tdx/tdx_quote_collateral.json");
        let ctx = common::ctx(NOW, &policy, Some(&col));
        let quote = common::read("tdx/tdx_quote");
        let _ = tdx::verify(&mutate(&quote, &edits, cut), &ctx);
        let report = input::blob(&common::read("sev-snp/virtee-sev/certs_data/report_milan.hex"));
        let vcek = common::read("sev-snp/virtee-sev/certs_data/vcek_milan.der");
        let _ = sev_snp::verify(&mutate(&report, &edits, 0), &mutate(&vcek, &edits, cut), None, &ctx);
        let spdm = input::blob(&common::read("nvidia/local_gpu_verifier/samples/hopperAttestationReport.txt"));
        let certs = common::read("nvidia/local_gpu_verifier/samples/hopperCertChain.txt");
        let _ = nvidia::verify(&mutate(&spdm, &edits, cut), &mutate(&certs, &edits, cut), None, &ctx);
    }
}
