//! The HTTP layer: the route table, nested per surface, over thin handlers that
//! extract ([`extract`]), call one domain function and map its error ([`error`],
//! the one place a domain error becomes a status). [`observe`] wraps every route.

pub mod admin;
pub mod bonds;
pub mod catalog;
pub mod error;
pub mod extract;
pub mod identity;
pub mod inference;
pub mod listen;
pub mod money;
pub mod observe;
pub mod providers;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tenzro_models::api::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest};

use crate::http::error::ApiError;
use crate::http::inference::forward;
use crate::state::AppState;

/// Every route, with the body limit and [`observe`] around them.
pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    Router::new()
        .merge(inference_routes())
        .merge(money_routes())
        .merge(identity_routes())
        .merge(provider_routes())
        .merge(admin_routes())
        .merge(crate::console::routes())
        .merge(crate::mcp::routes(&state))
        .merge(crate::a2a::routes(&state))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        // Also sends requests for an account another replica holds there
        // (`proxy::forward`).
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .with_state(state)
}

/// The OpenAI surface.
fn inference_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(forward::<ChatCompletionRequest>),
        )
        .route("/v1/completions", post(forward::<CompletionRequest>))
        .route("/v1/embeddings", post(forward::<EmbeddingRequest>))
        .route("/v1/models", get(catalog::models))
}

/// An account's money and channels.
fn money_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/account", get(money::account))
        .route("/v1/channels", get(money::channels))
        .route("/v1/channels/{id}", get(money::channel))
        .route("/v1/channels/{id}/voucher", get(money::voucher))
        .route("/v1/channels/{id}/close", post(money::close))
        .route("/v1/channels/{id}/dispute", post(money::dispute))
        .route("/v1/faucet", post(money::faucet))
}

/// Identities (TDIP): people, agents, credentials and their lifecycle.
fn identity_routes() -> Router<AppState> {
    Router::new()
        .route("/admin/identities", post(identity::register_human))
        .route("/admin/identities/issuers", post(identity::trust_issuer))
        .route("/v1/identities/agents", post(identity::create_agent))
        .route("/v1/identities/{did}", get(identity::resolve))
        .route("/v1/identities/{did}/document", get(identity::document))
        .route(
            "/v1/identities/{did}/credentials",
            post(identity::add_credential),
        )
        .route("/v1/identities/{did}/{action}", post(identity::lifecycle))
}

/// What providers call: registration, heartbeats, bonds.
fn provider_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/providers/register", post(providers::register))
        .route("/v1/providers/heartbeat", post(providers::heartbeat))
        .route("/v1/providers/bonds", post(bonds::bond).get(bonds::list))
        .route("/v1/providers/bonds/unbond", post(bonds::unbond))
}

/// The operator's API (the admin token).
fn admin_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/admin/accounts",
            post(admin::admin_create_account).get(admin::admin_list_accounts),
        )
        .route("/admin/accounts/{id}", get(admin::admin_get_account))
        .route("/admin/accounts/{id}/keys", post(admin::admin_create_key))
        .route("/admin/accounts/{id}/credit", post(admin::admin_credit))
        .route("/admin/keys/{id}", delete(admin::admin_revoke_key))
        .route("/admin/providers", get(providers::admin_providers))
        .route("/admin/providers/{id}/ban", post(providers::admin_ban))
        .route("/admin/providers/{id}/unban", post(providers::admin_unban))
        .route("/admin/pools", get(money::pools))
        .route("/admin/slashes", get(money::slashes))
        .route("/admin/providers/{id}/slash", post(money::slash))
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let routable = state
        .registry
        .all()
        .iter()
        .filter(|p| state.registry.routable(p))
        .count();
    Json(serde_json::json!({ "status": "ok", "providers": routable }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(&state.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}
