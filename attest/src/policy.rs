//! What a verifier accepts, read from TOML (see `attest/policy.example.toml`).
//!
//! Empty measurement lists mean "any value"; a gateway that wants a fixed image
//! lists the values it accepts. Hex values are case-insensitive.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Twenty-four hours: how long a verdict lasts unless the policy says otherwise.
pub const DEFAULT_FRESHNESS_SECS: u64 = 24 * 60 * 60;

/// The whole policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Seconds a verdict stays valid before the evidence must be verified again.
    pub freshness_secs: u64,
    /// Accept debug TDs/guests. Never in production: a debug TEE can be inspected.
    pub allow_debug: bool,
    /// Intel TDX.
    pub tdx: TdxPolicy,
    /// AMD SEV-SNP.
    pub sev_snp: SnpPolicy,
    /// NVIDIA GPU confidential computing.
    pub nvidia: NvidiaPolicy,
    /// Oldest evidence accepted, seconds between the time the provider says it made
    /// its evidence and the verification (0: not checked). Enforced by the gateway,
    /// which knows the document's `issued_at`.
    pub max_evidence_age_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            freshness_secs: DEFAULT_FRESHNESS_SECS,
            allow_debug: false,
            tdx: TdxPolicy::default(),
            sev_snp: SnpPolicy::default(),
            nvidia: NvidiaPolicy::default(),
            max_evidence_age_secs: 0,
        }
    }
}

/// Intel TDX policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TdxPolicy {
    /// Allowed MRTD values (48-byte hex).
    pub mrtd: Vec<String>,
    /// Allowed RTMR0 values.
    pub rtmr0: Vec<String>,
    /// Allowed RTMR1 values.
    pub rtmr1: Vec<String>,
    /// Allowed RTMR2 values.
    pub rtmr2: Vec<String>,
    /// Allowed RTMR3 values.
    pub rtmr3: Vec<String>,
    /// TCB statuses accepted from Intel's collateral: the minimum TCB. Intel's levels
    /// are `UpToDate`, `SWHardeningNeeded`, `ConfigurationNeeded`,
    /// `ConfigurationAndSWHardeningNeeded`, `OutOfDate`,
    /// `OutOfDateConfigurationNeeded` and `Revoked`.
    pub accepted_tcb_status: Vec<String>,
}

impl Default for TdxPolicy {
    fn default() -> Self {
        Self {
            mrtd: Vec::new(),
            rtmr0: Vec::new(),
            rtmr1: Vec::new(),
            rtmr2: Vec::new(),
            rtmr3: Vec::new(),
            accepted_tcb_status: vec!["UpToDate".to_string(), "SWHardeningNeeded".to_string()],
        }
    }
}

/// AMD SEV-SNP policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnpPolicy {
    /// Allowed launch measurements (48-byte hex).
    pub measurements: Vec<String>,
    /// Minimum reported TCB, component by component.
    pub min_tcb: SnpTcb,
    /// Highest VMPL the report may come from (0 is the most privileged).
    pub max_vmpl: u32,
    /// Accept guests whose policy allows a migration agent.
    pub allow_migration_agent: bool,
    /// TCB statuses accepted: `UpToDate` when the current, committed and launch TCBs
    /// all equal the reported one, else `OutOfDate` (dstack's reading). Empty: any.
    pub accepted_tcb_status: Vec<String>,
}

/// An SEV-SNP TCB version, component by component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnpTcb {
    /// PSP bootloader SVN.
    pub bootloader: u8,
    /// PSP OS SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode patch level.
    pub microcode: u8,
}

/// NVIDIA GPU policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NvidiaPolicy {
    /// Reference measurements by SPDM block index (as a string key, e.g. `"2"`),
    /// 48-byte hex each, from NVIDIA's RIMs. Blocks not listed are not compared.
    pub measurements: BTreeMap<String, String>,
    /// Allowed driver versions, e.g. `"550.90.07"`; empty means any.
    pub driver_versions: Vec<String>,
    /// Allowed VBIOS versions, e.g. `"96.00.9f.00.01"`; empty means any.
    pub vbios_versions: Vec<String>,
    /// Lowest driver version accepted, compared field by field as numbers (e.g.
    /// `"550.90.07"`); empty means any.
    pub min_driver_version: String,
    /// Lowest VBIOS version accepted, compared field by field as hex numbers (e.g.
    /// `"96.00.9f.00.01"`); empty means any.
    pub min_vbios_version: String,
    /// Require the GPU to be in confidential-computing mode (rule `cc-mode`): the
    /// signed report's opaque FEATURE_FLAG (type 36) must be absent (single-GPU CC,
    /// firmware before the flag) or SPT/MPT, and its PROTECTED_PCIE_STATUS (type 21)
    /// not `0xAA`. A Hopper GPU in protected-PCIe mode (FEATURE_FLAG PPCIE) runs with
    /// CC mode off. Off in the library's default; the gateway turns it on.
    pub require_cc_mode: bool,
}

