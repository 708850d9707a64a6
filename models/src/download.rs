//! Model sources: a local path, or a file on a Hugging Face–style hub
//! (`hf://owner/repo/file`, or `hf://owner/repo@revision/file`), fetched into a local
//! cache with resume, bounded retries, SHA-256 verification and an optional progress bar.
//!
//! The URL layout is the Hub's, `{endpoint}/{owner}/{repo}/resolve/{revision}/{file}`,
//! with the endpoint taken from [`FetchOptions::endpoint`], then `HF_ENDPOINT`, then
//! `https://huggingface.co`; `HF_TOKEN`, when set, is sent as a bearer token (the HTTP
//! client drops it on a redirect to another host).
//!
//! # Why not the `hf-hub` crate
//!
//! We follow `hf-hub`'s conventions (URL layout, `HF_ENDPOINT`, `HF_TOKEN`) but not its
//! downloader. Version 1 is async on `reqwest` 0.13 and pulls `hf-xet`, hyper and a
//! second TLS stack, far more than one blocking GET needs. The 0.4 synchronous API first
//! probes the Hub for its own metadata headers (`x-repo-commit`, `etag`), stores blobs in
//! the Hub cache layout behind symlinks and checks them by etag, not by the digest the
//! operator configured; it cannot be pointed at a plain HTTP file server in a test, and
//! it does not resume a dropped transfer within the same call. What we need is small:
//! one GET with `Range`, a `.partial` file, a retry loop and a SHA-256, so it is done
//! here on `ureq` (blocking, rustls on ring, the OS certificate store).
//!
//! # Cache
//!
//! A hub file lands at `{cache_dir}/{owner}/{repo}/{revision}/{file}`. While it
//! downloads it is `{that}.partial`; after the whole body arrived and its digest matched
//! (when one is configured) it is renamed into place, so a file at the final path is
//! always complete. A cached file is reused without a request when its digest matches,
//! or when no digest is configured (pin a revision to make that safe).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ureq::tls::{RootCerts, TlsConfig};

/// The Hub used when neither [`FetchOptions::endpoint`] nor `HF_ENDPOINT` names one.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The scheme that marks a hub source in a config file.
pub const HUB_SCHEME: &str = "hf://";

/// Where a model file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A file on this machine, used as it is.
    Local(PathBuf),
    /// A file in a hub repository, fetched into the cache.
    Hub(HubFile),
}

/// One file of one revision of a hub repository. Built by parsing, so every part is
/// non-empty and the file path cannot climb out of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    owner: String,
    repo: String,
    revision: String,
    file: String,
}

impl HubFile {
    /// `owner/repo`.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    /// The branch, tag or commit; `main` when the source named none.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The file's path inside the repository.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// `{endpoint}/{owner}/{repo}/resolve/{revision}/{file}`.
    pub fn url(&self, endpoint: &str) -> String {
        let endpoint = endpoint.trim_end_matches('/');
        let revision = self.revision.replace('/', "%2F");
        format!(
            "{endpoint}/{}/{}/resolve/{revision}/{}",
            self.owner, self.repo, self.file
        )
    }

    /// Where this file lives under `cache_dir`.
    pub fn cache_path(&self, cache_dir: &Path) -> PathBuf {
        // A revision such as `refs/pr/1` must stay one directory.
        let revision = self.revision.replace('/', "--");
        let mut path = cache_dir.join(&self.owner).join(&self.repo).join(revision);
        path.extend(self.file.split('/'));
        path
    }
}

impl fmt::Display for HubFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{HUB_SCHEME}{}/{}@{}/{}",
            self.owner, self.repo, self.revision, self.file
        )
    }
}

impl FromStr for ModelSource {
    type Err = DownloadError;

    /// `hf://owner/repo[@revision]/path/to/file` is a hub file; anything else a path.
    fn from_str(s: &str) -> Result<Self, DownloadError> {
        let Some(rest) = s.strip_prefix(HUB_SCHEME) else {
            return Ok(ModelSource::Local(PathBuf::from(s)));
        };
        let bad = |reason: &str| DownloadError::BadSource {
            source_text: s.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(owner), Some(repo_rev), Some(file)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                "expected hf://owner/repo/file or hf://owner/repo@revision/file",
            ));
        };
        let (repo, revision) = match repo_rev.split_once('@') {
            Some((repo, revision)) => (repo, revision),
            None => (repo_rev, "main"),
        };
        if owner.is_empty() || repo.is_empty() || revision.is_empty() || file.is_empty() {
            return Err(bad("owner, repo, revision and file must all be non-empty"));
        }
        let plain = |part: &str| part != "." && part != ".." && !part.contains('\\');
        if !plain(owner) || !plain(repo) || !revision.split('/').all(|p| !p.is_empty() && plain(p))
        {
            return Err(bad("owner, repo and revision must be plain names"));
        }
        let file_ok = Path::new(file)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
            && file.split('/').all(|p| !p.is_empty() && plain(p));
        if !file_ok {
            return Err(bad("the file must be a relative path without `.` or `..`"));
        }
        Ok(ModelSource::Hub(HubFile {
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            revision: revision.to_owned(),
            file: file.to_owned(),
        }))
    }
}

