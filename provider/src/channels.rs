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
//! Each needs the payer's `x-tenzro-payer-auth` (the reads also take the operator
//! token), else 401: see `paid`.
//!
//! Inference requests carrying `x-tenzro-channel: ID` are refused with 402
//! (`code: "channel_unpaid"`) while that channel's unpaid tokens exceed
//! `[channels] credit_limit_tokens`, and the tokens they are served (prompt plus
//! completion) are counted against it. Requests without the header are served only
//! by a standalone provider (attached to a gateway, `paid` refuses them first).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use tenzro_attest::Voucher;

use bytes::Bytes;

use crate::error::{ApiError, parse_json};
use crate::paid::{Guard, authorize};
use crate::state::AppState;
use crate::vouchers::{ChannelId, Channels, MAX_BATCH, Outcome, StoreError};

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

/// `POST /v1/channels/vouchers`: signed by the payer (`x-tenzro-payer-auth`, no
/// channel). A closed provider checks the signature before reading the batch; an
/// open one (standalone, trust on first use) against the payer of its first voucher.
pub async fn submit(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SubmitResponse>, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(state.config.server.max_body_bytes)
        } else {
            ApiError::bad(format!("Could not read the request body: {e}"))
        }
    })?;
    let closed = state.payers.closed();
    let guard = |also| Guard {
        channel_id: "",
        also,
        operator: false,
    };
    if closed {
        authorize(&state, &parts, &body, guard(vec![]))?;
    }
    let req: SubmitRequest = parse_json(&body)?;
    if !closed {
        authorize(
            &state,
            &parts,
            &body,
            guard(
                req.vouchers
                    .first()
                    .map(|v| v.payer_key)
                    .into_iter()
                    .collect(),
            ),
        )?;
    }
    if req.vouchers.len() > MAX_BATCH {
        return Err(ApiError::bad_param(
            "vouchers",
            format!(
                "A batch holds at most {MAX_BATCH} vouchers, got {}; split it",
                req.vouchers.len()
            ),
        ));
    }
    let (channels, identity) = (state.channels.clone(), state.identity.clone());
    let outcome =
        tokio::task::spawn_blocking(move || channels.submit(req.vouchers, identity.key()))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| match e {
                e @ StoreError::Full { .. } => ApiError::StoreFull(e.to_string()),
                e => ApiError::Internal(e.to_string()),
            })?;
    Ok(Json(submit_response(outcome)))
}

fn submit_response(outcome: Outcome) -> SubmitResponse {
    let rejected = outcome
        .rejected
        .into_iter()
        .map(|r| RejectedVoucher {
            channel_id: r.channel_id,
            nonce: r.nonce,
            reason: r.reason.to_string(),
        })
        .collect();
    SubmitResponse {
        vouchers: outcome.vouchers,
        rejected,
    }
}

