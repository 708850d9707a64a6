//! NVIDIA GPU evidence through NVML (feature `nvidia`): the GPU's SPDM attestation
//! report for a 32-byte nonce, and its attestation certificate chain.
//! The nonce is the first 32 bytes of the report data (see [`crate::binding::gpu_nonce`]).

use nvml_wrapper::Nvml as NvmlLib;

use super::{Evidence, EvidenceSource, TeeKind};
use crate::Error;

/// Evidence from one GPU, by NVML device index.
pub struct Nvml {
    nvml: NvmlLib,
    index: u32,
}

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvml")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

fn fail(detail: impl std::fmt::Display) -> Error {
    Error::Evidence {
        kind: TeeKind::NvidiaCc,
        detail: detail.to_string(),
    }
}

impl Nvml {
    /// Loads NVML and selects GPU `index`.
    pub fn new(index: u32) -> Result<Self, Error> {
        let nvml = NvmlLib::init().map_err(|e| fail(format!("NVML: {e}")))?;
        Ok(Self { nvml, index })
    }
}

impl EvidenceSource for Nvml {
    fn kind(&self) -> TeeKind {
        TeeKind::NvidiaCc
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, Error> {
        let device = self
            .nvml
            .device_by_index(self.index)
            .map_err(|e| fail(format!("GPU {}: {e}", self.index)))?;
        let nonce = crate::binding::gpu_nonce(report_data);
        let report = device
            .confidential_compute_gpu_attestation_report(nonce)
            .map_err(|e| fail(format!("attestation report: {e}")))?;
        let certs = device
            .confidential_compute_gpu_certificate()
            .map_err(|e| fail(format!("certificate chain: {e}")))?;
        Ok(Evidence {
            kind: TeeKind::NvidiaCc,
            report: report.attestation_report,
            certs: certs.attestation_cert_chain,
        })
    }
}
