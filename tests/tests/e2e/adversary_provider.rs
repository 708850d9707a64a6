//! A hostile provider against the gateway (issue 10: admission per candidate,
//! verified token counts and receipts, bounded streams; issue 11: cut streams pay
//! their prompt). Real HTTP servers on 127.0.0.1:0: the gateway in-process, the
//! hostile provider (`gateway_common::hostile`) signing with its own key and
//! serving only requests the gateway's payer signed. After each attack the book's
//! conservation audit holds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;

use crate::gateway_common::hostile::{HostileProvider, Lie, PROMPT_TOKENS, hostile_provider};
use crate::gateway_common::*;
use serde_json::{Value, json};
use tenzro_attest::ProviderKey;
use tenzro_gateway::config::{Config, StakeSection};
use tenzro_gateway::money::slashing::Reason;
use tenzro_gateway::pricing::Asset;
use tenzro_gateway::providers::registry::ProviderInfo;
use tenzro_models::api::{ModelCategory, RegisterRequest};

/// The gateway's prompt estimate of `messages: [{"role": "user", "content": "hi"}]`:
/// 2 bytes + 16 of framing for the message, + 16.
const PROMPT_ESTIMATE: u64 = 34;

fn no_stake_minimums(mut cfg: Config) -> Config {
    let zero = || "0".to_owned();
    cfg.stake_minimums = StakeSection {
        llm: zero(),
        image_gen: zero(),
        speech: zero(),
        embedding: zero(),
        custom: zero(),
    };
    cfg
}

async fn gateway(providers: Vec<tenzro_gateway::config::StaticProvider>) -> Gateway {
    start_gateway(move |d| no_stake_minimums(test_config(providers, d)), None).await
}

/// Registers a provider signing with `key` (its id is its key's DID) at `url`,
/// serving `models` at `price`, as reached.
fn register(gw: &Gateway, key: &ProviderKey, url: &str, models: &[&str], price: u128) -> String {
    let pk = key.public_key();
    let models = models
        .iter()
        .map(|m| {
            let mut info = model(m, ModelCategory::Llm);
            info.price_per_token = price.to_string();
            info
        })
        .collect();
    let req = RegisterRequest {
        provider_id: pk.did(),
        endpoint: url.to_owned(),
        public_key: pk.to_hex(),
        models,
        stake: "0".into(),
        tee: "none".into(),
        max_concurrency: Some(1),
        heartbeat_interval_s: None,
        timestamp: tenzro_attest::evidence::unix_now(),
    };
    let info = ProviderInfo::from_registration(req, false).unwrap();
    let entry = gw.state.registry.upsert(info).unwrap();
    gw.state.registry.mark_reached(&entry);
    pk.did()
}

async fn keyed(gw: &Gateway, seed: u8, lie: Lie) -> (HostileProvider, String) {
    let key = ProviderKey::from_seed(&[seed; 32]);
    let h = hostile_provider(key, gw.state.payer_key.public_key(), lie).await;
    let id = register(gw, &h.key, &h.url, &[MODEL], PRICE);
    (h, id)
}

fn chat_body(stream: bool, n: u64) -> Value {
    json!({
        "model": MODEL, "n": n, "max_tokens": 8, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    })
}

fn fraud_slashes(gw: &Gateway, id: &str) -> Vec<String> {
    gw.state
        .registry
        .slashes()
        .into_iter()
        .filter(|s| s.provider == id && s.reason == Reason::FraudulentResults)
        .map(|s| s.detail)
        .collect()
}

fn audit(gw: &Gateway) {
    gw.state.book.audit(&gw.account, Asset::Tnzo).unwrap();
}

