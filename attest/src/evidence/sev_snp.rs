//! AMD SEV-SNP attestation reports, verified with the `sev` crate (Apache-2.0,
//! `crypto_nossl`): the chain VCEK/VLEK → ASK → ARK, where the ARK must be one of
//! AMD's roots built into `sev` (Milan, Genoa, Turin); the report's ECDSA P-384
//! signature by the VCEK; the VCEK's hwID and TCB against the report; validity times;
//! and the policy (debug off, VMPL, migration agent, minimum TCB, measurement).
//!
//! The signature is checked here over the report's own bytes `0x000..0x2A0`, not
//! over `sev`'s re-encoding of the parsed fields, so a change in a field `sev` does
//! not model is still caught.

use p384::ecdsa::signature::Verifier as _;
use sev::certs::snp::{Certificate, Chain, Verifiable as _, builtin, ca};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::TcbVersion;
use sev::parser::ByteParser as _;

use super::x509::{Cert, der_small_int};
use super::{TeeKind, VerifyContext, check_report_data};
use crate::policy::allowed;
use crate::{Verdict, input};

/// Length of an SNP attestation report.
pub const REPORT_LEN: usize = 1184;
const SIGNED_LEN: usize = 0x2a0;
const OID_BL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

/// AMD's (ARK, ASK) pairs built into `sev`, by generation name.
fn builtin_cas() -> Vec<(&'static str, &'static [u8], &'static [u8])> {
    vec![
        ("Milan", builtin::milan::ARK, builtin::milan::ASK),
        ("Genoa", builtin::genoa::ARK, builtin::genoa::ASK),
        ("Turin", builtin::turin::ARK, builtin::turin::ASK),
    ]
}

/// Verifies an SEV-SNP report (1184 raw bytes). `certs` holds the VCEK (PEM or DER),
/// optionally followed by ASK and ARK; `chain` may give ASK and ARK separately (a PEM
/// bundle, ASK first, as AMD's KDS serves it). Without either, AMD's built-in ASKs
/// are tried. Any ARK given must be one of AMD's built-in roots.
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
    let parsed = match AttestationReport::from_bytes(report) {
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
    v.check_result("cert-chain", check_chain(&vcek_der, &ders, ctx.now));
    v.check_result("signature", check_signature(&vcek, report));
    v.check_result("vcek-match", check_vcek_fields(&vcek, &parsed));
    check_policy(&mut v, report, &parsed, ctx);
    check_report_data(&mut v, &parsed.report_data, ctx);
    v.finish()
}

