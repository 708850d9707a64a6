//! A slow mock upstream: every streamed answer trickles `chunks` one-token chunks,
//! one per `interval`, then a usage chunk and `[DONE]`, on a thread of its own.
//! It takes the gateway's voucher batches and countersigns none.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;

/// How the mock trickles.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub chunks: usize,
    pub interval: Duration,
}

fn chunk(i: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-s\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}},\"finish_reason\":null}}],\"tenzro\":{{\"tokens\":1}}}}\n\n"
    ))
}

fn tail(chunks: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-s\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{chunks},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
        chunks + 12
    ))
}

async fn chat(State(pace): State<Pace>) -> Response {
    let stream = futures::stream::unfold(0usize, move |i| async move {
        if i > pace.chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(pace.interval).await;
        }
        let bytes = if i < pace.chunks {
            chunk(i)
        } else {
            tail(pace.chunks)
        };
        Some((Ok::<_, std::convert::Infallible>(bytes), i + 1))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

async fn vouchers() -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(r#"{"vouchers":[],"rejected":[]}"#))
        .unwrap_or_default()
}

/// Starts the mock on 127.0.0.1 on a thread of its own and returns its address.
pub fn start(pace: Pace) -> anyhow::Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(async move {
                if let Ok(l) = tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    let _ = tx.send(l.local_addr().ok());
                    let app = Router::new()
                        .route("/v1/chat/completions", post(chat))
                        .route("/v1/channels/vouchers", post(vouchers))
                        .with_state(pace);
                    let _ = axum::serve(l, app).await;
                }
            });
        }
    });
    rx.recv()?.context("trickling mock did not start")
}
