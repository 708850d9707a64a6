//! The web console at `/` (issue 15): static assets embedded in the binary
//! (`gateway/console/`: one page, vanilla JS, no build step) served under a strict
//! Content-Security-Policy, and the few routes its pages need that the API did not
//! have: the operator's recent counters (`GET /admin/stats`, a per-minute ring of
//! requests, errors, spend and tokens bounded to an hour: [`recent`]), an account's
//! agents (`GET /v1/account/agents`) and a receipt check (`POST /v1/receipts/verify`).
//!
//! [`recent::Recent`] is fed at two points: every inference request's status (by the
//! `observe` middleware) and every charge (where a response is settled).

pub mod recent;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tenzro_attest::Receipt;

use crate::accounts::Operation;
use crate::http::error::ApiError;
use crate::http::extract::{Admin, ApiJson, Auth};
use crate::state::AppState;
use recent::{Minute, rates};

const INDEX_HTML: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const STYLE_CSS: &str = include_str!("../console/style.css");

/// The page may load only its own script and style and talk only to this origin;
/// nothing inline, no frames, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The console's routes: the page, its assets and the data routes it needs.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/console/app.js", get(app_js))
        .route("/console/style.css", get(style_css))
        .route("/admin/stats", get(stats))
        .route("/v1/account/agents", get(agents))
        .route("/v1/receipts/verify", post(verify_receipt))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn style_css() -> Response {
    asset(STYLE_CSS, "text/css; charset=utf-8")
}

/// `GET /admin/stats`: the last hour by minute, and the live rates.
async fn stats(State(state): State<AppState>, _: Admin) -> Json<Value> {
    let now = state.clock.unix();
    let hour = state.metrics.recent.hour(now);
    let (requests, errors) = rates(&hour, now);
    Json(json!({
        "object": "stats",
        "now": now,
        "requests_per_second": requests,
        "errors_per_second": errors,
        "minutes": hour.iter().map(Minute::json).collect::<Vec<_>>(),
    }))
}

/// `GET /v1/account/agents`: the keys of the caller's account that act for an agent
/// identity, with their scopes (never their secrets).
async fn agents(State(state): State<AppState>, Auth(key): Auth) -> Result<Json<Value>, ApiError> {
    crate::accounts::require_operation(&key, Operation::Account)?;
    let data: Vec<Value> = state
        .accounts
        .keys_of(&key.record.account)
        .into_iter()
        .filter(|k| k.identity.is_some())
        .map(|k| {
            json!({
                "key_id": k.id,
                "name": k.name,
                "identity": k.identity,
                "scope": k.scope,
                "created": k.created,
            })
        })
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    /// `tenzro.receipt` of an answer.
    receipt: Value,
    /// The provider it must come from (its id: the DID of its key).
    #[serde(default)]
    provider: Option<String>,
}

#[derive(Serialize)]
struct Verdict {
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<Value>,
}

/// `POST /v1/receipts/verify`: checks a receipt's Ed25519 signature and, when
/// `provider` is given, that it signed it. Computed here, nothing stored; a receipt
/// that does not verify is `200 {"valid": false, "error": ...}`.
async fn verify_receipt(ApiJson(req): ApiJson<VerifyRequest>) -> Json<Verdict> {
    Json(check_receipt(req))
}

fn check_receipt(req: VerifyRequest) -> Verdict {
    let invalid = |error: String, signer: Option<String>| Verdict {
        valid: false,
        error: Some(error),
        signer,
        receipt: None,
    };
    let receipt = match Receipt::deserialize(&req.receipt) {
        Ok(r) => r,
        Err(e) => return invalid(format!("`receipt` is not a provider receipt: {e}"), None),
    };
    let signer = receipt.provider_key.did();
    if let Some(p) = req.provider.filter(|p| *p != signer) {
        return invalid(
            format!("the receipt is signed by {signer}, not by {p}"),
            Some(signer),
        );
    }
    match receipt.verify(None) {
        Ok(()) => Verdict {
            valid: true,
            error: None,
            signer: Some(signer),
            receipt: Some(req.receipt),
        },
        Err(e) => invalid(format!("the signature does not verify: {e}"), Some(signer)),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn receipts_are_checked_for_signature_and_signer() {
        let key = tenzro_attest::ProviderKey::from_seed(&[9; 32]);
        let body = tenzro_attest::ReceiptBody {
            model: "m".into(),
            weight_sha256: [1; 32],
            request_sha256: [2; 32],
            response_sha256: [3; 32],
            prompt_tokens: 4,
            completion_tokens: 5,
            issued_at: 6,
        };
        let good = serde_json::to_value(body.sign(&key)).unwrap();
        let did = key.did();
        let v = check_receipt(VerifyRequest {
            receipt: good.clone(),
            provider: Some(did.clone()),
        });
        assert!(v.valid && v.error.is_none());
        let v = check_receipt(VerifyRequest {
            receipt: good.clone(),
            provider: Some("did:tenzro:other".into()),
        });
        assert!(!v.valid && v.error.unwrap().contains("not by did:tenzro:other"));
        let mut forged = good;
        forged["completion_tokens"] = 500.into();
        let v = check_receipt(VerifyRequest {
            receipt: forged,
            provider: None,
        });
        assert!(!v.valid && v.error.unwrap().contains("does not verify"));
        let v = check_receipt(VerifyRequest {
            receipt: json!({"x": 1}),
            provider: None,
        });
        assert!(!v.valid && v.error.unwrap().contains("not a provider receipt"));
    }
}
