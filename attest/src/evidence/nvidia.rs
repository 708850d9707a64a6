//! NVIDIA H100/H200 confidential-computing evidence: an SPDM 1.1 GET_MEASUREMENTS
//! request followed by the signed MEASUREMENTS response, plus the GPU's certificate
//! chain (PEM, leaf first).
//!
//! Checks: the chain links (ECDSA P-384) to NVIDIA's Device Identity CA, pinned in
//! `attest/roots/`; the leaf key signed SHA-384 over request ‖ response-without-
//! signature; the request nonce is the one expected; the FWID in the opaque data
//! appears in the leaf's TCG DICE FWID extension; and, when the policy gives them,
//! reference measurements and driver/VBIOS versions match.

use super::x509::{Cert, verify_p384_chain};
use super::{TeeKind, VerifyContext};
use crate::{Verdict, input};
use p384::ecdsa::signature::Verifier as _;

/// NVIDIA Device Identity CA (the GPU attestation root), PEM.
pub const NVIDIA_DEVICE_ROOT_PEM: &[u8] =
    include_bytes!("../../roots/nvidia-device-identity-ca.pem");

const REQUEST_LEN: usize = 37;
const SIGNATURE_LEN: usize = 96;
const FWID_OID: &str = "2.23.133.5.4.1";

/// Opaque-data TLV types (NVIDIA's numbering).
const OPAQUE_DRIVER_VERSION: u16 = 3;
const OPAQUE_VBIOS_VERSION: u16 = 6;
const OPAQUE_FWID: u16 = 20;
const OPAQUE_PROTECTED_PCIE_STATUS: u16 = 21;
const OPAQUE_FEATURE_FLAG: u16 = 36;
/// PROTECTED_PCIE_STATUS when protected-PCIe mode is on (`0x55`: off).
const PROTECTED_PCIE_ON: u8 = 0xaa;

/// The GPU's confidential-computing mode as its signed report states it: the
/// opaque FEATURE_FLAG (type 36: 0 SPT single-GPU passthrough, 1 MPT multi-GPU
/// passthrough, 2 PPCIE protected PCIe; absent before firmware carried it) and the
/// PROTECTED_PCIE_STATUS byte (type 21).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CcMode {
    /// CC mode on; no feature flag in the report (single GPU, older firmware).
    Legacy,
    /// CC mode on, single-GPU passthrough.
    Spt,
    /// CC mode on, multi-GPU passthrough.
    Mpt,
    /// Protected PCIe: the GPU's own CC mode is off (NVLink in plaintext, the
    /// switches trusted), or the protected-PCIe status byte says it is on.
    Ppcie,
    /// A flag value this verifier does not know.
    Unknown(u16),
}

impl CcMode {
    /// Whether this mode is the GPU's CC mode on.
    pub fn is_on(self) -> bool {
        matches!(self, CcMode::Legacy | CcMode::Spt | CcMode::Mpt)
    }

    pub fn name(self) -> String {
        match self {
            CcMode::Legacy => "on (no feature flag)".into(),
            CcMode::Spt => "on (SPT)".into(),
            CcMode::Mpt => "on (MPT)".into(),
            CcMode::Ppcie => "off (PPCIE)".into(),
            CcMode::Unknown(v) => format!("unknown feature flag {v}"),
        }
    }
}

/// One measurement block of the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// SPDM block index (1-based).
    pub index: u8,
    /// The measured digest.
    pub value: Vec<u8>,
}

/// A parsed SPDM GET_MEASUREMENTS exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpdmReport {
    /// The requester's nonce.
    pub nonce: [u8; 32],
    /// Measurement blocks in order.
    pub measurements: Vec<Measurement>,
    /// Opaque data TLVs: (type, value).
    pub opaque: Vec<(u16, Vec<u8>)>,
    /// The bytes the signature covers.
    pub signed: Vec<u8>,
    /// The raw r ‖ s signature.
    pub signature: [u8; SIGNATURE_LEN],
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated: wanted {n} bytes, {} left",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Result<usize, String> {
        let b = self.take(3)?;
        Ok(usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16)
    }
}