/// Chain VCEK → ASK → ARK, ARK pinned, all valid at `now`.
fn check_chain(vcek_der: &[u8], given: &[Vec<u8>], now: u64) -> Result<String, String> {
    let vek = Certificate::from_der(vcek_der).map_err(|e| format!("VCEK: {e}"))?;
    // Candidate CA pairs: the given ASK/ARK (the ARK is the self-issued one), or
    // AMD's built-in pairs.
    let mut candidates: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
    let builtin_arks: Vec<(&str, Vec<u8>)> = builtin_cas()
        .into_iter()
        .filter_map(|(name, ark, _)| Some((name, Certificate::from_pem(ark).ok()?.to_der().ok()?)))
        .collect();
    if given.is_empty() {
        for (name, ark, ask) in builtin_cas() {
            let pair = Certificate::from_pem(ark)
                .and_then(|a| Ok((a.to_der()?, Certificate::from_pem(ask)?.to_der()?)));
            if let Ok((ark, ask)) = pair {
                candidates.push((format!("AMD {name} root (built in)"), ark, ask));
            }
        }
    } else {
        let parsed: Vec<Cert> = given
            .iter()
            .map(|d| Cert::parse(d))
            .collect::<Result<_, _>>()?;
        let ark = parsed
            .iter()
            .find(|c| c.is_self_issued())
            .ok_or("no self-signed ARK in the chain")?;
        let ask = parsed
            .iter()
            .find(|c| !c.is_self_issued())
            .ok_or("no ASK in the chain")?;
        let name = builtin_arks
            .iter()
            .find(|(_, der)| *der == ark.der)
            .map(|(name, _)| *name)
            .ok_or("the ARK is not one of AMD's roots")?;
        candidates.push((format!("AMD {name} root"), ark.der.clone(), ask.der.clone()));
    }
    let mut last_error = String::from("no CA chain to try");
    for (name, ark, ask) in candidates {
        let chain = match (Certificate::from_der(&ark), Certificate::from_der(&ask)) {
            (Ok(ark), Ok(ask)) => Chain {
                ca: ca::Chain { ark, ask },
                vek: vek.clone(),
            },
            _ => continue,
        };
        match (&chain).verify() {
            Ok(_) => {
                for der in [vcek_der, ask.as_slice(), ark.as_slice()] {
                    Cert::parse(der)?.valid_at(now)?;
                }
                return Ok(format!("VCEK → ASK → ARK ({name})"));
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(format!("VCEK does not chain to an AMD root: {last_error}"))
}

/// ECDSA P-384 over SHA-384 of the report's first 0x2A0 bytes; r and s are stored
/// little-endian in 72-byte fields.
fn check_signature(vcek: &Cert, report: &[u8]) -> Result<String, String> {
    let algo = u32::from_le_bytes([report[0x34], report[0x35], report[0x36], report[0x37]]);
    if algo != 1 {
        return Err(format!(
            "signature algorithm {algo}, expected 1 (ECDSA P-384 SHA-384)"
        ));
    }
    let key = vcek.p384_key()?;
    let field = |at: usize| -> Result<[u8; 48], String> {
        let raw = &report[at..at + 72];
        if raw[48..].iter().any(|b| *b != 0) {
            return Err("signature component exceeds 48 bytes".to_string());
        }
        let mut be = [0u8; 48];
        for (dst, src) in be.iter_mut().zip(raw[..48].iter().rev()) {
            *dst = *src;
        }
        Ok(be)
    };
    let (r, s) = (field(SIGNED_LEN)?, field(SIGNED_LEN + 72)?);
    let signature = p384::ecdsa::Signature::from_scalars(r, s)
        .map_err(|_| "the signature is not a valid P-384 signature")?;
    key.verify(&report[..SIGNED_LEN], &signature)
        .map(|()| "the VCEK signed the report".to_string())
        .map_err(|_| "the report is not signed by the VCEK".to_string())
}

/// The VCEK's hwID equals the report's chip ID and its TCB equals the reported TCB.
fn check_vcek_fields(vcek: &Cert, report: &AttestationReport) -> Result<String, String> {
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
    for (name, oid, want) in [
        ("bootloader", OID_BL, t.bootloader),
        ("tee", OID_TEE, t.tee),
        ("snp", OID_SNP, t.snp),
        ("microcode", OID_UCODE, t.microcode),
    ] {
        let found = vcek.extension(oid).and_then(der_small_int);
        if found != Some(u64::from(want)) {
            return Err(format!(
                "VCEK {name} SVN {found:?} is not the reported {want}"
            ));
        }
    }
    Ok("hwID and TCB match the report".to_string())
}

fn tcb_string(t: &TcbVersion) -> String {
    format!(
        "bl {} tee {} snp {} ucode {}",
        t.bootloader, t.tee, t.snp, t.microcode
    )
}

fn check_policy(v: &mut Verdict, raw: &[u8], report: &AttestationReport, ctx: &VerifyContext<'_>) {
    let p = &ctx.policy.sev_snp;
    let mut guest_policy = [0u8; 8];
    guest_policy.copy_from_slice(&raw[0x08..0x10]);
    let guest_policy = u64::from_le_bytes(guest_policy);
    let debug = guest_policy & (1 << 19) != 0;
    let migrate_ma = guest_policy & (1 << 18) != 0;
    v.claim("guest_policy", format!("{guest_policy:#x}"));
    v.claim("measurement", hex::encode(report.measurement));
    v.claim("host_data", hex::encode(report.host_data));
    v.claim("chip_id", hex::encode(report.chip_id));
    v.claim("reported_tcb", tcb_string(&report.reported_tcb));
    let up_to_date = [report.current_tcb, report.committed_tcb, report.launch_tcb]
        .iter()
        .all(|t| *t == report.reported_tcb);
    v.claim(
        "tcb_status",
        if up_to_date { "UpToDate" } else { "OutOfDate" },
    );
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
    let t = report.reported_tcb;
    let m = p.min_tcb;
    let tcb_ok = t.bootloader >= m.bootloader
        && t.tee >= m.tee
        && t.snp >= m.snp
        && t.microcode >= m.microcode;
    v.check(
        "tcb",
        tcb_ok,
        format!(
            "reported {} (minimum bl {} tee {} snp {} ucode {})",
            tcb_string(&t),
            m.bootloader,
            m.tee,
            m.snp,
            m.microcode
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