/// Sends a chat and returns (status, body text, charged).
async fn chat(gw: &Gateway, body: Value) -> (u16, String, u128) {
    let before = gw.balance();
    let resp = gw.chat(body.clone()).send().await.unwrap();
    let status = resp.status().as_u16();
    let header = resp
        .headers()
        .get("x-tenzro-cost")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.unwrap();
    // A stream settles when its body is dropped, just after the client saw its end.
    let mut charged = before - gw.balance();
    for _ in 0..100 {
        if gw
            .state
            .book
            .funds(&gw.account, Asset::Tnzo)
            .map(|f| f.held)
            == Some(0)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    charged = charged.max(before - gw.balance());
    if let Some(h) = header {
        assert_eq!(h, charged.to_string(), "x-tenzro-cost is what was charged");
    }
    (status, text, charged)
}

#[tokio::test]
async fn invented_usage_is_charged_the_verified_bound_and_slashed_for_fraud() {
    let gw = gateway(vec![]).await;
    let (h, id) = keyed(
        &gw,
        1,
        Lie::Usage {
            completion_tokens: 1_000_000_000,
        },
    )
    .await;
    for stream in [false, true] {
        let slashes = fraud_slashes(&gw, &id).len();
        let (status, text, charged) = chat(&gw, chat_body(stream, 1)).await;
        assert_eq!(status, 200, "{text}");
        // 8 tokens of text relayed ("hihihihi"), max_tokens 8: the claim of a
        // billion is cut to 8; the prompt is the provider's 7 (under the estimate).
        assert_eq!(
            charged,
            (u128::from(PROMPT_TOKENS) + 8) * TOKEN_COST,
            "stream={stream}"
        );
        let details = fraud_slashes(&gw, &id);
        assert_eq!(details.len(), slashes + 1, "stream={stream}: {details:?}");
        assert!(
            details[slashes].contains("claimed 1000000000"),
            "{details:?}"
        );
        if !stream {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                v["usage"]["completion_tokens"], 8,
                "the client sees the charged count"
            );
        }
        audit(&gw);
    }
    assert_eq!(
        h.unsigned.load(Ordering::SeqCst),
        0,
        "every upstream call is payer-signed"
    );
    assert_eq!(h.calls.load(Ordering::SeqCst), 2);
    // Each fraudulent answer counts against the provider (its breaker and status).
    let view = gw
        .state
        .registry
        .views()
        .into_iter()
        .find(|v| v.id == id)
        .unwrap();
    assert_eq!((view.failed, view.successful), (2, 0));
}

#[tokio::test]
async fn a_missing_or_false_receipt_is_fraud_and_a_true_one_is_not() {
    let gw = gateway(vec![]).await;
    let cases = [
        (Lie::Nothing, None),
        (Lie::NoReceipt, Some("no receipt")),
        (Lie::WrongResponseDigest, Some("response_sha256")),
    ];
    for (seed, (lie, fault)) in (10u8..).zip(cases) {
        let (h, id) = keyed(&gw, seed, lie).await;
        for stream in [false, true] {
            let (status, text, charged) = chat(&gw, chat_body(stream, 1)).await;
            assert_eq!(status, 200, "{lie:?} {text}");
            assert_eq!(
                charged,
                (u128::from(PROMPT_TOKENS) + 8) * TOKEN_COST,
                "{lie:?} stream={stream}"
            );
            audit(&gw);
        }
        let details = fraud_slashes(&gw, &id);
        match fault {
            None => assert!(
                details.is_empty(),
                "an honest provider is not slashed: {details:?}"
            ),
            Some(f) => {
                assert_eq!(
                    details.len(),
                    2,
                    "{lie:?}: one incident per response: {details:?}"
                );
                assert!(
                    details.iter().all(|d| d.contains(f)),
                    "{lie:?}: {details:?}"
                );
            }
        }
        assert_eq!(h.unsigned.load(Ordering::SeqCst), 0);
        // Out of routing for the next case: its key is banned.
        gw.state.registry.ban(&id, "next case").unwrap();
    }
}

#[tokio::test]
async fn an_endless_sse_event_is_cut_and_the_prompt_is_paid() {
    let gw = start_gateway(
        |d| {
            let mut cfg = no_stake_minimums(test_config(vec![], d));
            cfg.upstream.max_event_bytes = 256 << 10;
            cfg
        },
        None,
    )
    .await;
    let (h, _) = keyed(&gw, 20, Lie::EndlessEvent { bytes: 256 << 20 }).await;
    let (status, text, charged) = chat(&gw, chat_body(true, 1)).await;
    assert_eq!(status, 200);
    let (data, _) = sse_parts(&text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted", "{text:.300}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_event_bytes")
    );
    assert!(!text.contains("[DONE]"));
    assert!(text.len() < 64 << 10, "the endless event is not relayed");
    // The gateway stopped reading: far less than the 256 MiB offered was produced.
    let produced = h.produced.load(Ordering::SeqCst);
    assert!(produced < 32 << 20, "produced {produced} bytes");
    // One chunk reached the client: its 8 tokens and the prompt at the estimate.
    assert_eq!(charged, (u128::from(PROMPT_ESTIMATE) + 8) * TOKEN_COST);
    audit(&gw);
}

