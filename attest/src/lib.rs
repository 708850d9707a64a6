//! Tenzro attestation: provider keys, signed receipts and channel vouchers, the
//! binding of TEE evidence to a provider's key and weights, and offline verification
//! of Intel TDX, AMD SEV-SNP and NVIDIA confidential-computing evidence.
//!
//! Map of the crate:
//! - [`keys`]: Ed25519 provider keys on disk, public keys, signatures, DIDs.
//! - [`receipt`]: what a provider signs for every response it serves.
//! - [`voucher`]: payment-channel vouchers, signed by the payer and countersigned.
//! - [`bond`]: a provider key's consent to be bonded by (and pay its earnings to) an owner.
//! - [`payer`]: the payer's signature on a paid request to a provider.
//! - [`binding`]: the 64-byte report data that ties evidence to key, weights and nonce.
//! - [`evidence`]: producing evidence (one backend per TEE kind) and verifying it.
//! - [`policy`]: what a verifier accepts (measurements, debug, TCB, freshness).
//! - [`verdict`]: the outcome of a verification, check by check.
//! - [`input`]: reading vendor files given as raw bytes, hex text, PEM or DER.
//! - [`collateral`]: naming, assembling and dating Intel and AMD collateral (no I/O).

pub mod binding;
pub mod bond;
mod canon;
pub mod collateral;
mod error;
pub mod evidence;
pub mod input;
pub mod keys;
pub mod payer;
pub mod policy;
pub mod receipt;
pub mod verdict;
pub mod voucher;

pub use binding::{check_binding, report_data};
pub use error::Error;
pub use evidence::{Evidence, EvidenceSource, TeeKind};
pub use keys::{ProviderKey, PublicKey, Signature};
pub use policy::Policy;
pub use receipt::{Receipt, ReceiptBody};
pub use verdict::{Check, Verdict};
pub use voucher::{Voucher, VoucherBody};

/// SHA-256 of `bytes`: the digest used for weights, requests and responses.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}
