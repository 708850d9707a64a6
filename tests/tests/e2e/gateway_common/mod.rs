//! Mock providers and an in-process gateway for the gateway's integration tests.
//! Everything binds 127.0.0.1:0.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test scaffolding: each test file uses a different part of this module, and a broken fixture should fail the test loudly"
)]

pub mod hostile;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tenzro_attest::keys::ProviderKey;
use tenzro_gateway::AppState;
use tenzro_gateway::accounts::KeyScope;
use tenzro_gateway::clock::SharedClock;
use tenzro_gateway::config::{Config, StaticProvider};
use tenzro_gateway::pricing::Asset;
use tenzro_models::api::{ModelCategory, ModelInfo, RegisterRequest};

pub const MODEL: &str = "mock-llm";
pub const EMBED_MODEL: &str = "mock-embed";
/// Price per token in the mock registrations; with complexity 1.0, an idle provider
/// (congestion 0.5) and no TEE, a token costs half of it.
pub const PRICE: u128 = 1000;
pub const TOKEN_COST: u128 = 500;

/// How a mock provider behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers normally; streams `chunks` chunks of one token each.
    Ok { chunks: usize },
    /// HTTP 500 to everything.
    Fail500,
    /// Accepts the connection and never answers.
    Hang,
    /// Streams `after` chunks, then drops the connection.
    DieMidStream { after: usize },
    /// Like `Ok`, with a pause before every chunk.
    Slow { chunks: usize, delay_ms: u64 },
}

pub struct MockProvider {
    pub url: String,
    pub calls: Arc<AtomicUsize>,
}

impl MockProvider {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Mock {
    behaviour: Behaviour,
    name: &'static str,
    calls: Arc<AtomicUsize>,
}

fn chunk(name: &str, content: &str, tokens: u64) -> String {
    serde_json::json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
        "tenzro": {"tokens": tokens}, "system_fingerprint": name,
    })
    .to_string()
}

fn usage_chunk(completion: u64) -> String {
    serde_json::json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
        "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": completion, "total_tokens": 7 + completion},
    })
    .to_string()
}

async fn chat(axum::extract::State(m): axum::extract::State<Mock>, body: Bytes) -> Response {
    m.calls.fetch_add(1, Ordering::SeqCst);
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let stream = req["stream"].as_bool().unwrap_or(false);
    let (chunks, delay, die_after) = match m.behaviour {
        Behaviour::Fail500 => return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        Behaviour::Hang => {
            futures::future::pending::<()>().await;
            return StatusCode::OK.into_response();
        }
        Behaviour::Ok { chunks } => (chunks, 0, None),
        Behaviour::Slow { chunks, delay_ms } => (chunks, delay_ms, None),
        Behaviour::DieMidStream { after } => (after + 5, 0, Some(after)),
    };
    if !stream {
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let body = serde_json::json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            "system_fingerprint": m.name,
        });
        return axum::Json(body).into_response();
    }
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let name = m.name;
    let events = futures::stream::unfold(0usize, move |i| async move {
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if let Some(n) = die_after
            && i == n
        {
            // Let the chunks before reach the wire: hyper drops buffered bytes when
            // a body fails.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Some((Err(std::io::Error::other("provider died")), i + 1));
        }
        let ev = if i < chunks {
            format!("data: {}\n\n", chunk(name, &format!("t{i} "), 1))
        } else if i == chunks && include_usage {
            format!("data: {}\n\n", usage_chunk(chunks as u64))
        } else if i <= chunks + 1 {
            "data: [DONE]\n\n".to_owned()
        } else {
            return None;
        };
        let next = if ev.starts_with("data: [DONE]") {
            chunks + 2
        } else {
            i + 1
        };
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(ev)), next))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(events))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn embeddings(axum::extract::State(m): axum::extract::State<Mock>) -> Response {
    m.calls.fetch_add(1, Ordering::SeqCst);
    if m.behaviour == Behaviour::Fail500 {
        return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    }
    axum::Json(serde_json::json!({
        "object": "list", "model": EMBED_MODEL,
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }))
    .into_response()
}

