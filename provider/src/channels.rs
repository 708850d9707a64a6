//! The payment-channel endpoints and the `x-tenzro-channel` credit check; the
//! rules live in `vouchers`.
//!
//! - `POST /v1/channels/vouchers` `{"vouchers": [Voucher, ...]}` (payer-signed, at
//!   most [`MAX_BATCH`]) answers 200 `{"vouchers": [countersigned Voucher, ...],
//!   "rejected": [{"channel_id", "nonce", "reason"}]}`, the accepted ones stored
//!   durably before the answer;
//! - `GET /v1/channels/{channel_id}/voucher` answers the latest countersigned
//!   voucher, or 404 (`code: "voucher_not_found"`);
//! - `GET /v1/channels` answers `{"data": [{"channel_id", "asset", "nonce",
//!   "cumulative_spent", "payer_key", "unpaid_tokens"}]}`, one entry per channel with
//!   a voucher or unpaid tokens (the voucher fields are null until its first one).
//!
//! Inference requests carrying `x-tenzro-channel: ID` are refused with 402
//! (`code: "channel_unpaid"`) while that channel's unpaid tokens exceed
//! `[channels] credit_limit_tokens`, and the tokens they are served (prompt plus
//! completion) are counted against it. Requests without the header are served as
//! before.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use tenzro_attest::Voucher;

use crate::error::{ApiError, ApiJson};
use crate::state::AppState;
use crate::vouchers::{ChannelId, Channels, MAX_BATCH, Outcome};

/// The header naming the channel an inference request is paid from.
pub const CHANNEL_HEADER: &str = "x-tenzro-channel";

#[derive(Debug, Deserialize)]
pub struct SubmitRequest {
    pub vouchers: Vec<Voucher>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub vouchers: Vec<Voucher>,
    pub rejected: Vec<RejectedVoucher>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RejectedVoucher {
    pub channel_id: String,
    pub nonce: u64,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChannelList {
    pub data: Vec<ChannelEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChannelEntry {
    pub channel_id: String,
    pub asset: Option<String>,
    pub nonce: Option<u64>,
    /// Decimal string: JSON numbers lose u128s.
    pub cumulative_spent: Option<String>,
    pub payer_key: Option<String>,
    pub unpaid_tokens: u64,
}

/// `POST /v1/channels/vouchers`.
pub async fn submit(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SubmitRequest>,
) -> Result<Json<SubmitResponse>, ApiError> {
    if req.vouchers.len() > MAX_BATCH {
        return Err(ApiError::bad_param(
            "vouchers",
            format!("A batch holds at most {MAX_BATCH} vouchers, got {}; split it", req.vouchers.len()),
        ));
    }
    let (channels, identity) = (state.channels.clone(), state.identity.clone());
    let outcome = tokio::task::spawn_blocking(move || channels.submit(req.vouchers, identity.key()))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(submit_response(outcome)))
}

fn submit_response(outcome: Outcome) -> SubmitResponse {
    let rejected = outcome
        .rejected
        .into_iter()
        .map(|r| RejectedVoucher { channel_id: r.channel_id, nonce: r.nonce, reason: r.reason.to_string() })
        .collect();
    SubmitResponse { vouchers: outcome.vouchers, rejected }
}

/// `GET /v1/channels/{channel_id}/voucher`.
pub async fn latest(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Voucher>, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::bad(format!("Invalid channel id in the path: {e}")))?;
    let channel = ChannelId::parse(&text).map_err(|e| ApiError::bad(e.to_string()))?;
    state.channels.latest(&channel).map(Json).ok_or_else(|| ApiError::NotFound {
        message: format!("No voucher has been accepted on channel `{channel}`"),
        code: "voucher_not_found",
    })
}

/// `GET /v1/channels`.
pub async fn list(State(state): State<AppState>) -> Json<ChannelList> {
    let data = state
        .channels
        .summaries()
        .into_iter()
        .map(|s| ChannelEntry {
            channel_id: s.channel_id,
            asset: s.latest.as_ref().map(|v| v.asset.clone()),
            nonce: s.latest.as_ref().map(|v| v.nonce),
            cumulative_spent: s.latest.as_ref().map(|v| v.cumulative_spent.to_string()),
            payer_key: s.latest.as_ref().map(|v| v.payer_key.to_hex()),
            unpaid_tokens: s.unpaid_tokens,
        })
        .collect();
    Json(ChannelList { data })
}

/// The channel an inference request is paid from, admitted under the credit
/// limit; [`Meter::record`] counts what it was served. Without the header it
/// counts nothing.
#[derive(Clone, Default)]
pub struct Meter(Option<(Arc<Channels>, ChannelId)>);

impl Meter {
    /// Counts tokens served to this request against its channel.
    pub fn record(&self, tokens: u64) {
        if let Some((channels, channel)) = &self.0 {
            channels.record(channel, tokens);
        }
    }
}

impl FromRequestParts<AppState> for Meter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(CHANNEL_HEADER) else {
            return Ok(Meter(None));
        };
        let bad = |e: String| ApiError::bad_param(CHANNEL_HEADER, format!("Invalid `{CHANNEL_HEADER}` header: {e}"));
        let text = value.to_str().map_err(|e| bad(e.to_string()))?;
        let channel = ChannelId::parse(text).map_err(|e| bad(e.to_string()))?;
        state.channels.admit(&channel)?;
        Ok(Meter(Some((state.channels.clone(), channel))))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use std::collections::HashMap;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::{Value, json};
    use tenzro_attest::evidence::none::NoTee;
    use tenzro_attest::{ProviderKey, VoucherBody};
    use tower::ServiceExt as _;

