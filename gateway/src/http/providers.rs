//! Providers' own routes (signed registration and heartbeats) and the admin's view,
//! bans and un-bans.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tenzro_models::api::Signed;

use crate::http::error::ApiError;
use crate::http::extract::{Admin, ApiJson, SourceAddr};
use crate::providers::registry::RegistryError;
use crate::state::AppState;

/// A signed registration: verified (signature, id = DID of the key, bounds), then
/// limited per source address, the endpoint's addresses checked, stored before the
/// answer, then probed off the request path; it enters routing once the endpoint answered.
pub async fn register(
    State(state): State<AppState>,
    SourceAddr(source): SourceAddr,
    ApiJson(signed): ApiJson<Signed>,
) -> Result<Response, ApiError> {
    // Verified before the source's limit is charged (see `Registry::prepare_from`).
    let info = state
        .registry
        .prepare_from(&signed, state.registry.unix_now(), source)
        .map_err(ApiError::from)?;
    crate::providers::bounds::check_endpoint(
        &info.endpoint,
        state.config.registration.allow_private_endpoints,
    )
    .await
    .map_err(|m| ApiError::from(RegistryError::OutOfBounds(m)))?;
    let r = state.registry.admit(info).map_err(ApiError::from)?;
    crate::store::registry::save(&state.registry, &state.store)
        .await
        .map_err(ApiError::internal)?;
    // Verify the provider's evidence with a fresh nonce, off the request path; the
    // provider may register just before it serves, so try a few times.
    let (registry, verifier, id) = (
        state.registry.clone(),
        state.verifier.clone(),
        r.provider_id.clone(),
    );
    state.tasks.spawn(async move {
        for wait_ms in [0u64, 250, 500, 1000, 2000, 4000] {
            tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
            crate::providers::attestation::verify_provider(&registry, &verifier, &id).await;
            if registry.is_reached(&id) || registry.get(&id).is_none() {
                break;
            }
        }
    });
    let mut body = serde_json::to_value(&r).map_err(ApiError::internal)?;
    body["payer_key"] = state.payer_key.public_key().to_hex().into();
    Ok(Json(body).into_response())
}

pub async fn heartbeat(
    State(state): State<AppState>,
    ApiJson(signed): ApiJson<Signed>,
) -> Result<Response, ApiError> {
    let now = state.registry.unix_now();
    let r = match state.registry.heartbeat(&signed, now) {
        // Registered with another replica and not applied here yet: read its row
        // (bounded: `cluster::misses`).
        Err(RegistryError::UnknownProvider(id)) => {
            let known = state
                .shared
                .look_up_unknown(&id)
                .await
                .map_err(ApiError::internal)?;
            if known {
                state.registry.heartbeat(&signed, now)
            } else {
                Err(RegistryError::UnknownProvider(id))
            }
        }
        other => other,
    }
    .map_err(ApiError::from)?;
    // Liveness reaches the other replicas in one batched write (`crate::cluster`).
    if let Some(id) = serde_json::from_str::<serde_json::Value>(&signed.payload)
        .ok()
        .as_ref()
        .and_then(|v| v["provider_id"].as_str())
    {
        state.shared.heard(id, now);
    }
    Ok(Json(r).into_response())
}

pub async fn admin_providers(State(state): State<AppState>, _: Admin) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "object": "list",
        "data": state.registry.views(),
        "slashes": state.registry.slashes(),
        // Model audits: counters and the providers flagged (`crate::audit`).
        "audits": state.audits.view(),
    }))
}

/// Bans a provider for good (its key's DID can never register again) and slashes
/// its whole stake once; stored before the answer.
pub async fn admin_ban(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .registry
        .ban(&id, "banned by an admin")
        .map_err(ApiError::from)?;
    crate::store::registry::save(&state.registry, &state.store)
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lifts a ban; what was slashed stays slashed.
pub async fn admin_unban(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.unban(&id).map_err(ApiError::from)?;
    crate::store::registry::save(&state.registry, &state.store)
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}
