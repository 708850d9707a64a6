//! Model sources: a local path, or files on a Hugging Face–style hub, fetched into the
//! standard Hugging Face cache with resume, bounded retries, digest checks and one
//! progress bar.
//!
//! - `hf://owner/repo[@revision]/file`: one file (a `.gguf`), located with a `HEAD` of
//!   its resolve URL (`x-repo-commit`, `x-linked-etag`/`etag`, `x-linked-size`), as
//!   `huggingface_hub` does.
//! - `hf://owner/repo[@revision]`: a safetensors checkpoint. The revision's listing
//!   (`GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`: the commit, and each
//!   file's size and LFS SHA-256) names what to fetch: `config.json`, the optional
//!   `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`,
//!   `special_tokens_map.json`, and every shard of `model.safetensors.index.json` (or
//!   the single `model.safetensors`). The answer is the snapshot directory.
//! - `hf://owner/repo[@revision]:QUANT`: the one GGUF file of the listing whose name
//!   carries that quantisation (`Q4_K_M`), as llama.cpp's `-hf` does.
//!
//! The endpoint is [`FetchOptions::endpoint`], then `HF_ENDPOINT`, then
//! `https://huggingface.co`; `HF_TOKEN` (or [`FetchOptions::token`]) is sent as a bearer
//! token (the HTTP client drops it on a redirect to another host). With
//! `HF_HUB_OFFLINE=1` nothing is requested: the cache serves, or the error names what it
//! lacks.
//!
//! # The cache ([`cache`])
//!
//! Files live in the Hugging Face cache (`HF_HUB_CACHE`, `$HF_HOME/hub`,
//! `~/.cache/huggingface/hub`): blobs named by etag, snapshots of relative symlinks,
//! `refs/`. What `huggingface-cli`, vLLM or llama.cpp fetched is reused without a
//! download, and they reuse ours. A file already in the snapshot is trusted as that
//! tool would trust it (unless a `sha256` was configured: then it is hashed and fetched
//! again when it differs); a blob is checked before it enters the cache: LFS files
//! against their SHA-256, files kept in git against their git blob SHA-1, and against
//! the configured digest.
//!
//! # What comes from where, and why not the `hf-hub` crate
//!
//! The layout, the environment variables and the metadata headers follow
//! `huggingface_hub` (and so `hf-hub`, which implements the same layout); the code is
//! ours. `hf-hub` 1.0 is async on `reqwest` 0.13 and pulls `hf-xet`, hyper and a
//! second TLS stack, far more than these GETs need; its 0.4 synchronous API does not
//! resume a dropped transfer within a call, checks nothing but the etag it is given,
//! and knows neither checkpoints (index shards) nor quantisation names. So the
//! transfer ([`transfer`]: one GET with `Range` into `blobs/{etag}.incomplete`, retries,
//! size bounds) runs on `ureq` (blocking, rustls on ring, the OS certificate store),
//! and the cache ([`cache`]), the listing and file choice ([`repo`]) are small modules
//! here. `huggingface_hub` itself (Python) is the interoperability check in the tests.
//!
//! Concurrent downloads of the same blob by two processes are not locked against each
//! other (`huggingface_hub` takes `.locks/`); run one provider per cache while it
//! downloads.

pub mod cache;
pub mod repo;
mod source;
mod transfer;
mod verify;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cache::hub_cache_dir;
pub use source::{HUB_SCHEME, HubFile, HubRepo, ModelSource, RepoRef};
pub use verify::{git_blob_sha1, sha256_file};

use cache::RepoCache;
use repo::{Listing, RemoteFile};
use transfer::Client;
use verify::{check_sha256, listing_digest, verify_blob};

