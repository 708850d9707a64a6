//! The provider's HTTP surface, in one table.

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::BodyLimit;
use crate::state::AppState;
use crate::{channels, chat, embeddings, info};

pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(info::models))
        .route("/v1/channels", get(channels::list))
        .route("/v1/channels/vouchers", post(channels::submit))
        .route("/v1/channels/{channel_id}/voucher", get(channels::latest))
        .route("/v1/attestation", get(info::attestation))
        .route("/tokenize", post(info::tokenize))
        .route("/health", get(info::health))
        .route("/metrics", get(info::metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(BodyLimit(limit)))
        .with_state(state)
}

async fn not_found(req: Request) -> Response {
    let body = tenzro_models::api::ErrorBody::new(
        "invalid_request_error",
        format!("Unknown route {} {}", req.method(), req.uri().path()),
    )
    .with_code("unknown_url");
    (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// Count every request by route and status.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    state.metrics.request(&endpoint, response.status().as_u16());
    response
}

