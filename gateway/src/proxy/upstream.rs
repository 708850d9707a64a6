//! The clients that call providers, and which HTTP each `http://` endpoint speaks.
//!
//! In HTTP/1.1 every request in flight holds a connection of its own, and hyper
//! gives each one an 8 KiB read and an 8 KiB write buffer plus its state: about
//! 22 KiB of the gateway's memory per open stream (benches/streams). In HTTP/2 the
//! requests to one provider share one connection and a stream costs a slot in it.
//! So an `http://` endpoint is called in HTTP/2 without TLS (h2c, prior knowledge)
//! once a probe has seen it answer in h2c; until then, and for endpoints that do
//! not speak it (a plain HTTP/1.1 server), calls go in HTTP/1.1.
//!
//! The probe is one `GET {endpoint}/health` sent in h2c off the request path, on
//! the first call to an endpoint not yet known: any HTTP answer (the path need
//! not exist) proves h2c. An endpoint that fails it (an HTTP/1.1-only server
//! answers the h2c preface with an HTTP/1.1 error, or closes) stays on HTTP/1.1
//! and is probed again after [`RETRY_HTTP1`]; one that could not be reached is
//! forgotten (probed again on a later call). A call in h2c that fails before any
//! answer forgets what was learned too. `https://` endpoints are left to TLS
//! (ALPN offers h2 and http/1.1) on the HTTP/1.1 client. Model requests in h2c go
//! on the `h2` crate directly ([`super::h2c`]); the probes on reqwest's h2c
//! client. `[upstream] h2c = false`
//! keeps every call in HTTP/1.1. Both clients refuse redirects and, unless private
//! endpoints are allowed, resolve names to public addresses only.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use bytes::Bytes;

use super::h2c::H2c;
use crate::config::Config;

/// How long an endpoint that failed the probe stays on HTTP/1.1 before the next.
pub const RETRY_HTTP1: Duration = Duration::from_secs(600);
/// A probe's limit, connection included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A probe older than this was lost (its task never reported): probe again.
const PROBE_LOST: Duration = Duration::from_secs(60);
/// Endpoints remembered; past it, new ones are called in HTTP/1.1 unprobed.
const MAX_ENDPOINTS: usize = 100_000;
/// Probes in flight at once; past it a call goes in HTTP/1.1 and a later one probes.
const MAX_PROBES: usize = 64;

/// The HTTP version a call to an endpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    H2c,
}

#[derive(Debug, Clone, Copy)]
enum Learned {
    Probing(Instant),
    H2c,
    Http1Until(Instant),
}

/// The provider clients and what each endpoint was seen to speak.
pub struct Upstream {
    http1: reqwest::Client,
    /// `None` when `[upstream] h2c = false`; makes the probes.
    h2c: Option<reqwest::Client>,
    /// The model requests' h2c connections (`None` with `h2c`).
    direct: Option<Arc<H2c>>,
    learned: parking_lot::Mutex<HashMap<String, Learned>>,
    probes: AtomicUsize,
    /// Each endpoint's parsed URLs by path: parsing (with IDNA) on every call was
    /// ~1 % of the gateway's CPU at 2,000 req/s.
    urls: parking_lot::RwLock<HashMap<String, Vec<(&'static str, reqwest::Url)>>>,
}

/// The receive window of one stream from a provider (bytes): ~500 tokens of SSE.
const STREAM_WINDOW: u32 = 128 * 1024;
/// Streams to one provider the connection's window is sized for (tenzro-provider
/// allows 200 at once).
const MAX_STREAMS: u32 = 256;

/// What the clients share: timeouts, no redirects, no proxy, public addresses.
fn builder(config: &Config) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .connect_timeout(config.upstream.connect_timeout())
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(90));
    if !config.registration.allow_private_endpoints {
        b = b.dns_resolver(Arc::new(crate::providers::bounds::PublicOnly));
    }
    b
}

impl Upstream {
    pub fn new(config: &Config) -> Result<Arc<Upstream>, reqwest::Error> {
        let http1 = builder(config).pool_max_idle_per_host(256).build()?;
        let h2c = if config.upstream.h2c {
            // One connection carries every stream to the provider: pings find a
            // dead one instead of each stream waiting out its own timeout.
            Some(
                builder(config)
                    .http2_prior_knowledge()
                    // Flow control: a stream's unread data is charged to the
                    // connection's window too, so with hyper's defaults (2 MiB a
                    // stream, 5 MiB the connection) three callers that stop
                    // reading froze every other stream to the provider. The
                    // connection's window covers every stream's (a provider
                    // allows at most 256 at once here), so a stalled stream stalls
                    // only itself, holding at most its own window in memory.
                    .http2_initial_stream_window_size(STREAM_WINDOW)
                    .http2_initial_connection_window_size(STREAM_WINDOW * MAX_STREAMS)
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .http2_keep_alive_timeout(Duration::from_secs(10))
                    .build()?,
            )
        } else {
            None
        };
        let direct = config.upstream.h2c.then(|| {
            Arc::new(H2c::new(
                config.upstream.connect_timeout(),
                !config.registration.allow_private_endpoints,
                STREAM_WINDOW,
                STREAM_WINDOW * MAX_STREAMS,
            ))
        });
        Ok(Arc::new(Upstream {
            http1,
            h2c,
            direct,
            learned: parking_lot::Mutex::default(),
            probes: AtomicUsize::new(0),
            urls: parking_lot::RwLock::default(),
        }))
    }

