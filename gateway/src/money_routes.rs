//! HTTP handlers of the money API: the caller's account, its channels, vouchers,
//! closes and disputes, the development faucet, and the admin views of pools and
//! slashes. Each handler extracts, calls one book function, and maps its error.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tenzro_attest::voucher::Voucher;

use crate::clock::unix_now;
use crate::error::ApiError;
use crate::money::book::{ASSETS, BookError, ChannelView};
use crate::money::channel::{ChannelError, Party, State as ChannelState};
use crate::money::slashing::Reason;
use crate::pricing;
use crate::routes::{Admin, Auth, parse_json};
use crate::state::AppState;

fn book_error(e: BookError) -> ApiError {
    match e {
        BookError::UnknownChannel(id) => ApiError::NotFound(format!("no channel {id}")),
        BookError::UnknownAccount(a) => ApiError::NotFound(format!("no account {a}")),
        BookError::Channel(
            c @ (ChannelError::Busy(..)
            | ChannelError::NotOpen(..)
            | ChannelError::WindowClosed(..)),
        ) => ApiError::Conflict(c.to_string()),
        BookError::Channel(c) => ApiError::BadRequest {
            message: c.to_string(),
            param: Some("voucher".into()),
        },
        other => ApiError::Internal(other.to_string()),
    }
}

fn channel_json(v: &ChannelView) -> Value {
    let c = &v.channel;
    let mut out = json!({
        "id": c.id,
        "object": "channel",
        "provider": c.provider,
        "asset": c.asset,
        "deposit": c.deposit.to_string(),
        "spent": c.spent.to_string(),
        "nonce": c.nonce,
        "state": c.state.name(),
        "opened": c.opened,
        "expires": c.expires,
        "in_flight": v.in_flight,
    });
    match &c.state {
        ChannelState::Disputed {
            deadline,
            nonce,
            spent,
            by,
        } => {
            out["dispute"] = json!({ "deadline": deadline, "nonce": nonce, "spent": spent.to_string(), "by": by });
        }
        ChannelState::Closed { at, split } => {
            out["closed"] = json!({ "at": at, "settlement": split });
        }
        ChannelState::Open => {}
    }
    out
}

/// `GET /v1/account`: balances, what this key spent in the last 24 h, its scope and
/// the account's channels.
pub async fn account(State(state): State<AppState>, Auth(key): Auth) -> Result<Json<Value>, ApiError> {
    crate::accounts::require_operation(&key, crate::accounts::Operation::Account)?;
    let account = &key.record.account;
    state.lease(account).await?;
    let mut balances = BTreeMap::new();
    let mut held = BTreeMap::new();
    for asset in ASSETS {
        if let Some(f) = state.book.funds(account, asset)
            && (f.funded > 0 || asset == key.asset)
        {
            balances.insert(asset.as_str(), f.available().to_string());
            held.insert(asset.as_str(), f.held.to_string());
        }
    }
    let spent_today = BTreeMap::from([(
        key.asset.as_str(),
        state
            .book
            .spent_today(&key.record.id, unix_now())
            .to_string(),
    )]);
    let channels: Vec<Value> = state
        .book
        .channels_of(account)
        .iter()
        .map(channel_json)
        .collect();
    let (bonds, earnings) = crate::bond_routes::account_view(&state, account);
    Ok(Json(json!({
        "object": "account",
        "id": account,
        "key_id": key.record.id,
        "identity": key.identity,
        "asset": key.asset,
        "balances": balances,
        "held": held,
        "spent_today": spent_today,
        "scope": key.record.scope,
        "channels": channels,
        "bonds": bonds,
        "earnings": earnings,
    })))
}

/// The caller's channel, or 404 (another account's channel is not disclosed).
fn own_channel(state: &AppState, account: &str, id: &str) -> Result<ChannelView, ApiError> {
    state
        .book
        .channel(id)
        .filter(|c| c.channel.payer == account)
        .ok_or_else(|| ApiError::NotFound(format!("no channel {id}")))
}

