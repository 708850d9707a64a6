//! HTTP handlers of the identity API (TDIP): register people (admin) and agents
//! (their owner, with a scoped key), resolve DIDs and DID documents, add
//! credentials, and move identities through their lifecycle. The registry itself is
//! `tenzro-identity`; every change is saved to the store before it is answered.

use std::str::FromStr;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tenzro_attest::PublicKey;
use tenzro_identity::{Credential, Did, Error as IdError, Identities, Identity, KycTier};

use crate::accounts::{KeyEntry, KeyScope};
use crate::clock::unix_now;
use crate::error::ApiError;
use crate::routes::{Admin, ApiJson, Auth};
use crate::state::AppState;

/// The kind and id of the registry's document in the store.
pub const DOCUMENT: (&str, &str) = ("identities", "registry");

fn id_error(e: IdError) -> ApiError {
    match e {
        IdError::Unknown(_) => ApiError::NotFound(e.to_string()),
        IdError::Exists(_)
        | IdError::Terminated(_)
        | IdError::Transition { .. }
        | IdError::ControllerInactive { .. } => ApiError::Conflict(e.to_string()),
        other => ApiError::bad_request(other.to_string()),
    }
}

fn parse_did(text: &str) -> Result<Did, ApiError> {
    Did::from_str(text).map_err(|e| ApiError::BadRequest {
        message: e.to_string(),
        param: Some("did".into()),
    })
}

fn parse_key(hex: &str) -> Result<PublicKey, ApiError> {
    PublicKey::from_hex(hex).map_err(|e| ApiError::BadRequest {
        message: format!("public_key: {e}"),
        param: Some("public_key".into()),
    })
}

/// Runs one change on the registry and saves it, one change at a time.
async fn change<T>(
    state: &AppState,
    f: impl FnOnce(&mut Identities, u64) -> Result<T, IdError>,
) -> Result<T, ApiError> {
    let _one_writer = state.identities_save.lock().await;
    let (out, body) = {
        let mut reg = state
            .identities
            .write()
            .map_err(|_| ApiError::Internal("identities lock".into()))?;
        let mut next = reg.clone();
        let out = f(&mut next, unix_now()).map_err(id_error)?;
        let body = serde_json::to_string(&next).map_err(|e| ApiError::Internal(e.to_string()))?;
        *reg = next;
        (out, body)
    };
    state
        .store
        .put_document(DOCUMENT.0, DOCUMENT.1, &body)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(out)
}

fn identity_json(reg: &Identities, i: &Identity, now: u64) -> Value {
    let mut v = json!({
        "object": "identity",
        "did": i.did().to_string(),
        "public_key": i.public_key().to_hex(),
        "status": i.status(),
        "controller": i.controller().map(|c| c.to_string()),
        "created_at": i.created_at(),
        "kyc_tier": reg.effective_kyc_tier(i.did(), now),
        "credentials": i.credentials(),
    });
    if let Some(h) = i.human() {
        v["kind"] = "human".into();
        v["display_name"] = h.display_name().into();
    }
    if let Some(a) = i.agent() {
        v["kind"] = "agent".into();
        v["capabilities"] = json!(a.capabilities());
        v["reputation"] = json!(a.reputation().get());
    }
    v
}

