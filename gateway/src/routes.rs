//! The route table and its thin handlers: extract, validate into a domain request,
//! call one domain function, map its error.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tenzro_models::api::{
    ChatCompletionRequest, CompletionRequest, EmbeddingInput, EmbeddingRequest, ModelCard,
    ModelList, Prompt, Signed, StreamOptions,
};
use tracing::Instrument;

use crate::accounts::{KeyEntry, KeyScope, Operation};
use crate::clock::unix_now;
use crate::error::{ApiError, ErrorCause, ErrorKind};
use crate::pricing::{self, Asset};
use crate::proxy::{self, Inference, RequestExt};
use crate::registry::RegistryError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/account", get(crate::money_routes::account))
        .route("/v1/channels", get(crate::money_routes::channels))
        .route("/v1/channels/{id}", get(crate::money_routes::channel))
        .route(
            "/v1/channels/{id}/voucher",
            get(crate::money_routes::voucher),
        )
        .route("/v1/channels/{id}/close", post(crate::money_routes::close))
        .route(
            "/v1/channels/{id}/dispute",
            post(crate::money_routes::dispute),
        )
        .route("/v1/faucet", post(crate::money_routes::faucet))
        .route(
            "/admin/identities",
            post(crate::identity_routes::register_human),
        )
        .route(
            "/admin/identities/issuers",
            post(crate::identity_routes::trust_issuer),
        )
        .route(
            "/v1/identities/agents",
            post(crate::identity_routes::create_agent),
        )
        .route("/v1/identities/{did}", get(crate::identity_routes::resolve))
        .route(
            "/v1/identities/{did}/document",
            get(crate::identity_routes::document),
        )
        .route(
            "/v1/identities/{did}/credentials",
            post(crate::identity_routes::add_credential),
        )
        .route(
            "/v1/identities/{did}/{action}",
            post(crate::identity_routes::lifecycle),
        )
        .route("/admin/pools", get(crate::money_routes::pools))
        .route("/admin/slashes", get(crate::money_routes::slashes))
        .route(
            "/admin/providers/{id}/slash",
            post(crate::money_routes::slash),
        )
        .route("/v1/providers/register", post(register))
        .route(
            "/v1/providers/bonds",
            post(crate::bond_routes::bond).get(crate::bond_routes::list),
        )
        .route(
            "/v1/providers/bonds/unbond",
            post(crate::bond_routes::unbond),
        )
        .route("/v1/providers/heartbeat", post(heartbeat))
        .route(
            "/admin/accounts",
            post(admin_create_account).get(admin_list_accounts),
        )
        .route("/admin/accounts/{id}", get(admin_get_account))
        .route("/admin/accounts/{id}/keys", post(admin_create_key))
        .route("/admin/accounts/{id}/credit", post(admin_credit))
        .route("/admin/keys/{id}", delete(admin_revoke_key))
        .route("/admin/providers", get(admin_providers))
        .route("/admin/providers/{id}/ban", post(admin_ban))
        .route("/admin/providers/{id}/unban", post(admin_unban))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The request id: the caller's `x-request-id` when it is sane, else a new UUID.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Request id, logging (once, with the internal cause of errors) and metrics.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let start = Instant::now();
    let span = tracing::info_span!("request", request_id = %id, %method, path = %endpoint);
    let mut resp = next.run(req).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    state.metrics.request(&endpoint, status);
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

/// A JSON body whose problems (too large, not JSON, wrong types) answer in OpenAI's
/// error shape.
pub struct ApiJson<T>(pub T);

/// The raw body of an inference request (parsed twice: the wire type, then our
/// `tenzro` extension).
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(RawBody(b)),
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(
                ApiError::PayloadTooLarge(state.config.server.max_body_bytes),
            ),
            Err(rej) => Err(ApiError::bad_request(rej.body_text())),
        }
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let RawBody(b) = RawBody::from_request(req, state).await?;
        parse_json(&b).map(ApiJson)
    }
}

