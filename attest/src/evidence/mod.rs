//! TEE evidence: the kinds, producing evidence for given report data, and verifying
//! it offline. One backend per kind:
//! - [`none`]: development only, always untrusted;
//! - [`tsm`]: Linux configfs-tsm (`/sys/kernel/config/tsm/report`), which yields a TDX
//!   quote or an SEV-SNP report from the same interface;
//! - [`nvml`] (feature `nvidia`): NVIDIA GPU evidence through NVML.
//!
//! Verification: [`tdx`] (dcap-qvl), [`sev_snp`] (`rsa` and `p384` under AMD's
//! pinned roots) and [`nvidia`] (SPDM measurements under NVIDIA's device root),
//! dispatched by [`verify`].

use serde::{Deserialize, Serialize};

use crate::{Error, Policy, Verdict};

pub mod none;
pub mod nvidia;
#[cfg(feature = "nvidia")]
pub mod nvml;
pub mod sev_snp;
pub mod tdx;
pub mod tsm;
mod x509;

pub use tdx::Collateral;

/// The kind of evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeeKind {
    /// No TEE: development only, never trusted.
    None,
    /// Intel TDX quote (DCAP).
    Tdx,
    /// AMD SEV-SNP attestation report.
    SevSnp,
    /// NVIDIA GPU confidential-computing SPDM evidence.
    NvidiaCc,
}

impl TeeKind {
    /// The lowercase name used in JSON and config: `none`, `tdx`, `sev-snp`, `nvidia-cc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Tdx => "tdx",
            Self::SevSnp => "sev-snp",
            Self::NvidiaCc => "nvidia-cc",
        }
    }
}

impl std::fmt::Display for TeeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TeeKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "none" => Ok(Self::None),
            "tdx" => Ok(Self::Tdx),
            "sev-snp" => Ok(Self::SevSnp),
            "nvidia-cc" => Ok(Self::NvidiaCc),
            other => Err(Error::decode("TEE kind", format!("unknown kind {other:?}"))),
        }
    }
}

/// Evidence as a provider hands it out. JSON: `report` and `certs` are base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// The kind.
    pub kind: TeeKind,
    /// TDX: the DCAP quote. SEV-SNP: the 1184-byte report. NVIDIA: SPDM
    /// GET_MEASUREMENTS request ‖ response. `none`: the 64 report-data bytes.
    #[serde(with = "b64")]
    pub report: Vec<u8>,
    /// SEV-SNP: the VCEK/VLEK, optionally followed by ASK and ARK (PEM or DER).
    /// NVIDIA: the device certificate chain (PEM). TDX: empty, the PCK chain is in
    /// the quote.
    #[serde(default, with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub certs: Vec<u8>,
}

/// Produces evidence for given report data: one implementation per TEE kind.
pub trait EvidenceSource: Send + Sync {
    /// The kind this source produces.
    fn kind(&self) -> TeeKind;
    /// Evidence whose report data is `report_data` (see [`crate::binding`]).
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, Error>;
}

/// What a verifier expects and accepts.
#[derive(Clone, Debug)]
pub struct VerifyContext<'a> {
    /// The time to verify at, unix seconds (production: the clock; tests pin it).
    pub now: u64,
    /// What is accepted.
    pub policy: &'a Policy,
    /// The report data the evidence must carry (see [`crate::binding`]); `None`
    /// skips the binding check (offline inspection of vendor samples only).
    pub report_data: Option<[u8; 64]>,
    /// Intel collateral for TDX quotes.
    pub tdx_collateral: Option<&'a Collateral>,
}

/// Verifies `evidence` of any kind. Never panics on bad input; refusals carry reasons.
pub fn verify(evidence: &Evidence, ctx: &VerifyContext<'_>) -> Verdict {
    match evidence.kind {
        TeeKind::None => none::verify(&evidence.report, ctx),
        TeeKind::Tdx => tdx::verify(&evidence.report, ctx),
        TeeKind::SevSnp => sev_snp::verify(&evidence.report, &evidence.certs, None, ctx),
        TeeKind::NvidiaCc => {
            let nonce = ctx.report_data.as_ref().map(crate::binding::gpu_nonce);
            nvidia::verify(&evidence.report, &evidence.certs, nonce.as_ref(), ctx)
        }
    }
}

/// The current unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Records the binding check: `found` must equal the expected report data.
pub(crate) fn check_report_data(v: &mut Verdict, found: &[u8], ctx: &VerifyContext<'_>) {
    v.claim("report_data", hex::encode(found));
    if let Some(expected) = &ctx.report_data {
        if found == expected.as_slice() {
            v.check(
                "binding",
                true,
                "report data binds the key, weights and nonce",
            );
        } else {
            v.check(
                "binding",
                false,
                "report data does not match the expected key, weights and nonce",
            );
        }
    }
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}
