//! Shared helpers for the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use tenzro_attest::Policy;
use tenzro_attest::evidence::{Collateral, VerifyContext};

/// `../../shared/attest-vectors` relative to this crate.
pub fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/attest-vectors")
}

pub fn read(rel: &str) -> Vec<u8> {
    let path = vectors().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn collateral(rel: &str) -> Collateral {
    Collateral::from_json(&String::from_utf8(read(rel)).unwrap()).unwrap()
}

pub fn ctx<'a>(
    now: u64,
    policy: &'a Policy,
    collateral: Option<&'a Collateral>,
) -> VerifyContext<'a> {
    VerifyContext {
        now,
        policy,
        report_data: None,
        tdx_collateral: collateral,
    }
}

/// Positions spread over `range`, at most `count` of them, always including both ends.
pub fn positions(range: std::ops::Range<usize>, count: usize) -> Vec<usize> {
    let len = range.end - range.start;
    let step = (len / count).max(1);
    let mut out: Vec<usize> = range.clone().step_by(step).collect();
    out.push(range.end - 1);
    out.dedup();
    out
}
