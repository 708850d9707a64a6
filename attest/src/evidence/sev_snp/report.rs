//! The fields of an SEV-SNP attestation report this crate reads, at their offsets in
//! AMD's SEV-SNP firmware ABI specification (`ATTESTATION_REPORT`, versions 2 to 5).
//!
//! Every field is read from the report's own bytes; nothing is re-encoded. The
//! layout of a TCB version depends on the CPU generation: Milan and Genoa put the SNP
//! SVN in byte 6, Turin and later add an FMC SVN in byte 0 and move the others.

use std::fmt;

use super::REPORT_LEN;
use crate::policy::SnpTcb;

/// The fields read from a report.
#[derive(Clone, Debug)]
pub(super) struct Report {
    pub(super) version: u32,
    pub(super) guest_policy: u64,
    pub(super) vmpl: u32,
    pub(super) signature_algorithm: u32,
    pub(super) current_tcb: Tcb,
    pub(super) report_data: [u8; 64],
    pub(super) measurement: [u8; 48],
    pub(super) host_data: [u8; 32],
    pub(super) reported_tcb: Tcb,
    pub(super) chip_id: [u8; 64],
    pub(super) committed_tcb: Tcb,
    pub(super) launch_tcb: Tcb,
}

/// A TCB version, component by component; `fmc` only from Turin on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tcb {
    pub(super) fmc: Option<u8>,
    pub(super) bootloader: u8,
    pub(super) tee: u8,
    pub(super) snp: u8,
    pub(super) microcode: u8,
}

/// How the report encodes its TCB versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcbLayout {
    /// Milan and Genoa: bootloader, TEE, 4 reserved bytes, SNP, microcode.
    Legacy,
    /// Turin and later: FMC, bootloader, TEE, SNP, 3 reserved bytes, microcode.
    Turin,
}

impl Tcb {
    fn decode(raw: [u8; 8], layout: TcbLayout) -> Self {
        match layout {
            TcbLayout::Legacy => Self {
                fmc: None,
                bootloader: raw[0],
                tee: raw[1],
                snp: raw[6],
                microcode: raw[7],
            },
            TcbLayout::Turin => Self {
                fmc: Some(raw[0]),
                bootloader: raw[1],
                tee: raw[2],
                snp: raw[3],
                microcode: raw[7],
            },
        }
    }

    /// Whether every component policy names is at least its minimum.
    pub(super) fn at_least(&self, min: &SnpTcb) -> bool {
        self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
    }
}

impl fmt::Display for Tcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc {fmc} ")?;
        }
        write!(
            f,
            "bl {} tee {} snp {} ucode {}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

impl Report {
    /// Reads a report of exactly [`REPORT_LEN`] bytes. Refuses versions 0 and 1 and
    /// reports whose CPU generation (hence TCB layout) cannot be told.
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let r: &[u8; REPORT_LEN] = bytes
            .try_into()
            .map_err(|_| format!("{} bytes, an SNP report has {REPORT_LEN}", bytes.len()))?;
        let version = u32::from_le_bytes(field(r, 0x00));
        let chip_id: [u8; 64] = field(r, 0x1a0);
        let layout = tcb_layout(version, r[0x188], r[0x189], &chip_id)?;
        let tcb = |at: usize| Tcb::decode(field(r, at), layout);
        Ok(Self {
            version,
            guest_policy: u64::from_le_bytes(field(r, 0x08)),
            vmpl: u32::from_le_bytes(field(r, 0x30)),
            signature_algorithm: u32::from_le_bytes(field(r, 0x34)),
            current_tcb: tcb(0x38),
            report_data: field(r, 0x50),
            measurement: field(r, 0x90),
            host_data: field(r, 0xc0),
            reported_tcb: tcb(0x180),
            chip_id,
            committed_tcb: tcb(0x1e0),
            launch_tcb: tcb(0x1f0),
        })
    }
}

/// `N` bytes of the report from offset `at` (a constant inside the report).
fn field<const N: usize>(r: &[u8; REPORT_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&r[at..at + N]);
    out
}

/// The TCB layout: from version 3 on, from the CPUID family and model the report
/// carries; in version 2, which has no CPUID fields, from the chip ID (Turin's is 8
/// bytes, zero-padded), so a version 2 report with a masked (zero) chip ID is refused.
fn tcb_layout(
    version: u32,
    family: u8,
    model: u8,
    chip_id: &[u8; 64],
) -> Result<TcbLayout, String> {
    match version {
        0 | 1 => Err(format!(
            "report version {version} is not supported (2 or later)"
        )),
        2 if chip_id.iter().all(|b| *b == 0) => Err(
            "a version 2 report with a masked chip ID does not tell its CPU generation".to_string(),
        ),
        2 if chip_id[8..].iter().all(|b| *b == 0) => Ok(TcbLayout::Turin),
        2 => Ok(TcbLayout::Legacy),
        _ => match (family, model) {
            // Milan; Genoa (and Bergamo, Siena).
            (0x19, 0x00..=0x0f | 0x10..=0x1f | 0xa0..=0xaf) => Ok(TcbLayout::Legacy),
            // Turin; Venice.
            (0x1a, 0x00..=0x11 | 0x50..=0x57 | 0x90..=0x9f | 0xa0..=0xaf | 0xc0..=0xc7) => {
                Ok(TcbLayout::Turin)
            }
            _ => Err(format!(
                "CPUID family {family:#x} model {model:#x} is not a known SEV-SNP processor"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: [u8; 8], layout: TcbLayout, expect: &str) {
        assert_eq!(Tcb::decode(raw, layout).to_string(), expect);
    }

    #[test]
    fn tcb_layouts() {
        check(
            [3, 0, 0, 0, 0, 0, 8, 115],
            TcbLayout::Legacy,
            "bl 3 tee 0 snp 8 ucode 115",
        );
        check(
            [1, 2, 3, 4, 0, 0, 0, 5],
            TcbLayout::Turin,
            "fmc 1 bl 2 tee 3 snp 4 ucode 5",
        );
    }

    #[test]
    fn generation_from_version_cpuid_and_chip_id() {
        let milan_chip = [0xd4; 64];
        let mut turin_chip = [0u8; 64];
        turin_chip[..8].fill(0x55);
        let cases = [
            (0, 0x19, 0x01, milan_chip, None),
            (1, 0x19, 0x01, milan_chip, None),
            (2, 0, 0, milan_chip, Some(TcbLayout::Legacy)),
            (2, 0, 0, turin_chip, Some(TcbLayout::Turin)),
            (2, 0, 0, [0; 64], None),
            (3, 0x19, 0x01, [0; 64], Some(TcbLayout::Legacy)),
            (3, 0x19, 0x11, milan_chip, Some(TcbLayout::Legacy)),
            (3, 0x1a, 0x02, turin_chip, Some(TcbLayout::Turin)),
            (5, 0x1a, 0x02, turin_chip, Some(TcbLayout::Turin)),
            (3, 0x17, 0x31, milan_chip, None),
            (3, 0x19, 0x30, milan_chip, None),
        ];
        for (version, family, model, chip, expect) in cases {
            assert_eq!(
                tcb_layout(version, family, model, &chip).ok(),
                expect,
                "v{version} family {family:#x} model {model:#x}"
            );
        }
    }
}
