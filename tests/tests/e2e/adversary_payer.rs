//! A payer (or anyone) attacking the payment channels of a running gateway, with a
//! real provider-side voucher loop: a small provider server in this test that
//! registers with its own key, serves, and countersigns the gateway's vouchers.
//! Each attack is refused, every dispute settles at the channel's latest state,
//! and the book's conservation audit holds after each.

#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::sync::Arc;
use std::time::Duration;

use crate::gateway_common::*;
use axum::Router;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tenzro_attest::keys::ProviderKey;
use tenzro_attest::voucher::Voucher;
use tenzro_gateway::clock::unix_now;
use tenzro_gateway::money::dispute_auth::{HEADER, SignedDispute};
use tenzro_gateway::pricing::Asset;
use tenzro_models::api::{RegisterRequest, Signed};

/// A provider that answers `max_tokens` words and countersigns every voucher.
async fn countersigning_provider(key: Arc<ProviderKey>) -> String {
    async fn chat(body: axum::body::Bytes) -> axum::Json<Value> {
        let req: Value = serde_json::from_slice(&body).unwrap_or_default();
        let n = req["max_tokens"].as_u64().unwrap_or(1).clamp(1, 256);
        let content = "word ".repeat(n as usize);
        axum::Json(json!({
            "id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
        }))
    }
    let vouchers = move |axum::Json(batch): axum::Json<Value>| {
        let key = key.clone();
        async move {
            let mut out = Vec::new();
            for v in batch["vouchers"].as_array().cloned().unwrap_or_default() {
                let mut v: Voucher = serde_json::from_value(v).unwrap();
                v.countersign(&key).unwrap();
                out.push(v);
            }
            axum::Json(json!({ "vouchers": out }))
        }
    };
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/channels/vouchers", post(vouchers));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Registers `key`'s provider at `endpoint` and waits until it serves.
async fn register(gw: &Gateway, key: &ProviderKey, endpoint: &str) -> String {
    let payload = serde_json::to_string(&RegisterRequest {
        max_concurrency: Some(64),
        ..registration(key, endpoint, unix_now())
    })
    .unwrap();
    let signature = key
        .sign(&Signed::signed_bytes(
            tenzro_models::api::REGISTER_DOMAIN,
            &payload,
        ))
        .to_hex();
    let r = gw
        .post("/v1/providers/register", None)
        .json(&Signed { payload, signature })
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "registration: {body}");
    let mut last = Value::Null;
    for _ in 0..100 {
        let r = gw.chat(chat(1)).send().await.unwrap();
        if r.status().as_u16() == 200 {
            return r.headers()["x-tenzro-channel"].to_str().unwrap().to_owned();
        }
        last = r.json().await.unwrap_or(Value::Null);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the provider never served: {last}");
}

fn chat(max_tokens: u64) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens})
}

async fn start(window_s: u64, idle_s: u64, sweep_s: u64) -> Gateway {
    start_on(window_s, idle_s, sweep_s, None).await
}

/// [`start`] on a given clock (idle times and dispute windows then pass when the
/// test moves it).
async fn start_on(
    window_s: u64,
    idle_s: u64,
    sweep_s: u64,
    clock: Option<tenzro_gateway::clock::SharedClock>,
) -> Gateway {
    start_gateway(
        move |d| {
            let mut c = test_config(vec![], d);
            c.registration.allow_private_endpoints = true;
            c.channels.voucher_interval_ms = 30;
            c.channels.checkpoint_interval_ms = 60;
            c.channels.challenge_window_s = window_s;
            c.channels.settle_sweep_s = sweep_s;
            c.store.lease_idle_s = idle_s;
            c
        },
        clock,
    )
    .await
}

