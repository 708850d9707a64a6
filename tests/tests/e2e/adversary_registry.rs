//! Attacks on the provider registry (issue 10), each against a real gateway over
//! HTTP with real (small, hostile) servers: id squatting (a config provider's id,
//! another key's DID, and after a restart), absurd prices, private endpoints,
//! registrations at dead addresses, a 1 GiB attestation answer, a redirect to a
//! private address, a registration flood. Each is refused or bounded, the honest
//! provider keeps serving, and the book's conservation audit holds after money moved.

#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::gateway_common::*;
use serde_json::{Value, json};
use tenzro_attest::keys::ProviderKey;
use tenzro_gateway::config::Config;
use tenzro_gateway::pricing::Asset;
use tenzro_models::api::{REGISTER_DOMAIN, RegisterRequest, Signed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn registration(key: &ProviderKey, endpoint: &str) -> RegisterRequest {
    RegisterRequest {
        stake: "1000000000000000000000000000".into(),
        max_concurrency: Some(1),
        ..crate::gateway_common::registration(key, endpoint, tenzro_gateway::clock::unix_now())
    }
}

/// Posts `r` signed by `key`; the status and body.
async fn register(gw: &Gateway, key: &ProviderKey, r: &RegisterRequest) -> (u16, Value) {
    let payload = serde_json::to_string(r).unwrap();
    let signature = key
        .sign(&Signed::signed_bytes(REGISTER_DOMAIN, &payload))
        .to_hex();
    let resp = gw
        .post("/v1/providers/register", None)
        .json(&Signed { payload, signature })
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn message(b: &Value) -> &str {
    b["error"]["message"].as_str().unwrap_or("")
}

fn chat_body() -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
}

/// An honest chat request is served by the honest provider (`fingerprint`).
async fn honest_request_served(gw: &Gateway, fingerprint: &str) {
    let resp = gw.chat(chat_body()).send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["system_fingerprint"], fingerprint, "{body}");
    gw.state.book.audit(&gw.account, Asset::Tnzo).unwrap();
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn dev(
    providers: Vec<tenzro_gateway::config::StaticProvider>,
) -> impl FnOnce(&std::path::Path) -> Config {
    move |d| test_config(providers, d)
}

#[tokio::test]
async fn ids_cannot_be_squatted() {
    let honest = mock_provider("honest", Behaviour::Ok { chunks: 2 }).await;
    let evil = mock_provider("evil", Behaviour::Ok { chunks: 2 }).await;
    let gw = start_gateway(dev(vec![static_provider("local", &honest.url)]), None).await;
    let attacker = ProviderKey::from_seed(&[66; 32]);

    // A fresh key claiming the config provider's id.
    let mut r = registration(&attacker, &evil.url);
    r.provider_id = "local".into();
    let (s, b) = register(&gw, &attacker, &r).await;
    assert_eq!(s, 403, "{b}");
    assert!(
        message(&b).contains("not the DID of the signing key"),
        "{b}"
    );

    // A registered provider's DID, claimed with another key.
    let real = ProviderKey::from_seed(&[1; 32]);
    let (s, b) = register(&gw, &real, &registration(&real, &honest.url)).await;
    assert_eq!(
        (s, b["provider_id"].as_str()),
        (200, Some(real.did().as_str())),
        "{b}"
    );
    assert_eq!(b["payer_key"], gw.state.payer_key.public_key().to_hex());
    let mut r = registration(&attacker, &evil.url);
    r.provider_id = real.did();
    let (s, b) = register(&gw, &attacker, &r).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(
        gw.state.registry.get(&real.did()).unwrap().info.endpoint,
        honest.url
    );
    assert_eq!(
        gw.state.registry.get("local").unwrap().info.endpoint,
        honest.url
    );
    // Its declared 10^27 stake counts for nothing.
    assert_eq!(
        gw.state
            .registry
            .stake_of(&gw.state.registry.get(&real.did()).unwrap()),
        0
    );

    honest_request_served(&gw, "honest").await;
    assert_eq!(evil.calls(), 0);
}

#[tokio::test]
async fn a_restart_changes_nothing_for_a_squatter() {
    let honest = mock_provider("honest", Behaviour::Ok { chunks: 2 }).await;
    let evil = mock_provider("evil", Behaviour::Ok { chunks: 2 }).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let d1 = data.clone();
    let gw = start_gateway(move |_| test_config(vec![], &d1), None).await;
    let real = ProviderKey::from_seed(&[2; 32]);
    let attacker = ProviderKey::from_seed(&[67; 32]);
    assert_eq!(
        register(&gw, &real, &registration(&real, &honest.url))
            .await
            .0,
        200
    );
    assert_eq!(
        register(&gw, &attacker, &registration(&attacker, &evil.url))
            .await
            .0,
        200
    );
    // The admin bans the attacker: its key's DID, for good, with a 100% slash.
    let resp = gw
        .http
        .post(format!("{}/admin/providers/{}/ban", gw.url, attacker.did()))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    gw.state.cancel.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Restart on the same store: the attacker registers first.
    let d2 = data.clone();
    let again = start_gateway(move |_| test_config(vec![], &d2), None).await;
    let mut r = registration(&attacker, &evil.url);
    r.provider_id = real.did();
    let (s, b) = register(&again, &attacker, &r).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = register(&again, &attacker, &registration(&attacker, &evil.url)).await;
    assert_eq!(s, 403, "{b}");
    assert!(message(&b).contains("banned"), "{b}");
    // The honest provider was restored from the store (key bound), and is routed
    // to once the gateway reached it again.
    let e = again.state.registry.get(&real.did()).unwrap();
    assert_eq!(
        (e.info.endpoint.as_str(), e.info.public_key),
        (honest.url.as_str(), Some(real.public_key()))
    );
    assert_eq!(
        register(&again, &real, &registration(&real, &honest.url))
            .await
            .0,
        200
    );
    until("the honest provider reached", || {
        again.state.registry.is_reached(&real.did())
    })
    .await;
    honest_request_served(&again, "honest").await;
    assert_eq!(evil.calls(), 0);
}

#[tokio::test]
async fn absurd_prices_are_refused_at_registration() {
    let honest = mock_provider("honest", Behaviour::Ok { chunks: 2 }).await;
    let gw = start_gateway(dev(vec![static_provider("local", &honest.url)]), None).await;
    let attacker = ProviderKey::from_seed(&[68; 32]);
    for price in [u128::MAX.to_string(), "100000000000000000000000".to_owned()] {
        let mut r = registration(&attacker, &honest.url);
        r.models[0].price_per_token = price;
        let (s, b) = register(&gw, &attacker, &r).await;
        assert_eq!(s, 400, "{b}");
        assert!(message(&b).contains("max_price_per_token"), "{b}");
    }
    let mut r = registration(&attacker, &honest.url);
    r.models[0].max_context = Some(u32::MAX);
    let (s, b) = register(&gw, &attacker, &r).await;
    assert!(s == 400 && message(&b).contains("max_context"), "{b}");
    assert!(gw.state.registry.get(&attacker.did()).is_none());
    honest_request_served(&gw, "honest").await;
}

#[tokio::test]
async fn private_endpoints_are_refused_on_a_public_gateway() {
    let gw = start_gateway(
        |d| {
            let mut c = test_config(vec![], d);
            c.registration.allow_private_endpoints = false;
            c
        },
        None,
    )
    .await;
    let attacker = ProviderKey::from_seed(&[69; 32]);
    for endpoint in [
        "http://127.0.0.1:9",
        "http://[::1]:9",
        "http://localhost:9",
        "http://169.254.169.254",
        "http://10.0.0.1:8000",
        "http://[fd00::1]:80",
        "http://[::ffff:192.168.0.1]:80",
    ] {
        let (s, b) = register(&gw, &attacker, &registration(&attacker, endpoint)).await;
        assert_eq!(s, 400, "{endpoint}: {b}");
        assert!(message(&b).contains("loopback, private"), "{endpoint}: {b}");
    }
    let (s, b) = register(&gw, &attacker, &registration(&attacker, "ftp://8.8.8.8")).await;
    assert!(s == 400 && message(&b).contains("http(s)"), "{b}");
    assert!(gw.state.registry.all().is_empty());
}

#[tokio::test]
async fn registrations_at_dead_addresses_do_not_break_an_honest_request() {
    let honest = mock_provider("honest", Behaviour::Ok { chunks: 2 }).await;
    let gw = start_gateway(dev(vec![static_provider("local", &honest.url)]), None).await;
    // Cheaper than the honest provider: lowest-price routing would try them first.
    for seed in [70u8, 71] {
        let key = ProviderKey::from_seed(&[seed; 32]);
        let mut r = registration(&key, "http://127.0.0.1:9");
        r.models[0].price_per_token = "1".into();
        let (s, b) = register(&gw, &key, &r).await;
        assert_eq!(s, 200, "{b}");
    }
    for _ in 0..3 {
        honest_request_served(&gw, "honest").await;
    }
    assert_eq!(honest.calls(), 3);
    assert!(
        gw.state
            .registry
            .views()
            .iter()
            .all(|v| v.from_config || !v.reached)
    );
}

/// A server whose `/v1/attestation` streams `bytes` zeros (chunked, no length)
/// or redirects to `location`; `/health` answers 404. Counts requests.
async fn hostile_attestation(
    bytes: usize,
    location: Option<String>,
) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (hits, sent) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, s) = (hits.clone(), sent.clone());
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let (location, s) = (location.clone(), s.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = c.read(&mut buf).await.unwrap_or(0);
                if !String::from_utf8_lossy(&buf[..n]).starts_with("GET /v1/attestation") {
                    let _ = c
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                if let Some(loc) = location {
                    let head = format!(
                        "HTTP/1.1 302 Found\r\nlocation: {loc}\r\ncontent-length: 0\r\n\r\n"
                    );
                    let _ = c.write_all(head.as_bytes()).await;
                    return;
                }
                if c.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n").await.is_err() {
                    return;
                }
                let chunk = vec![b'0'; 64 << 10];
                let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                frame.extend_from_slice(&chunk);
                frame.extend_from_slice(b"\r\n");
                let mut left = bytes;
                while left > 0 {
                    if c.write_all(&frame).await.is_err() {
                        return;
                    }
                    s.fetch_add(chunk.len(), Ordering::SeqCst);
                    left = left.saturating_sub(chunk.len());
                }
                let _ = c.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (format!("http://{addr}"), hits, sent)
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_gigabyte_attestation_answer_leaves_the_gateway_bounded() {
    let honest = mock_provider("honest", Behaviour::Ok { chunks: 2 }).await;
    let (url, _, sent) = hostile_attestation(1 << 30, None).await;
    let gw = start_gateway(dev(vec![static_provider("local", &honest.url)]), None).await;
    let before = vm_rss_kib();
    let key = ProviderKey::from_seed(&[72; 32]);
    let mut r = registration(&key, &url);
    r.models[0].price_per_token = "1".into();
    assert_eq!(register(&gw, &key, &r).await.0, 200);
    let id = key.did();
    until("a verdict", || gw.state.registry.attestation(&id).is_some()).await;
    let v = gw.state.registry.attestation(&id).unwrap();
    assert!(!v.trusted && !v.slashable, "{v:?}");
    assert!(
        v.reasons
            .iter()
            .any(|r| r.to_string().contains("over 1048576 bytes")),
        "{v:?}"
    );
    assert!(
        !gw.state.registry.is_reached(&id),
        "not reached: out of routing"
    );
    let after = vm_rss_kib();
    assert!(after < 200 * 1024, "RSS {after} KiB (before {before} KiB)");
    // The gateway stopped reading near the cap (socket buffers aside).
    assert!(
        sent.load(Ordering::SeqCst) < 64 << 20,
        "{} bytes sent",
        sent.load(Ordering::SeqCst)
    );
    honest_request_served(&gw, "honest").await;
}

#[tokio::test]
async fn a_redirect_to_a_private_address_is_not_followed() {
    let honest = mock_provider("honest", Behaviour::Ok { chunks: 2 }).await;
    // The target is "inside" (loopback): it must never be fetched.
    let (inside, inside_hits, _) = hostile_attestation(10, None).await;
    let (url, hits, _) = hostile_attestation(0, Some(format!("{inside}/v1/attestation"))).await;
    let gw = start_gateway(dev(vec![static_provider("local", &honest.url)]), None).await;
    let key = ProviderKey::from_seed(&[73; 32]);
    assert_eq!(register(&gw, &key, &registration(&key, &url)).await.0, 200);
    let id = key.did();
    until("a verdict", || gw.state.registry.attestation(&id).is_some()).await;
    let v = gw.state.registry.attestation(&id).unwrap();
    assert!(
        v.reasons.iter().any(|r| r.to_string().contains("302")),
        "{v:?}"
    );
    assert!(hits.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        inside_hits.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    assert!(!gw.state.registry.is_reached(&id));
    honest_request_served(&gw, "honest").await;
}

#[tokio::test]
async fn a_registration_flood_from_one_address_is_limited() {
    let honest = mock_provider("honest", Behaviour::Ok { chunks: 2 }).await;
    let gw = start_gateway(
        |d| {
            let mut c = test_config(vec![static_provider("local", &honest.url)], d);
            c.registration.per_source_per_minute = 3;
            c
        },
        None,
    )
    .await;
    let mut statuses = Vec::new();
    for seed in 80u8..85 {
        let key = ProviderKey::from_seed(&[seed; 32]);
        statuses.push(register(&gw, &key, &registration(&key, "http://127.0.0.1:9")).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|(s, _)| *s).collect();
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    assert_eq!(
        statuses[3].1["error"]["type"], "rate_limit_error",
        "{:?}",
        statuses[3]
    );
    honest_request_served(&gw, "honest").await;
}