#[tokio::test]
async fn max_response_bytes_cuts_streams_too() {
    let gw = start_gateway(
        |d| {
            let mut cfg = no_stake_minimums(test_config(vec![], d));
            cfg.upstream.max_response_bytes = 128 << 10;
            cfg.upstream.max_event_bytes = 16 << 20;
            cfg
        },
        None,
    )
    .await;
    let _ = keyed(&gw, 21, Lie::EndlessEvent { bytes: 256 << 20 }).await;
    let (status, text, charged) = chat(&gw, chat_body(true, 1)).await;
    assert_eq!(status, 200);
    let (data, _) = sse_parts(&text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_response_bytes")
    );
    assert_eq!(charged, (u128::from(PROMPT_ESTIMATE) + 8) * TOKEN_COST);
    audit(&gw);
}

#[tokio::test]
async fn the_reservation_covers_n_choices() {
    let gw = gateway(vec![]).await;
    let (h, id) = keyed(&gw, 30, Lie::Nothing).await;
    for stream in [false, true] {
        let (status, text, charged) = chat(&gw, chat_body(stream, 16)).await;
        assert_eq!(status, 200, "{text}");
        // 16 choices of 8 tokens each, all paid: the hold covered 16 × max_tokens.
        assert_eq!(
            charged,
            (u128::from(PROMPT_TOKENS) + 16 * 8) * TOKEN_COST,
            "stream={stream}"
        );
        audit(&gw);
    }
    assert!(fraud_slashes(&gw, &id).is_empty());
    assert_eq!(h.unsigned.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unpriceable_and_unaffordable_candidates_are_skipped() {
    let honest = mock_provider("b", Behaviour::Ok { chunks: 3 }).await;
    let hu = honest.url.clone();
    let gw = gateway(vec![static_provider("b", &hu)]).await;
    let overflow = hostile_provider(
        ProviderKey::from_seed(&[40; 32]),
        gw.state.payer_key.public_key(),
        Lie::Nothing,
    )
    .await;
    let dear = hostile_provider(
        ProviderKey::from_seed(&[41; 32]),
        gw.state.payer_key.public_key(),
        Lie::Nothing,
    )
    .await;
    // u128::MAX per token overflows any worst case; 0.01 TNZO per token (the
    // registration limit) is far above this account's balance.
    register(
        &gw,
        &overflow.key,
        &overflow.url,
        &[MODEL, "dear"],
        u128::MAX,
    );
    register(
        &gw,
        &dear.key,
        &dear.url,
        &[MODEL, "dear"],
        10_000_000_000_000_000,
    );
    for stream in [false, true] {
        let mut body = chat_body(stream, 1);
        body["max_tokens"] = json!(3);
        let (status, text, charged) = chat(&gw, body).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(charged, (7 + 3) * TOKEN_COST, "stream={stream}: {text}");
        audit(&gw);
    }
    assert_eq!(honest.calls(), 2);
    // Only unaffordable candidates left: 402 naming the balance and the skips.
    let mut body = chat_body(false, 1);
    body["model"] = json!("dear");
    let (status, text, charged) = chat(&gw, body).await;
    assert_eq!((status, charged), (402, 0), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("insufficient balance"), "{message}");
    assert!(message.contains("overflows"), "{message}");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert_eq!(
        overflow.calls.load(Ordering::SeqCst) + dear.calls.load(Ordering::SeqCst),
        0
    );
    audit(&gw);
}

#[tokio::test]
async fn a_provider_refusing_everything_does_not_fail_honest_requests() {
    let gw = gateway(vec![]).await;
    // Cheaper than the honest one: first in the test config's lowest-price routing.
    let refuser = hostile_provider(
        ProviderKey::from_seed(&[50; 32]),
        gw.state.payer_key.public_key(),
        Lie::Refuse { status: 400 },
    )
    .await;
    let refuser_id = register(&gw, &refuser.key, &refuser.url, &[MODEL], PRICE / 2);
    let (honest, _) = keyed(&gw, 51, Lie::Nothing).await;
    for i in 0..6 {
        let stream = i % 2 == 1;
        let (status, text, charged) = chat(&gw, chat_body(stream, 1)).await;
        assert_eq!(status, 200, "request {i} stream={stream}: {text}");
        assert_eq!(charged, (u128::from(PROMPT_TOKENS) + 8) * TOKEN_COST);
        audit(&gw);
    }
    assert_eq!(honest.calls.load(Ordering::SeqCst), 6);
    // The refuser was tried first, and each refusal counts against it (its breaker
    // takes it out of routing) instead of winning latency routing.
    let refused = refuser.calls.load(Ordering::SeqCst);
    assert!(refused >= 1, "the refuser was never tried");
    let view = gw
        .state
        .registry
        .views()
        .into_iter()
        .find(|v| v.id == refuser_id)
        .unwrap();
    assert_eq!(view.successful, 0);
    assert_eq!(view.failed, refused as u64);
}

#[tokio::test]
async fn the_last_candidates_refusal_is_relayed() {
    let gw = gateway(vec![]).await;
    let (refuser, _) = keyed(&gw, 52, Lie::Refuse { status: 404 }).await;
    let (status, text, charged) = chat(&gw, chat_body(false, 1)).await;
    assert_eq!((status, charged), (404, 0), "{text}");
    assert!(text.contains("refused by the hostile provider"), "{text}");
    assert_eq!(refuser.calls.load(Ordering::SeqCst), 1);
    audit(&gw);
}

#[tokio::test]
async fn chunk_claims_above_the_signed_usage_are_not_paid_and_are_fraud() {
    let gw = gateway(vec![]).await;
    let (h, id) = keyed(&gw, 53, Lie::InflatedChunks).await;
    let (status, text, charged) = chat(&gw, chat_body(true, 1)).await;
    assert_eq!(status, 200, "{text}");
    // 8 bytes relayed, chunks claimed 8 tokens, the signed usage says 2: 2 are paid.
    assert_eq!(charged, (u128::from(PROMPT_TOKENS) + 2) * TOKEN_COST);
    let details = fraud_slashes(&gw, &id);
    assert_eq!(details.len(), 1, "{details:?}");
    assert!(details[0].contains("chunks claimed 8"), "{details:?}");
    // Not a stream: no chunks, nothing to contradict.
    let (status, text, charged) = chat(&gw, chat_body(false, 1)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(charged, (u128::from(PROMPT_TOKENS) + 2) * TOKEN_COST);
    assert_eq!(fraud_slashes(&gw, &id).len(), 1);
    assert_eq!(h.unsigned.load(Ordering::SeqCst), 0);
    audit(&gw);
}

#[tokio::test]
async fn a_stream_its_provider_ends_without_a_receipt_pays_only_the_prompt() {
    let gw = gateway(vec![]).await;
    let (_h, id) = keyed(&gw, 54, Lie::EndsEarly).await;
    let (status, text, charged) = chat(&gw, chat_body(true, 1)).await;
    assert_eq!(status, 200);
    let (data, _) = sse_parts(&text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted", "{text:.300}");
    // 8 tokens relayed, but no receipt can back them: the prompt estimate only.
    assert_eq!(charged, u128::from(PROMPT_ESTIMATE) * TOKEN_COST);
    // An early end is not proof of fraud, but it is a failure.
    assert!(fraud_slashes(&gw, &id).is_empty());
    let view = gw
        .state
        .registry
        .views()
        .into_iter()
        .find(|v| v.id == id)
        .unwrap();
    assert_eq!((view.failed, view.successful), (1, 0));
    audit(&gw);
}

#[tokio::test]
async fn more_than_128_choices_are_refused_before_any_provider() {
    let gw = gateway(vec![]).await;
    let (h, _) = keyed(&gw, 55, Lie::Nothing).await;
    let (status, text, charged) = chat(&gw, chat_body(false, 129)).await;
    assert_eq!((status, charged), (400, 0), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["param"], "n", "{text}");
    assert!(v["error"]["message"].as_str().unwrap().contains("128"));
    // Completions: n × prompts counts.
    let body = json!({"model": MODEL, "n": 65, "max_tokens": 8, "prompt": ["a", "b"]});
    let resp = gw
        .post("/v1/completions", Some(&gw.key))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "n");
    // 128 is allowed.
    let (status, text, _) = chat(&gw, chat_body(false, 128)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(h.calls.load(Ordering::SeqCst), 1);
    audit(&gw);
}
