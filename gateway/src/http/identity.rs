//! HTTP handlers of the identity API (TDIP): register people (admin) and agents
//! (their owner, with a scoped key), resolve DIDs and DID documents, add
//! credentials, and move identities through their lifecycle. The registry itself is
//! `tenzro-identity`; every change writes the rows it changed
//! ([`crate::store::identity`]) before it is answered, outside the lock the request
//! path reads, so a write never holds up an identity check.
//!
//! - Agents: the creating key's scope must allow `agents:create`; the agent's scope
//!   is within the creator's ([`crate::accounts::delegation::delegate`]); an owner has at
//!   most `identities.max_agents_per_owner` agents that are not terminated.
//! - Lifecycle: an admin, or a key whose identity controls the target (its scope
//!   must allow `identities`). Only an admin lifts an admin's suspension.
//! - Privacy: `GET /v1/identities/{did}` shows anyone the public view (DID, key,
//!   state, controller, DID document); display name, KYC tier, credentials,
//!   capabilities and reputation only to admins and the identity's controllers.

use std::str::FromStr;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tenzro_attest::PublicKey;
use tenzro_identity::{Credential, Did, Error as IdError, Identities, Identity, KycTier};

use tenzro_identity::Authority;

use crate::accounts::{
    AccountsError, Ancestor, DefaultLimits, KeyEntry, KeyScope, Operation, OperationRefused,
    require_operation,
};
use crate::http::error::ApiError;
use crate::http::extract::{Admin, ApiJson, Auth};
use crate::state::AppState;
use crate::store::identity::row_of;

/// The kind and id of the whole-registry document older gateways wrote (moved into
/// rows on start).
pub const DOCUMENT: (&str, &str) = crate::store::identity::LEGACY_DOCUMENT;

impl From<OperationRefused> for ApiError {
    fn from(e: OperationRefused) -> Self {
        ApiError::Forbidden(e.to_string())
    }
}

