//! Model requests to an h2c endpoint, on the `h2` crate directly: one connection
//! per endpoint, whose send handle each request clones.
//!
//! Through reqwest, every request went through its pool checkout and layers, then
//! hyper's client task, which spawned one more task per request to await the
//! answer and hand it back: three tasks and their wake-ups per request besides the
//! connection's own. Here the request's task opens the stream, sends the body and
//! awaits the answer itself; only the connection's task stays in between. What
//! reqwest's h2c client did is kept: the connection and receive windows of
//! [`super::upstream`], hyper's other HTTP/2 defaults (16 KiB frames and header
//! lists, no push), a keep-alive ping every 20 s while requests were made
//! (closing the connection when its pong is 10 s late), TCP_NODELAY, the connect
//! timeout, names resolved to public addresses only unless private endpoints are
//! allowed, and the request's `accept: */*` and `content-length`. The answer is a
//! `reqwest::Response` over the stream (its window released as it is read), so
//! what reads it is unchanged. A connection that fails is forgotten: the next
//! request opens another.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{self, HeaderMap, HeaderValue, Method, header};
use bytes::Bytes;
use h2::client::SendRequest;
use reqwest::ResponseBuilderExt;
use reqwest::dns::Resolve;

use crate::providers::bounds::PublicOnly;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Pings on a connection that carried requests since the last one.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// A pong later than this closes the connection.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// hyper's client defaults, which reqwest's h2c client used.
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER_SIZE: usize = 1024 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// The h2c connections, by endpoint.
pub struct H2c {
    conns: parking_lot::Mutex<HashMap<String, Conn>>,
    /// One connection attempt at a time per endpoint.
    gates: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    connect_timeout: Duration,
    public_only: bool,
    stream_window: u32,
    connection_window: u32,
    next_id: AtomicU64,
}

#[derive(Clone)]
struct Conn {
    id: u64,
    send: SendRequest<Bytes>,
    /// Requests were made since the last keep-alive ping.
    used: Arc<AtomicBool>,
}

