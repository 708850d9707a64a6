//! One error type for the HTTP surface, answered in OpenAI's shape.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tenzro_models::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("The model `{0}` does not exist or is not served here")]
    ModelNotFound(String),
    /// A named thing other than a model is missing (`code` names what).
    #[error("{message}")]
    NotFound { message: String, code: &'static str },
    /// The channel in `x-tenzro-channel` owes more than the credit limit.
    #[error("{0}")]
    ChannelUnpaid(#[from] crate::vouchers::Unpaid),
    /// A provider attached to a gateway refuses a request its payer did not sign.
    #[error("{message}")]
    PaymentRequired { message: String, code: &'static str },
    /// A read of the channel book without the payer's signature or the operator token.
    #[error("{message}")]
    Unauthorized { message: String, code: &'static str },
    /// Too many fresh attestation documents asked for; retry after some seconds.
    #[error(
        "Too many fresh attestation requests from this address; retry after {retry_after} s (a nonce asked before is answered from the cache)"
    )]
    RateLimited { retry_after: u32 },
    /// The voucher store reached its configured size.
    #[error("{0}")]
    StoreFull(String),
    #[error("Request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("The server is overloaded; retry after {retry_after} s")]
    Overloaded { retry_after: u32 },
    #[error("The model engine is not available")]
    Unavailable,
    /// Something on our side; the cause is logged, the client sees a generic text.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param.to_owned()),
            code: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::ChannelUnpaid(_) | ApiError::PaymentRequired { .. } => {
                StatusCode::PAYMENT_REQUIRED
            }
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::StoreFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded { .. } | ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let (kind, code, param) = match self {
            ApiError::BadRequest { param, code, .. } => {
                ("invalid_request_error", *code, param.clone())
            }
            ApiError::ModelNotFound(_) => (
                "invalid_request_error",
                Some("model_not_found"),
                Some("model".into()),
            ),
            ApiError::NotFound { code, .. } => ("invalid_request_error", Some(*code), None),
            ApiError::ChannelUnpaid(_) => ("invalid_request_error", Some("channel_unpaid"), None),
            ApiError::PaymentRequired { code, .. } => ("invalid_request_error", Some(*code), None),
            ApiError::Unauthorized { code, .. } => ("authentication_error", Some(*code), None),
            ApiError::RateLimited { .. } => ("requests", Some("rate_limit_exceeded"), None),
            ApiError::StoreFull(_) => ("server_error", Some("voucher_store_full"), None),
            ApiError::PayloadTooLarge(_) => {
                ("invalid_request_error", Some("request_too_large"), None)
            }
            ApiError::Overloaded { .. } => ("server_error", Some("overloaded"), None),
            ApiError::Unavailable => ("server_error", Some("unavailable"), None),
            ApiError::Internal(_) => ("server_error", None, None),
        };
        let message = match self {
            ApiError::Internal(_) => {
                "The server had an error while processing your request".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = ErrorBody::new(kind, message);
        body.error.code = code.map(str::to_owned);
        body.error.param = param;
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let ApiError::Overloaded { retry_after } | ApiError::RateLimited { retry_after } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }
}

/// JSON body extractor whose every failure is an OpenAI-shaped error naming the
/// field at fault (`messages[0].role: unknown variant ...`).
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// [`ApiJson`] that also keeps the SHA-256 of the exact body bytes, which a
/// receipt signs as its request digest.
pub struct HashedJson<T> {
    pub value: T,
    pub sha256: [u8; 32],
}

impl<T, S> FromRequest<S> for HashedJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        let value = parse_json(&bytes)?;
        Ok(HashedJson {
            value,
            sha256: tenzro_attest::sha256(&bytes),
        })
    }
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let limit = req.extensions().get::<BodyLimit>().map(|l| l.0);
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit.unwrap_or_default())
        } else {
            ApiError::bad(format!("Could not read the request body: {e}"))
        }
    })
}

/// The configured body limit, for the 413 message.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad(
            "The request body is empty; send a JSON object",
        ));
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad(
            "The request body must be a JSON object (`{...}`)",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let syntax = inner.is_syntax() || inner.is_eof();
        let message = if syntax {
            format!("The request body is not valid JSON: {inner}")
        } else if path == "." {
            format!("Invalid request: {inner}")
        } else {
            format!("Invalid value for `{path}`: {inner}")
        };
        // Broken JSON names no field (serde_path_to_error says `?` inside an object).
        // A missing field is named in serde's message, at the path of the object
        // that lacks it.
        let text = inner.to_string();
        let missing = text
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            .map(|f| match path.as_str() {
                "." => f.to_owned(),
                p => format!("{p}.{f}"),
            });
        let param = if syntax {
            None
        } else {
            missing.or((path != ".").then_some(path))
        };
        ApiError::BadRequest {
            message,
            param,
            code: None,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use tenzro_models::api::ChatCompletionRequest;

    #[test]
    fn parse_errors_name_the_field() {
        let check = |body: &str, needle: &str, param: Option<&str>| {
            let err = parse_json::<ChatCompletionRequest>(body.as_bytes()).unwrap_err();
            let ApiError::BadRequest {
                message, param: p, ..
            } = &err
            else {
                panic!("{err:?}")
            };
            assert!(message.contains(needle), "{body}: {message}");
            assert_eq!(p.as_deref(), param, "{body}");
        };
        check("", "empty", None);
        check("{", "not valid JSON", None);
        check("[1]", "must be a JSON object", None);
        check("  null", "must be a JSON object", None);
        check(
            r#"{"model":"m"}"#,
            "missing field `messages`",
            Some("messages"),
        );
        check(
            r#"{"model":"m","messages":[{"content":"x"}]}"#,
            "missing field `role`",
            Some("messages[0].role"),
        );
        check(
            r#"{"model":"m","messages":[],"max_tokens":"ten"}"#,
            "max_tokens",
            Some("max_tokens"),
        );
        check(
            r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
            "messages[0].role",
            Some("messages[0].role"),
        );
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let r: ChatCompletionRequest =
            parse_json(br#"{"model":"m","messages":[],"logit_bias":{},"new_field_2027":true}"#)
                .unwrap();
        assert_eq!(r.model, "m");
    }
}