fn id_error(e: IdError) -> ApiError {
    match e {
        IdError::Unknown(_) => ApiError::NotFound(e.to_string()),
        IdError::AdminSuspended(_) => ApiError::Forbidden(e.to_string()),
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

/// Runs one change on the registry, one change at a time: `f` changes it in place
/// under the write lock (no copy of the registry) and names the identities it
/// changed; their rows are written after the lock is released.
async fn change<T>(
    state: &AppState,
    f: impl FnOnce(&mut Identities, u64) -> Result<(T, Vec<Did>), ApiError>,
) -> Result<T, ApiError> {
    let _one_writer = state.identities_save.lock().await;
    let now = state.clock.unix();
    let (out, rows) = {
        let mut reg = state.identities.write();
        let (out, changed) = f(&mut reg, now)?;
        let rows = changed
            .iter()
            .filter_map(|d| reg.resolve(d))
            .map(row_of)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        (out, rows)
    };
    state.store.put_identities(&rows, now).await.map_err(|e| {
        tracing::error!(error = %e, "writing identities");
        ApiError::Internal(e.to_string())
    })?;
    Ok(out)
}

/// The public view of an identity: what its DID document says, and its state.
fn public_json(i: &Identity, reg: &Identities) -> Value {
    json!({
        "object": "identity",
        "did": i.did().to_string(),
        "kind": if i.human().is_some() { "human" } else { "agent" },
        "public_key": i.public_key().to_hex(),
        "status": i.status(),
        "controller": i.controller().map(|c| c.to_string()),
        "created_at": i.created_at(),
        "document": reg.did_document(i.did()),
    })
}

/// The full view, for admins and the identity's controllers.
fn identity_json(reg: &Identities, i: &Identity, now: u64) -> Value {
    let mut v = public_json(i, reg);
    v["kyc_tier"] = json!(reg.effective_kyc_tier(i.did(), now));
    v["credentials"] = json!(i.credentials());
    if let Some(h) = i.human() {
        v["display_name"] = h.display_name().into();
    }
    if let Some(a) = i.agent() {
        v["capabilities"] = json!(a.capabilities());
        v["reputation"] = json!(a.reputation().get());
    }
    v
}

/// Whether `me` is `did` itself or controls it (directly or through other agents).
fn is_self_or_controller(me: &Did, did: &Did) -> bool {
    let mut up = Some(did);
    while let Some(c) = up {
        if c == me {
            return true;
        }
        up = c.controller();
    }
    false
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
        let did = reg
            .register_human(&n.display_name, tier, key, now)
            .map_err(id_error)?;
        Ok((did.clone(), vec![did]))
    })
    .await?;
    resolve_response(&state, &did, StatusCode::CREATED, true)
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

/// The scope an agent created by `key` gets: `asked` within the creator's scope
/// (fields left out are the creator's), with the creator and its ancestors recorded.
pub fn agent_scope(
    key: &KeyEntry,
    asked: &KeyScope,
    defaults: DefaultLimits,
) -> Result<KeyScope, ApiError> {
    if !asked.ancestors.is_empty() {
        return Err(ApiError::BadRequest {
            message: "scope.ancestors is set by the gateway, not by a request".into(),
            param: Some("scope.ancestors".into()),
        });
    }
    let parent = &key.record.scope;
    let mut scope = crate::accounts::delegation::delegate(parent, asked, defaults)
        .map_err(|e| ApiError::Forbidden(e.to_string()))?;
    scope.ancestors = std::iter::once(Ancestor {
        key_id: key.record.id.clone(),
        max_daily_spend: parent.max_daily_spend,
    })
    .chain(parent.ancestors.iter().cloned())
    .collect();
    Ok(scope)
}

/// `POST /v1/identities/agents`: the caller (an active identity whose key's scope
/// allows `agents:create`) registers an agent it controls and gets an API key for
/// it that spends from the caller's account within `scope`, which must be within
/// the caller's own.
pub async fn create_agent(
    State(state): State<AppState>,
    Auth(key): Auth,
    ApiJson(n): ApiJson<NewAgent>,
) -> Result<Response, ApiError> {
    require_operation(&key, Operation::AgentsCreate)?;
    let Some(owner) = key.identity.as_deref() else {
        return Err(ApiError::Forbidden(
            "this key's account has no identity; register one to control agents".into(),
        ));
    };
    let owner = parse_did(owner)?;
    let public_key = parse_key(&n.public_key)?;
    let defaults = DefaultLimits {
        requests_per_minute: state.config.limits.requests_per_minute,
        tokens_per_minute: state.config.limits.tokens_per_minute,
    };
    let scope = agent_scope(&key, &n.scope, defaults)?;
    let cap = state.config.identities.max_agents_per_owner;
    let did = change(&state, |reg, now| {
        let top = tenzro_identity::registry::owner_of(&owner);
        let live = reg.live_agents_of(top);
        if live >= cap {
            return Err(ApiError::Forbidden(format!(
                "{top} already has {live} agents that are not terminated, the most one owner may have \
                 (identities.max_agents_per_owner = {cap}); terminate some first"
            )));
        }
        let did = reg
            .register_agent(Some(&owner), n.capabilities.clone(), public_key, now)
            .map_err(id_error)?;
        reg.activate(&did, now).map_err(id_error)?;
        Ok((did.clone(), vec![did]))
    })
    .await?;
    let name = if n.name.is_empty() {
        format!("agent {did}")
    } else {
        n.name
    };
    let made = state
        .accounts
        .create_key(&key.record.account, &name, scope, Some(did.to_string()))
        .await;
    let (api_key, record) = match made {
        Ok(made) => made,
        Err(e) => {
            // An agent without its key would count against the owner's
            // `max_agents_per_owner` for ever: it ends here.
            let ended = change(&state, |reg, now| {
                let changed = reg.terminate(&did, now).map_err(id_error)?;
                Ok(((), changed))
            })
            .await;
            if let Err(t) = ended {
                tracing::error!(agent = %did, error = ?t, "terminating an agent whose key was not made");
            }
            return Err(match e {
                // The caller's own key was revoked while the agent was being made.
                e @ AccountsError::DelegatorRevoked(_) => ApiError::Unauthorized(e.to_string()),
                e => ApiError::Internal(e.to_string()),
            });
        }
    };
    let reg = state.identities.read();
    let doc = reg.did_document(&did);
    let identity = reg
        .resolve(&did)
        .map(|i| identity_json(&reg, i, state.clock.unix()));
    Ok((StatusCode::CREATED, Json(json!({ "identity": identity, "document": doc, "key": api_key, "key_id": record.id, "scope": record.scope }))).into_response())
}

fn resolve_response(
    state: &AppState,
    did: &Did,
    status: StatusCode,
    personal: bool,
) -> Result<Response, ApiError> {
    let reg = state.identities.read();
    let i = reg
        .resolve(did)
        .ok_or_else(|| ApiError::NotFound(format!("no identity {did}")))?;
    let body = if personal {
        identity_json(&reg, i, state.clock.unix())
    } else {
        public_json(i, &reg)
    };
    Ok((status, Json(body)).into_response())
}

/// Who is asking: the admin, a key, or nobody (no `Authorization` header).
async fn caller(
    state: &AppState,
    parts: &mut axum::http::request::Parts,
) -> Result<Option<Actor>, ApiError> {
    if !parts
        .headers
        .contains_key(axum::http::header::AUTHORIZATION)
    {
        return Ok(None);
    }
    if <Admin as axum::extract::FromRequestParts<AppState>>::from_request_parts(parts, state)
        .await
        .is_ok()
    {
        return Ok(Some(Actor::Admin));
    }
    let Auth(key) =
        <Auth as axum::extract::FromRequestParts<AppState>>::from_request_parts(parts, state)
            .await?;
    Ok(Some(Actor::Key(key)))
}

/// `GET /v1/identities/{did}`: the public view for anyone; personal fields for the
/// admin and for keys of the identity or its controllers whose scope allows
/// `identities`.
pub async fn resolve(
    State(state): State<AppState>,
    Path(did): Path<String>,
    parts: axum::http::request::Parts,
) -> Result<Response, ApiError> {
    let did = parse_did(&did)?;
    let mut parts = parts;
    let personal = match caller(&state, &mut parts).await? {
        None => false,
        Some(Actor::Admin) => true,
        Some(Actor::Key(key)) => {
            require_operation(&key, Operation::Identities).is_ok()
                && key
                    .did
                    .as_ref()
                    .is_some_and(|me| is_self_or_controller(me, &did))
        }
    };
    resolve_response(&state, &did, StatusCode::OK, personal)
}

/// `GET /v1/identities/{did}/document`: the W3C DID document.
pub async fn document(
    State(state): State<AppState>,
    Path(did): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let did = parse_did(&did)?;
    let reg = state.identities.read();
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
            .map_err(id_error)?;
        Ok(((), vec![did.clone()]))
    })
    .await?;
    resolve_response(&state, &did, StatusCode::OK, true)
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
    let _one_writer = state.identities_save.lock().await;
    state.identities.write().trust_issuer(did.clone(), key);
    state
        .store
        .put_issuer(&did, &key)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who asks: the admin, or a key (for the lifecycle, one whose identity controls
/// the target, directly or through other agents).
pub enum Actor {
    Admin,
    Key(std::sync::Arc<KeyEntry>),
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
    let by = match caller(&state, &mut parts).await? {
        None => {
            return Err(ApiError::Unauthorized(
                "missing API key: send `Authorization: Bearer YOUR_KEY`".into(),
            ));
        }
        Some(Actor::Admin) => Authority::Admin,
        Some(Actor::Key(key)) => {
            require_operation(&key, Operation::Identities)?;
            let me = key
                .did
                .as_ref()
                .ok_or_else(|| ApiError::Forbidden("this key has no identity".into()))?;
            if me == &did || !is_self_or_controller(me, &did) {
                return Err(ApiError::Forbidden(format!("{me} does not control {did}")));
            }
            Authority::Controller
        }
    };
    if !matches!(
        action.as_str(),
        "suspend" | "resume" | "terminate" | "activate"
    ) {
        return Err(ApiError::NotFound(format!(
            "no identity action `{action}`: use suspend, resume, terminate or activate"
        )));
    }
    let changed = change(&state, |reg, now| {
        let changed = match action.as_str() {
            "suspend" => reg.suspend_as(&did, by, now),
            "resume" => reg.resume_as(&did, by, now),
            "terminate" => reg.terminate(&did, now),
            _ => reg.activate(&did, now),
        }
        .map_err(id_error)?;
        Ok((changed.clone(), changed))
    })
    .await?;
    Ok(Json(
        json!({ "did": did.to_string(), "action": action, "changed": changed.iter().map(|d| d.to_string()).collect::<Vec<_>>() }),
    ))
}
