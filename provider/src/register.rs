//! Registration and heartbeats with a gateway (`tenzro-provider --gateway URL`).
//!
//! [`run`] registers (retrying with backoff until the gateway answers), then sends a
//! signed heartbeat every interval the gateway asks for. A heartbeat answered with
//! 404 (the gateway forgot us, e.g. it restarted) registers again. Both messages go
//! in a [`Signed`] envelope: the JSON text and an Ed25519 signature over the domain
//! tag and that text (see `tenzro_models::api::registry`).
//!
//! Self-contained on purpose: a minimal HTTP/1.1 POST over `tokio::net::TcpStream`
//! (plain `http://` only), so the provider needs no HTTP client crate for this.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tenzro_models::api::{
    HEARTBEAT_DOMAIN, Heartbeat, HeartbeatResponse, REGISTER_DOMAIN, RegisterRequest, RegisterResponse, Signed,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers with `gateway` (e.g. `http://127.0.0.1:8080`) and keeps the
/// registration alive until `cancel` fires. `sign` returns the hex Ed25519
/// signature of the bytes it is given.
pub async fn run(
    gateway: String,
    registration: RegisterRequest,
    sign: impl Fn(&[u8]) -> String + Send + 'static,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let interval = tokio::select! {
            _ = cancel.cancelled() => return,
            r = register_once(&gateway, &registration, &sign) => r,
        };
        let interval = match interval {
            Ok(r) => {
                tracing::info!(gateway = %gateway, provider = %r.provider_id, status = %r.status, "registered with the gateway");
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
            match heartbeat_once(&gateway, &registration.provider_id, &sign).await {
                Ok(_) => {}
                Err(HeartbeatError::Unknown) => {
                    tracing::info!(gateway = %gateway, "the gateway does not know us any more; registering again");
                    break;
                }
                Err(HeartbeatError::Other(e)) => tracing::warn!(gateway = %gateway, error = %e, "heartbeat failed"),
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn envelope(domain: &[u8], payload: String, sign: &impl Fn(&[u8]) -> String) -> Signed {
    let signature = sign(&Signed::signed_bytes(domain, &payload));
    Signed { payload, signature }
}

/// Signs and sends one registration (with a fresh timestamp).
pub async fn register_once(
    gateway: &str,
    registration: &RegisterRequest,
    sign: &impl Fn(&[u8]) -> String,
) -> Result<RegisterResponse, String> {
    let mut r = registration.clone();
    r.timestamp = unix_now();
    let payload = serde_json::to_string(&r).map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&envelope(REGISTER_DOMAIN, payload, sign)).map_err(|e| e.to_string())?;
    let (status, resp) = post(gateway, "/v1/providers/register", &body).await?;
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
    gateway: &str,
    provider_id: &str,
    sign: &impl Fn(&[u8]) -> String,
) -> Result<HeartbeatResponse, HeartbeatError> {
    let hb = Heartbeat { provider_id: provider_id.to_owned(), timestamp: unix_now(), in_flight: None };
    let payload = serde_json::to_string(&hb).map_err(|e| HeartbeatError::Other(e.to_string()))?;
    let body = serde_json::to_vec(&envelope(HEARTBEAT_DOMAIN, payload, sign))
        .map_err(|e| HeartbeatError::Other(e.to_string()))?;
    let (status, resp) = post(gateway, "/v1/providers/heartbeat", &body).await.map_err(HeartbeatError::Other)?;
    match status {
        200 => serde_json::from_slice(&resp).map_err(|e| HeartbeatError::Other(e.to_string())),
        404 => Err(HeartbeatError::Unknown),
        s => Err(HeartbeatError::Other(format!("HTTP {s}: {}", String::from_utf8_lossy(&resp)))),
    }
}

/// POSTs JSON over HTTP/1.1 with `Connection: close`; returns status and body.
async fn post(base: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("gateway URL `{base}` must start with http://"))?;
    let (authority, prefix) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    let prefix = prefix.trim_end_matches("/v1");
    let addr = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let head = format!(
            "POST {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        stream.write_all(body).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        stream.take(1 << 20).read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        parse_response(&buf)
    };
    tokio::time::timeout(IO_TIMEOUT, exchange).await.map_err(|_| format!("{addr}: no answer in time"))?
}

fn parse_response(buf: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or("truncated HTTP response")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {}", head.lines().next().unwrap_or("")))?;
    let mut body = buf[split + 4..].to_vec();
    if head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")) {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Ok((200, b"{}".to_vec())));
        let chunked = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Ok((404, b"abcde".to_vec())));
        assert!(parse_response(b"garbage").is_err());
    }
}