/// Refuses keys whose identity (the agent's, else the account's) is not active.
pub fn check_active(state: &AppState, key: &KeyEntry) -> Result<(), ApiError> {
    let Some(did) = &key.did else {
        return Ok(());
    };
    let reg = state
        .identities
        .read()
        .map_err(|_| ApiError::Internal("identities lock".into()))?;
    match reg.resolve(did) {
        Some(i) if !i.is_active() => Err(ApiError::Forbidden(format!(
            "identity {did} is {}; its keys may not be used",
            i.status().name()
        ))),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewHuman {
    display_name: String,
    #[serde(default)]
    kyc_tier: u8,
    /// Hex Ed25519 public key.
    public_key: String,
}

/// `POST /admin/identities`: registers a person.
pub async fn register_human(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(n): ApiJson<NewHuman>,
) -> Result<Response, ApiError> {
    let key = parse_key(&n.public_key)?;
    let tier = KycTier::new(n.kyc_tier).map_err(id_error)?;
    let did = change(&state, |reg, now| {
        reg.register_human(&n.display_name, tier, key, now)
    })
    .await?;
    resolve_response(&state, &did, StatusCode::CREATED)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// Hex Ed25519 public key of the agent (it may sign its own vouchers).
    public_key: String,
    #[serde(default)]
    capabilities: Vec<String>,
    /// The delegation scope of the agent's key.
    #[serde(default)]
    scope: KeyScope,
    #[serde(default)]
    name: String,
}

/// `POST /v1/identities/agents`: the caller (an active identity) registers an agent
/// it controls and gets an API key for it that spends from the caller's account
/// within `scope`.
pub async fn create_agent(
    State(state): State<AppState>,
    Auth(key): Auth,
    ApiJson(n): ApiJson<NewAgent>,
) -> Result<Response, ApiError> {
    let Some(owner) = key.identity.as_deref() else {
        return Err(ApiError::Forbidden(
            "this key's account has no identity; register one to control agents".into(),
        ));
    };
    let owner = parse_did(owner)?;
    let public_key = parse_key(&n.public_key)?;
    let did = change(&state, |reg, now| {
        let did = reg.register_agent(Some(&owner), n.capabilities.clone(), public_key, now)?;
        reg.activate(&did, now)?;
        Ok(did)
    })
    .await?;
    let name = if n.name.is_empty() {
        format!("agent {did}")
    } else {
        n.name
    };
    let (api_key, record) = state
        .accounts
        .create_key(&key.record.account, &name, n.scope, Some(did.to_string()))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let reg = state
        .identities
        .read()
        .map_err(|_| ApiError::Internal("identities lock".into()))?;
    let doc = reg.did_document(&did);
    let identity = reg
        .resolve(&did)
        .map(|i| identity_json(&reg, i, unix_now()));
    Ok((StatusCode::CREATED, Json(json!({ "identity": identity, "document": doc, "key": api_key, "key_id": record.id, "scope": record.scope }))).into_response())
}

fn resolve_response(state: &AppState, did: &Did, status: StatusCode) -> Result<Response, ApiError> {
    let reg = state
        .identities
        .read()
        .map_err(|_| ApiError::Internal("identities lock".into()))?;
    let i = reg
        .resolve(did)
        .ok_or_else(|| ApiError::NotFound(format!("no identity {did}")))?;
    Ok((status, Json(identity_json(&reg, i, unix_now()))).into_response())
}

/// `GET /v1/identities/{did}`.
pub async fn resolve(
    State(state): State<AppState>,
    Path(did): Path<String>,
) -> Result<Response, ApiError> {
    resolve_response(&state, &parse_did(&did)?, StatusCode::OK)
}

/// `GET /v1/identities/{did}/document`: the W3C DID document.
pub async fn document(
    State(state): State<AppState>,
    Path(did): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let did = parse_did(&did)?;
    let reg = state
        .identities
        .read()
        .map_err(|_| ApiError::Internal("identities lock".into()))?;
    reg.did_document(&did)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no identity {did}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddCredential {
    credential: Credential,
}

/// `POST /v1/identities/{did}/credentials` (admin): verifies and adds a credential.
pub async fn add_credential(
    State(state): State<AppState>,
    _: Admin,
    Path(did): Path<String>,
    ApiJson(c): ApiJson<AddCredential>,
) -> Result<Response, ApiError> {
    let did = parse_did(&did)?;
    change(&state, |reg, now| {
        reg.add_credential(&did, c.credential, now)
    })
    .await?;
    resolve_response(&state, &did, StatusCode::OK)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustIssuer {
    did: String,
    public_key: String,
}

/// `POST /admin/identities/issuers`: trusts an issuer of KYC credentials.
pub async fn trust_issuer(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(t): ApiJson<TrustIssuer>,
) -> Result<StatusCode, ApiError> {
    let (did, key) = (parse_did(&t.did)?, parse_key(&t.public_key)?);
    change(&state, |reg, _| {
        reg.trust_issuer(did, key);
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who may move an identity through its lifecycle: the admin, or an active key
/// whose identity controls it (directly or through other agents).
pub enum Actor {
    Admin,
    Controller(Did),
}

/// `POST /v1/identities/{did}/{action}` with action suspend, resume, terminate or
/// activate; answers the DIDs whose state changed (the cascade).
pub async fn lifecycle(
    State(state): State<AppState>,
    Path((did, action)): Path<(String, String)>,
    parts: axum::http::request::Parts,
) -> Result<Json<Value>, ApiError> {
    let did = parse_did(&did)?;
    let mut parts = parts;
    let actor = match <Admin as axum::extract::FromRequestParts<AppState>>::from_request_parts(
        &mut parts, &state,
    )
    .await
    {
        Ok(_) => Actor::Admin,
        Err(_) => {
            let Auth(key) =
                <Auth as axum::extract::FromRequestParts<AppState>>::from_request_parts(
                    &mut parts, &state,
                )
                .await?;
            let mine = key
                .identity
                .as_deref()
                .ok_or_else(|| ApiError::Forbidden("this key has no identity".into()))?;
            Actor::Controller(parse_did(mine)?)
        }
    };
    if let Actor::Controller(me) = &actor {
        let mut up = did.controller();
        let mut controls = false;
        while let Some(c) = up {
            if c == me {
                controls = true;
                break;
            }
            up = c.controller();
        }
        if !controls {
            return Err(ApiError::Forbidden(format!("{me} does not control {did}")));
        }
    }
    let changed = match action.as_str() {
        "suspend" => change(&state, |reg, now| reg.suspend(&did, now)).await?,
        "resume" => change(&state, |reg, now| reg.resume(&did, now)).await?,
        "terminate" => change(&state, |reg, now| reg.terminate(&did, now)).await?,
        "activate" => change(&state, |reg, now| reg.activate(&did, now)).await?,
        other => {
            return Err(ApiError::NotFound(format!(
                "no identity action `{other}`: use suspend, resume, terminate or activate"
            )));
        }
    };
    Ok(Json(
        json!({ "did": did.to_string(), "action": action, "changed": changed.iter().map(|d| d.to_string()).collect::<Vec<_>>() }),
    ))
}
