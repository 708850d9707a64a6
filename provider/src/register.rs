//! Registration and heartbeats with a gateway (`tenzro-provider --gateway URL`).
//!
//! [`run`] registers (retrying with backoff until the gateway answers), then sends a
//! signed heartbeat every interval the gateway asks for. A heartbeat answered with
//! 404 (the gateway forgot us, e.g. it restarted) registers again. Both messages go
//! in a [`Signed`] envelope: the JSON text and an Ed25519 signature over the domain
//! tag and that text (see `tenzro_models::api::registry`).
//!
//! The registration's answer names the gateway's payer key (`payer_key`): the key
//! whose signature (`x-tenzro-payer-auth`) pays for requests and whose vouchers the
//! provider accepts. [`run_with`] hands every answer to a callback, which `main`
//! uses to trust that key (see `payer`).
//!
//! HTTP goes through reqwest with rustls (the OS's root certificates), so the
//! gateway may be `https://`; redirects are not followed and answers are capped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tenzro_models::api::{
    HEARTBEAT_DOMAIN, Heartbeat, HeartbeatResponse, REGISTER_DOMAIN, RegisterRequest, Signed,
};
use tokio_util::sync::CancellationToken;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from a gateway.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The gateway's answer to a registration (`POST /v1/providers/register` 200).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Registered {
    /// The id the gateway registered us under: our key's DID.
    pub provider_id: String,
    /// `Active`, `Degraded`, `Inactive` or `Banned`.
    pub status: String,
    /// Seconds between heartbeats the gateway expects.
    pub heartbeat_interval_s: u64,
    /// Hex Ed25519 key of the gateway's voucher signer (absent from old gateways).
    #[serde(default)]
    pub payer_key: Option<String>,
}

/// The HTTP client for a gateway: rustls, no redirects, a timeout per request.
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(IO_TIMEOUT)
        .connect_timeout(IO_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tenzro-provider/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))
}

/// `path` (e.g. `/v1/providers/register`) on the gateway at `base`, which may end
/// with `/` or `/v1`.
pub fn url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    format!("{}{path}", base.strip_suffix("/v1").unwrap_or(base))
}

/// Registers with `gateway` (e.g. `https://gateway.example`) and keeps the
/// registration alive until `cancel` fires. `sign` returns the hex Ed25519
/// signature of the bytes it is given.
pub async fn run(
    gateway: String,
    registration: RegisterRequest,
    sign: impl Fn(&[u8]) -> String + Send + 'static,
    cancel: CancellationToken,
) {
    run_with(gateway, registration, sign, |_: &Registered| {}, cancel).await;
}

