//! The admin API's accounts and keys: create, list, credit, revoke.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::accounts::KeyScope;
use crate::http::error::ApiError;
use crate::http::extract::{Admin, ApiJson};
use crate::pricing::{self, Asset};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    #[serde(default)]
    name: String,
    #[serde(default = "tnzo")]
    asset: Asset,
    /// Whole tokens of `asset`, decimal string.
    #[serde(default)]
    balance: Option<String>,
    #[serde(default)]
    scope: KeyScope,
    /// The identity (DID) the account belongs to.
    #[serde(default)]
    identity: Option<String>,
}

fn tnzo() -> Asset {
    Asset::Tnzo
}

fn tokens(s: Option<&str>) -> Result<u128, ApiError> {
    s.map(pricing::parse_tokens)
        .transpose()
        .map(|v| v.unwrap_or(0))
        .map_err(|e| ApiError::BadRequest {
            message: e.to_string(),
            param: Some("balance".into()),
        })
}

pub async fn admin_create_account(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(n): ApiJson<NewAccount>,
) -> Result<Response, ApiError> {
    let balance = tokens(n.balance.as_deref())?;
    let (key, account, record) = state
        .accounts
        .create_account(&n.name, n.asset, balance, n.scope, n.identity)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "account": account, "key": key, "key_id": record.id })),
    )
        .into_response())
}

pub async fn admin_list_accounts(
    State(state): State<AppState>,
    _: Admin,
) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "object": "list", "data": state.accounts.list() }))
}

pub async fn admin_get_account(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let account = state
        .accounts
        .account(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no account {id}")))?;
    Ok(Json(
        serde_json::json!({ "account": account, "keys": state.accounts.keys_of(&id) }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[serde(default)]
    name: String,
    #[serde(default)]
    scope: KeyScope,
}

pub async fn admin_create_key(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(n): ApiJson<NewKey>,
) -> Result<Response, ApiError> {
    let (key, record) = state
        .accounts
        .create_key(&id, &n.name, n.scope, None)
        .await
        .map_err(|e| match e {
            crate::accounts::AccountsError::UnknownAccount(a) => {
                ApiError::NotFound(format!("no account {a}"))
            }
            e @ crate::accounts::AccountsError::DelegatorRevoked(_) => {
                ApiError::Conflict(e.to_string())
            }
            other => ApiError::internal(other),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "key": key, "record": record })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credit {
    asset: Asset,
    /// Whole tokens, decimal string.
    amount: String,
}

pub async fn admin_credit(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(c): ApiJson<Credit>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let amount = tokens(Some(&c.amount))?;
    if state.accounts.account(&id).is_some() {
        state.lease(&id).await?;
    }
    let balance = state
        .accounts
        .credit(&id, c.asset, amount)
        .map_err(|e| match e {
            crate::accounts::AccountsError::UnknownAccount(a) => {
                ApiError::NotFound(format!("no account {a}"))
            }
            other => ApiError::internal(other),
        })?;
    Ok(Json(
        serde_json::json!({ "account": id, "asset": c.asset, "balance": balance.to_string() }),
    ))
}

pub async fn admin_revoke_key(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match state
        .accounts
        .revoke(&id)
        .await
        .map_err(ApiError::internal)?
    {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::NotFound(format!("no key {id}"))),
    }
}