pub async fn channels(State(state): State<AppState>, Auth(key): Auth) -> Result<Json<Value>, ApiError> {
    state.lease(&key.record.account).await?;
    let data: Vec<Value> = state
        .book
        .channels_of(&key.record.account)
        .iter()
        .map(channel_json)
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

pub async fn channel(
    State(state): State<AppState>,
    Auth(key): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.lease(&key.record.account).await?;
    own_channel(&state, &key.record.account, &id).map(|c| Json(channel_json(&c)))
}

/// `GET /v1/channels/{id}/voucher`: the latest voucher the provider countersigned.
pub async fn voucher(
    State(state): State<AppState>,
    Auth(key): Auth,
    Path(id): Path<String>,
) -> Result<Json<Voucher>, ApiError> {
    state.lease(&key.record.account).await?;
    let c = own_channel(&state, &key.record.account, &id)?;
    c.latest_voucher
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("channel {id} has no countersigned voucher yet")))
}

/// `POST /v1/channels/{id}/close`: cooperative when the provider has countersigned
/// the channel's current state (settles now); otherwise the payer's state goes to
/// a dispute that settles when the challenge window passes.
pub async fn close(
    State(state): State<AppState>,
    Auth(key): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.lease(&key.record.account).await?;
    let c = own_channel(&state, &key.record.account, &id)?;
    let now = unix_now();
    let agreed = c.latest_voucher.as_ref().is_some_and(|v| {
        v.nonce == c.channel.nonce
            && v.cumulative_spent == c.channel.spent
            && v.provider_signature.is_some()
    });
    if agreed || c.channel.spent == 0 {
        let split = state.book.close(&id, now).map_err(book_error)?;
        let view = own_channel(&state, &key.record.account, &id)?;
        return Ok(Json(
            json!({ "channel": channel_json(&view), "settlement": split, "cooperative": true }),
        )
        .into_response());
    }
    let ch = state
        .book
        .dispute(&id, Party::Payer, c.channel.nonce, c.channel.spent, now)
        .map_err(book_error)?;
    let view = ChannelView {
        channel: ch,
        in_flight: 0,
        latest_voucher: c.latest_voucher,
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "channel": channel_json(&view),
            "cooperative": false,
            "message": "the provider has not countersigned the latest state; it was submitted to a dispute that settles when the challenge window closes",
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisputeBody {
    voucher: Voucher,
}

/// `POST /v1/channels/{id}/dispute`. The payer (with its API key, no body) submits
/// the channel's current state; a provider (no API key) submits its latest
/// countersigned voucher, which must carry the gateway's payer signature and the
/// channel provider's registered key. The highest nonce wins when the window closes.
pub async fn dispute(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
    body: Bytes,
) -> Result<Response, ApiError> {
    let now = unix_now();
    let (ch, latest) = if body.is_empty() {
        let mut parts = parts;
        let Auth(key) = <Auth as axum::extract::FromRequestParts<AppState>>::from_request_parts(
            &mut parts, &state,
        )
        .await?;
        state.lease(&key.record.account).await?;
        let c = own_channel(&state, &key.record.account, &id)?;
        (
            state
                .book
                .dispute(&id, Party::Payer, c.channel.nonce, c.channel.spent, now)
                .map_err(book_error)?,
            c.latest_voucher,
        )
    } else {
        let DisputeBody { voucher } = parse_json(&body)?;
        let payer = state.store.channel_payer(&id).await.map_err(|e| ApiError::Internal(e.to_string()))?;
        let payer = payer.ok_or_else(|| ApiError::NotFound(format!("no channel {id}")))?;
        state.lease(&payer).await?;
        let c = state
            .book
            .channel(&id)
            .ok_or_else(|| ApiError::NotFound(format!("no channel {id}")))?;
        if voucher.channel_id != id || voucher.asset != c.channel.asset.as_str() {
            return Err(ApiError::BadRequest {
                message: "the voucher is for another channel or asset".into(),
                param: Some("voucher".into()),
            });
        }
        let provider_key = state
            .registry
            .get(&c.channel.provider)
            .and_then(|e| e.info.public_key);
        let Some(provider_key) = provider_key else {
            return Err(ApiError::Conflict(format!(
                "provider {} has no registered key to check the voucher against",
                c.channel.provider
            )));
        };
        voucher
            .verify(Some(&state.payer_key.public_key()), Some(&provider_key))
            .map_err(|e| ApiError::BadRequest {
                message: format!("voucher refused: {e}"),
                param: Some("voucher".into()),
            })?;
        (
            state
                .book
                .dispute(
                    &id,
                    Party::Provider,
                    voucher.nonce,
                    voucher.cumulative_spent,
                    now,
                )
                .map_err(book_error)?,
            c.latest_voucher,
        )
    };
    let view = ChannelView {
        channel: ch,
        in_flight: 0,
        latest_voucher: latest,
    };
    Ok((StatusCode::ACCEPTED, Json(channel_json(&view))).into_response())
}

/// `POST /v1/faucet` (development, off by default): funds the caller's account,
/// a few times per hour.
pub async fn faucet(
    State(state): State<AppState>,
    Auth(key): Auth,
) -> Result<Json<Value>, ApiError> {
    let cfg = &state.config.faucet;
    if !cfg.enabled {
        return Err(ApiError::Forbidden(
            "the faucet is disabled on this gateway (faucet.enabled = false)".into(),
        ));
    }
    let amount = pricing::parse_tokens(&cfg.amount)
        .map_err(|e| ApiError::Internal(format!("faucet.amount: {e}")))?;
    let now = unix_now();
    state.lease(&key.record.account).await?;
    {
        let mut grants = state
            .faucet
            .lock()
            .map_err(|_| ApiError::Internal("faucet lock".into()))?;
        let g = grants.entry(key.record.account.clone()).or_default();
        g.retain(|t| t + 3600 > now);
        if g.len() >= cfg.per_hour as usize {
            let retry = g.first().map(|t| t + 3600 - now).unwrap_or(3600);
            return Err(ApiError::RateLimited {
                message: format!(
                    "the faucet grants {} times per hour per account; try again in {retry} s",
                    cfg.per_hour
                ),
                retry_after: std::time::Duration::from_secs(retry),
            });
        }
        g.push(now);
    }
    let balance = state
        .book
        .credit(&key.record.account, key.asset, amount)
        .map_err(book_error)?;
    Ok(Json(
        json!({ "granted": amount.to_string(), "asset": key.asset, "balance": balance.to_string() }),
    ))
}

pub async fn pools(State(state): State<AppState>, _: Admin) -> Json<Value> {
    let mut earnings: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for e in state.registry.all() {
        let mine = state.book.earnings(&e.info.id);
        if !mine.is_empty() {
            earnings.insert(
                e.info.id.clone(),
                mine.into_iter()
                    .map(|(a, v)| (a.as_str().to_owned(), v.to_string()))
                    .collect(),
            );
        }
    }
    Json(json!({ "pools": state.book.pools(), "earnings": earnings }))
}

pub async fn slashes(State(state): State<AppState>, _: Admin) -> Json<Value> {
    Json(json!({ "object": "list", "data": state.registry.slashes() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlashRequest {
    reason: Reason,
    #[serde(default)]
    detail: String,
}

/// `POST /admin/providers/{id}/slash`: records a slash the gateway cannot detect
/// by itself (fraudulent results, downtime, rate-limit abuse...).
pub async fn slash(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    crate::routes::ApiJson(r): crate::routes::ApiJson<SlashRequest>,
) -> Result<Json<Value>, ApiError> {
    let s = state
        .registry
        .slash(&id, r.reason, &r.detail)
        .ok_or_else(|| ApiError::NotFound(format!("no provider {id}")))?;
    Ok(Json(
        serde_json::to_value(s).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}
