//! Intel collateral for DCAP quotes, kept as the JSON file [`Collateral::from_json`]
//! reads (the format of dcap-qvl's samples): which FMSPC a quote needs, the PCCS/PCS
//! paths that serve its items, assembling the answers into that file, and the time
//! the file stops being valid (the earliest `nextUpdate` of its four dated items).
//!
//! [`Collateral::from_json`]: crate::evidence::Collateral::from_json

use serde::{Deserialize, Serialize};
use x509_cert::der::Decode as _;

use super::time::parse_rfc3339;

/// Largest collateral item accepted from a service or a file (Intel's are a few KiB).
pub const MAX_ITEM_BYTES: usize = 256 * 1024;

/// What a quote needs: its platform's FMSPC and the CA that issued its PCK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteKey {
    /// FMSPC, 12 lowercase hex digits (also the cache file's name).
    pub fmspc: String,
    /// `platform` or `processor`: which PCK CRL applies.
    pub ca: &'static str,
    /// An SGX quote (its TCB info and QE identity live under `/sgx/`).
    pub is_sgx: bool,
}

/// Reads the FMSPC and PCK CA from the PCK chain inside `quote`. Never panics.
pub fn quote_key(quote: &[u8]) -> Result<QuoteKey, String> {
    let parsed =
        dcap_qvl::quote::Quote::parse(quote).map_err(|e| format!("not a DCAP quote: {e:#}"))?;
    let fmspc = dcap_qvl::intel::quote_fmspc(&parsed)
        .map_err(|e| format!("the quote's PCK certificate has no FMSPC: {e:#}"))?;
    let ca = dcap_qvl::intel::quote_ca(&parsed)
        .map_err(|e| format!("the quote's PCK certificate has no known issuer: {e:#}"))?;
    Ok(QuoteKey {
        fmspc: hex::encode(fmspc),
        ca: ca.as_id_str(),
        is_sgx: parsed.header.is_sgx(),
    })
}

/// The paths (under a PCCS or PCS base URL) of a quote's four collateral items, in
/// Intel's PCS API v4: `(pck_crl, tcb_info, qe_identity, root_ca_crl)`.
pub fn pccs_paths(key: &QuoteKey) -> [String; 4] {
    let tee = if key.is_sgx { "sgx" } else { "tdx" };
    [
        format!("/sgx/certification/v4/pckcrl?ca={}&encoding=der", key.ca),
        format!(
            "/{tee}/certification/v4/tcb?fmspc={}",
            key.fmspc.to_ascii_uppercase()
        ),
        format!("/{tee}/certification/v4/qe/identity?update=standard"),
        "/sgx/certification/v4/rootcacrl".to_string(),
    ]
}

/// The answers of a PCCS/PCS, as received (header values already URL-decoded).
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// `pckcrl` body: the DER CRL (or its hex, as some PCCS versions send).
    pub pck_crl: Vec<u8>,
    /// `SGX-PCK-CRL-Issuer-Chain` header.
    pub pck_crl_issuer_chain: String,
    /// `tcb` body: `{"tcbInfo": {...}, "signature": "hex"}`.
    pub tcb_info_body: String,
    /// `TCB-Info-Issuer-Chain` (or `SGX-TCB-Info-Issuer-Chain`) header.
    pub tcb_info_issuer_chain: String,
    /// `qe/identity` body: `{"enclaveIdentity": {...}, "signature": "hex"}`.
    pub qe_identity_body: String,
    /// `SGX-Enclave-Identity-Issuer-Chain` header.
    pub qe_identity_issuer_chain: String,
    /// `rootcacrl` body: DER or hex.
    pub root_ca_crl: Vec<u8>,
}

/// The collateral file: the JSON dcap-qvl's samples use, every field a string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollateralFile {
    pub pck_crl_issuer_chain: String,
    pub root_ca_crl: String,
    pub pck_crl: String,
    pub tcb_info_issuer_chain: String,
    pub tcb_info: String,
    pub tcb_info_signature: String,
    pub qe_identity_issuer_chain: String,
    pub qe_identity: String,
    pub qe_identity_signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pck_certificate_chain: Option<String>,
}

