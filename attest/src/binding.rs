//! The report data that binds TEE evidence to a provider.
//!
//! `report_data = SHA-512(lp(domain_tag) ‖ lp(public_key) ‖ u64(n) ‖ d_1 ‖ … ‖ d_n ‖ lp(nonce))`
//! where `lp(x)` is the length of `x` as u64 big-endian followed by `x`, `u64(n)` is
//! the number of weight digests as u64 big-endian, and `d_1 … d_n` are the 32-byte
//! SHA-256 weight digests sorted in ascending byte order with duplicates removed (so
//! the order in which a provider lists its models does not matter).
//!
//! TDX and SEV-SNP carry all 64 bytes in their report data. NVIDIA GPU evidence
//! carries a 32-byte nonce: it is [`gpu_nonce`], the first 32 bytes.
//!
//! No vendor anchor says anything about weights; this binding is what ties the
//! served models to the attested machine.

use sha2::{Digest as _, Sha512};

use crate::{Error, PublicKey};

/// The domain tag for provider evidence.
pub const REPORT_DATA_DOMAIN: &[u8] = b"tenzro/attest/report-data/v1";

/// Computes the 64-byte report data (see the module docs for the exact encoding).
pub fn report_data(
    domain_tag: &[u8],
    public_key: &PublicKey,
    weight_digests: &[[u8; 32]],
    nonce: &[u8],
) -> [u8; 64] {
    let mut digests = weight_digests.to_vec();
    digests.sort_unstable();
    digests.dedup();
    let mut h = Sha512::new();
    let lp = |h: &mut Sha512, b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    lp(&mut h, domain_tag);
    lp(&mut h, &public_key.to_bytes());
    h.update((digests.len() as u64).to_be_bytes());
    for d in &digests {
        h.update(d);
    }
    lp(&mut h, nonce);
    h.finalize().into()
}

/// The 32-byte nonce given to NVIDIA GPU evidence: the first half of the report data.
pub fn gpu_nonce(report_data: &[u8; 64]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&report_data[..32]);
    out
}

/// Recomputes the report data and refuses `found` when it differs.
pub fn check_binding(
    found: &[u8],
    domain_tag: &[u8],
    public_key: &PublicKey,
    weight_digests: &[[u8; 32]],
    nonce: &[u8],
) -> Result<(), Error> {
    let expected = report_data(domain_tag, public_key, weight_digests, nonce);
    if found == expected.as_slice() {
        Ok(())
    } else {
        Err(Error::BindingMismatch)
    }
}