impl Policy {
    /// Parses and validates a policy from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let policy: Self = toml::from_str(text).map_err(|e| Error::decode("policy", e))?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads and validates a policy file.
    pub fn load(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text)
    }

    /// Refuses malformed hex values and a zero freshness window.
    pub fn validate(&self) -> Result<(), Error> {
        if self.freshness_secs == 0 {
            return Err(Error::Policy("freshness_secs must be positive".to_string()));
        }
        let t = &self.tdx;
        for (name, list) in [
            ("tdx.mrtd", &t.mrtd),
            ("tdx.rtmr0", &t.rtmr0),
            ("tdx.rtmr1", &t.rtmr1),
            ("tdx.rtmr2", &t.rtmr2),
            ("tdx.rtmr3", &t.rtmr3),
            ("sev_snp.measurements", &self.sev_snp.measurements),
        ] {
            for v in list {
                check_hex(name, v, 48)?;
            }
        }
        for (name, v, radix) in [
            (
                "nvidia.min_driver_version",
                &self.nvidia.min_driver_version,
                10,
            ),
            (
                "nvidia.min_vbios_version",
                &self.nvidia.min_vbios_version,
                16,
            ),
        ] {
            if !v.is_empty() && version_fields(v, radix).is_none() {
                return Err(Error::Policy(format!(
                    "{name}: {v:?} is not a dotted version"
                )));
            }
        }
        for s in &self.sev_snp.accepted_tcb_status {
            if s != "UpToDate" && s != "OutOfDate" {
                return Err(Error::Policy(format!(
                    "sev_snp.accepted_tcb_status: {s:?} is not UpToDate or OutOfDate"
                )));
            }
        }
        for s in &self.tdx.accepted_tcb_status {
            if !INTEL_TCB_STATUSES.contains(&s.as_str()) {
                return Err(Error::Policy(format!(
                    "tdx.accepted_tcb_status: {s:?} is not one of {}",
                    INTEL_TCB_STATUSES.join(", ")
                )));
            }
        }
        for (index, v) in &self.nvidia.measurements {
            if index.parse::<u8>().is_err() {
                return Err(Error::Policy(format!(
                    "nvidia.measurements: key {index:?} is not a block index"
                )));
            }
            check_hex("nvidia.measurements", v, 48)?;
        }
        Ok(())
    }
}

/// Intel's TCB statuses.
pub const INTEL_TCB_STATUSES: [&str; 7] = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
];

/// The fields of a dotted version (`550.90.07`, `96.00.9f.00.01`) as numbers in
/// `radix`; `None` when a field is not a number or there are more than 8.
pub fn version_fields(v: &str, radix: u32) -> Option<Vec<u64>> {
    let fields: Vec<&str> = v.trim().split('.').collect();
    if fields.len() > 8 {
        return None;
    }
    fields
        .iter()
        .map(|f| u64::from_str_radix(f, radix).ok())
        .collect()
}

/// Whether `found` is at least `min` (dotted versions in `radix`; a missing field
/// counts as 0). An unreadable `found` is not.
pub fn version_at_least(found: &str, min: &str, radix: u32) -> bool {
    let (Some(f), Some(m)) = (version_fields(found, radix), version_fields(min, radix)) else {
        return false;
    };
    let len = f.len().max(m.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    (0..len)
        .map(|i| at(&f, i).cmp(&at(&m, i)))
        .find(|o| o.is_ne())
        .is_none_or(|o| o.is_gt())
}

fn check_hex(name: &str, value: &str, len: usize) -> Result<(), Error> {
    match hex::decode(value.trim()) {
        Ok(b) if b.len() == len => Ok(()),
        _ => Err(Error::Policy(format!(
            "{name}: {value:?} is not {len} bytes of hex"
        ))),
    }
}

/// Whether `value` is allowed by `list` (empty list: anything). Case-insensitive.
pub(crate) fn allowed(list: &[String], value: &[u8]) -> bool {
    let value = hex::encode(value);
    list.is_empty() || list.iter().any(|v| v.trim().eq_ignore_ascii_case(&value))
}
