//! The mock upstream of the gateway benchmarks, on a thread of its own: a fixed
//! OpenAI `chat.completion` body, or an SSE stream of one-token chunks (with
//! `tenzro.tokens`) then a usage chunk and `[DONE]` — at once (`start`, for
//! gateway-load and gateway-replicas) or trickled one chunk per interval
//! (`start_paced`, for gateway-streams). It takes the gateway's voucher batches
//! and countersigns none.
//!
//! It speaks HTTP/1.1 and h2c like our provider (so the gateway calls it over one
//! multiplexed connection, `tenzro_gateway::proxy::upstream`), with room for
//! [`MAX_STREAMS`] streams on one connection (axum's own server allows 200).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;

/// Streams one HTTP/2 connection may carry at once.
pub const MAX_STREAMS: u32 = 100_000;

/// How a streamed answer is sent: `chunks` one-token chunks, `interval` apart.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub chunks: usize,
    pub interval: Duration,
}

/// The load mock's answers: 10 chunks, all at once.
const AT_ONCE: Pace = Pace {
    chunks: 10,
    interval: Duration::ZERO,
};

const CHAT: &str = r#"{"id":"chatcmpl-b","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Paris is the capital of France."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#;

fn chunk(i: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}},\"finish_reason\":null}}],\"tenzro\":{{\"tokens\":1}}}}\n\n"
    )
}

fn tail(chunks: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{chunks},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
        chunks + 12
    )
}

/// A whole stream in one body.
fn sse_body(chunks: usize) -> Bytes {
    let mut s: String = (0..chunks).map(chunk).collect();
    s.push_str(&tail(chunks));
    Bytes::from(s)
}

/// Whether a request body asks for a stream. Rust clients write compact JSON,
/// Python's `json.dumps` (LiteLLM, through the OpenAI SDK) puts a space after
/// the colon.
fn wants_stream(body: &[u8]) -> bool {
    let has = |pat: &[u8]| body.windows(pat.len()).any(|w| w == pat);
    has(b"\"stream\":true") || has(b"\"stream\": true")
}

fn answer(kind: &str, body: Body) -> Response {
    Response::builder()
        .header("content-type", kind)
        .body(body)
        .unwrap_or_default()
}

async fn chat(State(pace): State<Pace>, body: Bytes) -> Response {
    if !wants_stream(&body) {
        return answer("application/json", Body::from(CHAT));
    }
    if pace.interval.is_zero() {
        return answer("text/event-stream", Body::from(sse_body(pace.chunks)));
    }
    let stream = futures::stream::unfold(0usize, move |i| async move {
        if i > pace.chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(pace.interval).await;
        }
        let s = if i < pace.chunks {
            chunk(i)
        } else {
            tail(pace.chunks)
        };
        Some((Ok::<_, Infallible>(Bytes::from(s)), i + 1))
    });
    answer("text/event-stream", Body::from_stream(stream))
}

/// Our gateway posts payment-channel vouchers to its providers in the background
/// (one batch per 200 ms under load). The mock takes each batch and countersigns
/// none, so the gateway keeps signing and sending; that work is in its CPU figures.
async fn vouchers() -> Response {
    answer(
        "application/json",
        Body::from(r#"{"vouchers":[],"rejected":[]}"#),
    )
}

/// Starts the mock whose streams come at once. It answers
/// `/v1/chat/completions` (our gateway, direct) and `/chat/completions` (clients
/// whose base URL already ends in `/v1`).
pub fn start() -> anyhow::Result<SocketAddr> {
    start_paced(AT_ONCE)
}

/// Starts the mock with streamed answers paced by `pace`, on 127.0.0.1 on a
/// thread of its own, and returns its address.
pub fn start_paced(pace: Pace) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/channels/vouchers", post(vouchers))
        .with_state(pace);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(async move {
                if let Ok(l) = tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    let _ = tx.send(l.local_addr().ok());
                    serve(l, app).await;
                }
            });
        }
    });
    rx.recv()?.context("mock did not start")
}

/// axum's `serve` with the HTTP/2 stream limit raised.
async fn serve(l: tokio::net::TcpListener, app: Router) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(MAX_STREAMS);
    loop {
        let tcp = match l.accept().await {
            Ok((tcp, _)) => tcp,
            // Out of descriptors: wait for connections to close.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (builder, svc) = (builder.clone(), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{sse_body, wants_stream};

    #[test]
    fn stream_flag() {
        let check =
            |body: &str, expect: bool| assert_eq!(wants_stream(body.as_bytes()), expect, "{body}");
        check(r#"{"model":"bench","stream":true}"#, true);
        check(r#"{"model": "bench", "stream": true}"#, true);
        check(r#"{"model":"bench","stream":false}"#, false);
        check(r#"{"model":"bench"}"#, false);
    }

    #[test]
    fn a_whole_stream_has_its_chunks_usage_and_done() {
        let s = String::from_utf8_lossy(&sse_body(10)).into_owned();
        assert_eq!(s.matches("\"tokens\":1").count(), 10);
        assert!(s.contains("\"completion_tokens\":10,\"total_tokens\":22"));
        assert!(s.ends_with("data: [DONE]\n\n"));
    }
}