pub fn parse_json<T: DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    if b.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(b).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The caller's API key, from `Authorization: Bearer KEY`.
pub struct Auth(pub Arc<KeyEntry>);

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = bearer(parts).ok_or_else(|| {
            ApiError::Unauthorized("missing API key: send `Authorization: Bearer YOUR_KEY`".into())
        })?;
        state
            .accounts
            .lookup(key)
            .await
            .ok_or_else(|| ApiError::Unauthorized("incorrect API key provided".into()))
            .and_then(|k| crate::identity_routes::check_active(state, &k).map(|()| Auth(k)))
    }
}

/// The admin token, compared through SHA-256 digests (no early exit on content).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let want = state.config.server.admin_token.expose();
        if want.is_empty() {
            return Err(ApiError::Forbidden(
                "the admin API is disabled (no admin token configured)".into(),
            ));
        }
        let got =
            bearer(parts).ok_or_else(|| ApiError::Unauthorized("missing admin token".into()))?;
        if Sha256::digest(got.as_bytes()) == Sha256::digest(want.as_bytes()) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized("incorrect admin token".into()))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(uuid::Uuid::new_v4().to_string())))
    }
}

#[derive(Deserialize, Default)]
struct ExtPeek {
    #[serde(default)]
    tenzro: Option<RequestExt>,
}

fn ext(body: &[u8]) -> Result<RequestExt, ApiError> {
    serde_json::from_slice::<ExtPeek>(body)
        .map(|p| p.tenzro.unwrap_or_default())
        .map_err(|e| ApiError::BadRequest {
            message: format!("invalid `tenzro` extension: {e}"),
            param: Some("tenzro".into()),
        })
}

/// The provider's model-free 400s (unknown fields, logprobs, `logit_bias`...),
/// answered before routing.
fn field_error(e: tenzro_models::api::FieldError) -> ApiError {
    ApiError::BadRequest {
        message: e.message,
        param: Some(e.param),
    }
}

fn require_model(model: &str) -> Result<(), ApiError> {
    if model.is_empty() {
        return Err(ApiError::BadRequest {
            message: "`model` must not be empty".into(),
            param: Some("model".into()),
        });
    }
    Ok(())
}

/// Most choices one request may ask for (`n` × prompts): each is metered, held
/// and, when its receipt is checked, kept in full until the response ends.
pub const MAX_CHOICES: u64 = 128;

/// `n` × `prompts`, refused 400 naming `n` above [`MAX_CHOICES`].
fn choices(n: Option<u32>, prompts: u64) -> Result<u64, ApiError> {
    let choices = prompts
        .max(1)
        .saturating_mul(u64::from(n.unwrap_or(1).max(1)));
    if choices > MAX_CHOICES {
        return Err(ApiError::BadRequest {
            message: format!(
                "`n` × prompts asks for {choices} choices; at most {MAX_CHOICES} per request"
            ),
            param: Some("n".into()),
        });
    }
    Ok(choices)
}

/// An upper bound on prompt tokens: one per byte (byte-level BPE never does worse)
/// plus the chat template's framing.
fn estimate_text(s: &str) -> u64 {
    s.len() as u64
}

/// Prompt tokens the tools add: their JSON (the provider lists them in the prompt),
/// past calls' names and arguments, and the framing of the tools block.
fn tools_estimate(req: &ChatCompletionRequest) -> u64 {
    let tools = req.tools.as_ref().map_or(0, |t| {
        serde_json::to_vec(t).map_or(0, |v| v.len() as u64 + 256)
    });
    let calls: u64 = req
        .messages
        .iter()
        .flat_map(|m| m.tool_calls.iter().flatten())
        .map(|c| (c.function.name.len() + c.function.arguments.len()) as u64 + 32)
        .sum();
    tools + calls
}

