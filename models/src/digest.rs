//! SHA-256 of weight files, computed at load so a provider serves exactly the
//! weights it was configured with (and can attest to them).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

#[cfg(feature = "engine")]
use crate::ModelError;

/// Lowercase hex SHA-256 of a file, streamed in 1 MiB blocks (shared by loading
/// and downloading).
pub fn sha256_hex(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// [`sha256_hex`] with the model loader's error.
#[cfg(feature = "engine")]
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    sha256_hex(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })
}

/// Hash `path` and refuse it when it differs from `expected` (if one is given).
/// Returns the digest either way it succeeds.
#[cfg(feature = "engine")]
pub fn verify_file(path: &Path, expected: Option<&str>) -> Result<String, ModelError> {
    let actual = sha256_file(path)?;
    match expected {
        Some(expected) if !expected.eq_ignore_ascii_case(&actual) => Err(ModelError::DigestMismatch {
            path: path.to_owned(),
            expected: expected.to_owned(),
            actual,
        }),
        _ => Ok(actual),
    }
}

#[cfg(all(test, feature = "engine"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn digest_matches_known_vector_and_mismatch_is_refused() {
        let dir = std::env::temp_dir().join(format!("tenzro-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("abc");
        std::fs::write(&file, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&file).unwrap(), abc);
        assert_eq!(verify_file(&file, Some(&abc.to_uppercase())).unwrap(), abc);
        let err = verify_file(&file, Some(&"0".repeat(64))).unwrap_err();
        assert!(matches!(err, ModelError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains(abc));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
