//! `GET /v1/providers/status[?id=ID]`: the providers' public status, what an
//! agent needs to pick one (the admin view without endpoints and load).

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::accounts::{Operation, require_operation};
use crate::http::error::ApiError;
use crate::http::extract::Auth;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    id: Option<String>,
}

pub async fn status(
    State(state): State<AppState>,
    Auth(key): Auth,
    Query(f): Query<Filter>,
) -> Result<Json<Value>, ApiError> {
    require_operation(&key, Operation::Models)?;
    let data: Vec<Value> = state
        .registry
        .views()
        .into_iter()
        .filter(|v| v.reached || v.from_config)
        .filter(|v| f.id.as_ref().is_none_or(|id| *id == v.id))
        .map(|v| {
            let failure_rate = if v.total == 0 {
                0.0
            } else {
                v.failed as f64 / v.total as f64
            };
            let expires = v
                .attestation
                .as_ref()
                .and_then(|a| serde_json::to_value(a).ok()?.get("expires_at").cloned());
            json!({
                "id": v.id,
                "status": v.status,
                "breaker": v.breaker,
                "ema_latency_ms": v.ema_latency_ms,
                "requests": v.total,
                "failure_rate": failure_rate,
                "stake": v.stake,
                "tee": v.tee,
                "tee_verified": v.tee_verified,
                "tee_expires_at": expires,
                "models": v.models,
                "unbonding": v.unbonding,
            })
        })
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}