async fn chat(
    State(state): State<AppState>,
    Auth(key): Auth,
    RequestId(rid): RequestId,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut req: ChatCompletionRequest = parse_json(&body)?;
    req.check_fields().map_err(field_error)?;
    require_model(&req.model)?;
    if req.messages.is_empty() {
        return Err(ApiError::BadRequest {
            message: "`messages` must not be empty".into(),
            param: Some("messages".into()),
        });
    }
    // The same rules the provider applies (`response_format`, `tools`...), before routing.
    tenzro_models::api::structured(&req).map_err(|e| ApiError::BadRequest {
        message: e.message,
        param: Some(e.param),
    })?;
    let prompt_estimate = req
        .messages
        .iter()
        .map(|m| estimate_text(&m.text()) + 16)
        .sum::<u64>()
        + 16
        + tools_estimate(&req);
    let stream = req.is_stream();
    let include_usage = req.include_usage();
    if stream {
        req.stream_options = Some(StreamOptions {
            include_usage: Some(true),
        });
    }
    let inf = Inference {
        op: Operation::Chat,
        path: "/v1/chat/completions",
        max_tokens: req.max_new_tokens(),
        model: req.model.clone(),
        body: Bytes::from(serde_json::to_vec(&req).map_err(|e| ApiError::Internal(e.to_string()))?),
        stream,
        include_usage,
        prompt_estimate,
        generates: true,
        choices: choices(req.n, 1)?,
        ext: ext(&body)?,
    };
    proxy::run(&state, &key, inf, &rid, started).await
}

async fn completions(
    State(state): State<AppState>,
    Auth(key): Auth,
    RequestId(rid): RequestId,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut req: CompletionRequest = parse_json(&body)?;
    req.check_fields().map_err(field_error)?;
    require_model(&req.model)?;
    let prompt_estimate = match &req.prompt {
        Prompt::Text(s) => estimate_text(s),
        Prompt::Texts(v) => v.iter().map(|s| estimate_text(s)).sum(),
        Prompt::Tokens(t) => t.len() as u64,
        Prompt::TokenLists(l) => l.iter().map(|t| t.len() as u64).sum(),
    } + 16;
    let prompts = match &req.prompt {
        Prompt::Texts(v) => v.len() as u64,
        Prompt::TokenLists(l) => l.len() as u64,
        Prompt::Text(_) | Prompt::Tokens(_) => 1,
    };
    let choices = choices(req.n, prompts)?;
    let stream = req.is_stream();
    let include_usage = req.include_usage();
    if stream {
        req.stream_options = Some(StreamOptions {
            include_usage: Some(true),
        });
    }
    let inf = Inference {
        op: Operation::Completions,
        choices,
        path: "/v1/completions",
        max_tokens: Some(
            req.max_tokens
                .unwrap_or(CompletionRequest::DEFAULT_MAX_TOKENS),
        ),
        model: req.model.clone(),
        body: Bytes::from(serde_json::to_vec(&req).map_err(|e| ApiError::Internal(e.to_string()))?),
        stream,
        include_usage,
        prompt_estimate,
        generates: true,
        ext: ext(&body)?,
    };
    proxy::run(&state, &key, inf, &rid, started).await
}

async fn embeddings(
    State(state): State<AppState>,
    Auth(key): Auth,
    RequestId(rid): RequestId,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let req: EmbeddingRequest = parse_json(&body)?;
    req.check_fields().map_err(field_error)?;
    require_model(&req.model)?;
    let prompt_estimate = match &req.input {
        EmbeddingInput::Text(s) => estimate_text(s) + 2,
        EmbeddingInput::Texts(v) => v.iter().map(|s| estimate_text(s) + 2).sum(),
        EmbeddingInput::Tokens(t) => t.len() as u64,
        EmbeddingInput::TokenLists(l) => l.iter().map(|t| t.len() as u64).sum(),
    };
    let inf = Inference {
        op: Operation::Embeddings,
        path: "/v1/embeddings",
        max_tokens: None,
        model: req.model.clone(),
        // Forwarded as received: nothing to force for embeddings.
        body,
        stream: false,
        include_usage: false,
        prompt_estimate,
        generates: false,
        choices: 1,
        ext: RequestExt::default(),
    };
    proxy::run(&state, &key, inf, &rid, started).await
}