    /// The HTTP/1.1 client, for calls that are not model requests (vouchers,
    /// replicas' hints): few, and to endpoints of any kind.
    pub fn http1(&self) -> &reqwest::Client {
        &self.http1
    }

    /// POSTs a model request to `url` on `endpoint` (a provider's base URL), in
    /// h2c ([`H2c`]) or HTTP/1.1 as the endpoint was seen to speak; starts a probe
    /// when the endpoint is not known yet. The answer's head, or why none came.
    pub async fn post(
        self: &Arc<Self>,
        endpoint: &str,
        url: reqwest::Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, Box<dyn std::error::Error + Send + Sync>> {
        match (self.choose(endpoint, Instant::now()), &self.direct) {
            (Proto::H2c, Some(h2c)) => h2c.post(endpoint, &url, headers, body).await,
            _ => Ok(self
                .http1
                .post(url)
                .headers(headers)
                .body(body)
                .send()
                .await?),
        }
    }

    /// What a call to `endpoint` uses now, starting a probe when one is due.
    pub fn choose(self: &Arc<Self>, endpoint: &str, now: Instant) -> Proto {
        if self.h2c.is_none() || !endpoint.starts_with("http://") {
            return Proto::Http1;
        }
        let mut learned = self.learned.lock();
        match learned.get(endpoint) {
            Some(Learned::H2c) => return Proto::H2c,
            Some(Learned::Http1Until(t)) if *t > now => return Proto::Http1,
            Some(Learned::Probing(t)) if now.duration_since(*t) < PROBE_LOST => {
                return Proto::Http1;
            }
            Some(_) => {}
            None if learned.len() >= MAX_ENDPOINTS => return Proto::Http1,
            None => {}
        }
        if self.probes.fetch_add(1, Ordering::SeqCst) >= MAX_PROBES {
            self.probes.fetch_sub(1, Ordering::SeqCst);
            return Proto::Http1;
        }
        learned.insert(endpoint.to_owned(), Learned::Probing(now));
        drop(learned);
        tokio::spawn(self.clone().probe(endpoint.to_owned()));
        Proto::Http1
    }

    /// `{endpoint}{path}` parsed, from the cache when it was parsed before (at
    /// most [`MAX_ENDPOINTS`] endpoints are kept).
    pub fn url(&self, endpoint: &str, path: &'static str) -> Result<reqwest::Url, String> {
        if let Some(u) = self
            .urls
            .read()
            .get(endpoint)
            .and_then(|paths| paths.iter().find(|(p, _)| *p == path))
        {
            return Ok(u.1.clone());
        }
        let url = reqwest::Url::parse(&format!("{endpoint}{path}"))
            .map_err(|e| format!("invalid provider URL {endpoint}{path}: {e}"))?;
        let mut urls = self.urls.write();
        if urls.len() < MAX_ENDPOINTS || urls.contains_key(endpoint) {
            let paths = urls.entry(endpoint.to_owned()).or_default();
            if !paths.iter().any(|(p, _)| *p == path) {
                paths.push((path, url.clone()));
            }
        }
        Ok(url)
    }

    /// A call to `endpoint` failed before any answer: what was learned may be
    /// stale (the provider restarted behind another server), so it is probed again.
    pub fn failed(&self, endpoint: &str) {
        let mut learned = self.learned.lock();
        if matches!(learned.get(endpoint), Some(Learned::H2c)) {
            learned.remove(endpoint);
        }
    }

    async fn probe(self: Arc<Self>, endpoint: String) {
        let outcome = match &self.h2c {
            Some(c) => Some(
                c.get(format!("{endpoint}/health"))
                    .timeout(PROBE_TIMEOUT)
                    .send()
                    .await,
            ),
            None => None,
        };
        let mut learned = self.learned.lock();
        match outcome {
            Some(Ok(_)) => {
                tracing::debug!(%endpoint, "provider speaks h2c: calls share one connection");
                learned.insert(endpoint, Learned::H2c);
            }
            Some(Err(e)) if e.is_connect() => {
                learned.remove(&endpoint);
            }
            _ => {
                tracing::debug!(%endpoint, "provider does not speak h2c: HTTP/1.1");
                learned.insert(endpoint, Learned::Http1Until(Instant::now() + RETRY_HTTP1));
            }
        }
        drop(learned);
        self.probes.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
