//! `bare-proxy`: a measurement baseline for gateway-load, not a product. It does
//! the transport work of `tenzro-gateway` and nothing else, so that its CPU per
//! request is the floor under the gateway's on the same machine and load.
//!
//! `bare-proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:MOCK_PORT`
//!
//! The transport is the gateway's own code, taken from its library:
//! - the front door is `tenzro_gateway::http::listen::serve` (hyper's HTTP/1.1
//!   server with keep-alive and TCP_NODELAY, an axum `Router` behind it) on a
//!   multi-threaded tokio runtime with tokio's default worker count, as the
//!   gateway's `main` builds it;
//! - the provider client is `tenzro_gateway::proxy::upstream::Upstream` with the
//!   gateway's default `[upstream]` settings: once its probe has seen the
//!   upstream answer in h2c (before this process reports ready), every request
//!   goes on one h2c connection through the `h2` crate (`proxy::h2c`), as the
//!   gateway's model requests do;
//! - the answer is read as the gateway reads it: a `text/event-stream` answer
//!   relayed chunk by chunk as it arrives, any other read whole and sent with
//!   its length.
//!
//! Left out, on purpose: auth, rate limits, routing, pricing, the ledger and its
//! store, payment vouchers and signatures, per-chunk metering, JSON rewriting,
//! metrics, logging. The request body goes upstream unchanged (only
//! `content-type` set), the answer comes back unchanged (its status and
//! `content-type`). The one allocator difference: the gateway's binary uses
//! mimalloc, this one the system allocator (a new dependency of this crate
//! would change `Cargo.lock`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use clap::Parser;
use tenzro_gateway::config::Config;
use tenzro_gateway::proxy::upstream::{Proto, Upstream};

#[derive(Parser, Debug)]
struct Args {
    /// Where to listen for clients (HTTP/1.1).
    #[arg(long)]
    listen: SocketAddr,
    /// The upstream to forward to; it must speak h2c (the benches' mock does).
    #[arg(long)]
    upstream: SocketAddr,
}

/// The path forwarded, the only one served besides `/health`.
const PATH: &str = "/v1/chat/completions";
/// How long the start waits for the probe to learn that the upstream speaks h2c.
const LEARN_H2C: Duration = Duration::from_secs(10);

/// What every request shares: the gateway's provider client and the upstream.
struct Forward {
    upstream: Arc<Upstream>,
    endpoint: String,
    url: reqwest::Url,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // As the gateway's `main`: multi-threaded, one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let upstream = Upstream::new(&Config::default())?;
    let endpoint = format!("http://{}", args.upstream);
    let url = upstream.url(&endpoint, PATH).map_err(anyhow::Error::msg)?;
    // The first `choose` starts the gateway's h2c probe; serve only once it has
    // answered, so that no measured request goes in HTTP/1.1.
    let until = Instant::now() + LEARN_H2C;
    while upstream.choose(&endpoint, Instant::now()) != Proto::H2c {
        if Instant::now() > until {
            bail!("{endpoint} did not answer the h2c probe within {LEARN_H2C:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fwd = Arc::new(Forward {
        upstream,
        endpoint,
        url,
    });
    let app = Router::new()
        .route(PATH, post(forward))
        .route("/health", get(|| async { "ok" }))
        .with_state(fwd);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    // The gateway's listener; its shutdown token is never cancelled here (the
    // benchmark kills this process).
    tenzro_gateway::http::listen::serve(listener, app, Default::default()).await?;
    Ok(())
}

/// One request: the body upstream as it came, the answer back as it comes.
async fn forward(State(f): State<Arc<Forward>>, body: Bytes) -> Response {
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let resp = match f
        .upstream
        .post(&f.endpoint, f.url.clone(), headers, body)
        .await
    {
        Ok(r) => r,
        Err(e) => return failed(&*e),
    };
    let status = resp.status();
    let kind = resp.headers().get(header::CONTENT_TYPE).cloned();
    let streamed = kind
        .as_ref()
        .is_some_and(|k| k.as_bytes().starts_with(b"text/event-stream"));
    let body = if streamed {
        Body::from_stream(resp.bytes_stream())
    } else {
        match resp.bytes().await {
            Ok(b) => Body::from(b),
            Err(e) => return failed(&e),
        }
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    if let Some(k) = kind {
        out.headers_mut().insert(header::CONTENT_TYPE, k);
    }
    out
}

/// A 502 naming why the upstream gave no answer.
fn failed(e: &(dyn std::error::Error + 'static)) -> Response {
    let mut out = Response::new(Body::from(format!("bare-proxy: {e}")));
    *out.status_mut() = StatusCode::BAD_GATEWAY;
    out
}