/// The union of the models routable providers serve, with registry fields.
async fn models(
    State(state): State<AppState>,
    Auth(key): Auth,
) -> Result<Json<ModelList>, ApiError> {
    if let Some(ops) = &key.record.scope.allowed_operations
        && !ops.contains(&Operation::Models)
    {
        return Err(ApiError::Forbidden("this key may not list models".into()));
    }
    let mut cards: std::collections::BTreeMap<String, (ModelCard, u128, u64, Option<u128>)> =
        Default::default();
    for p in state.registry.all() {
        if !state.registry.routable(&p) {
            continue;
        }
        for m in &p.info.models {
            if let Some(allowed) = &key.record.scope.allowed_models
                && !allowed.contains(&m.info.id)
            {
                continue;
            }
            let entry = cards.entry(m.info.id.clone()).or_insert_with(|| {
                let mut meta = match serde_json::to_value(&m.info) {
                    Ok(serde_json::Value::Object(o)) => o,
                    _ => serde_json::Map::new(),
                };
                meta.remove("id");
                meta.remove("price_per_token");
                let card = ModelCard {
                    id: m.info.id.clone(),
                    object: "model".into(),
                    created: 0,
                    owned_by: "tenzro".into(),
                    meta,
                };
                (card, m.price, 0, None)
            });
            entry.1 = entry.1.min(m.price);
            entry.2 += 1;
            // Only a verdict the gateway holds (trusted, fresh) makes a TEE
            // available; the lowest base price among those providers.
            if state.registry.tee_verified(&p) {
                entry.3 = Some(entry.3.map_or(m.price, |t: u128| t.min(m.price)));
            }
        }
    }
    let tee = |base: u128| {
        crate::pricing::mul_div_floor(
            base,
            u128::from(crate::pricing::tee_ppm(true)),
            u128::from(crate::pricing::PPM),
        )
        .unwrap_or(u128::MAX)
    };
    let data = cards
        .into_values()
        .map(|(mut card, price, n, tee_base)| {
            card.meta
                .insert("min_price_per_token".into(), price.to_string().into());
            // Both prices: without a TEE, and with one (base × 1.2, charged only
            // when the request asks for a TEE and a verified provider serves it).
            card.meta.insert(
                "min_tee_price_per_token".into(),
                tee_base.map(|b| tee(b).to_string()).into(),
            );
            card.meta.insert("price_asset".into(), "TNZO".into());
            card.meta.insert("providers".into(), n.into());
            card.meta
                .insert("tee_available".into(), tee_base.is_some().into());
            card
        })
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::Malformed(m) => ApiError::bad_request(m),
        RegistryError::Stale(_) => {
            ApiError::bad_request(format!("{e}; check the provider's clock"))
        }
        RegistryError::BadSignature => {
            ApiError::Unauthorized("registration signature does not verify".into())
        }
        RegistryError::KeyMismatch(_)
        | RegistryError::Banned(_)
        | RegistryError::IdNotKey { .. }
        | RegistryError::ConfigProvider(_) => ApiError::Forbidden(e.to_string()),
        RegistryError::UnknownProvider(_) => ApiError::NotFound(e.to_string()),
        RegistryError::OutOfBounds(_) => ApiError::bad_request(e.to_string()),
        RegistryError::RateLimited(s) => ApiError::RateLimited {
            message: e.to_string(),
            retry_after: std::time::Duration::from_secs(s),
        },
        RegistryError::Full(_) | RegistryError::PendingFull(_) => ApiError::Unavailable {
            message: e.to_string(),
            retry_after: std::time::Duration::from_secs(60),
        },
    }
}

