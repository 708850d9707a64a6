//! HTTP handlers of the bonds API (`money::bonds` has the rules):
//! `POST /v1/providers/bonds`, `POST /v1/providers/bonds/unbond`,
//! `GET /v1/providers/bonds`, and the bonds part of `GET /v1/account`.
//! Only an account's own keys bond; agent keys get 403.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tenzro_attest::{PublicKey, Signature};
use tenzro_models::api::ErrorBody;

use crate::accounts::KeyEntry;
use crate::http::error::{ApiError, ErrorKind};
use crate::http::extract::{Auth, parse_json};
use crate::money::bonds::{Bond, BondError};
use crate::pricing::{self, Asset};
use crate::state::AppState;

/// The bond API's refusals: the gateway's usual ones, plus 402
/// `insufficient_balance` (the bonds contract names that code).
pub enum BondApiError {
    Api(ApiError),
    Insufficient(String),
}

impl From<ApiError> for BondApiError {
    fn from(e: ApiError) -> Self {
        BondApiError::Api(e)
    }
}

impl From<crate::store::lease::LeaseError> for BondApiError {
    fn from(e: crate::store::lease::LeaseError) -> Self {
        BondApiError::Api(e.into())
    }
}

impl IntoResponse for BondApiError {
    fn into_response(self) -> Response {
        match self {
            BondApiError::Api(e) => e.into_response(),
            BondApiError::Insufficient(message) => {
                let kind = "insufficient_quota";
                let body = ErrorBody::new(kind, message).with_code("insufficient_balance");
                let mut r = (StatusCode::PAYMENT_REQUIRED, Json(body)).into_response();
                r.extensions_mut().insert(ErrorKind(kind));
                r
            }
        }
    }
}

fn bond_error(e: BondError) -> BondApiError {
    match e {
        BondError::Insufficient { .. } => BondApiError::Insufficient(e.to_string()),
        BondError::NotOwner { .. } => ApiError::Forbidden(e.to_string()).into(),
        BondError::ConsentMissing { .. } => ApiError::BadRequest {
            message: e.to_string(),
            param: Some("owner_signature".into()),
        }
        .into(),
        BondError::NoBond(_) => ApiError::NotFound(e.to_string()).into(),
        BondError::ExceedsBonded { .. } | BondError::Overflow => ApiError::BadRequest {
            message: e.to_string(),
            param: Some("amount".into()),
        }
        .into(),
        BondError::Asset(_) => ApiError::BadRequest {
            message: e.to_string(),
            param: Some("asset".into()),
        }
        .into(),
        BondError::UnknownAccount(_) | BondError::Poisoned => {
            ApiError::Internal(e.to_string()).into()
        }
    }
}

/// The body of a bond or unbond.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BondRequest {
    /// Hex Ed25519 public key of the provider.
    provider_key: String,
    /// Whole tokens, a decimal string (`"100000"`, `"0.5"`).
    amount: String,
    #[serde(default)]
    asset: Option<String>,
    /// Hex signature of `tenzro_attest::bond::sign_owner(provider_key, account_id)`;
    /// needed on the first bond of a key.
    #[serde(default)]
    owner_signature: Option<String>,
}

/// A validated bond request.
struct Valid {
    key: PublicKey,
    key_hex: String,
    amount: u128,
}

const MAX_FIELD: usize = 256;

fn validate(r: &BondRequest) -> Result<Valid, ApiError> {
    let bad = |param: &str, message: String| ApiError::BadRequest {
        message,
        param: Some(param.into()),
    };
    if r.provider_key.len() > MAX_FIELD || r.amount.len() > MAX_FIELD {
        return Err(ApiError::bad_request("a field is longer than 256 bytes"));
    }
    let key = PublicKey::from_hex(&r.provider_key).map_err(|e| {
        bad(
            "provider_key",
            format!("provider_key must be a hex Ed25519 public key: {e}"),
        )
    })?;
    let amount = pricing::parse_tokens(&r.amount).map_err(|e| {
        bad(
            "amount",
            format!(
                "amount must be whole tokens as a decimal string, e.g. \"100000\" or \"0.5\": {e}"
            ),
        )
    })?;
    match r.asset.as_deref() {
        None | Some("TNZO") => {}
        Some(other) => {
            return Err(bad(
                "asset",
                format!(
                    "bonds are in TNZO; `{}` is not bondable",
                    other.chars().take(16).collect::<String>()
                ),
            ));
        }
    }
    Ok(Valid {
        key_hex: hex::encode(key.to_bytes()),
        key,
        amount,
    })
}

/// Agent keys act within a delegation scope that has no room for bonds.
fn owner_key(key: &KeyEntry) -> Result<&str, ApiError> {
    if key.record.identity.is_some() {
        return Err(ApiError::Forbidden(
            "agent keys cannot bond or unbond; use the owner account's own API key".into(),
        ));
    }
    Ok(&key.record.account)
}

