//! A hostile provider for the adversary tests: a real HTTP server that signs with
//! its own key and lies in the ways [`Lie`] names. It serves only requests the
//! gateway's payer signed (`x-tenzro-payer-auth`), like the real provider attached
//! to a gateway, and counts the ones that were not.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tenzro_attest::payer::{PAYER_AUTH_HEADER, PaidRequest};
use tenzro_attest::{ProviderKey, PublicKey, ReceiptBody};

/// What the provider lies about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Nothing: correct usage and a correct receipt.
    Nothing,
    /// Claims `completion_tokens` for whatever it generated, in usage and receipt.
    Usage { completion_tokens: u64 },
    /// Sends no receipt.
    NoReceipt,
    /// Signs a receipt over another response than the one it sent.
    WrongResponseDigest,
    /// Streams one chunk, then one SSE event of `bytes` bytes with no end.
    EndlessEvent { bytes: usize },
    /// Usage and receipt say one token per 4 bytes of text (a plausible tokenizer),
    /// but each stream chunk's `tenzro.tokens` claims one per byte (4x).
    InflatedChunks,
    /// Streams its chunks, then closes the stream without usage, receipt or `[DONE]`.
    EndsEarly,
    /// Answers every paid request at once with this HTTP status (a 4xx).
    Refuse { status: u16 },
}

/// What every choice repeats (one token per byte) up to the request's `max_tokens`.
pub const TEXT: &str = "hi";
/// The prompt tokens it reports.
pub const PROMPT_TOKENS: u64 = 7;

#[derive(Clone)]
struct Hostile {
    key: Arc<ProviderKey>,
    payer: PublicKey,
    lie: Lie,
    calls: Arc<AtomicUsize>,
    unsigned: Arc<AtomicUsize>,
    /// Bytes of the endless event produced before the gateway stopped reading.
    produced: Arc<AtomicUsize>,
}

pub struct HostileProvider {
    pub url: String,
    pub key: Arc<ProviderKey>,
    pub calls: Arc<AtomicUsize>,
    /// Requests without a valid payer signature (refused with 402).
    pub unsigned: Arc<AtomicUsize>,
    pub produced: Arc<AtomicUsize>,
}

/// Each item as u64 big-endian length then bytes, hashed: the receipt's
/// `response_sha256` (written out here, not taken from the gateway).
fn texts_digest(texts: &[String]) -> [u8; 32] {
    let mut bytes = Vec::new();
    for t in texts {
        bytes.extend_from_slice(&(t.len() as u64).to_be_bytes());
        bytes.extend_from_slice(t.as_bytes());
    }
    tenzro_attest::sha256(&bytes)
}

fn receipt(h: &Hostile, model: &str, body: &[u8], texts: &[String], completion: u64) -> Value {
    let mut response = texts_digest(texts);
    if h.lie == Lie::WrongResponseDigest {
        response[0] ^= 1;
    }
    let r = ReceiptBody {
        model: model.to_owned(),
        weight_sha256: [7; 32],
        request_sha256: tenzro_attest::sha256(body),
        response_sha256: response,
        prompt_tokens: PROMPT_TOKENS,
        completion_tokens: completion,
        issued_at: tenzro_attest::evidence::unix_now(),
    }
    .sign(&h.key);
    serde_json::to_value(r).unwrap_or_default()
}

fn ext(h: &Hostile, receipt: Value) -> Value {
    if h.lie == Lie::NoReceipt {
        json!({})
    } else {
        json!({ "receipt": receipt })
    }
}

