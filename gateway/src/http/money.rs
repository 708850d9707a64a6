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

use crate::accounts::{KeyEntry, Operation, require_operation};
use crate::http::error::ApiError;
use crate::money::book::{ASSETS, BookError, ChannelView};
use crate::money::channel::{Channel, ChannelError, Party, State as ChannelState};
use crate::money::dispute_auth;
use crate::money::slashing::Reason;

use crate::http::extract::{Admin, Auth, parse_json};
use crate::state::AppState;

fn book_error(e: BookError) -> ApiError {
    match e {
        BookError::UnknownChannel(id) => ApiError::NotFound(format!("no channel {id}")),
        BookError::UnknownAccount(a) => ApiError::NotFound(format!("no account {a}")),
        BookError::Channel(
            c @ (ChannelError::Busy(..)
            | ChannelError::NotOpen(..)
            | ChannelError::WindowClosed(..)
            | ChannelError::Stale { .. }
            | ChannelError::BehindChannel { .. }
            | ChannelError::Conflicting { .. }),
        ) => ApiError::Conflict(c.to_string()),
        e @ BookError::Insufficient { .. } => ApiError::PaymentRequired(e.to_string()),
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
pub async fn account(
    State(state): State<AppState>,
    Auth(key): Auth,
) -> Result<Json<Value>, ApiError> {
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
            .spent_today(&key.record.id, state.clock.unix())
            .to_string(),
    )]);
    let channels: Vec<Value> = state
        .book
        .channels_of(account)
        .iter()
        .map(channel_json)
        .collect();
    let (bonds, earnings) = crate::http::bonds::account_view(&state, account);
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

/// Reading, closing and disputing channels is the `channels` operation: a key whose
/// scope lists `allowed_operations` without it (an agent's, say) gets 403; the one
/// check is [`crate::accounts::require_operation`].
fn require_channels(key: &KeyEntry) -> Result<(), ApiError> {
    require_operation(key, Operation::Channels).map_err(ApiError::from)
}

/// The caller's channel, or 404 (another account's channel is not disclosed).
fn own_channel(state: &AppState, key: &KeyEntry, id: &str) -> Result<ChannelView, ApiError> {
    require_channels(key)?;
    state
        .book
        .channel(id)
        .filter(|c| c.channel.payer == key.record.account)
        .ok_or_else(|| ApiError::NotFound(format!("no channel {id}")))
}

pub async fn channels(
    State(state): State<AppState>,
    Auth(key): Auth,
) -> Result<Json<Value>, ApiError> {
    require_channels(&key)?;
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
    require_channels(&key)?;
    state.lease(&key.record.account).await?;
    own_channel(&state, &key, &id).map(|c| Json(channel_json(&c)))
}

/// `GET /v1/channels/{id}/voucher`: the latest voucher the provider countersigned.
pub async fn voucher(
    State(state): State<AppState>,
    Auth(key): Auth,
    Path(id): Path<String>,
) -> Result<Json<Voucher>, ApiError> {
    require_channels(&key)?;
    state.lease(&key.record.account).await?;
    let c = own_channel(&state, &key, &id)?;
    c.latest_voucher
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("channel {id} has no countersigned voucher yet")))
}

