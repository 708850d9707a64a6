//! The mock upstream: a fixed OpenAI `chat.completion` body, or a 10-chunk SSE
//! stream with `tenzro.tokens` per chunk and a usage chunk, on its own thread.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;

const CHAT: &str = r#"{"id":"chatcmpl-b","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Paris is the capital of France."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#;

fn sse_body() -> Bytes {
    let mut s = String::new();
    for i in 0..10 {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}},\"finish_reason\":null}}],\"tenzro\":{{\"tokens\":1}}}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":10,\"total_tokens\":22}}\n\n");
    s.push_str("data: [DONE]\n\n");
    Bytes::from(s)
}

/// Whether a request body asks for a stream. Rust clients write compact JSON,
/// Python's `json.dumps` (LiteLLM, through the OpenAI SDK) puts a space after
/// the colon.
fn wants_stream(body: &[u8]) -> bool {
    let has = |pat: &[u8]| body.windows(pat.len()).any(|w| w == pat);
    has(b"\"stream\":true") || has(b"\"stream\": true")
}

async fn chat(body: Bytes) -> Response {
    let (kind, body) = if wants_stream(&body) {
        ("text/event-stream", Body::from(sse_body()))
    } else {
        ("application/json", Body::from(CHAT))
    };
    Response::builder()
        .header("content-type", kind)
        .body(body)
        .unwrap_or_default()
}

/// Our gateway posts payment-channel vouchers to its providers in the background
/// (one batch per 200 ms under load). The mock takes each batch and countersigns
/// none, so the gateway keeps signing and sending; that work is in its CPU figures.
async fn vouchers() -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(r#"{"vouchers":[],"rejected":[]}"#))
        .unwrap_or_default()
}

/// Starts the mock on 127.0.0.1 on a thread of its own and returns its address.
/// It answers `/v1/chat/completions` (our gateway, direct) and
/// `/chat/completions` (clients whose base URL already ends in `/v1`).
pub fn start() -> anyhow::Result<SocketAddr> {
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
                        .route("/chat/completions", post(chat))
                        .route("/v1/channels/vouchers", post(vouchers));
                    let _ = axum::serve(l, app).await;
                }
            });
        }
    });
    rx.recv()?.context("mock did not start")
}

#[cfg(test)]
mod tests {
    use super::wants_stream;

    #[test]
    fn stream_flag() {
        let check =
            |body: &str, expect: bool| assert_eq!(wants_stream(body.as_bytes()), expect, "{body}");
        check(r#"{"model":"bench","stream":true}"#, true);
        check(r#"{"model": "bench", "stream": true}"#, true);
        check(r#"{"model":"bench","stream":false}"#, false);
        check(r#"{"model":"bench"}"#, false);
    }
}