async fn chat(State(h): State<Hostile>, headers: HeaderMap, body: Bytes) -> Response {
    h.calls.fetch_add(1, Ordering::SeqCst);
    let header = headers.get(PAYER_AUTH_HEADER).and_then(|v| v.to_str().ok());
    let channel = headers
        .get("x-tenzro-channel")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let paid = PaidRequest {
        method: "POST",
        path_and_query: "/v1/chat/completions",
        channel_id: channel,
        body: &body,
    };
    if let Err(e) = paid.verify(header, &h.payer, tenzro_attest::evidence::unix_now()) {
        h.unsigned.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::PAYMENT_REQUIRED, e.to_string()).into_response();
    }
    if let Lie::Refuse { status } = h.lie {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = json!({"error": {"message": "refused by the hostile provider",
            "type": "invalid_request_error", "param": null, "code": "hostile"}});
        return (status, axum::Json(body)).into_response();
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = req["model"].as_str().unwrap_or("").to_owned();
    let n = req["n"].as_u64().unwrap_or(1).clamp(1, 64) as usize;
    // Each choice says TEXT over and over, one token per byte, up to max_tokens.
    let max_tokens = req["max_tokens"].as_u64().unwrap_or(2).clamp(2, 4096) as usize;
    let text = TEXT.repeat(max_tokens / TEXT.len());
    let texts: Vec<String> = vec![text.clone(); n];
    // One token per byte of text: what an honest byte-level provider could say.
    let honest = (text.len() * n) as u64;
    let completion = match h.lie {
        Lie::Usage { completion_tokens } => completion_tokens,
        Lie::InflatedChunks => honest / 4,
        _ => honest,
    };
    let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
        "total_tokens": PROMPT_TOKENS + completion});
    let tenzro = ext(&h, receipt(&h, &model, &body, &texts, completion));
    if !req["stream"].as_bool().unwrap_or(false) {
        let choices: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}))
            .collect();
        return axum::Json(json!({
            "id": "chatcmpl-hostile", "object": "chat.completion", "created": 1, "model": model,
            "choices": choices, "usage": usage, "tenzro": tenzro,
        }))
        .into_response();
    }
    let chunk = |i: usize, t: &str, tokens: u64| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": i, "delta": {"content": t}, "finish_reason": null}],
                "tenzro": {"tokens": tokens}})
        )
    };
    let mut head: Vec<String> = Vec::new();
    for i in 0..n {
        head.push(chunk(i, &text, text.len() as u64));
    }
    if let Lie::EndlessEvent { bytes } = h.lie {
        let produced = h.produced.clone();
        let first = futures::stream::iter(head.into_iter().map(Bytes::from));
        let endless = futures::stream::unfold(0usize, move |sent| {
            let produced = produced.clone();
            async move {
                if sent >= bytes {
                    return None;
                }
                let piece = if sent == 0 {
                    let mut p = b"data: {\"x\":\"".to_vec();
                    p.resize(16 * 1024, b'x');
                    p
                } else {
                    vec![b'x'; 16 * 1024]
                };
                produced.fetch_add(piece.len(), Ordering::SeqCst);
                tokio::task::yield_now().await;
                Some((Bytes::from(piece), sent + 16 * 1024))
            }
        });
        let all = futures::StreamExt::map(
            futures::StreamExt::chain(first, endless),
            Ok::<Bytes, std::io::Error>,
        );
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(all))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let usage_chunk = format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [], "usage": usage, "tenzro": tenzro})
    );
    if h.lie != Lie::EndsEarly {
        head.push(usage_chunk);
        head.push("data: [DONE]\n\n".to_owned());
    }
    let all = futures::stream::iter(
        head.into_iter()
            .map(|s| Ok::<Bytes, std::io::Error>(Bytes::from(s))),
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(all))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Starts a hostile provider signing with `key`, trusting `payer` as the gateway.
pub async fn hostile_provider(key: ProviderKey, payer: PublicKey, lie: Lie) -> HostileProvider {
    let h = Hostile {
        key: Arc::new(key),
        payer,
        lie,
        calls: Arc::new(AtomicUsize::new(0)),
        unsigned: Arc::new(AtomicUsize::new(0)),
        produced: Arc::new(AtomicUsize::new(0)),
    };
    let out = HostileProvider {
        url: String::new(),
        key: h.key.clone(),
        calls: h.calls.clone(),
        unsigned: h.unsigned.clone(),
        produced: h.produced.clone(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(h);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    HostileProvider {
        url: format!("http://{addr}"),
        ..out
    }
}
