//! Reading vendor files in whatever form they come: raw binary, hex text,
//! base64 text, PEM (one or many blocks) or DER.

use base64::Engine as _;

use crate::Error;

/// Bytes of a binary blob given as raw bytes, hex text (optionally `0x`, spaces and
/// newlines allowed) or base64 text. Hex is tried before base64; anything else is
/// taken as raw.
pub fn blob(bytes: &[u8]) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return bytes.to_vec();
    };
    let compact: String = text.split_whitespace().collect();
    let compact = compact.strip_prefix("0x").unwrap_or(&compact);
    if compact.is_empty() {
        return bytes.to_vec();
    }
    if compact.len().is_multiple_of(2)
        && compact.bytes().all(|b| b.is_ascii_hexdigit())
        && let Ok(decoded) = hex::decode(compact)
    {
        return decoded;
    }
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(compact) {
        return decoded;
    }
    bytes.to_vec()
}

/// DER certificates from a file that holds one DER certificate, hex or base64 of one,
/// or any number of PEM `CERTIFICATE` blocks (other text between them is ignored).
pub fn certificates(bytes: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let pem_blocks = pem_blocks(bytes, "CERTIFICATE")?;
    if !pem_blocks.is_empty() {
        return Ok(pem_blocks);
    }
    let der = blob(bytes);
    if der.first() == Some(&0x30) {
        Ok(vec![der])
    } else {
        Err(Error::decode("certificate", "neither PEM nor DER"))
    }
}

/// The decoded bodies of every PEM block labelled `label`, in order.
pub fn pem_blocks(bytes: &[u8], label: &str) -> Result<Vec<Vec<u8>>, Error> {
    let text = String::from_utf8_lossy(bytes);
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let Some(stop) = after.find(&end) else {
            return Err(Error::decode("PEM", format!("unterminated {label} block")));
        };
        let body: String = after[..stop].split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| Error::decode("PEM", e))?;
        out.push(der);
        rest = &after[stop + end.len()..];
    }
    Ok(out)
}
