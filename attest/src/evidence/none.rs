//! The `none` backend: no TEE. The "evidence" is the report data itself, so the
//! binding can be exercised end to end in development, but a verdict on it is
//! never trusted and never satisfies `tee_required`.

use super::{Evidence, EvidenceSource, TeeKind, VerifyContext, check_report_data};
use crate::{Error, Verdict};

/// Produces `none` evidence.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTee;

impl EvidenceSource for NoTee {
    fn kind(&self) -> TeeKind {
        TeeKind::None
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, Error> {
        Ok(Evidence {
            kind: TeeKind::None,
            report: report_data.to_vec(),
            certs: Vec::new(),
        })
    }
}

/// Verifies `none` evidence: only the binding can be checked; always untrusted.
pub fn verify(report: &[u8], ctx: &VerifyContext<'_>) -> Verdict {
    let mut v = Verdict::new(TeeKind::None, ctx.now, ctx.policy.freshness_secs);
    v.check("tee", false, "no TEE: development evidence, never trusted");
    check_report_data(&mut v, report, ctx);
    v.finish()
}
