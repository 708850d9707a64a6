//! The provider's HTTP surface, in one table.

use axum::Router;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::BodyLimit;
use crate::info::Peer;
use crate::state::AppState;
use crate::{channels, chat, embeddings, info, paid};

pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    // Attached to a gateway, inference is served only when its payer signed it.
    let paid = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            paid::require_payment,
        ));
    Router::new()
        .merge(paid)
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

/// Count every request by route and status; note the caller's address.
async fn track(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    req.extensions_mut().insert(Peer(peer));
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    state.metrics.request(&endpoint, response.status().as_u16());
    response
}