/// Builds the collateral file from a service's answers. The signed JSON is kept
/// byte for byte as served (its signature covers those bytes).
pub fn assemble(f: &Fetched) -> Result<String, String> {
    let (tcb_info, tcb_sig) = signed_member(&f.tcb_info_body, "tcbInfo")?;
    let (qe_identity, qe_sig) = signed_member(&f.qe_identity_body, "enclaveIdentity")?;
    let file = CollateralFile {
        pck_crl_issuer_chain: f.pck_crl_issuer_chain.clone(),
        root_ca_crl: hex::encode(der_or_hex(&f.root_ca_crl, "root CA CRL")?),
        pck_crl: hex::encode(der_or_hex(&f.pck_crl, "PCK CRL")?),
        tcb_info_issuer_chain: f.tcb_info_issuer_chain.clone(),
        tcb_info: tcb_info.to_string(),
        tcb_info_signature: tcb_sig,
        qe_identity_issuer_chain: f.qe_identity_issuer_chain.clone(),
        qe_identity: qe_identity.to_string(),
        qe_identity_signature: qe_sig,
        pck_certificate_chain: None,
    };
    serde_json::to_string_pretty(&file).map_err(|e| format!("collateral file: {e}"))
}

/// A CRL as DER: bytes starting with a DER SEQUENCE are kept, hex text is decoded.
fn der_or_hex(bytes: &[u8], what: &str) -> Result<Vec<u8>, String> {
    if bytes.first() == Some(&0x30) {
        return Ok(bytes.to_vec());
    }
    let text =
        std::str::from_utf8(bytes).map_err(|_| format!("the {what} is neither DER nor hex"))?;
    hex::decode(text.trim()).map_err(|_| format!("the {what} is neither DER nor hex"))
}

/// The exact text of the object under `key` in `{"key": {...}, "signature": "hex"}`
/// and the signature.
fn signed_member<'a>(body: &'a str, key: &str) -> Result<(&'a str, String), String> {
    #[derive(Deserialize)]
    struct Sig {
        signature: String,
    }
    let sig: Sig = serde_json::from_str(body)
        .map_err(|e| format!("{key}: the answer is not the signed JSON: {e}"))?;
    let raw = raw_object(body, key).ok_or_else(|| format!("{key}: missing from the answer"))?;
    serde_json::from_str::<serde_json::Value>(raw).map_err(|e| format!("{key}: {e}"))?;
    Ok((raw, sig.signature))
}

