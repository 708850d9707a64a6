//! AMD SEV-SNP attestation reports: the chain VCEK/VLEK → ASK → ARK (RSASSA-PSS,
//! SHA-384), where the ARK must be one of AMD's roots pinned in `attest/roots/`
//! (Milan, Genoa, Turin); the report's ECDSA P-384 signature by the VCEK; the VCEK's
//! hwID and TCB against the report; validity times; and the policy (debug off, VMPL,
//! migration agent, minimum TCB, measurement).
//!
//! Every field is read from the report's own bytes (`sev_snp/report.rs`), and the
//! checks use RustCrypto (`rsa`, `p384`, `sha2`, `x509-cert`); the signature covers
//! the report's bytes `0x000..0x2A0` exactly as they came.

use std::sync::LazyLock;

use p384::ecdsa::signature::Verifier as _;

use super::x509::{Cert, der_small_int};
use super::{TeeKind, VerifyContext, check_report_data};
use crate::policy::allowed;
use crate::{Verdict, input};

mod report;

use report::Report;

/// Length of an SNP attestation report.
pub const REPORT_LEN: usize = 1184;
const SIGNED_LEN: usize = 0x2a0;
const OID_BL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

/// AMD's ARK and ASK certificates by generation (AMD's KDS serves them at
/// `https://kdsintf.amd.com/vcek/v1/{Milan,Genoa,Turin}/cert_chain`); the same
/// bytes the `sev` crate 8.0.0 carried built in.
const AMD_ROOT_PEMS: [(&str, &[u8], &[u8]); 3] = [
    (
        "Milan",
        include_bytes!("../../roots/amd-milan-ark.pem"),
        include_bytes!("../../roots/amd-milan-ask.pem"),
    ),
    (
        "Genoa",
        include_bytes!("../../roots/amd-genoa-ark.pem"),
        include_bytes!("../../roots/amd-genoa-ask.pem"),
    ),
    (
        "Turin",
        include_bytes!("../../roots/amd-turin-ark.pem"),
        include_bytes!("../../roots/amd-turin-ask.pem"),
    ),
];

/// One pinned AMD generation: its root (ARK) and signing key (ASK).
struct AmdCa {
    name: &'static str,
    ark: Cert,
    ask: Cert,
}

/// The pinned AMD CAs, parsed once. A unit test checks that all of them parse, so
/// none is silently missing.
fn amd_cas() -> &'static [AmdCa] {
    static CAS: LazyLock<Vec<AmdCa>> = LazyLock::new(|| {
        AMD_ROOT_PEMS
            .iter()
            .filter_map(|(name, ark, ask)| {
                let one = |pem: &[u8]| -> Option<Cert> {
                    let der = input::certificates(pem).ok()?.into_iter().next()?;
                    Cert::parse(&der).ok()
                };
                Some(AmdCa {
                    name,
                    ark: one(ark)?,
                    ask: one(ask)?,
                })
            })
            .collect()
    });
    &CAS
}

/// Verifies an SEV-SNP report (1184 raw bytes). `certs` holds the VCEK (PEM or DER),
/// optionally followed by ASK and ARK; `chain` may give ASK and ARK separately (a PEM
/// bundle, ASK first, as AMD's KDS serves it). Without either, AMD's pinned ASKs
/// are tried. Any ARK given must be one of AMD's pinned roots.
pub fn verify(
    report: &[u8],
    certs: &[u8],
    chain: Option<&[u8]>,
    ctx: &VerifyContext<'_>,
) -> Verdict {
    let mut v = Verdict::new(TeeKind::SevSnp, ctx.now, ctx.policy.freshness_secs);
    if report.len() != REPORT_LEN {
        v.check(
            "parse",
            false,
            format!("{} bytes, an SNP report has {REPORT_LEN}", report.len()),
        );
        return v.finish();
    }
    let parsed = match Report::parse(report) {
        Ok(r) => r,
        Err(e) => {
            v.check("parse", false, format!("not an SNP report: {e}"));
            return v.finish();
        }
    };
    v.check("parse", true, format!("SNP report v{}", parsed.version));
    let mut ders = match input::certificates(certs) {
        Ok(d) => d,
        Err(e) => {
            v.check("cert-chain", false, format!("VCEK: {e}"));
            return v.finish();
        }
    };
    if let Some(extra) = chain {
        match input::certificates(extra) {
            Ok(d) => ders.extend(d),
            Err(e) => {
                v.check("cert-chain", false, format!("ASK/ARK chain: {e}"));
                return v.finish();
            }
        }
    }
    if ders.is_empty() {
        v.check("cert-chain", false, "no VCEK given");
        return v.finish();
    }
    let vcek_der = ders.remove(0);
    let vcek = match Cert::parse(&vcek_der) {
        Ok(c) => c,
        Err(e) => {
            v.check("cert-chain", false, format!("VCEK: {e}"));
            return v.finish();
        }
    };
    v.check_result("cert-chain", check_chain(&vcek, &ders, ctx.now));
    v.check_result("signature", check_signature(&vcek, report, &parsed));
    v.check_result("vcek-match", check_vcek_fields(&vcek, &parsed));
    check_policy(&mut v, &parsed, ctx);
    check_report_data(&mut v, &parsed.report_data, ctx);
    v.finish()
}

