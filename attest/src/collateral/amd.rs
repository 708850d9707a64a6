//! AMD collateral for SEV-SNP reports: the VCEK of the chip at the reported TCB,
//! and the ASK/ARK chain of its generation, as AMD's Key Distribution Service
//! serves them (`/vcek/v1/{product}/{hwid}?blSPL=..` and
//! `/vcek/v1/{product}/cert_chain`), with the file names they are kept under.

use crate::evidence::sev_snp::{VcekIdentity, vcek_identity};

/// Largest VCEK or chain accepted from the KDS or a file.
pub const MAX_CERT_BYTES: usize = 64 * 1024;

/// One KDS request for one product: the VCEK path and the chain path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KdsRequest {
    /// `Milan`, `Genoa` or `Turin`.
    pub product: &'static str,
    /// `/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`.
    pub vcek_path: String,
    /// `/vcek/v1/{product}/cert_chain`.
    pub chain_path: String,
    /// The VCEK's cache file, relative to the AMD cache directory.
    pub vcek_file: String,
    /// The chain's cache file, relative to the AMD cache directory.
    pub chain_file: String,
}

/// The KDS requests for the VCEK that signed `report`, one per candidate product.
pub fn kds_requests(report: &[u8]) -> Result<Vec<KdsRequest>, String> {
    let id = vcek_identity(report)?;
    Ok(id.products.iter().map(|p| request(&id, p)).collect())
}

fn request(id: &VcekIdentity, product: &'static str) -> KdsRequest {
    let hwid = if product == "Turin" {
        hex::encode(&id.chip_id[..8])
    } else {
        hex::encode(id.chip_id)
    };
    let mut query = format!(
        "blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
        id.bootloader, id.tee, id.snp, id.microcode
    );
    let mut tcb = format!("{}-{}-{}-{}", id.bootloader, id.tee, id.snp, id.microcode);
    if let Some(fmc) = id.fmc {
        query.push_str(&format!("&fmcSPL={fmc}"));
        tcb.push_str(&format!("-{fmc}"));
    }
    KdsRequest {
        product,
        vcek_path: format!("/vcek/v1/{product}/{hwid}?{query}"),
        chain_path: format!("/vcek/v1/{product}/cert_chain"),
        vcek_file: format!("{product}/vcek-{hwid}-{tcb}.der"),
        chain_file: format!("{product}/cert_chain.pem"),
    }
}
