//! The gateway's front door against a healthy mock provider: errors in OpenAI's
//! shape with the right statuses, usage stripping, costs, embeddings, models,
//! signed registration, the admin API.

#![expect(clippy::unwrap_used, reason = "tests")]

use crate::gateway_common::*;
use serde_json::{Value, json};
use tenzro_attest::keys::ProviderKey;
use tenzro_gateway::accounts::{KeyScope, Operation};
use tenzro_models::api::{ModelCategory, REGISTER_DOMAIN, RegisterRequest, Signed};

async fn one_provider() -> (MockProvider, Gateway) {
    let p = mock_provider("a", Behaviour::Ok { chunks: 3 }).await;
    let u = p.url.clone();
    let gw = start_gateway(|d| test_config(vec![static_provider("a", &u)], d), None).await;
    (p, gw)
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"].is_string(),
        "OpenAI error shape: {body}"
    );
    assert!(
        body["error"]["type"].is_string(),
        "OpenAI error shape: {body}"
    );
    (status, body)
}

fn chat(stream: bool) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream})
}

#[tokio::test]
async fn errors_have_openai_shape_and_status() {
    let (p, gw) = one_provider().await;
    let (s, b) = error_of(
        gw.post("/v1/chat/completions", None)
            .json(&chat(false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (s, _) = error_of(
        gw.post("/v1/chat/completions", Some("tz-nope"))
            .json(&chat(false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);

    let mut unknown = chat(false);
    unknown["model"] = json!("gpt-nothing");
    let (s, b) = error_of(gw.chat(unknown).send().await.unwrap()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );

    let (s, b) = error_of(
        gw.post("/v1/chat/completions", Some(&gw.key))
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    let (s, b) = error_of(
        gw.chat(json!({"model": MODEL, "messages": [], "max_tokens": "ten"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = error_of(
        gw.chat(json!({"model": MODEL, "messages": []}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, b["error"]["param"].as_str()), (400, Some("messages")));

    // Worst case above the balance: 402 before any provider is called.
    let mut huge = chat(false);
    huge["max_tokens"] = json!(4_000_000);
    let (s, b) = error_of(gw.chat(huge).send().await.unwrap()).await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (402, Some("insufficient_quota")),
        "{b}"
    );

    // TEE asked, none available: 503 naming the filter.
    let mut tee = chat(false);
    tee["tenzro"] = json!({"tee": true});
    let (s, b) = error_of(gw.chat(tee).send().await.unwrap()).await;
    assert_eq!((s, b["error"]["param"].as_str()), (503, Some("tee")), "{b}");

    let (s, _) = error_of(
        gw.http
            .get(format!("{}/v1/nothing", gw.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(p.calls(), 0);
    assert_eq!(gw.balance(), FUNDS);

    let big = "x".repeat(5 << 20);
    let resp = gw
        .post("/v1/chat/completions", Some(&gw.key))
        .body(big)
        .send()
        .await
        .unwrap();
    let (s, _) = error_of(resp).await;
    assert_eq!(s, 413);
}

#[tokio::test]
async fn scopes_forbid_and_rate_limits_answer_429_with_retry_after() {
    let p = mock_provider("a", Behaviour::Ok { chunks: 1 }).await;
    let u = p.url.clone();
    let scope = KeyScope {
        allowed_models: Some(vec![MODEL.into()]),
        allowed_operations: Some(vec![Operation::Chat, Operation::Models]),
        requests_per_minute: Some(2),
        ..KeyScope::default()
    };
    let gw = start_gateway_with_scope(
        |d| test_config(vec![static_provider("a", &u)], d),
        None,
        scope,
    )
    .await;
    let emb = gw
        .post("/v1/embeddings", Some(&gw.key))
        .json(&json!({"model": EMBED_MODEL, "input": "x"}));
    let (s, b) = error_of(emb.send().await.unwrap()).await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (403, Some("permission_error"))
    );
    assert_eq!(gw.chat(chat(false)).send().await.unwrap().status(), 200);
    assert_eq!(gw.chat(chat(false)).send().await.unwrap().status(), 200);
    let resp = gw.chat(chat(false)).send().await.unwrap();
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let (s, b) = error_of(resp).await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (429, Some("rate_limit_error"))
    );
}

#[tokio::test]
async fn streams_strip_or_price_the_usage_chunk() {
    let (_p, gw) = one_provider().await;
    // Without include_usage: no usage chunk, cost in the trailing comment.
    let text = gw
        .chat(chat(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (data, comments) = sse_parts(&text);
    assert_eq!(data.len(), 4, "{text}");
    assert!(data[..3].iter().all(|d| !d.contains("\"usage\"")), "{text}");
    assert_eq!(data[3], "[DONE]");
    let cost = 10 * TOKEN_COST;
    assert_eq!(
        comments,
        vec![format!("x-tenzro-cost={cost} x-tenzro-asset=TNZO")]
    );
    assert_eq!(gw.balance_eventually(FUNDS - cost).await, FUNDS - cost);

    // With it: the usage chunk carries cost and asset.
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = gw.chat(body).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-tenzro-asset"], "TNZO");
    let text = resp.text().await.unwrap();
    let (data, _) = sse_parts(&text);
    let usage: Value = serde_json::from_str(&data[3]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 7);
    assert_eq!(usage["usage"]["cost"], cost.to_string());
    assert_eq!(usage["usage"]["asset"], "TNZO");
    assert_eq!(
        gw.balance_eventually(FUNDS - 2 * cost).await,
        FUNDS - 2 * cost
    );
}

#[tokio::test]
async fn completions_embeddings_and_models() {
    let (_p, gw) = one_provider().await;
    let resp = gw
        .post("/v1/completions", Some(&gw.key))
        .json(&json!({"model": MODEL, "prompt": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = gw
        .post("/v1/embeddings", Some(&gw.key))
        .json(&json!({"model": EMBED_MODEL, "input": ["a", "b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-tenzro-cost"],
        (4 * TOKEN_COST).to_string()
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usage"]["cost"], (4 * TOKEN_COST).to_string());
    assert_eq!(body["usage"]["prompt_tokens"], 4);

    let models: Value = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(&gw.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![EMBED_MODEL, MODEL]);
    assert_eq!(models["data"][1]["category"], "LLM");
    assert_eq!(models["data"][1]["providers"], 1);
    let unauth = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);

    let health: Value = gw
        .http
        .get(format!("{}/health", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = gw
        .http
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tenzro_gateway_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tenzro_gateway_overhead_seconds"),
        "{metrics}"
    );
    assert!(metrics.contains("tenzro_gateway_tokens_total"), "{metrics}");
}

#[tokio::test]
async fn a_provider_registers_with_a_signature_and_serves() {
    let p = mock_provider("reg", Behaviour::Ok { chunks: 2 }).await;
    let gw = start_gateway(
        |d| {
            let mut c = test_config(vec![], d);
            c.stake_minimums.llm = "100000".into();
            c
        },
        None,
    )
    .await;
    let key = ProviderKey::from_seed(&[9; 32]);
    // The routing stake of a registered provider is its bond.
    gw.state
        .registry
        .set_bond(&key.did(), 100_000u128 * 10u128.pow(18), false);
    let reg = RegisterRequest {
        provider_id: key.did(),
        endpoint: p.url.clone(),
        public_key: key.public_key_hex(),
        models: vec![model(MODEL, ModelCategory::Llm)],
        stake: (100_000u128 * 10u128.pow(18)).to_string(),
        tee: "none".into(),
        max_concurrency: Some(1),
        heartbeat_interval_s: None,
        timestamp: tenzro_gateway::clock::unix_now(),
    };
    let payload = serde_json::to_string(&reg).unwrap();
    let forged = Signed {
        payload: payload.clone(),
        signature: "00".repeat(64),
    };
    let resp = gw
        .post("/v1/providers/register", None)
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let signature = key
        .sign(&Signed::signed_bytes(REGISTER_DOMAIN, &payload))
        .to_hex();
    let resp = gw
        .post("/v1/providers/register", None)
        .json(&Signed { payload, signature })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "Active");
    assert_eq!(body["provider_id"], key.did());
    assert_eq!(body["payer_key"], gw.state.payer_key.public_key().to_hex());
    // It enters routing once the gateway has reached its endpoint.
    for _ in 0..250 {
        if gw.state.registry.is_reached(&key.did()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(gw.chat(chat(false)).send().await.unwrap().status(), 200);
    assert_eq!(p.calls(), 1);

    // Below the stake minimum for an LLM (a declared stake counts for nothing):
    // routable no more.
    gw.state.registry.set_bond(&key.did(), 1, false);
    let (s, b) = error_of(gw.chat(chat(false)).send().await.unwrap()).await;
    assert_eq!((s, b["error"]["param"].as_str()), (503, Some("stake")));
}

#[tokio::test]
async fn admin_api_makes_accounts_and_keys() {
    let (_p, gw) = one_provider().await;
    let admin = |rb: reqwest::RequestBuilder| rb.bearer_auth("admin-secret");
    let resp = gw
        .http
        .post(format!("{}/admin/accounts", gw.url))
        .bearer_auth("wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = admin(gw.http.post(format!("{}/admin/accounts", gw.url)))
        .json(&json!({"name": "alice", "balance": "0.00000000000001"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let account = created["account"]["id"].as_str().unwrap().to_owned();
    // 10^4 base units: too little for the worst case of a chat request.
    let resp = gw
        .post("/v1/chat/completions", Some(&key))
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    let resp = admin(
        gw.http
            .post(format!("{}/admin/accounts/{account}/credit", gw.url)),
    )
    .json(&json!({"asset": "TNZO", "amount": "1"}))
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = gw
        .post("/v1/chat/completions", Some(&key))
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let resp = admin(
        gw.http
            .post(format!("{}/admin/accounts/{account}/keys", gw.url)),
    )
    .json(&json!({"name": "k2"}))
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 201);
    let k2: Value = resp.json().await.unwrap();
    let got: Value = admin(gw.http.get(format!("{}/admin/accounts/{account}", gw.url)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["keys"].as_array().unwrap().len(), 2);
    assert!(!got.to_string().contains(&key), "keys are stored hashed");
    let kid = k2["record"]["id"].as_str().unwrap();
    let resp = admin(gw.http.delete(format!("{}/admin/keys/{kid}", gw.url)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let k2key = k2["key"].as_str().unwrap();
    assert_eq!(
        gw.post("/v1/chat/completions", Some(k2key))
            .json(&chat(false))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let providers: Value = admin(gw.http.get(format!("{}/admin/providers", gw.url)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(providers["data"][0]["id"], "a");
    let resp = admin(gw.http.post(format!("{}/admin/providers/a/ban", gw.url)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (s, b) = error_of(gw.chat(chat(false)).send().await.unwrap()).await;
    assert_eq!((s, b["error"]["param"].as_str()), (503, Some("status")));
}