/// The caller's address, when the server was started with connect info.
pub struct SourceAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for SourceAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(SourceAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// A signed registration: verified (signature, id = DID of the key, bounds), then
/// limited per source address, the endpoint's addresses checked, stored before the
/// answer, then probed off the request path; it enters routing once the endpoint answered.
async fn register(
    State(state): State<AppState>,
    SourceAddr(source): SourceAddr,
    ApiJson(signed): ApiJson<Signed>,
) -> Result<Response, ApiError> {
    // Verified before the source's limit is charged (see `Registry::prepare_from`).
    let info = state
        .registry
        .prepare_from(&signed, unix_now(), source)
        .map_err(registry_error)?;
    crate::registry_bounds::check_endpoint(
        &info.endpoint,
        state.config.registration.allow_private_endpoints,
    )
    .await
    .map_err(|m| registry_error(RegistryError::OutOfBounds(m)))?;
    let r = state.registry.admit(info).map_err(registry_error)?;
    crate::registry_store::save(&state.registry, &state.store)
        .await
        .map_err(internal)?;
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
            crate::attestation::verify_provider(&registry, &verifier, &id).await;
            if registry.is_reached(&id) || registry.get(&id).is_none() {
                break;
            }
        }
    });
    let mut body = serde_json::to_value(&r).map_err(internal)?;
    body["payer_key"] = state.payer_key.public_key().to_hex().into();
    Ok(Json(body).into_response())
}

async fn heartbeat(
    State(state): State<AppState>,
    ApiJson(signed): ApiJson<Signed>,
) -> Result<Response, ApiError> {
    let r = state
        .registry
        .heartbeat(&signed, unix_now())
        .map_err(registry_error)?;
    Ok(Json(r).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
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

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

async fn admin_create_account(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(n): ApiJson<NewAccount>,
) -> Result<Response, ApiError> {
    let balance = tokens(n.balance.as_deref())?;
    let (key, account, record) = state
        .accounts
        .create_account(&n.name, n.asset, balance, n.scope, n.identity)
        .await
        .map_err(internal)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "account": account, "key": key, "key_id": record.id })),
    )
        .into_response())
}

async fn admin_list_accounts(State(state): State<AppState>, _: Admin) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "object": "list", "data": state.accounts.list() }))
}

async fn admin_get_account(
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
struct NewKey {
    #[serde(default)]
    name: String,
    #[serde(default)]
    scope: KeyScope,
}

async fn admin_create_key(
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
            other => internal(other),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "key": key, "record": record })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credit {
    asset: Asset,
    /// Whole tokens, decimal string.
    amount: String,
}

async fn admin_credit(
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
            other => internal(other),
        })?;
    Ok(Json(
        serde_json::json!({ "account": id, "asset": c.asset, "balance": balance.to_string() }),
    ))
}

async fn admin_revoke_key(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match state.accounts.revoke(&id).await.map_err(internal)? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::NotFound(format!("no key {id}"))),
    }
}

async fn admin_providers(State(state): State<AppState>, _: Admin) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({ "object": "list", "data": state.registry.views(), "slashes": state.registry.slashes() }),
    )
}

/// Bans a provider for good (its key's DID can never register again) and slashes
/// its whole stake once; stored before the answer.
async fn admin_ban(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .registry
        .ban(&id, "banned by an admin")
        .map_err(registry_error)?;
    crate::registry_store::save(&state.registry, &state.store)
        .await
        .map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lifts a ban; what was slashed stays slashed.
async fn admin_unban(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.unban(&id).map_err(registry_error)?;
    crate::registry_store::save(&state.registry, &state.store)
        .await
        .map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let routable = state
        .registry
        .all()
        .iter()
        .filter(|p| state.registry.routable(p))
        .count();
    Json(serde_json::json!({ "status": "ok", "providers": routable }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(&state.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}