/// `GET /v1/channels/{channel_id}/voucher`: for the payer (trusted, or the one the
/// channel is pinned to) signing with this channel id, or the operator.
pub async fn latest(
    State(state): State<AppState>,
    parts: Parts,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Voucher>, ApiError> {
    let Path(text) =
        path.map_err(|e| ApiError::bad(format!("Invalid channel id in the path: {e}")))?;
    let channel = ChannelId::parse(&text).map_err(|e| ApiError::bad(e.to_string()))?;
    let latest = state.channels.latest(&channel);
    let also = latest.iter().map(|v| v.payer_key).collect();
    authorize(
        &state,
        &parts,
        b"",
        Guard {
            channel_id: channel.as_str(),
            also,
            operator: true,
        },
    )?;
    latest.map(Json).ok_or_else(|| ApiError::NotFound {
        message: format!("No voucher has been accepted on channel `{channel}`"),
        code: "voucher_not_found",
    })
}

/// `GET /v1/channels`: for the trusted payer (signing with no channel) or the operator.
pub async fn list(
    State(state): State<AppState>,
    parts: Parts,
) -> Result<Json<ChannelList>, ApiError> {
    authorize(
        &state,
        &parts,
        b"",
        Guard {
            channel_id: "",
            also: vec![],
            operator: true,
        },
    )?;
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
    Ok(Json(ChannelList { data }))
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
        let bad = |e: String| {
            ApiError::bad_param(
                CHANNEL_HEADER,
                format!("Invalid `{CHANNEL_HEADER}` header: {e}"),
            )
        };
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
    use crate::paid::OperatorToken;
    use crate::payer::PayerTrust;
    use crate::throttle::{Cache, RateLimiter};
    use crate::vouchers::BookSettings;
    use tenzro_attest::payer::{PAYER_AUTH_HEADER, PaidRequest};

    fn provider_key() -> ProviderKey {
        ProviderKey::from_seed(&[9; 32])
    }

    fn payer() -> ProviderKey {
        ProviderKey::from_seed(&[7; 32])
    }

    fn state(dir: &std::path::Path, limit: u64) -> AppState {
        state_with(dir, limit, Arc::new(PayerTrust::new(false, vec![])))
    }

    pub(crate) fn state_with(
        dir: &std::path::Path,
        limit: u64,
        payers: Arc<PayerTrust>,
    ) -> AppState {
        let config: Config = toml::from_str("listen = \"127.0.0.1:1\"\n").unwrap();
        let settings = BookSettings {
            path: dir.join("v.json"),
            credit_limit_tokens: limit,
            trust: payers.clone(),
            max_channels: 1000,
            max_store_bytes: 1 << 20,
        };
        AppState {
            payers,
            operator: OperatorToken::new(Some("op-token")),
            evidence: Arc::new(Cache::new(4)),
            evidence_limit: Arc::new(RateLimiter::new(60, 2, 16)),
            config: Arc::new(config),
            chat: Arc::new(HashMap::new()),
            embedding: Arc::new(HashMap::new()),
            metrics: Metrics::default(),
            started: 0,
            identity: Arc::new(Identity::new(provider_key(), Box::new(NoTee), []).unwrap()),
            channels: Arc::new(Channels::open(settings).unwrap()),
        }
    }

    /// Sends a request on channel ch-1 signed by `payer()` (the signature names the
    /// channel for inference and voucher reads, none for the list and batches).
    async fn call(state: &AppState, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        let channel = match uri
            .strip_prefix("/v1/channels/")
            .and_then(|r| r.strip_suffix("/voucher"))
        {
            Some(id) => id,
            None if uri.starts_with("/v1/channels") => "",
            None => "ch-1",
        };
        let auth = PaidRequest {
            method,
            path_and_query: uri,
            channel_id: channel,
            body: body.as_bytes(),
        }
        .sign(&payer(), crate::paid::unix_now());
        call_with(
            state,
            method,
            uri,
            body,
            &[(CHANNEL_HEADER, "ch-1"), (PAYER_AUTH_HEADER, &auth)],
        )
        .await
    }

    pub(crate) async fn call_with(
        state: &AppState,
        method: &str,
        uri: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Body::from(body.to_owned())).unwrap();
        let res = crate::routes::router(state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn voucher(nonce: u64, spent: u128) -> Voucher {
        VoucherBody {
            channel_id: "ch-1".into(),
            nonce,
            cumulative_spent: spent,
            asset: "TNZO".into(),
        }
        .sign(&payer())
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
        answer.vouchers[0]
            .verify(
                Some(&payer().public_key()),
                Some(&provider_key().public_key()),
            )
            .unwrap();
        assert_eq!(answer.rejected[0].nonce, 1);
        assert!(
            answer.rejected[0].reason.contains("already accepted"),
            "{}",
            answer.rejected[0].reason
        );

        let (status, json) = call(&state, "GET", "/v1/channels/ch-1/voucher", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["cumulative_spent"], "10");
        assert_eq!(
            serde_json::from_value::<Voucher>(json).unwrap(),
            answer.vouchers[0]
        );

        let op = [("authorization", "Bearer op-token")];
        let (status, json) = call_with(&state, "GET", "/v1/channels/nope/voucher", "", &op).await;
        assert_eq!(
            (status, json["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("voucher_not_found"))
        );

        // Standalone, the list (every channel's spend) is for the operator only.
        assert_eq!(
            call(&state, "GET", "/v1/channels", "").await.0,
            StatusCode::UNAUTHORIZED
        );
        let (status, json) = call_with(&state, "GET", "/v1/channels", "", &op).await;
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
        check(
            json!({"vouchers": [v]}).to_string(),
            "vouchers[0].cumulative_spent",
        )
        .await;
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
        state
            .channels
            .record(&ChannelId::parse("ch-1").unwrap(), 11);
        for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
            let (status, json) = call(&state, "POST", path, chat).await;
            assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{path}");
            assert_eq!(json["error"]["code"], "channel_unpaid");
            let message = json["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("11 unpaid tokens") && message.contains("limit of 10"),
                "{message}"
            );
        }
        let body = json!({"vouchers": [voucher(1, 10)]}).to_string();
        assert_eq!(
            call(&state, "POST", "/v1/channels/vouchers", &body).await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&state, "POST", "/v1/chat/completions", chat).await.0,
            StatusCode::NOT_FOUND
        );
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
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"]["param"], CHANNEL_HEADER);
    }

    fn signed(method: &str, uri: &str, channel: &str, body: &str, key: &ProviderKey) -> String {
        PaidRequest {
            method,
            path_and_query: uri,
            channel_id: channel,
            body: body.as_bytes(),
        }
        .sign(key, crate::paid::unix_now())
    }

    fn code(json: &Value) -> &str {
        json["error"]["code"].as_str().unwrap_or("")
    }

    #[tokio::test]
    async fn the_book_is_shown_only_to_the_payer_or_the_operator() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), 0);
        let stranger = ProviderKey::from_seed(&[8; 32]);
        let batch = json!({"vouchers": [voucher(1, 10)]}).to_string();
        // A batch needs its payer's signature (standalone: the payer of its vouchers).
        let (status, json) = call_with(&state, "POST", "/v1/channels/vouchers", &batch, &[]).await;
        assert_eq!(
            (status, code(&json)),
            (StatusCode::UNAUTHORIZED, "payer_auth_required"),
            "{json}"
        );
        let forged = signed("POST", "/v1/channels/vouchers", "", &batch, &stranger);
        let (status, json) = call_with(
            &state,
            "POST",
            "/v1/channels/vouchers",
            &batch,
            &[(PAYER_AUTH_HEADER, &forged)],
        )
        .await;
        assert_eq!(
            (status, code(&json)),
            (StatusCode::UNAUTHORIZED, "payer_auth_invalid"),
            "{json}"
        );
        assert!(state.channels.summaries().is_empty());
        assert_eq!(
            call(&state, "POST", "/v1/channels/vouchers", &batch)
                .await
                .0,
            StatusCode::OK
        );

        // Reads: nothing without a signature or the operator token.
        for uri in [
            "/v1/channels",
            "/v1/channels/ch-1/voucher",
            "/v1/channels/nope/voucher",
        ] {
            let (status, json) = call_with(&state, "GET", uri, "", &[]).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
            assert_eq!(json["error"]["type"], "authentication_error");
            assert!(
                json["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("x-tenzro-payer-auth"),
                "{json}"
            );
            let (status, _) =
                call_with(&state, "GET", uri, "", &[("authorization", "Bearer wrong")]).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
            let (status, _) = call_with(
                &state,
                "GET",
                uri,
                "",
                &[("authorization", "Bearer op-token")],
            )
            .await;
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{uri}");
        }
        // The channel's own payer reads its voucher, signing with the channel id.
        let uri = "/v1/channels/ch-1/voucher";
        let ok = signed("GET", uri, "ch-1", "", &payer());
        assert_eq!(
            call_with(&state, "GET", uri, "", &[(PAYER_AUTH_HEADER, &ok)])
                .await
                .0,
            StatusCode::OK
        );
        for bad in [
            signed("GET", uri, "ch-2", "", &payer()),
            signed("GET", uri, "ch-1", "", &stranger),
        ] {
            assert_eq!(
                call_with(&state, "GET", uri, "", &[(PAYER_AUTH_HEADER, &bad)])
                    .await
                    .0,
                StatusCode::UNAUTHORIZED
            );
        }
        // A stranger cannot tell a missing channel from a hidden one.
        let nope = signed("GET", "/v1/channels/nope/voucher", "nope", "", &stranger);
        let (status, _) = call_with(
            &state,
            "GET",
            "/v1/channels/nope/voucher",
            "",
            &[(PAYER_AUTH_HEADER, &nope)],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn an_attached_provider_serves_only_what_its_payer_signed() {
        let dir = tempfile::tempdir().unwrap();
        let trust = Arc::new(PayerTrust::new(true, vec![]));
        let state = state_with(dir.path(), 0, trust.clone());
        let chat = r#"{"model":"m","messages":[]}"#;
        // Before registration no payer is known: refused, not served for free.
        let (status, json) = call(&state, "POST", "/v1/chat/completions", chat).await;
        assert_eq!(
            (status, code(&json)),
            (StatusCode::PAYMENT_REQUIRED, "payer_unknown"),
            "{json}"
        );
        trust.learn(payer().public_key());
        // Paid: passes to the handler (which has no model here).
        assert_eq!(
            call(&state, "POST", "/v1/chat/completions", chat).await.0,
            StatusCode::NOT_FOUND
        );
        let stranger = ProviderKey::from_seed(&[8; 32]);
        for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
            let (status, json) = call_with(&state, "POST", path, chat, &[]).await;
            assert_eq!(
                (status, code(&json)),
                (StatusCode::PAYMENT_REQUIRED, "payment_required"),
                "{path}"
            );
            assert!(
                json["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("attached to a gateway"),
                "{json}"
            );
            let (status, json) =
                call_with(&state, "POST", path, chat, &[(CHANNEL_HEADER, "ch-1")]).await;
            assert_eq!(
                (status, code(&json)),
                (StatusCode::PAYMENT_REQUIRED, "payer_auth_invalid"),
                "{path}"
            );
            assert!(
                json["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("missing x-tenzro-payer-auth"),
                "{json}"
            );
            let cases = [
                signed("POST", path, "ch-1", chat, &stranger),
                signed("POST", path, "ch-2", chat, &payer()),
                signed("POST", path, "ch-1", "{}", &payer()),
                signed("POST", "/v1/other", "ch-1", chat, &payer()),
                "12.zz".to_owned(),
            ];
            for auth in cases {
                let headers = [(CHANNEL_HEADER, "ch-1"), (PAYER_AUTH_HEADER, auth.as_str())];
                let (status, json) = call_with(&state, "POST", path, chat, &headers).await;
                assert_eq!(
                    status,
                    StatusCode::PAYMENT_REQUIRED,
                    "{path} {auth}: {json}"
                );
            }
        }
        // Vouchers: only the trusted payer posts, and only its vouchers are taken.
        let foreign = VoucherBody {
            channel_id: "f".into(),
            nonce: 1,
            cumulative_spent: 1,
            asset: "TNZO".into(),
        }
        .sign(&stranger);
        let batch = json!({"vouchers": [foreign]}).to_string();
        let own = signed("POST", "/v1/channels/vouchers", "", &batch, &stranger);
        let (status, _) = call_with(
            &state,
            "POST",
            "/v1/channels/vouchers",
            &batch,
            &[(PAYER_AUTH_HEADER, &own)],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, json) = call(&state, "POST", "/v1/channels/vouchers", &batch).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            json["rejected"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("not this provider's trusted payer"),
            "{json}"
        );
        assert!(state.channels.summaries().is_empty());
        // The trusted payer lists the book.
        assert_eq!(
            call(&state, "GET", "/v1/channels", "").await.0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn fresh_attestations_are_limited_and_repeated_nonces_cached() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), 0);
        let get = |nonce: String| {
            let state = state.clone();
            async move {
                let req = Request::builder()
                    .uri(format!("/v1/attestation?nonce={nonce}"))
                    .body(Body::empty())
                    .unwrap();
                crate::routes::router(state).oneshot(req).await.unwrap()
            }
        };
        let first = get("aa".repeat(16)).await;
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(get("bb".repeat(16)).await.status(), StatusCode::OK);
        let limited = get("cc".repeat(16)).await;
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(limited.headers().contains_key("retry-after"));
        // A nonce asked before is answered from the cache, limit or not.
        let again = get("aa".repeat(16)).await;
        assert_eq!(again.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(again.into_body(), usize::MAX)
            .await
            .unwrap();
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["nonce"], "aa".repeat(16));
    }
}
