//! Feeds arbitrary bytes to every evidence parser and verifier; none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenzro_attest::evidence::{VerifyContext, nvidia, sev_snp, tdx};
use tenzro_attest::{Policy, input};

fuzz_target!(|data: &[u8]| {
    let policy = Policy::default();
    let ctx = VerifyContext {
        now: 1_752_919_234,
        policy: &policy,
        report_data: None,
        tdx_collateral: None,
    };
    // Split the input so the report and the certificates vary independently.
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) * data.len() / 256);
    let (a, b) = data.split_at(cut.min(data.len()));
    let _ = tdx::verify(data, &ctx);
    let _ = sev_snp::verify(a, b, None, &ctx);
    let _ = nvidia::SpdmReport::parse(data);
    let _ = nvidia::verify(a, b, None, &ctx);
    let _ = input::blob(data);
    let _ = input::certificates(data);
    let _ = tenzro_attest::evidence::Collateral::from_json(&String::from_utf8_lossy(data));
    let _ = serde_json::from_slice::<tenzro_attest::Evidence>(data);
});
