//! The gateway's own HTTP API as the agent surfaces see it: one call is a method,
//! a path, the caller's key and a JSON body, answered with a status, the
//! `x-tenzro-*` headers and a JSON body. The MCP tools and A2A tasks are adapters
//! over it, so agents get exactly the HTTP API's auth, scopes, money and errors.
//!
//! Two ways in: [`InProcess`] sends the request through the gateway's own router
//! (`/mcp`, `/a2a`), [`Remote`] over HTTP (`tenzro-gateway mcp --url URL --key KEY`).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, header};
use serde_json::Value;
use tower::ServiceExt;

use crate::state::AppState;

/// Most bytes of one answer the adapters read (an embeddings answer of many
/// inputs is the largest the API gives).
pub const MAX_REPLY_BYTES: usize = 32 * 1024 * 1024;

/// One answer of the HTTP API.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The `x-tenzro-*` headers (cost, asset, provider, channel).
    pub tenzro: Vec<(String, String)>,
    /// The JSON body (`null` when there was none; a non-JSON body as a string).
    pub body: Value,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A `x-tenzro-NAME` header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.tenzro
            .iter()
            .find(|(k, _)| k.strip_prefix("x-tenzro-") == Some(name))
            .map(|(_, v)| v.as_str())
    }

    /// The message of an OpenAI-shaped error body, else a description of the status.
    pub fn error_message(&self) -> String {
        self.body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the gateway answered HTTP {}", self.status))
    }

    fn from_parts(status: u16, headers: &HeaderMap, bytes: &[u8]) -> Reply {
        let tenzro = headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-tenzro-"))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
        };
        Reply {
            status,
            tenzro,
            body,
        }
    }
}

/// The HTTP API, called with a caller's key. `Err` is a transport failure (the
/// gateway could not be reached or answered unreadably), never an API error: those
/// are replies with their status.
pub trait Api: Send + Sync + 'static {
    fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> impl Future<Output = Result<Reply, String>> + Send;
}

/// The gateway's own router, called in process (no socket, the same handlers,
/// middleware, limits and metrics as a client over HTTP).
#[derive(Clone)]
pub struct InProcess {
    state: AppState,
    router: Arc<OnceLock<Router>>,
}

impl InProcess {
    pub fn new(state: AppState) -> Self {
        InProcess {
            state,
            router: Arc::default(),
        }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The router, built on first use (it contains the routes that hold this
    /// adapter, so it cannot be built with them).
    fn router(&self) -> Router {
        self.router
            .get_or_init(|| crate::http::router(self.state.clone()))
            .clone()
    }
}

impl Api for InProcess {
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> Result<Reply, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {key}"));
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&v).map_err(|e| e.to_string())?)
            }
            None => Body::empty(),
        };
        let req = req.body(body).map_err(|e| e.to_string())?;
        let resp = self
            .router()
            .oneshot(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_REPLY_BYTES)
            .await
            .map_err(|e| format!("reading the gateway's answer: {e}"))?;
        Ok(Reply::from_parts(status, &headers, &bytes))
    }
}

/// An answer whose body is still coming: a 2xx's body to read as it streams, or
/// the whole answer of an error.
pub enum Streamed {
    Body {
        /// The `x-tenzro-*` headers.
        tenzro: Vec<(String, String)>,
        body: Body,
    },
    Done(Reply),
}

impl Streamed {
    /// A `x-tenzro-NAME` header of a streaming answer.
    pub fn header<'a>(tenzro: &'a [(String, String)], name: &str) -> Option<&'a str> {
        tenzro
            .iter()
            .find(|(k, _)| k.strip_prefix("x-tenzro-") == Some(name))
            .map(|(_, v)| v.as_str())
    }
}

impl InProcess {
    /// Like [`Api::call`], but a successful answer's body is handed over as it
    /// comes (a streamed chat completion's SSE); dropping it cancels the request.
    pub async fn call_streamed(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Value,
    ) -> Result<Streamed, String> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::to_vec(&body).map_err(|e| e.to_string())?,
            ))
            .map_err(|e| e.to_string())?;
        let resp = self
            .router()
            .oneshot(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if (200..300).contains(&status) {
            let tenzro = Reply::from_parts(status, &headers, &[]).tenzro;
            return Ok(Streamed::Body {
                tenzro,
                body: resp.into_body(),
            });
        }
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_REPLY_BYTES)
            .await
            .map_err(|e| format!("reading the gateway's answer: {e}"))?;
        Ok(Streamed::Done(Reply::from_parts(status, &headers, &bytes)))
    }
}

/// A gateway over HTTP(S).
#[derive(Clone)]
pub struct Remote {
    base: String,
    client: reqwest::Client,
}

impl Remote {
    /// `base` is the gateway's root URL (`http://host:port`, without `/v1`).
    pub fn new(base: &str) -> Result<Self, String> {
        let base = base.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base).to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("--url must be an http(s) URL, got `{base}`"));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Remote { base, client })
    }
}

impl Api for Remote {
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> Result<Reply, String> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(v) = body {
            req = req.json(&v);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| format!("calling the gateway at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if bytes.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(format!(
                    "the gateway's answer is over {MAX_REPLY_BYTES} bytes"
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Reply::from_parts(status, &headers, &bytes))
    }
}