/// What identifies the VCEK that signed a report: the chip, the reported TCB and
/// the CPU generations it may be (AMD's KDS names them `Milan`, `Genoa`, `Turin`),
/// for fetching the VCEK from the KDS (see [`crate::collateral::amd`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcekIdentity {
    /// The report's chip ID (Turin's hwID is its first 8 bytes).
    pub chip_id: [u8; 64],
    /// Reported TCB: bootloader, TEE, SNP, microcode SVNs, and FMC from Turin on.
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
    pub fmc: Option<u8>,
    /// Candidate KDS product names, most likely first.
    pub products: Vec<&'static str>,
}

/// Reads the [`VcekIdentity`] of a raw report. Never panics.
pub fn vcek_identity(report: &[u8]) -> Result<VcekIdentity, String> {
    let parsed = Report::parse(report)?;
    let t = parsed.reported_tcb;
    let (family, model) = (report.get(0x188).copied(), report.get(0x189).copied());
    let products = match (parsed.version, family, model, t.fmc) {
        (_, _, _, Some(_)) => vec!["Turin"],
        (3.., Some(0x19), Some(0x00..=0x0f), _) => vec!["Milan"],
        (3.., Some(0x19), Some(_), _) => vec!["Genoa"],
        _ => vec!["Milan", "Genoa"],
    };
    Ok(VcekIdentity {
        chip_id: parsed.chip_id,
        bootloader: t.bootloader,
        tee: t.tee,
        snp: t.snp,
        microcode: t.microcode,
        fmc: t.fmc,
        products,
    })
}

/// Chain VCEK → ASK → ARK, ARK pinned, all valid at `now`.
fn check_chain(vcek: &Cert, given: &[Vec<u8>], now: u64) -> Result<String, String> {
    let given: Vec<Cert> = given
        .iter()
        .map(|d| Cert::parse(d))
        .collect::<Result<_, _>>()?;
    // Candidate (name, ARK, ASK): the given ASK under the pinned ARK it names (the
    // self-issued one), or every pinned pair.
    let candidates: Vec<(String, &Cert, &Cert)> = if given.is_empty() {
        amd_cas()
            .iter()
            .map(|ca| (format!("AMD {} root (built in)", ca.name), &ca.ark, &ca.ask))
            .collect()
    } else {
        let ark = given
            .iter()
            .find(|c| c.is_self_issued())
            .ok_or("no self-signed ARK in the chain")?;
        let ask = given
            .iter()
            .find(|c| !c.is_self_issued())
            .ok_or("no ASK in the chain")?;
        let ca = amd_cas()
            .iter()
            .find(|ca| ca.ark.der == ark.der)
            .ok_or("the ARK is not one of AMD's roots")?;
        vec![(format!("AMD {} root", ca.name), &ca.ark, ask)]
    };
    let mut last_error = String::from("no CA chain to try");
    for (name, ark, ask) in candidates {
        let links = ark
            .signed_rsa_pss_sha384(ark)
            .and_then(|()| ark.signed_rsa_pss_sha384(ask))
            .and_then(|()| ask.signed_rsa_pss_sha384(vcek));
        match links {
            Ok(()) => {
                for cert in [vcek, ask, ark] {
                    cert.valid_at(now)?;
                }
                return Ok(format!("VCEK → ASK → ARK ({name})"));
            }
            Err(e) => last_error = e,
        }
    }
    Err(format!("VCEK does not chain to an AMD root: {last_error}"))
}

/// ECDSA P-384 over SHA-384 of the report's first 0x2A0 bytes; r and s are stored
/// little-endian in 72-byte fields.
fn check_signature(vcek: &Cert, raw: &[u8], report: &Report) -> Result<String, String> {
    let algo = report.signature_algorithm;
    if algo != 1 {
        return Err(format!(
            "signature algorithm {algo}, expected 1 (ECDSA P-384 SHA-384)"
        ));
    }
    let key = vcek.p384_key()?;
    let field = |at: usize| -> Result<[u8; 48], String> {
        let component = raw
            .get(at..at + 72)
            .ok_or("the report is too short for its signature")?;
        if component[48..].iter().any(|b| *b != 0) {
            return Err("signature component exceeds 48 bytes".to_string());
        }
        let mut be = [0u8; 48];
        for (dst, src) in be.iter_mut().zip(component[..48].iter().rev()) {
            *dst = *src;
        }
        Ok(be)
    };
    let (r, s) = (field(SIGNED_LEN)?, field(SIGNED_LEN + 72)?);
    let signature = p384::ecdsa::Signature::from_scalars(r, s)
        .map_err(|_| "the signature is not a valid P-384 signature")?;
    let signed = raw
        .get(..SIGNED_LEN)
        .ok_or("the report is too short for its signed part")?;
    key.verify(signed, &signature)
        .map(|()| "the VCEK signed the report".to_string())
        .map_err(|_| "the report is not signed by the VCEK".to_string())
}