/// The Hub used when neither [`FetchOptions::endpoint`] nor `HF_ENDPOINT` names one.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How to fetch. `Default` is what a provider wants: endpoint, token and offline mode
/// from the environment, no digest, no bar, five retries starting at half a second.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The hub's base URL; `None` reads `HF_ENDPOINT`, then uses [`DEFAULT_ENDPOINT`].
    pub endpoint: Option<String>,
    /// Lowercase or uppercase hex SHA-256 the file must have; for a checkpoint, the
    /// digest of its weight files' listing (see `digest::sha256_listing`).
    pub expected_sha256: Option<String>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// How many times to retry after a dropped connection or a server error.
    pub max_retries: u32,
    /// The wait before the first retry; it doubles each time, up to 30 seconds.
    pub initial_backoff: Duration,
    /// Give up on a connection that sends nothing for this long.
    pub read_timeout: Duration,
    /// The bearer token; `None` reads `HF_TOKEN`.
    pub token: Option<String>,
    /// Serve from the cache only; `None` reads `HF_HUB_OFFLINE`.
    pub offline: Option<bool>,
    /// Most bytes one fetch may download (and the bound on a file of unknown size).
    pub max_total_bytes: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            endpoint: None,
            expected_sha256: None,
            progress: false,
            max_retries: 5,
            initial_backoff: Duration::from_millis(500),
            read_timeout: Duration::from_secs(60),
            token: None,
            offline: None,
            max_total_bytes: 4 << 40,
        }
    }
}

impl FetchOptions {
    fn endpoint(&self) -> String {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
    }

    fn offline(&self) -> bool {
        self.offline.unwrap_or_else(|| {
            std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
        })
    }
}

/// Why a model could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("bad model source `{source_text}`: {reason}")]
    BadSource { source_text: String, reason: String },
    #[error("model file {0} does not exist")]
    LocalMissing(PathBuf),
    #[error("{url}: not found (HTTP 404); check the repository, revision and file name")]
    NotFound { url: String },
    #[error("{url}: HTTP {status}{}", if matches!(status, 401 | 403) { " (a gated or private repository needs HF_TOKEN)" } else { "" })]
    Status { url: String, status: u16 },
    #[error("{url}: gave up after {attempts} attempts: {last}")]
    Exhausted {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error(
        "sha256 mismatch for {what}: expected {expected}, got {actual}; refusing to serve it \
         (the download was deleted)"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{url}: the hub's answer is refused: {reason}")]
    BadHub { url: String, reason: String },
    #[error("{source_text}: {reason}")]
    Repo { source_text: String, reason: String },
    #[error(
        "HF_HUB_OFFLINE is set and {source_text} is not in the Hugging Face cache: missing {missing} \
         (under {cache})"
    )]
    Offline {
        source_text: String,
        missing: String,
        cache: PathBuf,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What a fetch found.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The file, or a checkpoint's snapshot directory.
    pub path: PathBuf,
    /// The commit the files came from (none for a local source).
    pub commit: Option<String>,
    /// For a checkpoint whose shards the hub listed with their SHA-256: the
    /// directory digest the provider computes (`digest::sha256_listing` of the shards).
    pub weights_sha256: Option<String>,
    /// Bytes downloaded by this fetch (0 when the cache had everything).
    pub downloaded_bytes: u64,
}

/// Resolve `source` to a local path: a local path is checked to exist (and hashed
/// when a digest is given); hub sources come from the cache at `cache_dir` or are
/// downloaded into it. Blocking: call it off the async runtime.
pub fn fetch(
    source: &ModelSource,
    cache_dir: &Path,
    options: &FetchOptions,
) -> Result<PathBuf, DownloadError> {
    resolve(source, cache_dir, options).map(|f| f.path)
}

/// [`fetch`], saying what it found and did.
pub fn resolve(
    source: &ModelSource,
    cache_dir: &Path,
    options: &FetchOptions,
) -> Result<Fetched, DownloadError> {
    match source {
        ModelSource::Local(path) => {
            if !path.exists() {
                return Err(DownloadError::LocalMissing(path.clone()));
            }
            if let Some(expected) = &options.expected_sha256
                && path.is_file()
            {
                check_sha256(&path.display().to_string(), path, expected)?;
            }
            Ok(Fetched {
                path: path.clone(),
                commit: None,
                weights_sha256: None,
                downloaded_bytes: 0,
            })
        }
        ModelSource::Hub(file) => {
            let mut run = Run::new(cache_dir, &file.repo, options);
            let path = run.file(file)?;
            Ok(run.done(path, None))
        }
        ModelSource::Repo(repo) => {
            let mut run = Run::new(cache_dir, &repo.repo, options);
            match repo.quant() {
                Some(quant) => {
                    let path = run.quant(repo, quant)?;
                    Ok(run.done(path, None))
                }
                None => {
                    let (path, digest) = run.checkpoint(repo)?;
                    Ok(run.done(path, digest))
                }
            }
        }
    }
}

