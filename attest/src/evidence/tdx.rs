//! Intel TDX quotes, verified with `dcap-qvl` (MIT): the quote signature by the
//! attestation key, the QE report and its signature by the PCK, the PCK chain to
//! Intel's SGX Root CA (pinned inside dcap-qvl), the CRLs, and the TCB status from
//! Intel's collateral. Verification time is an input: collateral windows are short
//! and the test samples' windows are in the past.
//!
//! On top of dcap-qvl this module checks that the quote is a TD quote, that the TD is
//! not in debug mode (unless the policy allows it), the TCB status against the
//! policy, MRTD and RTMRs against the policy, and the binding.

use serde::Deserialize;

use super::{TeeKind, VerifyContext, check_report_data};
use crate::{Error, Verdict, policy::allowed};

/// Intel collateral for one quote: the JSON form dcap-qvl's samples use, where every
/// field is a string (PEM chains, hex CRLs and signatures, the signed JSON as text).
#[derive(Clone, Debug)]
pub struct Collateral(dcap_qvl::QuoteCollateralV3);

#[derive(Deserialize)]
struct CollateralFile {
    pck_crl_issuer_chain: String,
    root_ca_crl: String,
    pck_crl: String,
    tcb_info_issuer_chain: String,
    tcb_info: String,
    tcb_info_signature: String,
    qe_identity_issuer_chain: String,
    qe_identity: String,
    qe_identity_signature: String,
    #[serde(default)]
    pck_certificate_chain: Option<String>,
}

impl Collateral {
    /// Parses the collateral JSON.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let f: CollateralFile =
            serde_json::from_str(text).map_err(|e| Error::decode("TDX collateral", e))?;
        let hex = |what: &'static str, s: &str| {
            hex::decode(s.trim()).map_err(|e| Error::Hex {
                what,
                detail: e.to_string(),
            })
        };
        Ok(Self(dcap_qvl::QuoteCollateralV3 {
            root_ca_crl: hex("root_ca_crl", &f.root_ca_crl)?,
            pck_crl: hex("pck_crl", &f.pck_crl)?,
            tcb_info_signature: hex("tcb_info_signature", &f.tcb_info_signature)?,
            qe_identity_signature: hex("qe_identity_signature", &f.qe_identity_signature)?,
            pck_crl_issuer_chain: f.pck_crl_issuer_chain,
            tcb_info_issuer_chain: f.tcb_info_issuer_chain,
            tcb_info: f.tcb_info,
            qe_identity_issuer_chain: f.qe_identity_issuer_chain,
            qe_identity: f.qe_identity,
            pck_certificate_chain: f.pck_certificate_chain,
        }))
    }
}

/// What dcap-qvl concluded about a DCAP quote (TDX or SGX).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DcapResult {
    /// Intel's TCB status, e.g. `UpToDate`.
    pub status: String,
    /// Intel security advisories that apply.
    pub advisory_ids: Vec<String>,
    /// Whether the quote holds a TD report (as opposed to an SGX enclave report).
    pub is_td: bool,
}

/// Runs dcap-qvl alone: signatures, chain, CRLs and TCB matching (debug bits are not
/// judged here). `Err` carries dcap-qvl's reason.
pub fn verify_dcap(quote: &[u8], collateral: &Collateral, now: u64) -> Result<DcapResult, String> {
    let verifier = dcap_qvl::verify::QuoteVerifier::new_prod().allow_debug(true);
    let report = verifier
        .verify(quote, &collateral.0, now)
        .map_err(|e| format!("{e:#}"))?;
    Ok(DcapResult {
        status: report.status,
        advisory_ids: report.advisory_ids,
        is_td: !report.report.is_sgx(),
    })
}

/// Names a dcap-qvl failure after what failed, so refusals read well.
fn classify(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("expired") || r.contains("in the future") || r.contains("not yet valid") {
        "freshness"
    } else if r.contains("signature") {
        "signature"
    } else if r.contains("tcb") {
        "tcb"
    } else if r.contains("certificate")
        || r.contains("crl")
        || r.contains("chain")
        || r.contains("fmspc")
    {
        "cert-chain"
    } else {
        "quote"
    }
}

/// Verifies a TDX quote (raw bytes). Refusals carry reasons; never panics.
pub fn verify(quote: &[u8], ctx: &VerifyContext<'_>) -> Verdict {
    let mut v = Verdict::new(TeeKind::Tdx, ctx.now, ctx.policy.freshness_secs);
    let parsed = match dcap_qvl::quote::Quote::parse(quote) {
        Ok(q) => q,
        Err(e) => {
            v.check("parse", false, format!("not a DCAP quote: {e:#}"));
            return v.finish();
        }
    };
    let Some(td) = parsed.report.as_td10() else {
        v.check("parse", false, "an SGX enclave quote, not a TD quote");
        return v.finish();
    };
    v.check(
        "parse",
        true,
        format!("TD quote v{}", parsed.header.version),
    );
    let Some(collateral) = ctx.tdx_collateral else {
        v.check("collateral", false, "no Intel collateral given");
        return v.finish();
    };
    match verify_dcap(quote, collateral, ctx.now) {
        Ok(result) => {
            v.check(
                "dcap",
                true,
                "quote, QE report and PCK chain to Intel's root verify",
            );
            v.claim("tcb_status", result.status.clone());
            v.claim("advisory_ids", result.advisory_ids.join(","));
            let accepted = &ctx.policy.tdx.accepted_tcb_status;
            let ok = accepted.iter().any(|s| s == &result.status);
            v.check(
                "tcb",
                ok,
                format!(
                    "TCB status {} (accepted: {})",
                    result.status,
                    accepted.join(", ")
                ),
            );
        }
        Err(reason) => {
            v.check(classify(&reason), false, reason);
        }
    }
    let debug = td.td_attributes[0] & 0x01 != 0;
    v.check(
        "debug",
        !debug || ctx.policy.allow_debug,
        if debug {
            "the TD runs in debug mode"
        } else {
            "debug off"
        },
    );
    let p = &ctx.policy.tdx;
    for (name, list, value) in [
        ("mrtd", &p.mrtd, &td.mr_td),
        ("rtmr0", &p.rtmr0, &td.rt_mr0),
        ("rtmr1", &p.rtmr1, &td.rt_mr1),
        ("rtmr2", &p.rtmr2, &td.rt_mr2),
        ("rtmr3", &p.rtmr3, &td.rt_mr3),
    ] {
        v.claim(name, hex::encode(value));
        if !list.is_empty() {
            let ok = allowed(list, value);
            v.check(
                name,
                ok,
                if ok {
                    "allowed by policy"
                } else {
                    "not allowed by policy"
                },
            );
        }
    }
    v.claim("tee_tcb_svn", hex::encode(td.tee_tcb_svn));
    check_report_data(&mut v, &td.report_data, ctx);
    v.finish()
}