/// `POST /v1/channels/{id}/close`: cooperative when the provider has countersigned
/// the channel's current state (settles now); otherwise the channel's latest state
/// goes to a dispute that settles when the challenge window passes.
pub async fn close(
    State(state): State<AppState>,
    Auth(key): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_channels(&key)?;
    state.lease(&key.record.account).await?;
    let c = own_channel(&state, &key, &id)?;
    let now = state.clock.unix();
    let agreed = c.latest_voucher.as_ref().is_some_and(|v| {
        v.nonce == c.channel.nonce
            && v.cumulative_spent == c.channel.spent
            && v.provider_signature.is_some()
    });
    if agreed || c.channel.spent == 0 {
        let split = state.book.close(&id, now).map_err(book_error)?;
        let view = own_channel(&state, &key, &id)?;
        return Ok(Json(
            json!({ "channel": channel_json(&view), "settlement": split, "cooperative": true }),
        )
        .into_response());
    }
    let ch = state
        .book
        .dispute(&id, Party::Payer, None, now)
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

/// The most a dispute body may hold (one voucher is about 600 bytes).
const MAX_DISPUTE_BODY: usize = 16 * 1024;

/// Checks a submitted voucher against the channel: its id and asset, the gateway's
/// own payer signature and, from the provider, its countersignature by the
/// channel provider's key. Returns the state it claims.
fn check_voucher(
    state: &AppState,
    c: &ChannelView,
    v: &Voucher,
    provider_key: Option<&tenzro_attest::PublicKey>,
) -> Result<(u64, u128), ApiError> {
    let refuse = |message: String| ApiError::BadRequest {
        message,
        param: Some("voucher".into()),
    };
    if v.channel_id != c.channel.id || v.asset != c.channel.asset.as_str() {
        return Err(refuse("the voucher is for another channel or asset".into()));
    }
    let payer = state.payer_key.public_key();
    match provider_key {
        Some(p) => v.verify(Some(&payer), Some(p)),
        None => v.verify_payer(Some(&payer)),
    }
    .map_err(|e| refuse(format!("voucher refused: {e}")))?;
    Ok((v.nonce, v.cumulative_spent))
}

/// `POST /v1/channels/{id}/dispute`, by the channel's payer (its API key; an agent
/// key needs the `channels` operation) or by the channel's provider (no API key; its
/// registered key signs the request in `x-tenzro-provider-auth`, see
/// [`crate::money::dispute_auth`]). The body is empty (dispute at the channel's
/// latest state) or `{"voucher": …}`, a voucher the gateway signed (and, from the
/// provider, countersigned). A state behind the channel's latest is refused (409);
/// the dispute records the channel's latest state at once, which settles when the
/// challenge window closes. Anonymous requests are 401.
pub async fn dispute(
    State(state): State<AppState>,
    Path(id): Path<String>,
    parts: Parts,
    body: Bytes,
) -> Result<Response, ApiError> {
    if body.len() > MAX_DISPUTE_BODY {
        return Err(ApiError::PayloadTooLarge(MAX_DISPUTE_BODY));
    }
    let voucher = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(parse_json::<DisputeBody>(&body)?.voucher)
    };
    let now = state.clock.unix();
    if parts
        .headers
        .contains_key(axum::http::header::AUTHORIZATION)
    {
        payer_dispute(&state, parts, &id, voucher.as_ref(), now).await
    } else if let Some(header) = parts.headers.get(dispute_auth::HEADER) {
        let header = header.to_str().map_err(|_| {
            ApiError::Unauthorized(dispute_auth::DisputeAuthError::Malformed.to_string())
        })?;
        let request = dispute_auth::SignedDispute {
            method: parts.method.as_str(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map_or(parts.uri.path(), |p| p.as_str()),
            channel_id: &id,
            body: &body,
        };
        provider_dispute(&state, header, request, voucher.as_ref(), now).await
    } else {
        Err(ApiError::Unauthorized(format!(
            "a dispute needs the payer's API key (`Authorization: Bearer KEY`) or the channel provider's signature ({})",
            dispute_auth::HEADER
        )))
    }
}

/// A dispute by the channel's payer, authenticated by its API key.
async fn payer_dispute(
    state: &AppState,
    mut parts: Parts,
    id: &str,
    voucher: Option<&Voucher>,
    now: u64,
) -> Result<Response, ApiError> {
    let Auth(key) =
        <Auth as axum::extract::FromRequestParts<AppState>>::from_request_parts(&mut parts, state)
            .await?;
    require_channels(&key)?;
    state.lease(&key.record.account).await?;
    let c = own_channel(state, &key, id)?;
    let claim = voucher
        .map(|v| check_voucher(state, &c, v, None))
        .transpose()?;
    let ch = state
        .book
        .dispute(id, Party::Payer, claim, now)
        .map_err(book_error)?;
    Ok(dispute_answer(ch, c.latest_voucher))
}

/// A dispute by the channel's provider: `header` is its signature over `request`
/// by its registered key.
async fn provider_dispute(
    state: &AppState,
    header: &str,
    request: dispute_auth::SignedDispute<'_>,
    voucher: Option<&Voucher>,
    now: u64,
) -> Result<Response, ApiError> {
    let id = request.channel_id;
    let parties = state
        .store
        .channel_parties(id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (payer, provider) =
        parties.ok_or_else(|| ApiError::NotFound(format!("no channel {id}")))?;
    let provider_key = state
        .registry
        .get(&provider)
        .and_then(|e| e.info.public_key)
        .ok_or_else(|| {
            ApiError::Unauthorized(format!(
                "provider {provider} has no registered key to sign a dispute with; dispute with the payer's API key"
            ))
        })?;
    request
        .verify(header, &provider_key, now)
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    state.lease(&payer).await?;
    let c = state
        .book
        .channel(id)
        .ok_or_else(|| ApiError::NotFound(format!("no channel {id}")))?;
    let claim = voucher
        .map(|v| check_voucher(state, &c, v, Some(&provider_key)))
        .transpose()?;
    let ch = state
        .book
        .dispute(id, Party::Provider, claim, now)
        .map_err(book_error)?;
    Ok(dispute_answer(ch, c.latest_voucher))
}

/// 202 with the disputed channel: the state it settles at is the channel's latest
/// (the gateway's answer), with the latest voucher the provider countersigned.
fn dispute_answer(ch: Channel, latest: Option<Voucher>) -> Response {
    let view = ChannelView {
        channel: ch,
        in_flight: 0,
        latest_voucher: latest.clone(),
    };
    let mut body = channel_json(&view);
    body["latest_voucher"] = json!(latest);
    (StatusCode::ACCEPTED, Json(body)).into_response()
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
    let amount = state.config.amounts.faucet;
    let now = state.clock.unix();
    state.lease(&key.record.account).await?;
    {
        let mut grants = state.faucet.lock();
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
    crate::http::extract::ApiJson(r): crate::http::extract::ApiJson<SlashRequest>,
) -> Result<Json<Value>, ApiError> {
    let s = state
        .registry
        .slash(&id, r.reason, &r.detail)
        .ok_or_else(|| ApiError::NotFound(format!("no provider {id}")))?;
    Ok(Json(
        serde_json::to_value(s).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}