async fn get_json(gw: &Gateway, path: &str, key: &str) -> (u16, Value) {
    let r = gw
        .http
        .get(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The latest countersigned voucher of `channel`, once its nonce reaches `nonce`.
async fn voucher_at_least(gw: &Gateway, channel: &str, nonce: u64) -> Voucher {
    for _ in 0..200 {
        let (s, v) = get_json(gw, &format!("/v1/channels/{channel}/voucher"), &gw.key).await;
        if s == 200 {
            let v: Voucher = serde_json::from_value(v).unwrap();
            if v.nonce >= nonce {
                return v;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no countersigned voucher at nonce {nonce} on {channel}");
}

/// POSTs a dispute: with an API key, or signed by `provider`, or neither.
async fn dispute(
    gw: &Gateway,
    channel: &str,
    body: &[u8],
    key: Option<&str>,
    provider: Option<&ProviderKey>,
) -> (u16, Value) {
    let path = format!("/v1/channels/{channel}/dispute");
    let mut rb = gw
        .http
        .post(format!("{}{path}", gw.url))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    if let Some(p) = provider {
        let h = SignedDispute {
            method: "POST",
            path_and_query: &path,
            channel_id: channel,
            body,
        }
        .sign(p, unix_now());
        rb = rb.header(HEADER, h);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn audit(gw: &Gateway) {
    gw.state.book.audit(&gw.account, Asset::Tnzo).unwrap();
}

/// Polls the channel (through the API, which loads the account from the store
/// when it left memory) until it is closed.
async fn closed(gw: &Gateway, channel: &str, within: Duration) -> Value {
    let end = tokio::time::Instant::now() + within;
    loop {
        let (s, c) = get_json(gw, &format!("/v1/channels/{channel}"), &gw.key).await;
        assert_eq!(s, 200, "{c}");
        if c["state"] == "closed" {
            return c;
        }
        assert!(tokio::time::Instant::now() < end, "never settled: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stale-voucher clawback: a small request, its voucher saved, heavy use, then
/// a dispute with the old voucher. Refused from everyone; the anonymous dispute is
/// 401 and another account's key sees nothing; the channel settles at its latest
/// state.
#[tokio::test]
async fn a_stale_voucher_cannot_claw_back_payments() {
    let gw = start(2, 60, 3600).await;
    let key = Arc::new(ProviderKey::from_seed(&[21; 32]));
    let url = countersigning_provider(key.clone()).await;
    let channel = register(&gw, &key, &url).await;
    let old = voucher_at_least(&gw, &channel, 1).await;
    let old_body = serde_json::to_vec(&json!({ "voucher": old })).unwrap();
    for _ in 0..4 {
        let r = gw.chat(chat(200)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["x-tenzro-channel"].to_str().unwrap(), channel);
    }
    let (_, c) = get_json(&gw, &format!("/v1/channels/{channel}"), &gw.key).await;
    let (nonce, spent) = (
        c["nonce"].as_u64().unwrap(),
        c["spent"].as_str().unwrap().to_owned(),
    );
    let latest = voucher_at_least(&gw, &channel, nonce).await;
    assert!(
        latest.cumulative_spent > old.cumulative_spent * 4,
        "heavy use: {} then {}",
        old.cumulative_spent,
        latest.cumulative_spent
    );
    audit(&gw);

    // Anonymous: 401, whatever the body.
    let (s, e) = dispute(&gw, &channel, &old_body, None, None).await;
    assert_eq!(s, 401, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("API key"),
        "{e}"
    );
    // A provider signature by a key that is not the channel's provider: 401.
    let stranger = ProviderKey::from_seed(&[22; 32]);
    assert_eq!(
        dispute(&gw, &channel, &old_body, None, Some(&stranger))
            .await
            .0,
        401
    );
    // Another account's key: 404, nothing disclosed.
    let (other, _, _) = gw
        .state
        .accounts
        .create_account("other", Asset::Tnzo, 5, Default::default(), None)
        .await
        .unwrap();
    let (s, e) = dispute(&gw, &channel, b"", Some(&other), None).await;
    assert_eq!(s, 404, "{e}");
    assert!(!e.to_string().contains(&spent), "{e}");
    // The old voucher, from the payer or from the provider: refused as stale.
    for (k, p) in [(Some(gw.key.as_str()), None), (None, Some(&*key))] {
        let (s, e) = dispute(&gw, &channel, &old_body, k, p).await;
        assert_eq!(s, 409, "{e}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("stale state") && msg.contains(&format!("nonce {}", old.nonce)),
            "{msg}"
        );
        audit(&gw);
    }
    let (_, c) = get_json(&gw, &format!("/v1/channels/{channel}"), &gw.key).await;
    assert_eq!(c["state"], "open", "refused disputes change nothing: {c}");

    // The provider disputes with the latest voucher: recorded at the latest state.
    let body = serde_json::to_vec(&json!({ "voucher": latest })).unwrap();
    let (s, d) = dispute(&gw, &channel, &body, None, Some(&key)).await;
    assert_eq!(s, 202, "{d}");
    assert_eq!(
        (
            d["dispute"]["nonce"].as_u64(),
            d["dispute"]["spent"].as_str()
        ),
        (Some(nonce), Some(spent.as_str())),
        "{d}"
    );
    // The payer's stale voucher during the dispute changes nothing either.
    assert_eq!(
        dispute(&gw, &channel, &old_body, Some(&gw.key), None)
            .await
            .0,
        409
    );
    let c = closed(&gw, &channel, Duration::from_secs(10)).await;
    assert_eq!(
        c["spent"].as_str(),
        Some(spent.as_str()),
        "settled at the latest state: {c}"
    );
    let spent: u128 = spent.parse().unwrap();
    assert_eq!(gw.balance(), FUNDS - spent, "nothing clawed back");
    audit(&gw);
}

/// An idle account leaves memory; the provider disputes its channel (signed, no
/// API key); the account stays in memory while the dispute runs and the dispute
/// settles when the window ends, though the payer never comes back.
#[tokio::test]
async fn a_disputed_channel_of_an_evicted_account_settles() {
    let clock = tenzro_gateway::clock::ManualClock::new();
    let gw = start_on(3, 1, 3600, Some(clock.clone())).await;
    let key = Arc::new(ProviderKey::from_seed(&[23; 32]));
    let url = countersigning_provider(key.clone()).await;
    let channel = register(&gw, &key, &url).await;
    let r = gw.chat(chat(50)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, c) = get_json(&gw, &format!("/v1/channels/{channel}"), &gw.key).await;
    let spent = c["spent"].as_str().unwrap().to_owned();
    voucher_at_least(&gw, &channel, c["nonce"].as_u64().unwrap()).await;
    // Idle past lease_idle_s on the gateway's clock: the committer's next rounds
    // evict the account.
    clock.advance(Duration::from_secs(2));
    let mut evicted = false;
    for _ in 0..100 {
        if !gw.state.book.has_account(&gw.account) {
            evicted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(evicted, "the idle account left memory");

    let (s, d) = dispute(&gw, &channel, b"", None, Some(&key)).await;
    assert_eq!(s, 202, "{d}");
    assert_eq!(d["dispute"]["spent"].as_str(), Some(spent.as_str()));
    audit(&gw);
    // Idle for longer than lease_idle_s on the clock, through one round of the
    // committer's housekeeping (once a second in real time), the account stays
    // while its dispute runs.
    clock.advance(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        gw.state.book.has_account(&gw.account),
        "a disputed account is kept in memory"
    );
    // The window (3 s) ends.
    clock.advance(Duration::from_secs(2));
    // Settled, committed, and the idle account left memory again: the store says
    // closed (read without loading the account).
    let mut settled = None;
    for _ in 0..200 {
        let stored = gw
            .state
            .store
            .account_state(&gw.account, unix_now())
            .await
            .unwrap();
        if let Some((c, _)) = stored.channels.iter().find(|(c, _)| c.id == channel)
            && c.state.name() == "closed"
        {
            settled = Some(c.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settled = settled.unwrap_or_else(|| panic!("the dispute never settled"));
    assert_eq!(settled.spent.to_string(), spent);
    let c = closed(&gw, &channel, Duration::from_secs(5)).await;
    assert_eq!(c["spent"].as_str(), Some(spent.as_str()));
    audit(&gw);
}

/// A replica that held a disputed account dies (the account leaves its book with
/// its lease): the settle sweep finds the due dispute in the store, takes the
/// account and settles it.
#[tokio::test]
async fn the_sweep_settles_disputes_no_replica_holds() {
    let gw = start(1, 3600, 1).await;
    let key = Arc::new(ProviderKey::from_seed(&[24; 32]));
    let url = countersigning_provider(key.clone()).await;
    let channel = register(&gw, &key, &url).await;
    let (s, d) = dispute(&gw, &channel, b"", Some(&gw.key), None).await;
    assert_eq!(s, 202, "{d}");
    let spent = d["spent"].as_str().unwrap().to_owned();
    // Let the dispute reach the store, then lose the account as a dead replica would.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.state.book.drop_account(&gw.account);
    gw.state.leases.forget(std::slice::from_ref(&gw.account));
    gw.state
        .store
        .release(
            gw.state.leases.lease_owner(),
            std::slice::from_ref(&gw.account),
        )
        .await
        .unwrap();
    let mut settled = None;
    for _ in 0..100 {
        if let Some(v) = gw.state.book.channel(&channel)
            && v.channel.state.name() == "closed"
        {
            settled = Some(v.channel);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settled = settled.unwrap_or_else(|| panic!("the sweep never settled the dispute"));
    assert_eq!(settled.spent.to_string(), spent);
    audit(&gw);
}

/// Keys whose scope lists operations without `channels` (an agent's) cannot read,
/// close or dispute channels; with it they can.
#[tokio::test]
async fn agent_keys_need_the_channels_operation() {
    let gw = start(2, 60, 3600).await;
    let key = Arc::new(ProviderKey::from_seed(&[25; 32]));
    let url = countersigning_provider(key.clone()).await;
    register(&gw, &key, &url).await;
    // An owner with a funded account, and its agent with a chat-only scope.
    let human = ProviderKey::from_seed(&[26; 32]);
    let r = gw
        .post("/admin/identities", Some("admin-secret"))
        .json(&json!({"display_name": "Ada", "kyc_tier": 2, "public_key": human.public_key_hex()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let did = r.json::<Value>().await.unwrap()["did"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = gw
        .post("/admin/accounts", Some("admin-secret"))
        .json(&json!({"name": "ada", "balance": "1000", "identity": did}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let owner_key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = ProviderKey::from_seed(&[27; 32]);
    let r = gw
        .post("/v1/identities/agents", Some(&owner_key))
        .json(&json!({"public_key": a.public_key_hex(), "scope": {"allowed_operations": ["chat"]}}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let agent_key = v["key"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_owned();
    let r = gw
        .post("/v1/chat/completions", Some(&agent_key))
        .json(&chat(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let channel = r.headers()["x-tenzro-channel"].to_str().unwrap().to_owned();
    for path in [
        "/v1/channels".to_owned(),
        format!("/v1/channels/{channel}"),
        format!("/v1/channels/{channel}/voucher"),
    ] {
        let (s, e) = get_json(&gw, &path, &agent_key).await;
        assert_eq!(s, 403, "{path}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`channels`"),
            "{e}"
        );
    }
    let r = gw
        .post(&format!("/v1/channels/{channel}/close"), Some(&agent_key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        dispute(&gw, &channel, b"", Some(&agent_key), None).await.0,
        403
    );
    // The owner's own key may, and so may an agent whose scope grants `channels`.
    assert_eq!(
        get_json(&gw, &format!("/v1/channels/{channel}"), &owner_key)
            .await
            .0,
        200
    );
    let b = ProviderKey::from_seed(&[28; 32]);
    let r = gw
        .post("/v1/identities/agents", Some(&owner_key))
        .json(&json!({"public_key": b.public_key_hex(), "scope": {"allowed_operations": ["chat", "channels"]}}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let granted = v["key"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_owned();
    assert_eq!(
        get_json(&gw, &format!("/v1/channels/{channel}"), &granted)
            .await
            .0,
        200
    );
    let (_, account) = get_json(&gw, "/v1/account", &owner_key).await;
    gw.state
        .book
        .audit(account["id"].as_str().unwrap(), Asset::Tnzo)
        .unwrap();
}