/// The VCEK's hwID equals the report's chip ID and its TCB equals the reported TCB
/// (with the FMC SVN from Turin on).
fn check_vcek_fields(vcek: &Cert, report: &Report) -> Result<String, String> {
    if let Some(hwid) = vcek.extension(OID_HWID) {
        let hwid = match hwid {
            [0x04, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
            raw => raw,
        };
        if hwid.is_empty() || report.chip_id.get(..hwid.len()) != Some(hwid) {
            return Err("the VCEK's hwID is not the report's chip ID".to_string());
        }
    }
    let t = report.reported_tcb;
    let mut components = vec![
        ("bootloader", OID_BL, t.bootloader),
        ("tee", OID_TEE, t.tee),
        ("snp", OID_SNP, t.snp),
        ("microcode", OID_UCODE, t.microcode),
    ];
    if let Some(fmc) = t.fmc {
        components.push(("fmc", OID_FMC, fmc));
    }
    for (name, oid, want) in components {
        let found = vcek.extension(oid).and_then(der_small_int);
        if found != Some(u64::from(want)) {
            return Err(format!(
                "VCEK {name} SVN {found:?} is not the reported {want}"
            ));
        }
    }
    Ok("hwID and TCB match the report".to_string())
}

fn check_policy(v: &mut Verdict, report: &Report, ctx: &VerifyContext<'_>) {
    let p = &ctx.policy.sev_snp;
    let guest_policy = report.guest_policy;
    let debug = guest_policy & (1 << 19) != 0;
    let migrate_ma = guest_policy & (1 << 18) != 0;
    v.claim("guest_policy", format!("{guest_policy:#x}"));
    v.claim("measurement", hex::encode(report.measurement));
    v.claim("host_data", hex::encode(report.host_data));
    v.claim("chip_id", hex::encode(report.chip_id));
    v.claim("reported_tcb", report.reported_tcb.to_string());
    let up_to_date = [report.current_tcb, report.committed_tcb, report.launch_tcb]
        .iter()
        .all(|t| *t == report.reported_tcb);
    let status = if up_to_date { "UpToDate" } else { "OutOfDate" };
    v.claim("tcb_status", status);
    if !p.accepted_tcb_status.is_empty() {
        v.check(
            "tcb-status",
            p.accepted_tcb_status.iter().any(|s| s == status),
            format!(
                "TCB status {status} (accepted: {})",
                p.accepted_tcb_status.join(", ")
            ),
        );
    }
    v.check(
        "debug",
        !debug || ctx.policy.allow_debug,
        if debug {
            "the guest policy allows debugging"
        } else {
            "debug off"
        },
    );
    v.check(
        "migration-agent",
        !migrate_ma || p.allow_migration_agent,
        if migrate_ma {
            "a migration agent is allowed"
        } else {
            "no migration agent"
        },
    );
    v.check(
        "vmpl",
        report.vmpl <= p.max_vmpl,
        format!("VMPL {} (max {})", report.vmpl, p.max_vmpl),
    );
    let m = p.min_tcb;
    v.check(
        "tcb",
        report.reported_tcb.at_least(&m),
        format!(
            "reported {} (minimum bl {} tee {} snp {} ucode {})",
            report.reported_tcb, m.bootloader, m.tee, m.snp, m.microcode
        ),
    );
    if !p.measurements.is_empty() {
        let ok = allowed(&p.measurements, &report.measurement);
        v.check(
            "measurement",
            ok,
            if ok {
                "allowed by policy"
            } else {
                "not allowed by policy"
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;

    /// SHA-256 of each pinned ARK, as AMD publishes it.
    const ARK_SHA256: [(&str, &str); 3] = [
        (
            "Milan",
            "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        ),
        (
            "Genoa",
            "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        ),
        (
            "Turin",
            "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
        ),
    ];

    #[test]
    fn pinned_amd_roots_parse_and_sign_their_asks() {
        let cas = amd_cas();
        assert_eq!(cas.len(), ARK_SHA256.len());
        for (ca, (name, sha256)) in cas.iter().zip(ARK_SHA256) {
            assert_eq!(ca.name, name);
            assert_eq!(hex::encode(Sha256::digest(&ca.ark.der)), sha256, "{name}");
            assert!(ca.ark.is_self_issued() && !ca.ask.is_self_issued());
            assert_eq!(ca.ark.signed_rsa_pss_sha384(&ca.ark), Ok(()), "{name}");
            assert_eq!(ca.ark.signed_rsa_pss_sha384(&ca.ask), Ok(()), "{name}");
        }
        // Roots do not cross-sign.
        assert!(cas[0].ark.signed_rsa_pss_sha384(&cas[1].ask).is_err());
    }
}
