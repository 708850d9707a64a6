//! Checking files: a finished download against the hub's SHA-256 or git blob id and
//! the configured digest, and a checkpoint's digest from the listed SHA-256s.

use std::path::Path;

use super::repo::RemoteFile;
use super::{DownloadError, cache};

/// The checkpoint digest from the listed SHA-256s, when every shard has one.
pub(super) fn listing_digest(files: &[RemoteFile], shards: &[String]) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut listing = Sha256::new();
    for shard in shards {
        let sha = files.iter().find(|f| &f.name == shard)?.sha256.as_ref()?;
        listing.update(format!("{sha}  {shard}\n"));
    }
    Some(hex::encode(listing.finalize()))
}

/// Check a finished download against everything known about it.
pub(super) fn verify_blob(
    url: &str,
    path: &Path,
    remote: &RemoteFile,
    expected: Option<&str>,
) -> Result<(), DownloadError> {
    if remote.sha256.is_some() || expected.is_some() {
        let actual = sha256_file(path)?;
        for want in [remote.sha256.as_deref(), expected].into_iter().flatten() {
            if !want.eq_ignore_ascii_case(&actual) {
                return Err(DownloadError::DigestMismatch {
                    what: url.to_owned(),
                    expected: want.to_owned(),
                    actual,
                });
            }
        }
    }
    if let Some(want) = &remote.git_sha1 {
        let actual = git_blob_sha1(path)?;
        if !want.eq_ignore_ascii_case(&actual) {
            return Err(DownloadError::DigestMismatch {
                what: format!("{url} (git blob sha1)"),
                expected: want.clone(),
                actual,
            });
        }
    }
    if remote.sha256.is_none() && remote.git_sha1.is_none() && expected.is_none() {
        tracing::warn!(%url, etag = %remote.etag, "the hub gave no digest for this file; it is unchecked");
    }
    Ok(())
}

pub(super) fn check_sha256(what: &str, path: &Path, expected: &str) -> Result<(), DownloadError> {
    let actual = sha256_file(path)?;
    if expected.eq_ignore_ascii_case(&actual) {
        return Ok(());
    }
    Err(DownloadError::DigestMismatch {
        what: what.to_owned(),
        expected: expected.to_owned(),
        actual,
    })
}

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, DownloadError> {
    crate::digest::sha256_hex(path).map_err(cache::io_at(path))
}

/// Git's id of a file's content: SHA-1 of `blob {len}\0` and the bytes.
pub fn git_blob_sha1(path: &Path) -> Result<String, DownloadError> {
    use sha1::{Digest, Sha1};
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(cache::io_at(path))?;
    let len = file.metadata().map_err(cache::io_at(path))?.len();
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {len}\0").as_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(err) => return Err(cache::io_at(path)(err)),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}
