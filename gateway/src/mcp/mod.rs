//! The MCP server (issue 15, whitepaper §11.2): the gateway's HTTP API as MCP
//! tools, over Streamable HTTP at `/mcp` (bearer key required, 401 before any MCP
//! handling) and over stdio (`tenzro-gateway mcp --url URL --key KEY`).
//!
//! Tools are adapters over the HTTP API ([`api::Api`]): an agent gets exactly its
//! key's auth, scope, rate limits, money and error messages. Nothing here touches
//! money directly.
//!
//! - [`api`]: the HTTP API in process (the gateway's own router) or remote (reqwest);
//! - [`args`]: the tools' inputs (their JSON Schemas);
//! - [`tools`]: the tool list and one adapter per tool;
//! - [`estimate`]: `estimate_cost`, computed from `/v1/models`' prices;
//! - [`receipt`]: `verify_receipt`, over `POST /v1/receipts/verify`;
//! - [`server`]: the rmcp `ServerHandler`;
//! - [`public`]: `GET /v1/providers/status`, the providers' public status.

pub mod api;
pub mod args;
pub mod estimate;
pub mod public;
pub mod receipt;
pub mod server;
pub mod tools;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpServerConfig;
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;

use crate::http::extract::Auth;
use crate::state::AppState;
use api::{Api, InProcess, Remote};
use server::{KeySource, McpServer};

/// `/mcp` and `/v1/providers/status`, for the route table.
pub fn routes(state: &AppState) -> Router<AppState> {
    let api = InProcess::new(state.clone());
    let faucet = state.config.faucet.enabled;
    // Stateless: each POST is served on its own, so no session state piles up per
    // client; the key of each request is the caller. Hosts are not restricted
    // (the gateway is public and every request carries a key).
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .disable_allowed_hosts()
        .with_max_request_body_bytes(state.config.server.max_body_bytes)
        .with_cancellation_token(state.cancel.child_token());
    let service = StreamableHttpService::new(
        move || Ok(McpServer::new(api.clone(), KeySource::Bearer, faucet)),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new()
        .route_service("/mcp", service)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .route("/v1/providers/status", get(public::status))
}

/// A known, active key or 401/403 in OpenAI's shape, before any MCP handling.
async fn require_key(_: Auth, req: Request, next: Next) -> Response {
    next.run(req).await
}

/// The bearer token of `Authorization: Bearer KEY`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// `tenzro-gateway mcp --url URL --key KEY`: the tools over stdio, calling the
/// gateway at `url` with `key`. Logs go to stderr (stdout is the protocol).
pub async fn serve_stdio(url: &str, key: &str) -> anyhow::Result<()> {
    let api = Remote::new(url).map_err(anyhow::Error::msg)?;
    // The agent card lists the faucet skill only when the faucet is on.
    let faucet = match api
        .call(
            axum::http::Method::GET,
            "/.well-known/agent-card.json",
            key,
            None,
        )
        .await
    {
        Ok(r) => r
            .body
            .get("skills")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|s| {
                s.iter()
                    .any(|k| k.get("id").and_then(serde_json::Value::as_str) == Some("faucet"))
            }),
        Err(e) => {
            tracing::warn!(error = %e, "the gateway's agent card did not load; request_faucet is not listed");
            false
        }
    };
    let server = McpServer::new(api, KeySource::Fixed(Arc::from(key)), faucet);
    let running = server.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}