/// A request that got no answer; displayed as reqwest's were.
#[derive(Debug)]
struct SendError {
    url: String,
    source: BoxError,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error sending request for url ({})", self.url)
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl H2c {
    pub fn new(
        connect_timeout: Duration,
        public_only: bool,
        stream_window: u32,
        connection_window: u32,
    ) -> H2c {
        H2c {
            conns: parking_lot::Mutex::default(),
            gates: parking_lot::Mutex::default(),
            connect_timeout,
            public_only,
            stream_window,
            connection_window,
            next_id: AtomicU64::new(0),
        }
    }

    /// POSTs `body` to `url` (on `endpoint`) with `headers`; the answer's head.
    pub async fn post(
        self: &Arc<Self>,
        endpoint: &str,
        url: &reqwest::Url,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, BoxError> {
        let failed = |source: BoxError| -> BoxError {
            Box::new(SendError {
                url: url.to_string(),
                source,
            })
        };
        let conn = self.conn(endpoint).await.map_err(failed)?;
        conn.used.store(true, Ordering::Relaxed);
        let uri = http::Uri::from_str(url.as_str()).map_err(|e| failed(e.into()))?;
        headers
            .entry(header::ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let mut req = http::Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let sent = async {
            let mut send = conn.send.clone().ready().await?;
            let (answer, mut stream) = send.send_request(req, body.is_empty())?;
            if !body.is_empty() {
                stream.send_data(body, true)?;
            }
            answer.await
        };
        let answer = match sent.await {
            Ok(a) => a,
            Err(e) => {
                // A reset of this stream alone leaves the connection in use.
                if !e.is_reset() || e.is_go_away() {
                    self.forget(endpoint, conn.id);
                }
                return Err(failed(e.into()));
            }
        };
        let (mut parts, stream) = answer.into_parts();
        // reqwest keeps the answer's URL in an extension only its builder sets
        // (without it, `From` parses a placeholder URL for every answer).
        if let Ok(r) = http::Response::builder().url(url.clone()).body(()) {
            parts.extensions.extend(r.into_parts().0.extensions);
        }
        let body = reqwest::Body::wrap_stream(Data(stream));
        Ok(reqwest::Response::from(http::Response::from_parts(
            parts, body,
        )))
    }

    /// The endpoint's connection, opened when there is none.
    async fn conn(self: &Arc<Self>, endpoint: &str) -> Result<Conn, BoxError> {
        if let Some(c) = self.conns.lock().get(endpoint) {
            return Ok(c.clone());
        }
        let gate = self
            .gates
            .lock()
            .entry(endpoint.to_owned())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if let Some(c) = self.conns.lock().get(endpoint) {
            return Ok(c.clone());
        }
        let opened = tokio::time::timeout(self.connect_timeout, self.open(endpoint)).await;
        let conn = match opened {
            Ok(c) => c?,
            Err(_) => return Err("connect timed out".into()),
        };
        self.conns.lock().insert(endpoint.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Connects to `endpoint` (`http://host[:port]`) and starts its connection's task.
    async fn open(self: &Arc<Self>, endpoint: &str) -> Result<Conn, BoxError> {
        let uri = http::Uri::from_str(endpoint)?;
        let host = uri.host().ok_or("no host in the endpoint")?;
        let port = uri.port_u16().unwrap_or(80);
        let mut last: BoxError = format!("{host} resolves to no address").into();
        for addr in self.resolve(host, port).await? {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(tcp) => {
                    tcp.set_nodelay(true)?;
                    return self.handshake(endpoint, tcp).await;
                }
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, BoxError> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = IpAddr::from_str(literal) {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if self.public_only {
            let found = PublicOnly
                .resolve(reqwest::dns::Name::from_str(host)?)
                .await?;
            return Ok(found.map(|a| SocketAddr::new(a.ip(), port)).collect());
        }
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }

    async fn handshake(
        self: &Arc<Self>,
        endpoint: &str,
        tcp: tokio::net::TcpStream,
    ) -> Result<Conn, BoxError> {
        let (send, mut connection) = h2::client::Builder::new()
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER_SIZE)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
            .enable_push(false)
            .handshake::<_, Bytes>(tcp)
            .await?;
        let conn = Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            send,
            used: Arc::default(),
        };
        let ping = connection.ping_pong();
        let (this, endpoint, id, used) = (
            Arc::downgrade(self),
            endpoint.to_owned(),
            conn.id,
            conn.used.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                ended = &mut connection => {
                    if let Err(e) = ended {
                        tracing::debug!(%endpoint, error = %e, "h2c connection to a provider ended");
                    }
                }
                () = keep_alive(ping, used) => {
                    tracing::debug!(%endpoint, "h2c connection to a provider missed its pong: closed");
                }
            }
            if let Some(this) = Weak::upgrade(&this) {
                this.forget(&endpoint, id);
            }
        });
        Ok(conn)
    }

    /// Drops the endpoint's connection `id` (not a newer one).
    fn forget(&self, endpoint: &str, id: u64) {
        let mut conns = self.conns.lock();
        if conns.get(endpoint).is_some_and(|c| c.id == id) {
            conns.remove(endpoint);
        }
    }
}

/// Returns when a ping's pong is late; pings only after requests were made.
async fn keep_alive(ping: Option<h2::PingPong>, used: Arc<AtomicBool>) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        if !used.swap(false, Ordering::Relaxed) {
            continue;
        }
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

/// An answer's body: each piece's window is released as it is read.
struct Data(h2::RecvStream);

impl futures::Stream for Data {
    type Item = Result<Bytes, h2::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let piece = std::task::ready!(self.0.poll_data(cx));
        if let Some(Ok(b)) = &piece {
            let _ = self.0.flow_control().release_capacity(b.len());
        }
        Poll::Ready(piece)
    }
}

#[cfg(test)]
#[path = "h2c_tests.rs"]
mod tests;
