//! The extractors every handler uses: JSON bodies whose errors name the field
//! ([`ApiJson`], [`RawBody`], [`parse_json`]), the caller's key ([`Auth`]), the
//! admin token ([`Admin`]) and the caller's address ([`SourceAddr`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::accounts::KeyEntry;
use crate::http::error::ApiError;
use crate::state::AppState;

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

/// Parses a JSON body; a failure names the field in the message and in `param`
/// (a missing field too), as the provider does.
pub fn parse_json<T: DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    if b.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    // The usual case, a valid body, without tracking the path (its bookkeeping
    // was ~1/3 of the parse); a refused one is parsed again to name the field.
    if let Ok(v) = serde_json::from_slice(b) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(b);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request(format!("invalid JSON body: {inner}"));
        }
        let text = inner.to_string();
        // serde names a missing field in its message, at the path of the object
        // that lacks it.
        let missing = text
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            .map(|f| {
                if path == "." {
                    f.to_owned()
                } else {
                    format!("{path}.{f}")
                }
            });
        let param = missing.or((path != ".").then_some(path));
        let message = match &param {
            Some(p) => format!("invalid JSON body: `{p}`: {text}"),
            None => format!("invalid JSON body: {text}"),
        };
        ApiError::BadRequest { message, param }
    })
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
        // A store failure while looking the key up is a 500, never "incorrect key".
        state
            .accounts
            .lookup(key)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::Unauthorized("incorrect API key provided".into()))
            .and_then(|k| check_active(state, &k).map(|()| Auth(k)))
    }
}

/// Refuses keys whose identity (the agent's, else the account's), or any identity
/// controlling it up the chain, is not active.
pub fn check_active(state: &AppState, key: &KeyEntry) -> Result<(), ApiError> {
    let Some(did) = &key.did else {
        return Ok(());
    };
    let reg = state.identities.read();
    if reg.resolve(did).is_none() {
        // An account naming a DID this registry does not hold.
        return Ok(());
    }
    match reg.inactive_in_chain(did) {
        Some((who, status)) if &who == did => Err(ApiError::Forbidden(format!(
            "identity {did} is {status}; its keys may not be used"
        ))),
        Some((who, status)) => Err(ApiError::Forbidden(format!(
            "identity {who}, which controls {did}, is {status}; the keys under it may not be used"
        ))),
        None => Ok(()),
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
        if admin_token_matches(state, got) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized("incorrect admin token".into()))
        }
    }
}

/// Whether `got` is the configured admin token (never when none is configured),
/// compared through SHA-256 digests (no early exit on content).
pub fn admin_token_matches(state: &AppState, got: &str) -> bool {
    let want = state.config.server.admin_token.expose();
    !want.is_empty() && Sha256::digest(got.as_bytes()) == Sha256::digest(want.as_bytes())
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

#[cfg(test)]
mod tests {
    #![expect(clippy::panic, reason = "tests")]
    use super::*;
    use tenzro_models::api::ChatCompletionRequest;

    fn refusal(body: &str) -> (String, Option<String>) {
        match parse_json::<ChatCompletionRequest>(body.as_bytes()) {
            Err(ApiError::BadRequest { message, param }) => (message, param),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn parse_errors_name_the_field() {
        assert_eq!(refusal("").1, None);
        assert_eq!(refusal("{").1, None);
        let (m, p) = refusal(r#"{"model":"m"}"#);
        assert!(m.contains("missing field `messages`"), "{m}");
        assert_eq!(p.as_deref(), Some("messages"));
        let (m, p) = refusal(r#"{"model":"m","messages":[],"max_tokens":"ten"}"#);
        assert!(m.contains("max_tokens"), "{m}");
        assert_eq!(p.as_deref(), Some("max_tokens"));
        let (_, p) = refusal(r#"{"model":"m","messages":[{"content":"x"}]}"#);
        assert_eq!(p.as_deref(), Some("messages[0].role"));
    }
}
