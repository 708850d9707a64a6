//! The little X.509 this crate needs: parsing, validity times, extensions,
//! ECDSA P-384/SHA-384 links (NVIDIA's device chain) and RSASSA-PSS/SHA-384 links
//! (AMD's ARK → ASK → VCEK chain).

use p384::ecdsa::signature::Verifier as _;
use x509_cert::der::Decode as _;
use x509_cert::der::referenced::OwnedToRef as _;

/// OID of ecdsa-with-SHA384.
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
/// OID of id-RSASSA-PSS (RFC 4055).
const RSASSA_PSS: &str = "1.2.840.113549.1.1.10";

/// A parsed certificate with its original bytes.
pub(crate) struct Cert {
    pub(crate) der: Vec<u8>,
    pub(crate) cert: x509_cert::Certificate,
}

impl Cert {
    pub(crate) fn parse(der: &[u8]) -> Result<Self, String> {
        let cert =
            x509_cert::Certificate::from_der(der).map_err(|e| format!("bad certificate: {e}"))?;
        Ok(Self {
            der: der.to_vec(),
            cert,
        })
    }

    /// The subject's common name, or the whole subject.
    pub(crate) fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    pub(crate) fn is_self_issued(&self) -> bool {
        self.cert.tbs_certificate.subject == self.cert.tbs_certificate.issuer
    }

    /// Checks `not_before <= now <= not_after`.
    pub(crate) fn valid_at(&self, now: u64) -> Result<(), String> {
        let validity = &self.cert.tbs_certificate.validity;
        let not_before = validity.not_before.to_unix_duration().as_secs();
        let not_after = validity.not_after.to_unix_duration().as_secs();
        if now < not_before {
            Err(format!(
                "{} is not valid before {not_before} (now {now})",
                self.subject()
            ))
        } else if now > not_after {
            Err(format!(
                "{} expired at {not_after} (now {now})",
                self.subject()
            ))
        } else {
            Ok(())
        }
    }

    /// The raw value of the extension with this dotted OID.
    pub(crate) fn extension(&self, oid: &str) -> Option<&[u8]> {
        self.cert
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes())
    }

    /// The subject public key bits (SEC1 point for EC keys).
    pub(crate) fn public_key_bits(&self) -> &[u8] {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
    }

    pub(crate) fn p384_key(&self) -> Result<p384::ecdsa::VerifyingKey, String> {
        p384::ecdsa::VerifyingKey::from_sec1_bytes(self.public_key_bits())
            .map_err(|_| format!("{} does not hold a P-384 key", self.subject()))
    }

    /// Checks that `self` signed `subject` with ECDSA P-384 / SHA-384.
    pub(crate) fn signed_p384(&self, subject: &Cert) -> Result<(), String> {
        let alg = subject.cert.signature_algorithm.oid.to_string();
        if alg != ECDSA_SHA384 {
            return Err(format!(
                "{} uses signature algorithm {alg}, expected ecdsa-with-SHA384",
                subject.subject()
            ));
        }
        let key = self.p384_key()?;
        let signature = subject
            .cert
            .signature
            .as_bytes()
            .and_then(|b| p384::ecdsa::Signature::from_der(b).ok())
            .ok_or_else(|| format!("{} has a malformed signature", subject.subject()))?;
        let tbs =
            tbs_bytes(&subject.der).ok_or_else(|| format!("{} is not DER", subject.subject()))?;
        key.verify(tbs, &signature)
            .map_err(|_| format!("{} is not signed by {}", subject.subject(), self.subject()))
    }

    /// Checks that `self` signed `subject` with RSASSA-PSS, SHA-384, MGF1-SHA-384 and
    /// a 48-byte salt: how AMD signs its ARK, ASK and VCEK certificates.
    pub(crate) fn signed_rsa_pss_sha384(&self, subject: &Cert) -> Result<(), String> {
        let alg = subject.cert.signature_algorithm.oid.to_string();
        if alg != RSASSA_PSS {
            return Err(format!(
                "{} uses signature algorithm {alg}, expected RSASSA-PSS",
                subject.subject()
            ));
        }
        let spki = self
            .cert
            .tbs_certificate
            .subject_public_key_info
            .owned_to_ref();
        let key = rsa::RsaPublicKey::try_from(spki)
            .map_err(|_| format!("{} does not hold an RSA key", self.subject()))?;
        // `new` takes the digest's output size (48 bytes) as the salt length.
        let key = rsa::pss::VerifyingKey::<sha2::Sha384>::new(key);
        let signature = subject
            .cert
            .signature
            .as_bytes()
            .and_then(|b| rsa::pss::Signature::try_from(b).ok())
            .ok_or_else(|| format!("{} has a malformed signature", subject.subject()))?;
        let tbs =
            tbs_bytes(&subject.der).ok_or_else(|| format!("{} is not DER", subject.subject()))?;
        key.verify(tbs, &signature)
            .map_err(|_| format!("{} is not signed by {}", subject.subject(), self.subject()))
    }
}

/// The exact bytes of the TBSCertificate inside a DER certificate.
fn tbs_bytes(der: &[u8]) -> Option<&[u8]> {
    let (outer_header, _) = tlv_header(der)?;
    let inner = der.get(outer_header..)?;
    let (header, len) = tlv_header(inner)?;
    inner.get(..header.checked_add(len)?)
}

/// A DER SEQUENCE header: (header length, content length).
fn tlv_header(b: &[u8]) -> Option<(usize, usize)> {
    if *b.first()? != 0x30 {
        return None;
    }
    let first = *b.get(1)?;
    if first < 0x80 {
        return Some((2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*b.get(2 + i)?);
    }
    Some((2 + n, len))
}

/// The small non-negative INTEGER in a DER-encoded extension value, if it is one.
pub(crate) fn der_small_int(value: &[u8]) -> Option<u64> {
    match value {
        [0x02, len, rest @ ..]
            if usize::from(*len) == rest.len() && !rest.is_empty() && rest.len() <= 8 =>
        {
            Some(rest.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
        _ => None,
    }
}

/// Verifies `chain` (leaf first; the root may or may not be included) up to `root`:
/// every link ECDSA P-384, every certificate valid at `now`, ending at `root`.
pub(crate) fn verify_p384_chain(chain: &[Cert], root: &Cert, now: u64) -> Result<String, String> {
    let mut links: Vec<&Cert> = chain.iter().collect();
    if links.last().is_some_and(|c| c.der == root.der) {
        links.pop();
    }
    if links.is_empty() {
        return Err("the chain holds no device certificate".to_string());
    }
    root.signed_p384(root)?;
    for pair in links.windows(2) {
        if let [child, parent] = pair {
            parent.signed_p384(child)?;
        }
    }
    if let Some(top) = links.last() {
        root.signed_p384(top)?;
    }
    for c in links.iter().copied().chain(std::iter::once(root)) {
        c.valid_at(now)?;
    }
    Ok(format!(
        "{} certificates up to {}",
        links.len() + 1,
        root.subject()
    ))
}
