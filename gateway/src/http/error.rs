//! The one error type of the HTTP layer, in OpenAI's shape.
//!
//! Every refusal maps to a status by one exhaustive match; the body is
//! `{"error": {"message", "type", "param", "code"}}`. Internal causes are never
//! shown to clients: they ride in a response extension ([`ErrorCause`]) that the
//! request-logging middleware logs once.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tenzro_models::api::ErrorBody;

use crate::providers::registry::RegistryError;
use crate::providers::routing::NoProvider;

#[derive(Debug)]
pub enum ApiError {
    BadRequest {
        message: String,
        param: Option<String>,
    },
    PayloadTooLarge(usize),
    Unauthorized(String),
    PaymentRequired(String),
    Forbidden(String),
    ModelNotFound(String),
    NotFound(String),
    /// The resource is in a state that refuses the operation.
    Conflict(String),
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    NoProvider(NoProvider),
    /// Temporarily unable to serve (e.g. another replica holds the account).
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// Every provider tried failed before answering.
    Upstream {
        message: String,
        cause: String,
    },
    /// A provider's own 4xx answer, relayed as it came.
    Relayed {
        status: StatusCode,
        body: bytes::Bytes,
    },
    Internal(String),
}

/// The internal cause of an error response, for the log only.
#[derive(Debug, Clone)]
pub struct ErrorCause(pub String);

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::PaymentRequired(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::ModelNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoProvider(_) | ApiError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Relayed { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `type` label used in the body and in the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } | ApiError::PayloadTooLarge(_) => "invalid_request_error",
            ApiError::ModelNotFound(_) | ApiError::NotFound(_) | ApiError::Conflict(_) => {
                "invalid_request_error"
            }
            ApiError::Unauthorized(_) => "authentication_error",
            ApiError::PaymentRequired(_) => "insufficient_quota",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::RateLimited { .. } => "rate_limit_error",
            ApiError::NoProvider(_) | ApiError::Unavailable { .. } => "service_unavailable",
            ApiError::Upstream { .. } => "upstream_error",
            ApiError::Relayed { .. } => "upstream_client_error",
            ApiError::Internal(_) => "server_error",
        }
    }

    fn body(&self) -> ErrorBody {
        let kind = self.kind();
        match self {
            ApiError::BadRequest { message, param } => {
                let b = ErrorBody::new(kind, message.clone());
                match param {
                    Some(p) => b.with_param(p.clone()),
                    None => b,
                }
            }
            ApiError::PayloadTooLarge(n) => {
                ErrorBody::new(kind, format!("request body is larger than the limit of {n} bytes"))
                    .with_code("payload_too_large")
            }
            ApiError::Unauthorized(m) => ErrorBody::new(kind, m.clone()).with_code("invalid_api_key"),
            ApiError::PaymentRequired(m) => ErrorBody::new(kind, m.clone()).with_code("insufficient_funds"),
            ApiError::Forbidden(m) => ErrorBody::new(kind, m.clone()).with_code("permission_denied"),
            ApiError::ModelNotFound(m) => ErrorBody::new(
                kind,
                format!("The model '{m}' does not exist or no provider serves it; GET /v1/models lists what is served."),
            )
            .with_param("model")
            .with_code("model_not_found"),
            ApiError::NotFound(m) => ErrorBody::new(kind, m.clone()).with_code("not_found"),
            ApiError::Conflict(m) => ErrorBody::new(kind, m.clone()).with_code("conflict"),
            ApiError::RateLimited { message, .. } => ErrorBody::new(kind, message.clone()).with_code("rate_limit_exceeded"),
            ApiError::NoProvider(np) => ErrorBody::new(kind, np.to_string())
                .with_param(np.filter.as_str())
                .with_code("no_provider_available"),
            ApiError::Unavailable { message, .. } => ErrorBody::new(kind, message.clone()).with_code("replica_busy"),
            ApiError::Upstream { message, .. } => ErrorBody::new(kind, message.clone()).with_code("upstream_failed"),
            ApiError::Relayed { .. } => ErrorBody::new(kind, "the provider refused the request"),
            ApiError::Internal(_) => ErrorBody::new(kind, "internal error; the gateway logged the cause"),
        }
    }
}

impl From<crate::store::lease::LeaseError> for ApiError {
    fn from(e: crate::store::lease::LeaseError) -> Self {
        match e {
            crate::store::lease::LeaseError::HeldElsewhere(_) => ApiError::Unavailable {
                message: e.to_string(),
                retry_after: Duration::from_secs(1),
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let cause = match &self {
            ApiError::Upstream { cause, .. } | ApiError::Internal(cause) => Some(cause.clone()),
            _ => None,
        };
        let mut resp = match &self {
            ApiError::Relayed { body, .. } => {
                let mut r = body.clone().into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            _ => axum::Json(self.body()).into_response(),
        };
        *resp.status_mut() = status;
        if let ApiError::RateLimited { retry_after, .. }
        | ApiError::Unavailable { retry_after, .. } = &self
        {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp.extensions_mut().insert(ErrorKind(self.kind()));
        if let Some(c) = cause {
            resp.extensions_mut().insert(ErrorCause(c));
        }
        resp
    }
}

/// The error's `type`, for the errors metric.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

impl ApiError {
    /// An internal failure: a 500 whose cause is logged, never shown.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
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
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn check(err: ApiError, status: u16, kind: &str) {
        let resp = err.into_response();
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.extensions().get::<ErrorKind>().unwrap().0, kind);
    }

    #[test]
    fn statuses() {
        check(ApiError::bad_request("x"), 400, "invalid_request_error");
        check(
            ApiError::Unauthorized("x".into()),
            401,
            "authentication_error",
        );
        check(
            ApiError::PaymentRequired("x".into()),
            402,
            "insufficient_quota",
        );
        check(ApiError::Forbidden("x".into()), 403, "permission_error");
        check(
            ApiError::ModelNotFound("x".into()),
            404,
            "invalid_request_error",
        );
        check(ApiError::Internal("secret".into()), 500, "server_error");
        let r = ApiError::RateLimited {
            message: "slow".into(),
            retry_after: Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}