/// [`run`], calling `registered` with every successful registration's answer.
pub async fn run_with(
    gateway: String,
    registration: RegisterRequest,
    sign: impl Fn(&[u8]) -> String + Send + 'static,
    registered: impl Fn(&Registered) + Send + 'static,
    cancel: CancellationToken,
) {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot register with the gateway");
            return;
        }
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        let answer = tokio::select! {
            _ = cancel.cancelled() => return,
            r = register_once(&client, &gateway, &registration, &sign) => r,
        };
        let interval = match answer {
            Ok(r) => {
                tracing::info!(gateway = %gateway, provider = %r.provider_id, status = %r.status, "registered with the gateway");
                if r.provider_id != registration.provider_id {
                    tracing::warn!(ours = %registration.provider_id, theirs = %r.provider_id, "the gateway registered us under another id");
                }
                registered(&r);
                backoff = Duration::from_millis(500);
                Duration::from_secs(r.heartbeat_interval_s.clamp(1, 3600))
            }
            Err(e) => {
                tracing::warn!(gateway = %gateway, error = %e, retry_in_ms = backoff.as_millis() as u64, "registration failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // Heartbeat until the gateway forgets us.
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match heartbeat_once(&client, &gateway, &registration.provider_id, &sign).await {
                Ok(_) => {}
                Err(HeartbeatError::Unknown) => {
                    tracing::info!(gateway = %gateway, "the gateway does not know us any more; registering again");
                    break;
                }
                Err(HeartbeatError::Other(e)) => {
                    tracing::warn!(gateway = %gateway, error = %e, "heartbeat failed")
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn envelope(domain: &[u8], payload: String, sign: &impl Fn(&[u8]) -> String) -> Signed {
    let signature = sign(&Signed::signed_bytes(domain, &payload));
    Signed { payload, signature }
}

/// Signs and sends one registration (with a fresh timestamp).
pub async fn register_once(
    client: &reqwest::Client,
    gateway: &str,
    registration: &RegisterRequest,
    sign: &impl Fn(&[u8]) -> String,
) -> Result<Registered, String> {
    let mut r = registration.clone();
    r.timestamp = unix_now();
    let payload = serde_json::to_string(&r).map_err(|e| e.to_string())?;
    let body =
        serde_json::to_vec(&envelope(REGISTER_DOMAIN, payload, sign)).map_err(|e| e.to_string())?;
    let (status, resp) = post(client, gateway, "/v1/providers/register", body).await?;
    if status != 200 {
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&resp)));
    }
    serde_json::from_slice(&resp).map_err(|e| format!("bad answer: {e}"))
}

enum HeartbeatError {
    Unknown,
    Other(String),
}

async fn heartbeat_once(
    client: &reqwest::Client,
    gateway: &str,
    provider_id: &str,
    sign: &impl Fn(&[u8]) -> String,
) -> Result<HeartbeatResponse, HeartbeatError> {
    let hb = Heartbeat {
        provider_id: provider_id.to_owned(),
        timestamp: unix_now(),
        in_flight: None,
    };
    let payload = serde_json::to_string(&hb).map_err(|e| HeartbeatError::Other(e.to_string()))?;
    let body = serde_json::to_vec(&envelope(HEARTBEAT_DOMAIN, payload, sign))
        .map_err(|e| HeartbeatError::Other(e.to_string()))?;
    let (status, resp) = post(client, gateway, "/v1/providers/heartbeat", body)
        .await
        .map_err(HeartbeatError::Other)?;
    match status {
        200 => serde_json::from_slice(&resp).map_err(|e| HeartbeatError::Other(e.to_string())),
        404 => Err(HeartbeatError::Unknown),
        s => Err(HeartbeatError::Other(format!(
            "HTTP {s}: {}",
            String::from_utf8_lossy(&resp)
        ))),
    }
}

/// POSTs JSON; returns the status and at most [`MAX_ANSWER_BYTES`] of the body.
async fn post(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let request = client
        .post(url(base, path))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    send(request).await
}

/// Sends a request; returns the status and at most [`MAX_ANSWER_BYTES`] of the body
/// (an answer past that is an error, read no further).
pub async fn send(request: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), String> {
    let mut response = request.send().await.map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "HTTP {status}: the answer is larger than {MAX_ANSWER_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// A reqwest error with its causes (reqwest's own text omits them).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_join_with_or_without_v1_and_slashes() {
        for base in [
            "http://gw:8080",
            "http://gw:8080/",
            "http://gw:8080/v1",
            "http://gw:8080/v1/",
        ] {
            assert_eq!(
                url(base, "/v1/providers/register"),
                "http://gw:8080/v1/providers/register",
                "{base}"
            );
        }
        assert_eq!(
            url("https://gw.example/api", "/v1/account"),
            "https://gw.example/api/v1/account"
        );
    }

    #[test]
    fn the_answer_may_name_the_payer_key_or_not() {
        let old: Registered = serde_json::from_str(
            r#"{"provider_id":"p","status":"Active","heartbeat_interval_s":30}"#,
        )
        .unwrap();
        assert_eq!(old.payer_key, None);
        let new: Registered = serde_json::from_str(
            r#"{"provider_id":"p","status":"Active","heartbeat_interval_s":30,"payer_key":"ab","extra":1}"#,
        )
        .unwrap();
        assert_eq!(new.payer_key.as_deref(), Some("ab"));
    }

    #[tokio::test]
    async fn https_works_and_an_unreachable_gateway_is_a_clear_error() {
        // No TLS server here: the point is that an https URL is attempted (rustls is
        // built in) rather than refused as an unsupported scheme.
        let client = client().unwrap();
        let err = send(client.get("https://127.0.0.1:9/v1/account"))
            .await
            .unwrap_err();
        assert!(!err.contains("scheme"), "{err}");
        assert!(
            err.contains("127.0.0.1:9") || err.contains("connect"),
            "{err}"
        );
    }
}