/// The raw text of the top-level member `key` whose value is an object (a scan that
/// follows strings and nesting; the caller re-parses what it returns).
fn raw_object<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let bytes = body.as_bytes();
    let (mut depth, mut i, mut in_str) = (0usize, 0usize, false);
    let mut str_start = 0usize;
    let mut last_key: Option<&str> = None;
    while i < bytes.len() {
        let b = bytes[i];
        if in_str {
            match b {
                b'\\' => i += 1,
                b'"' => {
                    in_str = false;
                    if depth == 1 {
                        last_key = body.get(str_start..i);
                    }
                }
                _ => {}
            }
        } else {
            match b {
                b'"' => {
                    in_str = true;
                    str_start = i + 1;
                }
                b'{' | b'[' => {
                    if depth == 1 && b == b'{' && last_key == Some(key) {
                        return body.get(i..matching_close(bytes, i)? + 1);
                    }
                    depth += 1;
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                b',' => last_key = None,
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Index of the brace closing the one at `open`.
fn matching_close(bytes: &[u8], open: usize) -> Option<usize> {
    let (mut depth, mut in_str, mut i) = (0usize, false, open);
    while i < bytes.len() {
        let b = bytes[i];
        if in_str {
            match b {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_str = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// When a collateral file stops being valid, and which item decides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Unix seconds: the earliest `nextUpdate` (a CRL is expired *at* it; dcap-qvl
    /// accepts the JSON items up to and including theirs, so this is conservative
    /// by at most one second).
    pub next_update: u64,
    /// `TCB info`, `QE identity`, `PCK CRL` or `root CA CRL`.
    pub item: &'static str,
}

/// The earliest `nextUpdate` of the file's TCB info, QE identity and both CRLs.
pub fn next_update(file_json: &str) -> Result<Validity, String> {
    let f: CollateralFile =
        serde_json::from_str(file_json).map_err(|e| format!("not a collateral file: {e}"))?;
    let json_next = |what: &'static str, text: &str| -> Result<(u64, &'static str), String> {
        #[derive(Deserialize)]
        struct Dated {
            #[serde(rename = "nextUpdate")]
            next_update: String,
        }
        let d: Dated = serde_json::from_str(text).map_err(|e| format!("{what}: {e}"))?;
        parse_rfc3339(&d.next_update)
            .map(|t| (t, what))
            .ok_or_else(|| {
                format!(
                    "{what}: nextUpdate {:?} is not an RFC 3339 time",
                    d.next_update
                )
            })
    };
    let crl_next = |what: &'static str, hex_der: &str| -> Result<(u64, &'static str), String> {
        let der = hex::decode(hex_der.trim()).map_err(|e| format!("{what}: {e}"))?;
        let crl = x509_cert::crl::CertificateList::from_der(&der)
            .map_err(|e| format!("{what}: not a DER CRL: {e}"))?;
        let next = crl
            .tbs_cert_list
            .next_update
            .ok_or_else(|| format!("{what}: no nextUpdate"))?;
        Ok((next.to_unix_duration().as_secs(), what))
    };
    let all = [
        json_next("TCB info", &f.tcb_info)?,
        json_next("QE identity", &f.qe_identity)?,
        crl_next("PCK CRL", &f.pck_crl)?,
        crl_next("root CA CRL", &f.root_ca_crl)?,
    ];
    let (next_update, item) = all
        .into_iter()
        .min_by_key(|(t, _)| *t)
        .ok_or("no dated item")?;
    Ok(Validity { next_update, item })
}

/// The file and the PCCS answers that would have produced it (for mock services in
/// tests and for re-serving a cache).
pub fn disassemble(file_json: &str) -> Result<(CollateralFile, Fetched), String> {
    let f: CollateralFile =
        serde_json::from_str(file_json).map_err(|e| format!("not a collateral file: {e}"))?;
    let fetched = Fetched {
        pck_crl: hex::decode(f.pck_crl.trim()).map_err(|e| format!("pck_crl: {e}"))?,
        pck_crl_issuer_chain: f.pck_crl_issuer_chain.clone(),
        tcb_info_body: format!(
            "{{\"tcbInfo\":{},\"signature\":\"{}\"}}",
            f.tcb_info, f.tcb_info_signature
        ),
        tcb_info_issuer_chain: f.tcb_info_issuer_chain.clone(),
        qe_identity_body: format!(
            "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
            f.qe_identity, f.qe_identity_signature
        ),
        qe_identity_issuer_chain: f.qe_identity_issuer_chain.clone(),
        root_ca_crl: hex::decode(f.root_ca_crl.trim()).map_err(|e| format!("root_ca_crl: {e}"))?,
    };
    Ok((f, fetched))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn raw_object_keeps_the_exact_text() {
        let body = r#"{"signature":"ab","tcbInfo":{"b":1, "a":"}{\"","c":[{"d":2}]}}"#;
        let (raw, sig) = signed_member(body, "tcbInfo").unwrap();
        assert_eq!(raw, r#"{"b":1, "a":"}{\"","c":[{"d":2}]}"#);
        assert_eq!(sig, "ab");
        assert!(raw_object(r#"{"x":{"tcbInfo":{}}}"#, "tcbInfo").is_none());
        assert!(signed_member(r#"{"tcbInfo":{}}"#, "tcbInfo").is_err());
    }
}