/// Starts a mock provider; `name` shows up as the answers' `system_fingerprint`.
pub async fn mock_provider(name: &'static str, behaviour: Behaviour) -> MockProvider {
    let calls = Arc::new(AtomicUsize::new(0));
    let state = Mock {
        behaviour,
        name,
        calls: calls.clone(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/health", axum::routing::get(|| async { "ok" }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    MockProvider {
        url: format!("http://{addr}"),
        calls,
    }
}

/// The registration a test provider signs: `MODEL`, no stake, no TEE, at most 4
/// requests at once, made at `timestamp` (0: the provider's loop stamps it).
pub fn registration(key: &ProviderKey, endpoint: &str, timestamp: u64) -> RegisterRequest {
    RegisterRequest {
        provider_id: key.did(),
        endpoint: endpoint.to_owned(),
        public_key: key.public_key_hex(),
        models: vec![model(MODEL, ModelCategory::Llm)],
        stake: "0".into(),
        tee: "none".into(),
        max_concurrency: Some(4),
        heartbeat_interval_s: None,
        timestamp,
    }
}

pub fn model(id: &str, category: ModelCategory) -> ModelInfo {
    ModelInfo {
        id: id.into(),
        name: None,
        version: None,
        category,
        modality: None,
        price_per_token: PRICE.to_string(),
        max_context: Some(1024),
        parameters: None,
        formats: vec![],
        tee_required: false,
        weight_sha256: None,
    }
}

pub fn static_provider(id: &str, url: &str) -> StaticProvider {
    StaticProvider {
        id: id.into(),
        endpoint: url.into(),
        stake: "100000".into(),
        tee: "none".into(),
        max_concurrency: Some(1),
        models: vec![
            model(MODEL, ModelCategory::Llm),
            model(EMBED_MODEL, ModelCategory::Embedding),
        ],
    }
}

/// A config for tests: fast timeouts, lowest-price routing (ties by id, so the
/// order of providers named `a`, `b`... is predictable), a fresh data dir.
pub fn test_config(providers: Vec<StaticProvider>, data_dir: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.server.data_dir = data_dir.to_owned();
    cfg.server.admin_token = tenzro_gateway::config::Secret::new("admin-secret");
    cfg.upstream.first_byte_timeout_ms = 400;
    cfg.upstream.idle_timeout_ms = 400;
    cfg.upstream.max_attempts = 3;
    cfg.routing.strategy = tenzro_gateway::providers::routing::Strategy::LowestPrice;
    cfg.providers = providers;
    // Development: mock providers listen on 127.0.0.1, registered ones route
    // without a bond (a registered provider's stake is its bond).
    cfg.registration.allow_private_endpoints = true;
    cfg.stake_minimums = tenzro_gateway::config::StakeSection {
        llm: "0".into(),
        image_gen: "0".into(),
        speech: "0".into(),
        embedding: "0".into(),
        custom: "0".into(),
    };
    cfg
}

pub struct Gateway {
    pub url: String,
    pub addr: SocketAddr,
    pub state: AppState,
    pub key: String,
    pub account: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn balance(&self) -> u128 {
        self.state
            .book
            .funds(&self.account, Asset::Tnzo)
            .map(|f| f.available())
            .unwrap_or(0)
    }

    /// Polls the balance until it equals `want` (a stream settles when its body is
    /// dropped, just after the client saw its end) or two seconds pass.
    pub async fn balance_eventually(&self, want: u128) -> u128 {
        for _ in 0..100 {
            if self.balance() == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.balance()
    }

    pub fn post(&self, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let rb = self.http.post(format!("{}{path}", self.url));
        match key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    pub fn chat(&self, body: serde_json::Value) -> reqwest::RequestBuilder {
        self.post("/v1/chat/completions", Some(&self.key))
            .json(&body)
    }
}

pub const FUNDS: u128 = 1_000_000_000;

/// Starts a gateway in-process on 127.0.0.1:0 with one funded account.
pub async fn start_gateway(
    cfg_for: impl FnOnce(&std::path::Path) -> Config,
    clock: Option<SharedClock>,
) -> Gateway {
    start_gateway_with_scope(cfg_for, clock, KeyScope::default()).await
}

pub async fn start_gateway_with_scope(
    cfg_for: impl FnOnce(&std::path::Path) -> Config,
    clock: Option<SharedClock>,
    scope: KeyScope,
) -> Gateway {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = cfg_for(dir.path());
    let state = match clock {
        Some(c) => tenzro_gateway::build_with_clock(cfg, c).await,
        None => tenzro_gateway::build(cfg).await,
    }
    .unwrap_or_else(|e| panic!("build: {e}"));
    let (key, account, _) = state
        .accounts
        .create_account("test", Asset::Tnzo, FUNDS, scope, None)
        .await
        .unwrap_or_else(|e| panic!("account: {e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    let s = state.clone();
    tokio::spawn(async move {
        let _ = tenzro_gateway::serve(listener, s).await;
    });
    Gateway {
        url: format!("http://{addr}"),
        addr,
        state,
        key,
        account: account.id,
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|e| panic!("client: {e}")),
        _dir: dir,
    }
}

/// The `data:` payloads of an SSE body, and its comment lines.
pub fn sse_parts(body: &str) -> (Vec<String>, Vec<String>) {
    let mut data = Vec::new();
    let mut comments = Vec::new();
    for line in body.lines() {
        if let Some(d) = line.strip_prefix("data: ") {
            data.push(d.to_owned());
        } else if let Some(c) = line.strip_prefix(':') {
            comments.push(c.trim().to_owned());
        }
    }
    (data, comments)
}
