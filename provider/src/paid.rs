//! The provider is paid or says no: the HTTP checks over `payer`.
//!
//! - [`require_payment`] wraps the inference routes. Attached to a gateway, a request
//!   must name its channel (`x-tenzro-channel`) and carry `x-tenzro-payer-auth`
//!   signed by the trusted payer over its method, path, channel and exact body
//!   (`tenzro_attest::payer::PaidRequest`); anything else is 402. Standalone it
//!   passes everything through.
//! - [`authorize`] guards the channel book: `POST /v1/channels/vouchers` needs the
//!   payer's signature; `GET /v1/channels` and `GET /v1/channels/{id}/voucher` need
//!   it or the operator token (`Authorization: Bearer <token>`, the token in the
//!   environment variable `[operator] token_env`, `TENZRO_OPERATOR_TOKEN` by default).
//!   Otherwise 401.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tenzro_attest::PublicKey;
use tenzro_attest::payer::{PAYER_AUTH_HEADER, PaidRequest, PayerAuthError};

use crate::channels::CHANNEL_HEADER;
use crate::error::ApiError;
use crate::state::AppState;

/// The SHA-256 of the operator token, when one is set.
#[derive(Clone, Default)]
pub struct OperatorToken(Option<[u8; 32]>);

impl OperatorToken {
    /// The token from the environment variable `var`; none when unset or empty.
    pub fn from_env(var: &str) -> OperatorToken {
        OperatorToken::new(std::env::var(var).ok().as_deref())
    }

