//! HTTP with the hub: the metadata `HEAD` of a resolve URL, small bounded GETs (the API
//! listing, an index), and the resumable, size-bounded download of one file into a
//! `.incomplete` file, all on `ureq` with bounded retries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ureq::tls::{RootCerts, TlsConfig};

use super::cache::remove;
use super::{DownloadError, FetchOptions};

/// The client, the token and the bar shared by every request of one fetch.
pub(super) struct Client<'a> {
    agent: ureq::Agent,
    token: Option<String>,
    options: &'a FetchOptions,
    pub bar: ProgressBar,
}

/// What a `HEAD` of a resolve URL says about the file.
#[derive(Debug, Default)]
pub(super) struct Meta {
    /// `x-repo-commit`.
    pub commit: Option<String>,
    /// `x-linked-etag`, else `etag`, without quotes or `W/`.
    pub etag: Option<String>,
    /// `x-linked-size`, else `content-length` of a non-redirect.
    pub size: Option<u64>,
}

/// What one attempt ended with, when it did not finish.
pub(super) enum Failure {
    /// Worth another try: a dropped connection, a server error, a short body.
    Retry(String),
    /// Not worth one: a 404, a 403, a local disk error, a hub breaking a bound.
    Fatal(DownloadError),
}

impl<'a> Client<'a> {
    pub fn new(options: &'a FetchOptions) -> Client<'a> {
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::PlatformVerifier)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(options.read_timeout))
            .timeout_per_read(Some(options.read_timeout))
            .user_agent(concat!("tenzro-models/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let token = options
            .token
            .clone()
            .or_else(|| std::env::var("HF_TOKEN").ok())
            .filter(|t| !t.is_empty());
        Client {
            agent,
            token,
            options,
            bar: progress_bar(options.progress),
        }
    }

    fn get(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let request = self.agent.get(url);
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// Run `attempt` until it succeeds, fails for good, or the retries run out.
    fn retrying<T>(
        &self,
        url: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, DownloadError> {
        let mut backoff = self.options.initial_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match attempt() {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(err)) => return Err(err),
                Err(Failure::Retry(last)) if attempts > self.options.max_retries => {
                    return Err(DownloadError::Exhausted {
                        url: url.to_owned(),
                        attempts,
                        last,
                    });
                }
                Err(Failure::Retry(reason)) => {
                    tracing::warn!(%url, attempts, %reason, backoff_ms = backoff.as_millis() as u64, "hub request interrupted; will retry");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// `HEAD url` without following redirects (the hub puts the metadata on its 302).
    pub fn head(&self, url: &str) -> Result<Meta, DownloadError> {
        self.retrying(url, || {
            let mut request = self.agent.head(url).header("Accept-Encoding", "identity");
            if let Some(token) = &self.token {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            let response = request
                .config()
                .max_redirects(0)
                .build()
                .call()
                .map_err(|e| Failure::Retry(e.to_string()))?;
            let status = response.status().as_u16();
            check_status(url, status)?;
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let redirect = (300..400).contains(&status);
            Ok(Meta {
                commit: header("x-repo-commit"),
                etag: header("x-linked-etag")
                    .or_else(|| header("etag"))
                    .map(|e| normalize_etag(&e)),
                size: header("x-linked-size")
                    .or_else(|| header("content-length").filter(|_| !redirect))
                    .and_then(|v| v.trim().parse().ok()),
            })
        })
    }

    /// `GET url` into memory, refusing a body over `limit` bytes.
    pub fn get_bytes(&self, url: &str, limit: u64) -> Result<Vec<u8>, DownloadError> {
        self.retrying(url, || {
            let response = self
                .get(url)
                .call()
                .map_err(|e| Failure::Retry(e.to_string()))?;
            check_status(url, response.status().as_u16())?;
            let mut body = Vec::new();
            response
                .into_body()
                .into_reader()
                .take(limit + 1)
                .read_to_end(&mut body)
                .map_err(|e| Failure::Retry(e.to_string()))?;
            if body.len() as u64 > limit {
                return Err(Failure::Fatal(DownloadError::BadHub {
                    url: url.to_owned(),
                    reason: format!("the answer is larger than {limit} bytes"),
                }));
            }
            Ok(body)
        })
    }

    /// GET `url` into `partial`, resuming from its current length after each
    /// failure. `size`, when known, bounds the file: a hub sending more is refused.
    pub fn download(
        &self,
        url: &str,
        partial: &Path,
        size: Option<u64>,
    ) -> Result<(), DownloadError> {
        let base = self.bar.position();
        let limit = size.unwrap_or(self.options.max_total_bytes);
        self.retrying(url, || self.attempt(url, partial, limit, size, base))
    }

    fn attempt(
        &self,
        url: &str,
        partial: &Path,
        limit: u64,
        size: Option<u64>,
        base: u64,
    ) -> Result<(), Failure> {
        let io = |source| {
            Failure::Fatal(DownloadError::Io {
                path: partial.to_owned(),
                source,
            })
        };
        let mut have = match fs::metadata(partial) {
            Ok(meta) => meta.len(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => 0,
            Err(err) => return Err(io(err)),
        };
        if have > limit {
            remove(partial).map_err(Failure::Fatal)?;
            have = 0;
        }
        if size == Some(have) && have > 0 {
            return Ok(());
        }
        let mut request = self.get(url);
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
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
            _ => {
                check_status(url, status)?;
                return Err(Failure::Retry(format!("HTTP {status}")));
            }
        };
        if let Some(total) = total
            && (total > limit || size.is_some_and(|s| s != total))
        {
            return Err(Failure::Fatal(DownloadError::BadHub {
                url: url.to_owned(),
                reason: format!("it sends {total} bytes where {limit} were expected"),
            }));
        }
        let mut out = if start == 0 {
            File::create(partial).map_err(io)?
        } else {
            OpenOptions::new().append(true).open(partial).map_err(io)?
        };
        self.bar.set_position(base + start);
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
            if written + n as u64 > limit {
                drop(out);
                remove(partial).map_err(Failure::Fatal)?;
                return Err(Failure::Fatal(DownloadError::BadHub {
                    url: url.to_owned(),
                    reason: format!("it sent more than the {limit} bytes expected"),
                }));
            }
            out.write_all(&buf[..n]).map_err(io)?;
            written += n as u64;
            self.bar.set_position(base + written);
        }
        out.sync_all().map_err(io)?;
        match total.or(size) {
            Some(total) if written != total => Err(Failure::Retry(format!(
                "body ended at byte {written} of {total}"
            ))),
            _ => Ok(()),
        }
    }
}

/// 404, 401/403 and other client errors end the attempts; 429 and 5xx retry.
fn check_status(url: &str, status: u16) -> Result<(), Failure> {
    match status {
        200..=399 => Ok(()),
        404 => Err(Failure::Fatal(DownloadError::NotFound {
            url: url.to_owned(),
        })),
        429 | 500..=599 => Err(Failure::Retry(format!("HTTP {status}"))),
        _ => Err(Failure::Fatal(DownloadError::Status {
            url: url.to_owned(),
            status,
        })),
    }
}

/// `W/"abc"` -> `abc`.
fn normalize_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_owned()
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

/// `bytes START-END/TOTAL` (TOTAL may be `*`) into `(START, Some(TOTAL))`.
pub(super) fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        assert_eq!(
            parse_content_range("bytes 100-199/3000"),
            Some((100, Some(3000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn etags_lose_quotes() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"0f\""), "0f");
    }
}
