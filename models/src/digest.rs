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
    sha256_hex(path).map_err(|source| ModelError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Hash `path` and refuse it when it differs from `expected` (if one is given).
/// Returns the digest either way it succeeds.
#[cfg(feature = "engine")]
pub fn verify_file(path: &Path, expected: Option<&str>) -> Result<String, ModelError> {
    verify(path, sha256_file(path)?, expected)
}

/// The digest of a checkpoint kept in several files: SHA-256 of their `sha256sum`
/// listing, one line `<hex digest>  <file name>\n` per file in the order given
/// (sorted by name, for a reproducible digest). In the directory,
/// `LC_ALL=C sha256sum *.safetensors | sha256sum` prints the same.
#[cfg(feature = "engine")]
pub fn sha256_listing(files: &[std::path::PathBuf]) -> Result<String, ModelError> {
    let mut listing = Sha256::new();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        listing.update(format!("{}  {name}\n", sha256_file(path)?));
    }
    Ok(hex::encode(listing.finalize()))
}

/// [`sha256_listing`] of `files`, refused when it differs from `expected`;
/// `dir` names the checkpoint in the error.
#[cfg(feature = "engine")]
pub fn verify_listing(
    dir: &Path,
    files: &[std::path::PathBuf],
    expected: Option<&str>,
) -> Result<String, ModelError> {
    verify(dir, sha256_listing(files)?, expected)
}

#[cfg(feature = "engine")]
fn verify(path: &Path, actual: String, expected: Option<&str>) -> Result<String, ModelError> {
    match expected {
        Some(expected) if !expected.eq_ignore_ascii_case(&actual) => {
            Err(ModelError::DigestMismatch {
                path: path.to_owned(),
                expected: expected.to_owned(),
                actual,
            })
        }
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

    #[test]
    fn listing_digest_is_sha256sum_piped_to_sha256sum() {
        let dir = std::env::temp_dir().join(format!("tenzro-listing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
        std::fs::write(&a, b"abc").unwrap();
        std::fs::write(&b, b"").unwrap();
        // printf 'abc' > a.safetensors; : > b.safetensors; sha256sum *.safetensors | sha256sum
        let expected = "d2d04e7d28b904f67fba46ec8a63649be04d39b956a8383039d8798ffd8ae516";
        assert_eq!(sha256_listing(&[a.clone(), b.clone()]).unwrap(), expected);
        let err = verify_listing(&dir, &[b, a], Some(expected)).unwrap_err();
        assert!(matches!(err, ModelError::DigestMismatch { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