    use super::*;
    use crate::attestation::Identity;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::vouchers::BookSettings;

    fn provider_key() -> ProviderKey {
        ProviderKey::from_seed(&[9; 32])
    }

    fn payer() -> ProviderKey {
        ProviderKey::from_seed(&[7; 32])
    }

    fn state(dir: &std::path::Path, limit: u64) -> AppState {
        let config: Config = toml::from_str("listen = \"127.0.0.1:1\"\n").unwrap();
        let settings = BookSettings { path: dir.join("v.json"), credit_limit_tokens: limit, trusted_payers: vec![] };
        AppState {
            config: Arc::new(config),
            chat: Arc::new(HashMap::new()),
            embedding: Arc::new(HashMap::new()),
            metrics: Metrics::default(),
            started: 0,
            identity: Arc::new(Identity::new(provider_key(), Box::new(NoTee), []).unwrap()),
            channels: Arc::new(Channels::open(settings).unwrap()),
        }
    }

    async fn call(state: &AppState, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header(CHANNEL_HEADER, "ch-1")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let res = crate::routes::router(state.clone()).oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn voucher(nonce: u64, spent: u128) -> Voucher {
        VoucherBody { channel_id: "ch-1".into(), nonce, cumulative_spent: spent, asset: "TNZO".into() }.sign(&payer())
    }

    #[tokio::test]
    async fn vouchers_are_countersigned_listed_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), 0);
        let body = json!({"vouchers": [voucher(1, 10), voucher(1, 11)]}).to_string();
        let (status, json) = call(&state, "POST", "/v1/channels/vouchers", &body).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        let answer: SubmitResponse = serde_json::from_value(json).unwrap();
        assert_eq!(answer.vouchers.len(), 1);
        answer.vouchers[0].verify(Some(&payer().public_key()), Some(&provider_key().public_key())).unwrap();
        assert_eq!(answer.rejected[0].nonce, 1);
        assert!(answer.rejected[0].reason.contains("already accepted"), "{}", answer.rejected[0].reason);

        let (status, json) = call(&state, "GET", "/v1/channels/ch-1/voucher", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["cumulative_spent"], "10");
        assert_eq!(serde_json::from_value::<Voucher>(json).unwrap(), answer.vouchers[0]);

        let (status, json) = call(&state, "GET", "/v1/channels/nope/voucher", "").await;
        assert_eq!((status, json["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("voucher_not_found")));

        let (status, json) = call(&state, "GET", "/v1/channels", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json,
            json!({"data": [{
                "channel_id": "ch-1", "asset": "TNZO", "nonce": 1, "cumulative_spent": "10",
                "payer_key": payer().public_key().to_hex(), "unpaid_tokens": 0,
            }]})
        );
    }

    #[tokio::test]
    async fn bad_batches_are_refused_in_openai_shape() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), 0);
        let check = |body: String, needle: &'static str| {
            let state = state.clone();
            async move {
                let (status, json) = call(&state, "POST", "/v1/channels/vouchers", &body).await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
                let message = json["error"]["message"].as_str().unwrap();
                assert!(message.contains(needle), "{message}");
            }
        };
        check("{".into(), "not valid JSON").await;
        check("{}".into(), "missing field `vouchers`").await;
        check(r#"{"vouchers":[{"channel_id":"x"}]}"#.into(), "vouchers[0]").await;
        let mut v = serde_json::to_value(voucher(1, 1)).unwrap();
        v["cumulative_spent"] = json!(1);
        check(json!({"vouchers": [v]}).to_string(), "vouchers[0].cumulative_spent").await;
        let many: Vec<Voucher> = (0..=MAX_BATCH as u64).map(|n| voucher(n + 1, 1)).collect();
        check(json!({"vouchers": many}).to_string(), "at most 1024").await;
        assert!(!dir.path().join("v.json").exists());
    }

    #[tokio::test]
    async fn an_unpaid_channel_gets_402_until_a_voucher_pays() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), 10);
        let chat = r#"{"model":"m","messages":[]}"#;
        // Under the limit the request passes the credit check (and fails later: no model).
        let (status, _) = call(&state, "POST", "/v1/chat/completions", chat).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        state.channels.record(&ChannelId::parse("ch-1").unwrap(), 11);
        for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
            let (status, json) = call(&state, "POST", path, chat).await;
            assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{path}");
            assert_eq!(json["error"]["code"], "channel_unpaid");
            let message = json["error"]["message"].as_str().unwrap();
            assert!(message.contains("11 unpaid tokens") && message.contains("limit of 10"), "{message}");
        }
        let body = json!({"vouchers": [voucher(1, 10)]}).to_string();
        assert_eq!(call(&state, "POST", "/v1/channels/vouchers", &body).await.0, StatusCode::OK);
        assert_eq!(call(&state, "POST", "/v1/chat/completions", chat).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_bad_channel_header_is_a_400_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), 10);
        let req = Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header(CHANNEL_HEADER, "x".repeat(300))
            .body(Body::from("{}"))
            .unwrap();
        let res = crate::routes::router(state).oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"]["param"], CHANNEL_HEADER);
    }
}