impl SpdmReport {
    /// Parses request ‖ response. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < REQUEST_LEN + SIGNATURE_LEN {
            return Err(format!(
                "{} bytes is too short for SPDM evidence",
                bytes.len()
            ));
        }
        let mut r = Reader(bytes);
        let header = r.take(4)?;
        if header[0] != 0x11 || header[1] != 0xe0 {
            return Err("request is not SPDM 1.1 GET_MEASUREMENTS".to_string());
        }
        let mut nonce = [0u8; 32];
        nonce.copy_from_slice(r.take(32)?);
        let _slot = r.u8()?;
        let response = r.take(4)?;
        if response[0] != 0x11 || response[1] != 0x60 {
            return Err("response is not SPDM 1.1 MEASUREMENTS".to_string());
        }
        let count = r.u8()?;
        let record_len = r.u24()?;
        let mut record = Reader(r.take(record_len)?);
        let mut measurements = Vec::new();
        while !record.0.is_empty() {
            let index = record.u8()?;
            let _spec = record.u8()?;
            let size = usize::from(record.u16()?);
            let mut block = Reader(record.take(size)?);
            let _value_type = block.u8()?;
            let value_len = usize::from(block.u16()?);
            let value = block.take(value_len)?.to_vec();
            measurements.push(Measurement { index, value });
        }
        if measurements.len() != usize::from(count) {
            return Err(format!(
                "{} blocks announced, {} found",
                count,
                measurements.len()
            ));
        }
        let _responder_nonce = r.take(32)?;
        let opaque_len = usize::from(r.u16()?);
        let mut opaque_reader = Reader(r.take(opaque_len)?);
        let mut opaque = Vec::new();
        while !opaque_reader.0.is_empty() {
            let kind = opaque_reader.u16()?;
            let len = usize::from(opaque_reader.u16()?);
            opaque.push((kind, opaque_reader.take(len)?.to_vec()));
        }
        if r.0.len() != SIGNATURE_LEN {
            return Err(format!(
                "{} bytes after the opaque data, expected a 96-byte signature",
                r.0.len()
            ));
        }
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(r.0);
        Ok(Self {
            nonce,
            measurements,
            opaque,
            signed: bytes[..bytes.len() - SIGNATURE_LEN].to_vec(),
            signature,
        })
    }

    fn opaque(&self, kind: u16) -> Option<&[u8]> {
        self.opaque
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    /// The driver version from the opaque data, e.g. `550.90.07`.
    pub fn driver_version(&self) -> Option<String> {
        let v = self.opaque(OPAQUE_DRIVER_VERSION)?;
        let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
        Some(String::from_utf8_lossy(&v[..end]).into_owned())
    }

    /// The CC mode the report states (see [`CcMode`]).
    pub fn cc_mode(&self) -> CcMode {
        let flag = self.opaque(OPAQUE_FEATURE_FLAG).map(|v| match v {
            [] => 0,
            [b] => u16::from(*b),
            [b0, b1, ..] => u16::from_le_bytes([*b0, *b1]),
        });
        let ppcie_status = self
            .opaque(OPAQUE_PROTECTED_PCIE_STATUS)
            .is_some_and(|v| v.first() == Some(&PROTECTED_PCIE_ON));
        match flag {
            _ if ppcie_status => CcMode::Ppcie,
            None => CcMode::Legacy,
            Some(0) => CcMode::Spt,
            Some(1) => CcMode::Mpt,
            Some(2) => CcMode::Ppcie,
            Some(v) => CcMode::Unknown(v),
        }
    }

    /// The VBIOS version from the opaque data, e.g. `96.00.9f.00.01`.
    pub fn vbios_version(&self) -> Option<String> {
        match self.opaque(OPAQUE_VBIOS_VERSION)? {
            [b0, b1, b2, b3, b4, ..] => {
                Some(format!("{b3:02x}.{b2:02x}.{b1:02x}.{b0:02x}.{b4:02x}"))
            }
            _ => None,
        }
    }
}