pub fn bond_json(b: &Bond) -> Value {
    let earned: BTreeMap<&str, String> = b
        .earned
        .iter()
        .map(|(a, v)| (a.as_str(), v.0.to_string()))
        .collect();
    json!({
        "object": "bond",
        "provider_key": b.provider_key,
        "provider_id": b.provider_id,
        "asset": b.asset,
        "bonded": b.bonded.to_string(),
        "unbonding": b.unbonding.to_string(),
        "unbonding_until": (b.unbonding > 0).then_some(b.unbonding_until),
        "slashed": b.slashed.to_string(),
        "earned": earned,
    })
}

fn publish(state: &AppState, b: &Bond) {
    crate::tasks::bonds::publish(&state.registry, b);
}

/// A bond or unbond request: the owner account (not an agent key), the request
/// and its checked values; the account is leased to this replica.
async fn owner_request<'k>(
    state: &AppState,
    key: &'k KeyEntry,
    body: &[u8],
) -> Result<(&'k str, BondRequest, Valid), BondApiError> {
    let account = owner_key(key)?;
    let req: BondRequest = parse_json(body)?;
    let v = validate(&req)?;
    state.lease(account).await?;
    Ok((account, req, v))
}

/// `POST /v1/providers/bonds`: moves `amount` from the caller's balance into the
/// bond of `provider_key` (claiming the key on its first bond).
pub async fn bond(
    State(state): State<AppState>,
    Auth(key): Auth,
    body: Bytes,
) -> Result<Json<Value>, BondApiError> {
    let (account, req, v) = owner_request(&state, &key, &body).await?;
    let consent = match state.book.bond_owner(&v.key_hex) {
        Some(_) => false,
        None => {
            let Some(sig) = req.owner_signature.as_deref() else {
                return Err(bond_error(BondError::ConsentMissing { key: v.key_hex }));
            };
            let sig = Signature::from_hex(sig).map_err(|e| ApiError::BadRequest {
                message: format!("owner_signature must be a hex Ed25519 signature: {e}"),
                param: Some("owner_signature".into()),
            })?;
            if !tenzro_attest::bond::verify_owner(&v.key, account, &sig) {
                return Err(ApiError::Forbidden(format!(
                    "owner_signature is not provider key {}'s consent to be owned by account {account}",
                    v.key_hex
                ))
                .into());
            }
            true
        }
    };
    let b = state
        .book
        .bond(account, &v.key_hex, &v.key.did(), v.amount, consent)
        .map_err(bond_error)?;
    tracing::info!(provider = %b.provider_id, %account, amount = %v.amount, bonded = %b.bonded, "bonded");
    publish(&state, &b);
    Ok(Json(bond_json(&b)))
}

/// `POST /v1/providers/bonds/unbond`: starts unbonding `amount`; it returns to
/// the balance after `[bonds] unbonding_s`.
pub async fn unbond(
    State(state): State<AppState>,
    Auth(key): Auth,
    body: Bytes,
) -> Result<Json<Value>, BondApiError> {
    let (account, _, v) = owner_request(&state, &key, &body).await?;
    let b = state
        .book
        .unbond(
            account,
            &v.key_hex,
            v.amount,
            state.registry.unix_now(),
            state.config.bonds.unbonding_s,
        )
        .map_err(bond_error)?;
    tracing::info!(provider = %b.provider_id, %account, amount = %v.amount, until = b.unbonding_until, "unbonding");
    publish(&state, &b);
    Ok(Json(bond_json(&b)))
}

/// `GET /v1/providers/bonds`: the caller's bonds.
pub async fn list(
    State(state): State<AppState>,
    Auth(key): Auth,
) -> Result<Json<Value>, BondApiError> {
    let account = owner_key(&key)?;
    let data: Vec<Value> = state.book.bonds_of(account).iter().map(bond_json).collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

/// The `bonds` and `earnings` of `GET /v1/account`: each bond, and per asset what
/// the account's providers earned (credited to its balance) and what is still on
/// its way (credited within a second).
pub fn account_view(state: &AppState, account: &str) -> (Value, Value) {
    let bonds = state.book.bonds_of(account);
    let mut credited: BTreeMap<Asset, u128> = BTreeMap::new();
    let mut pending: BTreeMap<Asset, u128> = BTreeMap::new();
    for b in &bonds {
        for (a, v) in &b.earned {
            let e = credited.entry(*a).or_default();
            *e = e.saturating_add(v.0);
        }
        for (a, v) in state.book.pending_earnings(&b.provider_id) {
            let e = pending.entry(a).or_default();
            *e = e.saturating_add(v);
        }
    }
    let strings = |m: BTreeMap<Asset, u128>| -> BTreeMap<&'static str, String> {
        m.into_iter()
            .map(|(a, v)| (a.as_str(), v.to_string()))
            .collect()
    };
    (
        Value::Array(bonds.iter().map(bond_json).collect()),
        json!({ "credited": strings(credited), "pending": strings(pending) }),
    )
}