/// How to fetch. `Default` is what a provider wants: the endpoint from the
/// environment, no digest, no bar, five retries starting at half a second.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The hub's base URL; `None` reads `HF_ENDPOINT`, then uses [`DEFAULT_ENDPOINT`].
    pub endpoint: Option<String>,
    /// Lowercase or uppercase hex SHA-256 the file must have.
    pub expected_sha256: Option<String>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// How many times to retry after a dropped connection or a server error.
    pub max_retries: u32,
    /// The wait before the first retry; it doubles each time, up to 30 seconds.
    pub initial_backoff: Duration,
    /// Give up on a connection that sends nothing for this long.
    pub read_timeout: Duration,
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
        }
    }
}

/// Why a model file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("bad model source `{source_text}`: {reason}")]
    BadSource { source_text: String, reason: String },
    #[error("model file {0} does not exist")]
    LocalMissing(PathBuf),
    #[error("{url}: not found (HTTP 404); check the repository, revision and file name")]
    NotFound { url: String },
    #[error("{url}: HTTP {status}")]
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
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Resolve `source` to a local file: a local path is checked to exist (and hashed when a
/// digest is given); a hub file is taken from the cache or downloaded into it.
/// Blocking: call it off the async runtime.
pub fn fetch(
    source: &ModelSource,
    cache_dir: &Path,
    options: &FetchOptions,
) -> Result<PathBuf, DownloadError> {
    match source {
        ModelSource::Local(path) => {
            if !path.is_file() {
                return Err(DownloadError::LocalMissing(path.clone()));
            }
            if let Some(expected) = &options.expected_sha256 {
                let actual = sha256_file(path)?;
                if !expected.eq_ignore_ascii_case(&actual) {
                    return Err(DownloadError::DigestMismatch {
                        what: path.display().to_string(),
                        expected: expected.clone(),
                        actual,
                    });
                }
            }
            Ok(path.clone())
        }
        ModelSource::Hub(file) => fetch_hub(file, cache_dir, options),
    }
}

fn fetch_hub(
    file: &HubFile,
    cache_dir: &Path,
    options: &FetchOptions,
) -> Result<PathBuf, DownloadError> {
    let dest = file.cache_path(cache_dir);
    let expected = options.expected_sha256.as_deref();
    if dest.is_file() {
        match expected {
            None => return Ok(dest),
            Some(expected) => {
                let actual = sha256_file(&dest)?;
                if expected.eq_ignore_ascii_case(&actual) {
                    tracing::debug!(path = %dest.display(), "cached model file has the configured digest");
                    return Ok(dest);
                }
                tracing::warn!(path = %dest.display(), expected, actual, "cached model file differs; downloading again");
                remove(&dest)?;
            }
        }
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|source| DownloadError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    let partial = partial_path(&dest);
    let endpoint = options
        .endpoint
        .clone()
        .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    let url = file.url(&endpoint);
    tracing::info!(%url, path = %dest.display(), "downloading model file");
    download(&url, &partial, options)?;

    let actual = sha256_file(&partial)?;
    if let Some(expected) = expected
        && !expected.eq_ignore_ascii_case(&actual)
    {
        remove(&partial)?;
        return Err(DownloadError::DigestMismatch {
            what: url,
            expected: expected.to_owned(),
            actual,
        });
    }
    fs::rename(&partial, &dest).map_err(|source| DownloadError::Io {
        path: dest.clone(),
        source,
    })?;
    tracing::info!(path = %dest.display(), sha256 = %actual, "model file downloaded");
    Ok(dest)
}

/// `{dest}.partial`, beside the destination so the final rename stays on one filesystem.
fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// What one attempt ended with, when it did not finish the file.
enum Failure {
    /// Worth another try: a dropped connection, a server error, a short body.
    Retry(String),
    /// Not worth one: a 404, a 403, a local disk error.
    Fatal(DownloadError),
}

/// GET `url` into `partial`, resuming from its current length after each failure.
fn download(url: &str, partial: &Path, options: &FetchOptions) -> Result<(), DownloadError> {
    let agent = agent(options);
    let bar = progress_bar(options.progress);
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let mut backoff = options.initial_backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match attempt_once(&agent, url, partial, token.as_deref(), &bar) {
            Ok(()) => {
                bar.finish_and_clear();
                return Ok(());
            }
            Err(Failure::Fatal(err)) => {
                bar.abandon();
                return Err(err);
            }
            Err(Failure::Retry(last)) if attempt > options.max_retries => {
                bar.abandon();
                return Err(DownloadError::Exhausted {
                    url: url.to_owned(),
                    attempts: attempt,
                    last,
                });
            }
            Err(Failure::Retry(reason)) => {
                tracing::warn!(%url, attempt, %reason, backoff_ms = backoff.as_millis() as u64, "download interrupted; will resume");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn agent(options: &FetchOptions) -> ureq::Agent {
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::PlatformVerifier)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(options.read_timeout))
        .timeout_per_read(Some(options.read_timeout))
        .user_agent(concat!("tenzro-models/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn progress_bar(enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn attempt_once(
    agent: &ureq::Agent,
    url: &str,
    partial: &Path,
    token: Option<&str>,
    bar: &ProgressBar,
) -> Result<(), Failure> {
    let io = |source| {
        Failure::Fatal(DownloadError::Io {
            path: partial.to_owned(),
            source,
        })
    };
    let have = match fs::metadata(partial) {
        Ok(meta) => meta.len(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => 0,
        Err(err) => return Err(io(err)),
    };
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = request
        .call()
        .map_err(|err| Failure::Retry(err.to_string()))?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_length = header("content-length").and_then(|v| v.parse::<u64>().ok());

    // Where this body starts in the file, and the file's full size when known.
    let (start, total) = match status {
        206 => match header("content-range")
            .as_deref()
            .and_then(parse_content_range)
        {
            Some((start, total)) if start == have => {
                (start, total.or(content_length.map(|n| start + n)))
            }
            other => {
                // A range we did not ask for: start over rather than splice wrongly.
                remove(partial).map_err(Failure::Fatal)?;
                return Err(Failure::Retry(format!(
                    "unexpected Content-Range {other:?} for offset {have}"
                )));
            }
        },
        200 => {
            if have > 0 {
                tracing::info!(%url, have, "server ignored Range; restarting from zero");
            }
            (0, content_length)
        }
        416 => {
            // Our partial file is no prefix of what the server has now.
            remove(partial).map_err(Failure::Fatal)?;
            return Err(Failure::Retry(
                "HTTP 416: partial file does not fit; restarting".into(),
            ));
        }
        404 => {
            return Err(Failure::Fatal(DownloadError::NotFound {
                url: url.to_owned(),
            }));
        }
        429 | 500..=599 => return Err(Failure::Retry(format!("HTTP {status}"))),
        _ => {
            return Err(Failure::Fatal(DownloadError::Status {
                url: url.to_owned(),
                status,
            }));
        }
    };

    let mut out = if start == 0 {
        File::create(partial).map_err(io)?
    } else {
        OpenOptions::new().append(true).open(partial).map_err(io)?
    };
    bar.set_length(total.unwrap_or(0));
    bar.set_position(start);

    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = start;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                out.flush().map_err(io)?;
                return Err(Failure::Retry(format!(
                    "connection dropped at byte {written}: {err}"
                )));
            }
        };
        out.write_all(&buf[..n]).map_err(io)?;
        written += n as u64;
        bar.set_position(written);
    }
    out.sync_all().map_err(io)?;
    match total {
        Some(total) if written != total => Err(Failure::Retry(format!(
            "body ended at byte {written} of {total}"
        ))),
        _ => Ok(()),
    }
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) into `(START, Some(TOTAL))`.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

fn remove(path: &Path) -> Result<(), DownloadError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(DownloadError::Io {
            path: path.to_owned(),
            source: err,
        }),
        _ => Ok(()),
    }
}

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, DownloadError> {
    crate::digest::sha256_hex(path).map_err(|source| DownloadError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn hub(s: &str) -> HubFile {
        match s.parse::<ModelSource>().unwrap() {
            ModelSource::Hub(file) => file,
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    #[test]
    fn sources_parse() {
        let f = hub("hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf");
        assert_eq!(f.repo_id(), "Qwen/Qwen2.5-0.5B-Instruct-GGUF");
        assert_eq!(f.revision(), "main");
        assert_eq!(
            f.url("https://huggingface.co/"),
            "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q4_k_m.gguf"
        );
        let f = hub("hf://o/r@refs/pr/1/sub/w.gguf");
        // `splitn(3)` keeps the revision before the first `/`; a slash in a revision
        // belongs in the file part, so `refs` is the revision here.
        assert_eq!((f.revision(), f.file()), ("refs", "pr/1/sub/w.gguf"));
        let f = hub("hf://o/r@abc123/dir/w.gguf");
        assert_eq!(
            f.cache_path(Path::new("/c")),
            Path::new("/c/o/r/abc123/dir/w.gguf")
        );
        assert_eq!(
            "models/x.gguf".parse::<ModelSource>().unwrap(),
            ModelSource::Local("models/x.gguf".into())
        );
        for bad in [
            "hf://o/r",
            "hf://o//f",
            "hf:///r/f",
            "hf://o/r@/f",
            "hf://o/r/../x",
            "hf://../r/f",
            "hf://o/r/a//b",
        ] {
            assert!(
                bad.parse::<ModelSource>().is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn content_range_parses() {
        assert_eq!(
            parse_content_range("bytes 100-199/3000"),
            Some((100, Some(3000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