/// Verifies NVIDIA evidence: `report` is request ‖ response (raw), `certs` the PEM
/// chain; `nonce` is the nonce the verifier expects (skipped when `None`).
pub fn verify(
    report: &[u8],
    certs: &[u8],
    nonce: Option<&[u8; 32]>,
    ctx: &VerifyContext<'_>,
) -> Verdict {
    let mut v = Verdict::new(TeeKind::NvidiaCc, ctx.now, ctx.policy.freshness_secs);
    let spdm = match SpdmReport::parse(report) {
        Ok(s) => s,
        Err(e) => {
            v.check("parse", false, e);
            return v.finish();
        }
    };
    v.check(
        "parse",
        true,
        format!("SPDM 1.1, {} measurement blocks", spdm.measurements.len()),
    );
    let chain: Vec<Cert> = match input::certificates(certs)
        .map_err(|e| e.to_string())
        .and_then(|ders| ders.iter().map(|d| Cert::parse(d)).collect())
    {
        Ok(c) => c,
        Err(e) => {
            v.check("cert-chain", false, e);
            return v.finish();
        }
    };
    let root = input::certificates(NVIDIA_DEVICE_ROOT_PEM)
        .ok()
        .and_then(|mut d| d.pop())
        .and_then(|d| Cert::parse(&d).ok());
    let Some(root) = root else {
        v.check("cert-chain", false, "the pinned NVIDIA root does not parse");
        return v.finish();
    };
    v.check_result("cert-chain", verify_p384_chain(&chain, &root, ctx.now));
    let Some(leaf) = chain.first() else {
        return v.finish();
    };
    v.check_result("signature", check_signature(leaf, &spdm));
    if let Some(expected) = nonce {
        if spdm.nonce == *expected {
            v.check("nonce", true, "the report answers the expected nonce");
        } else {
            v.check(
                "nonce",
                false,
                format!(
                    "report nonce {} is not the expected {}",
                    hex::encode(spdm.nonce),
                    hex::encode(expected)
                ),
            );
        }
    }
    v.check_result("fwid", check_fwid(leaf, &spdm));
    check_policy(&mut v, &spdm, ctx);
    v.finish()
}

fn check_signature(leaf: &Cert, spdm: &SpdmReport) -> Result<String, String> {
    let key = leaf.p384_key()?;
    let signature = p384::ecdsa::Signature::from_slice(&spdm.signature)
        .map_err(|_| "the signature is not a valid P-384 r ‖ s".to_string())?;
    key.verify(&spdm.signed, &signature)
        .map(|()| "the device key signed the measurements".to_string())
        .map_err(|_| "the measurements are not signed by the device key".to_string())
}

fn check_fwid(leaf: &Cert, spdm: &SpdmReport) -> Result<String, String> {
    let fwid = spdm
        .opaque(OPAQUE_FWID)
        .ok_or("the report carries no FWID")?;
    let ext = leaf
        .extension(FWID_OID)
        .ok_or("the leaf certificate has no FWID extension")?;
    if !fwid.is_empty() && ext.windows(fwid.len()).any(|w| w == fwid) {
        Ok("the report's FWID is in the leaf certificate".to_string())
    } else {
        Err("the report's FWID is not in the leaf certificate".to_string())
    }
}

fn check_policy(v: &mut Verdict, spdm: &SpdmReport, ctx: &VerifyContext<'_>) {
    let policy = &ctx.policy.nvidia;
    let driver = spdm.driver_version().unwrap_or_default();
    let vbios = spdm.vbios_version().unwrap_or_default();
    v.claim("driver_version", driver.clone());
    v.claim("vbios_version", vbios.clone());
    v.claim("nonce", hex::encode(spdm.nonce));
    let mode = spdm.cc_mode();
    v.claim("cc_mode", mode.name());
    if policy.require_cc_mode {
        v.check("cc-mode", mode.is_on(), format!("CC mode {}", mode.name()));
    }
    if !policy.driver_versions.is_empty() {
        let ok = policy.driver_versions.iter().any(|d| d == &driver);
        v.check("driver-version", ok, format!("driver {driver}"));
    }
    if !policy.min_driver_version.is_empty() {
        let ok = crate::policy::version_at_least(&driver, &policy.min_driver_version, 10);
        v.check(
            "min-driver-version",
            ok,
            format!("driver {driver} (minimum {})", policy.min_driver_version),
        );
    }
    if !policy.min_vbios_version.is_empty() {
        let ok = crate::policy::version_at_least(&vbios, &policy.min_vbios_version, 16);
        v.check(
            "min-vbios-version",
            ok,
            format!("VBIOS {vbios} (minimum {})", policy.min_vbios_version),
        );
    }
    if !policy.vbios_versions.is_empty() {
        let ok = policy
            .vbios_versions
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&vbios));
        v.check("vbios-version", ok, format!("VBIOS {vbios}"));
    }
    if policy.measurements.is_empty() {
        return;
    }
    let mut mismatched = Vec::new();
    for (index, reference) in &policy.measurements {
        let found = index
            .parse::<u8>()
            .ok()
            .and_then(|i| spdm.measurements.iter().find(|m| m.index == i));
        let ok =
            found.is_some_and(|m| hex::encode(&m.value).eq_ignore_ascii_case(reference.trim()));
        if !ok {
            mismatched.push(index.clone());
        }
    }
    if mismatched.is_empty() {
        v.check(
            "measurements",
            true,
            format!("{} reference measurements match", policy.measurements.len()),
        );
    } else {
        v.check(
            "measurements",
            false,
            format!("blocks {} differ from the reference", mismatched.join(", ")),
        );
    }
}
