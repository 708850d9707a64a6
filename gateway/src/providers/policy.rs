//! `[attestation]` in the gateway config: where TEE collateral comes from (a PCCS or
//! Intel PCS, AMD's KDS, or only files in the collateral directory) and what
//! evidence must satisfy (`[attestation.policy]`, read into
//! [`tenzro_attest::Policy`]).
//!
//! The gateway's defaults are stricter than the library's: Intel TCB status
//! `UpToDate` only, SEV-SNP TCB status `UpToDate` only; any other status is an
//! opt-in; NVIDIA GPUs must be in CC mode (`nvidia.require_cc_mode`, rule
//! `cc-mode`). A malformed policy is a configuration error naming the field, so the
//! gateway does not start with it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tenzro_attest::Policy;

/// `[attestation]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttestationSection {
    /// Base URL of a PCCS or of Intel's PCS (`https://api.trustedservices.intel.com`)
    /// for TDX collateral; empty: only collateral files in `collateral_dir`.
    pub pccs_url: String,
    /// Base URL of AMD's Key Distribution Service (`https://kdsintf.amd.com`) for
    /// VCEK/ASK/ARK; empty: cached files, else the certificates the provider sends.
    pub kds_url: String,
    /// Where collateral is cached and read offline; default `DATA_DIR/collateral`.
    pub collateral_dir: Option<PathBuf>,
    /// TDX collateral is fetched again this long before its `nextUpdate`.
    pub refresh_before_s: u64,
    /// The collateral services may resolve to private addresses (a PCCS inside the
    /// operator's network). Off: public addresses only.
    pub allow_private_collateral: bool,
    /// `[attestation.policy]`: see `attest/policy.example.toml` and the README.
    pub policy: toml::Table,
    /// Share of served answers the gateway audits (0 to 1; `[audit]` names the
    /// auditor, see `crate::audit`). 0: no audits.
    pub audit_rate: f64,
}

impl Default for AttestationSection {
    fn default() -> Self {
        AttestationSection {
            pccs_url: String::new(),
            kds_url: String::new(),
            collateral_dir: None,
            refresh_before_s: 24 * 3600,
            allow_private_collateral: false,
            policy: toml::Table::new(),
            audit_rate: 0.0,
        }
    }
}

impl AttestationSection {
    /// The policy with the gateway's defaults; `Err` names the field.
    pub fn policy(&self) -> Result<Policy, String> {
        parse_policy(&self.policy)
    }

    /// The collateral directory under `data_dir` unless configured.
    pub fn collateral_dir(&self, data_dir: &Path) -> PathBuf {
        self.collateral_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("collateral"))
    }

    /// Checks the URLs and the policy.
    pub fn validate(&self) -> Result<(), String> {
        for (name, url) in [("pccs_url", &self.pccs_url), ("kds_url", &self.kds_url)] {
            if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("attestation.{name}: `{url}` is not an http(s) URL"));
            }
        }
        self.policy().map(|_| ())
    }
}

/// Reads `[attestation.policy]`, filling the gateway's defaults, and validates it.
pub fn parse_policy(table: &toml::Table) -> Result<Policy, String> {
    let mut t = table.clone();
    default_list(&mut t, "tdx", "accepted_tcb_status", "UpToDate");
    default_list(&mut t, "sev_snp", "accepted_tcb_status", "UpToDate");
    default_value(
        &mut t,
        "nvidia",
        "require_cc_mode",
        toml::Value::Boolean(true),
    );
    // Through TOML text, so a type error shows the offending line (with its key).
    let text = toml::to_string(&t).map_err(|e| format!("attestation.policy: {e}"))?;
    let policy: Policy = toml::from_str(&text).map_err(|e| {
        let text = e.to_string();
        let flat: Vec<&str> = text.split_whitespace().collect();
        format!("attestation.policy: {}", flat.join(" "))
    })?;
    match policy.validate() {
        Ok(()) => Ok(policy),
        Err(tenzro_attest::Error::Policy(m)) => Err(format!("attestation.policy.{m}")),
        Err(e) => Err(format!("attestation.policy: {e}")),
    }
}

/// Sets `t[section][key] = [value]` when the key is absent (a section that is not
/// a table is left for deserialization to refuse).
fn default_list(t: &mut toml::Table, section: &str, key: &str, value: &str) {
    let entry = t
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(s) = entry
        && !s.contains_key(key)
    {
        s.insert(
            key.to_owned(),
            toml::Value::Array(vec![toml::Value::String(value.to_owned())]),
        );
    }
}

/// Sets `t[section][key] = value` when the key is absent (as [`default_list`]).
fn default_value(t: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = t
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(s) = entry
        && !s.contains_key(key)
    {
        s.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
