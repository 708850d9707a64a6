//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate. Evidence that fails verification
/// is not an error: it yields a refused [`crate::Verdict`] with its reasons.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file exists but cannot be used.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The operating system's random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// A value was not valid hex.
    #[error("invalid hex in {what}: {detail}")]
    Hex {
        /// Which value.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// A value had the wrong length.
    #[error("{what} must be {expected} bytes, got {got}")]
    Length {
        /// Which value.
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// Bytes that should be an Ed25519 public key are not one.
    #[error("invalid public key: {0}")]
    PublicKey(String),
    /// A signature does not verify.
    #[error("{what} signature does not verify")]
    BadSignature {
        /// Which signature.
        what: &'static str,
    },
    /// A document was signed by a key other than the one expected.
    #[error("{what} was signed by {got}, expected {expected}")]
    WrongKey {
        /// Which document.
        what: &'static str,
        /// The expected key, hex.
        expected: String,
        /// The key that signed, hex.
        got: String,
    },
    /// A voucher lacks the provider's countersignature.
    #[error("voucher is not countersigned")]
    NotCountersigned,
    /// A voucher does not follow the one before it in its channel.
    #[error("voucher does not supersede the previous one: {0}")]
    NotSuccessor(String),
    /// Report data does not match the key, weights and nonce it should bind.
    #[error("report data does not bind the expected key, weights and nonce")]
    BindingMismatch,
    /// Input could not be decoded (JSON, TOML, PEM, DER, a vendor format).
    #[error("cannot decode {what}: {detail}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// Producing evidence failed (no TEE device, the kernel refused, ...).
    #[error("cannot produce {kind} evidence: {detail}")]
    Evidence {
        /// The TEE kind.
        kind: crate::TeeKind,
        /// What went wrong.
        detail: String,
    },
    /// A policy file is valid TOML but its values are not acceptable.
    #[error("invalid policy: {0}")]
    Policy(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn decode(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Decode {
            what,
            detail: detail.to_string(),
        }
    }
}
