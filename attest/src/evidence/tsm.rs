//! Producing TDX quotes and SEV-SNP reports through Linux configfs-tsm.
//!
//! The kernel (6.7+) exposes `/sys/kernel/config/tsm/report`: make a directory,
//! write the 64 report-data bytes to `inblob`, read the signed evidence from
//! `outblob` (and, for SEV-SNP, the certificate table from `auxblob`), and check that
//! `generation` did not change in between (another writer would have raced us).
//! `provider` names the backend: `tdx_guest` or `sev_guest`.
//!
//! `/dev/tdx_guest` alone yields a TDREPORT, MAC'd for the local platform and not
//! verifiable elsewhere, and its ioctls need `unsafe`, which this crate forbids; so
//! TDX quotes come from configfs-tsm. The same holds for `/dev/sev-guest`'s
//! `SNP_GET_REPORT` ioctl: SEV-SNP reports come from configfs-tsm too, whose
//! `sev_guest` provider is the same kernel driver ([`SevGuestDevice`]).

use std::path::{Path, PathBuf};

use super::{Evidence, EvidenceSource, TeeKind};
use crate::Error;

/// The default configfs-tsm report directory.
pub const TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";

/// Evidence from configfs-tsm for TDX or SEV-SNP.
#[derive(Clone, Debug)]
pub struct ConfigfsTsm {
    kind: TeeKind,
    root: PathBuf,
}

impl ConfigfsTsm {
    /// A source for `kind` (`Tdx` or `SevSnp`) under `root` (normally [`TSM_REPORT_DIR`]).
    pub fn new(kind: TeeKind, root: impl Into<PathBuf>) -> Result<Self, Error> {
        match kind {
            TeeKind::Tdx | TeeKind::SevSnp => Ok(Self {
                kind,
                root: root.into(),
            }),
            other => Err(Error::Evidence {
                kind: other,
                detail: "configfs-tsm serves only tdx and sev-snp".to_string(),
            }),
        }
    }

    fn fail(&self, detail: impl std::fmt::Display) -> Error {
        Error::Evidence {
            kind: self.kind,
            detail: detail.to_string(),
        }
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, Error> {
        std::fs::read(path).map_err(|e| self.fail(format!("{}: {e}", path.display())))
    }

    fn produce(&self, dir: &Path, report_data: &[u8; 64]) -> Result<Evidence, Error> {
        let provider = String::from_utf8_lossy(&self.read(&dir.join("provider"))?)
            .trim()
            .to_string();
        let wanted = match self.kind {
            TeeKind::Tdx => "tdx_guest",
            _ => "sev_guest",
        };
        if provider != wanted {
            return Err(self.fail(format!(
                "configfs-tsm provider is {provider:?}, not {wanted}"
            )));
        }
        let generation = self.read(&dir.join("generation"))?;
        std::fs::write(dir.join("inblob"), report_data)
            .map_err(|e| self.fail(format!("writing inblob: {e}")))?;
        let report = self.read(&dir.join("outblob"))?;
        let certs = match self.kind {
            TeeKind::SevSnp => self.read(&dir.join("auxblob")).unwrap_or_default(),
            _ => Vec::new(),
        };
        let after = self.read(&dir.join("generation"))?;
        let expected_after = parse_generation(&generation).map(|g| g + 1);
        if parse_generation(&after) != expected_after {
            return Err(self.fail("another writer used the report entry concurrently; retry"));
        }
        Ok(Evidence {
            kind: self.kind,
            report,
            certs,
        })
    }
}

fn parse_generation(bytes: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(bytes).trim().parse().ok()
}

impl EvidenceSource for ConfigfsTsm {
    fn kind(&self) -> TeeKind {
        self.kind
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, Error> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| Error::Random(e.to_string()))?;
        let dir = self.root.join(format!("tenzro-{}", hex::encode(nonce)));
        std::fs::create_dir(&dir).map_err(|e| self.fail(format!("{}: {e}", dir.display())))?;
        let result = self.produce(&dir, report_data);
        // configfs entries are removed with rmdir; failing to clean up is not fatal.
        let _ = std::fs::remove_dir(&dir);
        result
    }
}

/// SEV-SNP evidence from the kernel's `sev-guest` driver, through configfs-tsm at
/// [`TSM_REPORT_DIR`]: the same as `ConfigfsTsm::new(TeeKind::SevSnp, TSM_REPORT_DIR)`.
///
/// It used to issue the `/dev/sev-guest` ioctl through the `sev` crate, which this
/// crate no longer depends on (see the README's dependency notes); the ioctl itself
/// would need `unsafe`. configfs-tsm (Linux 6.7+) reaches the same driver, at VMPL 0
/// unless `privlevel` was changed, and also returns the certificate table.
#[derive(Clone, Copy, Debug, Default)]
pub struct SevGuestDevice;

impl EvidenceSource for SevGuestDevice {
    fn kind(&self) -> TeeKind {
        TeeKind::SevSnp
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, Error> {
        ConfigfsTsm::new(TeeKind::SevSnp, TSM_REPORT_DIR)?.evidence(report_data)
    }
}
