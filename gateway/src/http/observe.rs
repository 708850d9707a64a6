//! The request id, request logging (once, with the internal cause of errors) and
//! per-endpoint metrics: the middleware around every route.

use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::http::error::{ErrorCause, ErrorKind};
use crate::state::AppState;

/// The request id: the caller's `x-request-id` when it is sane, else a new UUID.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Request id, logging (once, with the internal cause of errors) and metrics.
pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(new_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    // The route pattern (shared, not copied per request).
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let endpoint = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    let start = Instant::now();
    let span = tracing::info_span!("request", request_id = %id, %method, path = %endpoint);
    // Forwarding to the lease holder runs here rather than as a layer of its own.
    let mut resp = crate::proxy::forward::route(&state, req, next)
        .instrument(span.clone())
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    state.metrics.request(endpoint, status);
    let now = state.clock.unix();
    state.metrics.recent.request(now, endpoint, status);
    if let Some(kind) = resp.extensions().get::<ErrorKind>() {
        state.metrics.error(kind.0);
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let _g = span.enter();
    match resp.extensions().get::<ErrorCause>() {
        Some(ErrorCause(cause)) => tracing::warn!(status, ms, cause = %cause, "request failed"),
        None if status >= 400 => tracing::info!(status, ms, "request refused"),
        None => tracing::debug!(status, ms, "request served"),
    }
    resp
}

/// A new request id: a v4 UUID from rand's thread-local CSPRNG (uuid's own
/// `new_v4` makes a getrandom syscall per id).
fn new_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(new_id())))
    }
}
