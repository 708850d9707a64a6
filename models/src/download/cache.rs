//! The Hugging Face cache, in the layout `huggingface_hub` (Python), `hf-hub` (Rust),
//! vLLM and llama.cpp share:
//!
//! ```text
//! {cache}/models--{owner}--{repo}/
//!     blobs/{etag}                       the file's bytes, named by the hub's etag
//!                                        (SHA-256 for LFS files, git SHA-1 otherwise)
//!     blobs/{etag}.incomplete            a download in progress (resumed from its length)
//!     snapshots/{commit}/{file}          a relative symlink to ../../blobs/{etag}
//!     refs/{revision}                    the commit a branch or tag pointed at
//! ```
//!
//! `{cache}` is `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::DownloadError;
use super::source::{RepoRef, plain_segment};

/// The hub cache directory from the environment (see the module header).
pub fn hub_cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = var("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let base = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huggingface").join("hub")
}

/// One repository's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    root: PathBuf,
}

/// A commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits. Used as a
/// directory name, so nothing else is accepted from a hub.
pub fn is_commit(s: &str) -> bool {
    matches!(s.len(), 40 | 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An etag usable as a blob's file name: hex (or the few characters mirrors use),
/// at most 128 bytes.
pub fn is_blob_name(s: &str) -> bool {
    plain_segment(s)
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo: &RepoRef) -> RepoCache {
        RepoCache {
            root: cache_dir.join(format!("models--{}--{}", repo.owner, repo.name)),
        }
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }

    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    pub fn snapshot_file(&self, commit: &str, file: &str) -> PathBuf {
        let mut path = self.snapshot_dir(commit);
        path.extend(file.split('/'));
        path
    }

    fn ref_path(&self, revision: &str) -> PathBuf {
        let mut path = self.root.join("refs");
        path.extend(revision.split('/'));
        path
    }

    /// The commit `revision` names: itself when it is one, else what `refs/` says.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit(revision) {
            return Some(revision.to_owned());
        }
        let text = fs::read_to_string(self.ref_path(revision)).ok()?;
        let commit = text.trim();
        is_commit(commit).then(|| commit.to_owned())
    }

    /// Remember that `revision` points at `commit` (nothing to write for a commit).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<(), DownloadError> {
        if revision == commit || self.commit_of(revision).as_deref() == Some(commit) {
            return Ok(());
        }
        let path = self.ref_path(revision);
        create_parent(&path)?;
        let tmp = sibling(&path, ".tmp");
        fs::write(&tmp, commit).map_err(io_at(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_at(&path))
    }

    /// Make `snapshots/{commit}/{file}` point at `blobs/{etag}` (replacing whatever
    /// was there).
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf, DownloadError> {
        let path = self.snapshot_file(commit, file);
        create_parent(&path)?;
        let tmp = sibling(&path, ".tmp-link");
        remove(&tmp)?;
        place(&self.blob(etag), &relative_blob(file, etag), &tmp)?;
        fs::rename(&tmp, &path).map_err(io_at(&path))?;
        Ok(path)
    }
}

/// `../../blobs/{etag}` from `snapshots/{commit}/`, one more `../` per folder in `file`.
fn relative_blob(file: &str, etag: &str) -> PathBuf {
    let mut target = PathBuf::from("../..");
    for _ in 1..file.split('/').count() {
        target.push("..");
    }
    target.join("blobs").join(etag)
}

#[cfg(unix)]
fn place(_blob: &Path, relative: &Path, at: &Path) -> Result<(), DownloadError> {
    std::os::unix::fs::symlink(relative, at).map_err(io_at(at))
}

/// Without symlinks the snapshot holds a copy, as `huggingface_hub` does on Windows.
#[cfg(not(unix))]
fn place(blob: &Path, _relative: &Path, at: &Path) -> Result<(), DownloadError> {
    fs::copy(blob, at).map(|_| ()).map_err(io_at(at))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_owned(),
        source,
    }
}

pub(super) fn create_parent(path: &Path) -> Result<(), DownloadError> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(io_at(parent)),
        None => Ok(()),
    }
}

/// Remove a file if it is there.
pub(super) fn remove(path: &Path) -> Result<(), DownloadError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(DownloadError::Io {
            path: path.to_owned(),
            source: err,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn layout_matches_huggingface_hub() {
        let repo = RepoRef {
            owner: "o".into(),
            name: "r".into(),
            revision: "main".into(),
        };
        let cache = RepoCache::new(Path::new("/c"), &repo);
        assert_eq!(cache.blob("ab"), Path::new("/c/models--o--r/blobs/ab"));
        assert_eq!(
            cache.snapshot_file("c0", "sub/f.json"),
            Path::new("/c/models--o--r/snapshots/c0/sub/f.json")
        );
        assert_eq!(relative_blob("f", "e"), Path::new("../../blobs/e"));
        assert_eq!(
            relative_blob("a/b/f", "e"),
            Path::new("../../../../blobs/e")
        );
        assert!(is_commit(&"a".repeat(40)) && !is_commit("main") && !is_commit(&"A".repeat(40)));
        assert!(is_blob_name("0123abcd") && !is_blob_name("../x") && !is_blob_name(""));
    }
}