    pub fn new(token: Option<&str>) -> OperatorToken {
        OperatorToken(
            token
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| tenzro_attest::sha256(t.as_bytes())),
        )
    }

    /// Whether `headers` carry `Authorization: Bearer <the token>`.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.0 else {
            return false;
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Comparing digests keeps the comparison's time independent of the token.
        given.is_some_and(|g| tenzro_attest::sha256(g.trim().as_bytes()) == *expected)
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `header` is a payer's signature of this request by one of `keys`.
fn signed_by_one_of(
    request: &PaidRequest<'_>,
    header: Option<&str>,
    keys: &[PublicKey],
    now: u64,
) -> Result<(), PayerAuthError> {
    let mut last = PayerAuthError::BadSignature;
    for key in keys {
        match request.verify(header, key, now) {
            Ok(()) => return Ok(()),
            Err(
                e @ (PayerAuthError::Missing | PayerAuthError::Malformed | PayerAuthError::Stale),
            ) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn payer_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(PAYER_AUTH_HEADER).and_then(|v| v.to_str().ok())
}

/// Which callers a channel-book endpoint admits.
pub struct Guard<'a> {
    /// The channel the signature must name ("" for reads and posts naming none).
    pub channel_id: &'a str,
    /// Payer keys accepted besides the trusted ones (a channel's own payer).
    pub also: Vec<PublicKey>,
    /// Whether the operator token is accepted.
    pub operator: bool,
}

/// Checks the payer's signature (or the operator token) on a channel-book request.
pub fn authorize(
    state: &AppState,
    parts: &Parts,
    body: &[u8],
    guard: Guard<'_>,
) -> Result<(), ApiError> {
    if guard.operator && state.operator.admits(&parts.headers) {
        return Ok(());
    }
    let mut keys = state.payers.trusted();
    keys.extend(guard.also);
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let request = PaidRequest {
        method: parts.method.as_str(),
        path_and_query: path,
        channel_id: guard.channel_id,
        body,
    };
    let header = payer_header(&parts.headers);
    let who = if guard.operator {
        "the payer's signature or the operator token"
    } else {
        "the payer's signature"
    };
    if header.is_none() {
        let message = if guard.operator
            && state.operator.0.is_some()
            && parts.headers.contains_key("authorization")
        {
            "The operator token is not valid".to_owned()
        } else {
            format!(
                "This endpoint needs {who}: send {PAYER_AUTH_HEADER} (or, for reads, Authorization: Bearer <operator token>)"
            )
        };
        return Err(ApiError::Unauthorized {
            message,
            code: "payer_auth_required",
        });
    }
    if keys.is_empty() {
        let message = if state.payers.attached() {
            "This provider trusts no payer yet: it learns its gateway's payer key when it registers"
        } else {
            "No payer key to check the signature against (a voucher batch is signed by its vouchers' payer)"
        };
        return Err(ApiError::Unauthorized {
            message: message.into(),
            code: "payer_unknown",
        });
    }
    signed_by_one_of(&request, header, &keys, unix_now()).map_err(|e| ApiError::Unauthorized {
        message: format!("Refused: {e}"),
        code: "payer_auth_invalid",
    })
}

/// Middleware of the inference routes: attached to a gateway, only requests its
/// payer signed are served.
pub async fn require_payment(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.payers.attached() {
        return next.run(req).await;
    }
    match check_paid(&state, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn unpaid(message: String, code: &'static str) -> ApiError {
    ApiError::PaymentRequired { message, code }
}

async fn check_paid(state: &AppState, req: Request) -> Result<Request, ApiError> {
    let (parts, body) = req.into_parts();
    let Some(channel) = parts.headers.get(CHANNEL_HEADER) else {
        return Err(unpaid(
            "This provider is attached to a gateway and serves only requests paid through it; this request \
             names no payment channel (x-tenzro-channel). Send it through the gateway."
                .into(),
            "payment_required",
        ));
    };
    let channel = channel.to_str().map_err(|_| {
        ApiError::bad_param(
            CHANNEL_HEADER,
            format!("Invalid `{CHANNEL_HEADER}` header: not visible ASCII"),
        )
    })?;
    let keys = state.payers.trusted();
    if keys.is_empty() {
        return Err(unpaid(
            "This provider has not registered with its gateway yet, so it knows no payer; unpaid requests are \
             refused. Retry through the gateway in a moment."
                .into(),
            "payer_unknown",
        ));
    }
    let limit = state.config.server.max_body_bytes;
    let bytes: Bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))?;
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let request = PaidRequest {
        method: parts.method.as_str(),
        path_and_query: path,
        channel_id: channel,
        body: &bytes,
    };
    signed_by_one_of(&request, payer_header(&parts.headers), &keys, unix_now())
        .map_err(|e| unpaid(format!("Payment refused: {e}"), "payer_auth_invalid"))?;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use tenzro_attest::ProviderKey;

    #[test]
    fn the_operator_token_is_compared_whole() {
        let t = OperatorToken::new(Some("s3cret"));
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("authorization", v.parse().unwrap());
            h
        };
        assert!(t.admits(&headers("Bearer s3cret")));
        for bad in ["Bearer s3cre", "Bearer s3cret2", "s3cret", "Bearer "] {
            assert!(!t.admits(&headers(bad)), "{bad}");
        }
        assert!(!t.admits(&HeaderMap::new()));
        // No token configured: nobody is the operator.
        for none in [None, Some(""), Some("  ")] {
            assert!(!OperatorToken::new(none).admits(&headers("Bearer ")));
        }
    }

    #[test]
    fn one_of_several_keys_may_sign() {
        let (a, b, c) = (
            ProviderKey::from_seed(&[1; 32]),
            ProviderKey::from_seed(&[2; 32]),
            ProviderKey::from_seed(&[3; 32]),
        );
        let req = PaidRequest {
            method: "GET",
            path_and_query: "/v1/channels",
            channel_id: "",
            body: b"",
        };
        let header = req.sign(&b, 1_000);
        let keys = [a.public_key(), b.public_key()];
        assert_eq!(signed_by_one_of(&req, Some(&header), &keys, 1_000), Ok(()));
        assert_eq!(
            signed_by_one_of(&req, Some(&req.sign(&c, 1_000)), &keys, 1_000),
            Err(PayerAuthError::BadSignature)
        );
        assert_eq!(
            signed_by_one_of(&req, None, &keys, 1_000),
            Err(PayerAuthError::Missing)
        );
        assert_eq!(
            signed_by_one_of(&req, Some(&header), &keys, 5_000),
            Err(PayerAuthError::Stale)
        );
        assert_eq!(
            signed_by_one_of(&req, Some(&header), &[], 1_000),
            Err(PayerAuthError::BadSignature)
        );
    }
}
