//! `hf://` sources against a fake hub on 127.0.0.1 (see `hub`): single files with
//! resume and digests (`single`), whole checkpoints and GGUF quantisations in the
//! Hugging Face cache layout, offline mode and hostile answers (`repos`).
#![cfg(feature = "download")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod checkpoint;
mod hub;
mod repos;
mod single;

use std::path::PathBuf;

/// A fresh directory under the temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("tenzro-download-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