/// One fetch from one repository.
struct Run<'a> {
    cache: RepoCache,
    cache_dir: &'a Path,
    repo: &'a RepoRef,
    options: &'a FetchOptions,
    client: Client<'a>,
    commit: Option<String>,
    downloaded: u64,
}

impl<'a> Run<'a> {
    fn new(cache_dir: &'a Path, repo: &'a RepoRef, options: &'a FetchOptions) -> Run<'a> {
        Run {
            cache: RepoCache::new(cache_dir, repo),
            cache_dir,
            repo,
            options,
            client: Client::new(options),
            commit: None,
            downloaded: 0,
        }
    }

    fn done(self, path: PathBuf, weights_sha256: Option<String>) -> Fetched {
        self.client.bar.finish_and_clear();
        Fetched {
            path,
            commit: self.commit,
            weights_sha256,
            downloaded_bytes: self.downloaded,
        }
    }

    fn offline_error(&self, source_text: String, missing: String) -> DownloadError {
        DownloadError::Offline {
            source_text,
            missing,
            cache: self.cache_dir.to_owned(),
        }
    }

    /// The commit of the source's revision, from the cache (offline).
    fn cached_commit(&self, source_text: &str) -> Result<String, DownloadError> {
        self.cache.commit_of(&self.repo.revision).ok_or_else(|| {
            self.offline_error(
                source_text.to_owned(),
                format!(
                    "the commit of revision `{}` (refs/{})",
                    self.repo.revision, self.repo.revision
                ),
            )
        })
    }

    /// One file: `HEAD` for its commit and etag, then the cache or a download.
    fn file(&mut self, file: &HubFile) -> Result<PathBuf, DownloadError> {
        let expected = self.options.expected_sha256.as_deref();
        if self.options.offline() || is_cached_commit(&self.cache, &self.repo.revision, &file.file)
        {
            let commit = match self.options.offline() {
                true => self.cached_commit(&file.to_string())?,
                false => self.repo.revision.clone(),
            };
            let path = self.cache.snapshot_file(&commit, &file.file);
            if path.is_file() {
                if let Some(expected) = expected {
                    check_sha256(&file.to_string(), &path, expected)?;
                }
                self.commit = Some(commit);
                return Ok(path);
            }
            if self.options.offline() {
                return Err(self.offline_error(file.to_string(), file.file.clone()));
            }
        }
        let url = file.url(&self.options.endpoint());
        let meta = self.client.head(&url)?;
        let bad = |reason: &str| DownloadError::BadHub {
            url: url.clone(),
            reason: reason.to_owned(),
        };
        let commit = meta
            .commit
            .filter(|c| cache::is_commit(c))
            .ok_or_else(|| bad("no x-repo-commit header with a commit id"))?;
        let etag = meta
            .etag
            .filter(|e| cache::is_blob_name(e))
            .ok_or_else(|| bad("no usable etag"))?;
        let remote = RemoteFile::from_etag(&file.file, etag, meta.size);
        self.client.bar.set_length(remote.size.unwrap_or(0));
        let path = self.obtain(&commit, &remote, expected)?;
        self.cache.write_ref(&self.repo.revision, &commit)?;
        self.commit = Some(commit);
        Ok(path)
    }

    /// The revision's listing from the hub's API.
    fn listing(&mut self) -> Result<Listing, DownloadError> {
        let url = self.repo.api_url(&self.options.endpoint());
        let bytes = self.client.get_bytes(&url, repo::MAX_LISTING_BYTES)?;
        let listing = Listing::parse(&bytes, &url)?;
        self.commit = Some(listing.commit.clone());
        Ok(listing)
    }

    /// A GGUF picked by quantisation name.
    fn quant(&mut self, source: &HubRepo, quant: &str) -> Result<PathBuf, DownloadError> {
        let picked = |names: Vec<String>| {
            repo::pick_quant(names.iter().map(String::as_str), quant).map_err(|reason| {
                DownloadError::Repo {
                    source_text: source.to_string(),
                    reason,
                }
            })
        };
        if self.options.offline() {
            let commit = self.cached_commit(&source.to_string())?;
            let name = picked(snapshot_names(&self.cache.snapshot_dir(&commit)))?;
            self.commit = Some(commit.clone());
            return Ok(self.cache.snapshot_file(&commit, &name));
        }
        let listing = self.listing()?;
        let name = picked(listing.names().map(str::to_owned).collect())?;
        let remote = listing
            .get(&name)
            .cloned()
            .ok_or_else(|| DownloadError::Repo {
                source_text: source.to_string(),
                reason: format!("{name} is not listed"),
            })?;
        self.start_bar(std::slice::from_ref(&remote), &listing.commit)?;
        let path = self.obtain(
            &listing.commit,
            &remote,
            self.options.expected_sha256.as_deref(),
        )?;
        self.cache.write_ref(&self.repo.revision, &listing.commit)?;
        Ok(path)
    }

    /// A safetensors checkpoint: its snapshot directory, and its weight digest when
    /// the hub listed every shard's SHA-256.
    fn checkpoint(&mut self, source: &HubRepo) -> Result<(PathBuf, Option<String>), DownloadError> {
        if self.options.offline() {
            return self.checkpoint_offline(source).map(|dir| (dir, None));
        }
        let listing = self.listing()?;
        let commit = listing.commit.clone();
        let not_checkpoint = |reason: String| DownloadError::Repo {
            source_text: source.to_string(),
            reason,
        };
        if listing.get(repo::CONFIG).is_none() {
            let ggufs: Vec<&str> = listing
                .names()
                .filter(|n| n.to_ascii_lowercase().ends_with(".gguf"))
                .take(20)
                .collect();
            return Err(not_checkpoint(format!(
                "no config.json, so not a safetensors checkpoint; for a GGUF repository \
                 name a file (hf://owner/repo/FILE) or a quantisation (hf://owner/repo:Q4_K_M); \
                 its GGUF files: [{}]",
                ggufs.join(", ")
            )));
        }
        let shards = match listing.get(repo::INDEX).cloned() {
            Some(index) => {
                if index.size.is_none_or(|s| s > repo::MAX_INDEX_BYTES) {
                    return Err(not_checkpoint(format!(
                        "{} is larger than {} bytes or of unknown size",
                        repo::INDEX,
                        repo::MAX_INDEX_BYTES
                    )));
                }
                let path = self.obtain(&commit, &index, None)?;
                let bytes = std::fs::read(&path).map_err(cache::io_at(&path))?;
                repo::shards_from_index(&bytes, repo::INDEX).map_err(not_checkpoint)?
            }
            None if listing.get(repo::SINGLE).is_some() => vec![repo::SINGLE.to_owned()],
            None => {
                return Err(not_checkpoint(format!(
                    "neither {} nor {} is in the repository",
                    repo::INDEX,
                    repo::SINGLE
                )));
            }
        };
        let mut wanted: Vec<RemoteFile> = Vec::new();
        for name in std::iter::once(repo::CONFIG).chain(shards.iter().map(String::as_str)) {
            let file = listing.get(name).cloned().ok_or_else(|| {
                not_checkpoint(format!(
                    "{name} is named by the index but not in the repository"
                ))
            })?;
            wanted.push(file);
        }
        wanted.extend(
            repo::OPTIONAL
                .iter()
                .filter_map(|n| listing.get(n).cloned()),
        );
        self.start_bar(&wanted, &commit)?;
        for file in &wanted {
            match self.obtain(&commit, file, None) {
                Err(DownloadError::NotFound { url })
                    if repo::OPTIONAL.contains(&file.name.as_str()) =>
                {
                    tracing::info!(%url, "optional checkpoint file not found; going on without it");
                }
                other => {
                    other?;
                }
            }
        }
        self.cache.write_ref(&self.repo.revision, &commit)?;
        let digest = listing_digest(&wanted, &shards);
        if let (Some(expected), Some(actual)) = (&self.options.expected_sha256, &digest)
            && !expected.eq_ignore_ascii_case(actual)
        {
            return Err(DownloadError::DigestMismatch {
                what: format!("the weights of {source}"),
                expected: expected.clone(),
                actual: actual.clone(),
            });
        }
        let dir = self.cache.snapshot_dir(&commit);
        tracing::info!(source = %source, dir = %dir.display(), weights_sha256 = ?digest, downloaded_bytes = self.downloaded, "checkpoint ready");
        Ok((dir, digest))
    }

    fn checkpoint_offline(&mut self, source: &HubRepo) -> Result<PathBuf, DownloadError> {
        let commit = self.cached_commit(&source.to_string())?;
        let dir = self.cache.snapshot_dir(&commit);
        let missing = |name: &str| self.offline_error(source.to_string(), name.to_owned());
        if !dir.join(repo::CONFIG).is_file() {
            return Err(missing(repo::CONFIG));
        }
        let index = dir.join(repo::INDEX);
        let shards = if index.is_file() {
            let bytes = std::fs::read(&index).map_err(cache::io_at(&index))?;
            repo::shards_from_index(&bytes, &index.display().to_string()).map_err(|reason| {
                DownloadError::Repo {
                    source_text: source.to_string(),
                    reason,
                }
            })?
        } else {
            vec![repo::SINGLE.to_owned()]
        };
        let absent: Vec<&str> = shards
            .iter()
            .map(String::as_str)
            .filter(|s| !dir.join(s).is_file())
            .collect();
        if !absent.is_empty() {
            return Err(missing(&absent.join(", ")));
        }
        self.commit = Some(commit);
        Ok(dir)
    }

    /// Size the one bar for the files still to download; refuse a set over the bound.
    fn start_bar(&mut self, files: &[RemoteFile], commit: &str) -> Result<(), DownloadError> {
        let total: u64 = files
            .iter()
            .filter(|f| !self.cache.snapshot_file(commit, &f.name).is_file())
            .filter(|f| !self.cache.blob(&f.etag).is_file())
            .map(|f| f.size.unwrap_or(0))
            .fold(0u64, u64::saturating_add);
        if total > self.options.max_total_bytes {
            return Err(DownloadError::Repo {
                source_text: self.repo.to_string(),
                reason: format!(
                    "{total} bytes to download, more than the {} allowed",
                    self.options.max_total_bytes
                ),
            });
        }
        self.client.bar.set_length(total);
        self.client.bar.set_message(self.repo.id());
        Ok(())
    }

    /// `snapshots/{commit}/{file}`: already there, linked to a blob already there, or
    /// downloaded into `blobs/{etag}` (checked) and linked.
    fn obtain(
        &mut self,
        commit: &str,
        remote: &RemoteFile,
        expected: Option<&str>,
    ) -> Result<PathBuf, DownloadError> {
        let snapshot = self.cache.snapshot_file(commit, &remote.name);
        let blob = self.cache.blob(&remote.etag);
        let what = format!("{}@{commit}/{}", self.repo.id(), remote.name);
        if snapshot.is_file() {
            match expected {
                None => return Ok(snapshot),
                Some(expected) => match check_sha256(&what, &snapshot, expected) {
                    Ok(()) => return Ok(snapshot),
                    Err(err) => {
                        tracing::warn!(path = %snapshot.display(), %err, "cached file differs; downloading again");
                        cache::remove(&snapshot)?;
                        cache::remove(&blob)?;
                    }
                },
            }
        }
        if !blob.is_file() {
            let partial = self.cache.incomplete(&remote.etag);
            cache::create_parent(&partial)?;
            let url = self
                .repo
                .resolve_url(&self.options.endpoint(), commit, &remote.name);
            tracing::info!(%url, blob = %blob.display(), "downloading");
            let before = std::fs::metadata(&partial).map_or(0, |m| m.len());
            self.client.download(&url, &partial, remote.size)?;
            let after = std::fs::metadata(&partial).map_or(0, |m| m.len());
            self.downloaded += after.saturating_sub(before);
            if let Err(err) = verify_blob(&url, &partial, remote, expected) {
                cache::remove(&partial)?;
                return Err(err);
            }
            std::fs::rename(&partial, &blob).map_err(cache::io_at(&blob))?;
        } else if let Some(expected) = expected {
            check_sha256(&what, &blob, expected)?;
        }
        self.cache.link(commit, &remote.name, &remote.etag)
    }
}

/// A pinned commit whose snapshot already holds the file needs no request.
fn is_cached_commit(cache: &RepoCache, revision: &str, file: &str) -> bool {
    cache::is_commit(revision) && cache.snapshot_file(revision, file).is_file()
}

/// File names under a snapshot directory, two folders deep at most.
fn snapshot_names(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut walk = vec![(dir.to_owned(), String::new(), 0)];
    while let Some((path, prefix, depth)) = walk.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten().take(10_000) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let full = format!("{prefix}{name}");
            let path = entry.path();
            if path.is_dir() && depth < 2 {
                walk.push((path, format!("{full}/"), depth + 1));
            } else if path.is_file() {
                names.push(full);
            }
        }
    }
    names
}
