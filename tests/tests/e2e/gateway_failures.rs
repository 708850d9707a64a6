//! The gateway against failing mock providers: 500s, a hang, a stream cut half
//! way, a slow provider, failover before the first byte, the circuit breaker.

#![expect(clippy::unwrap_used, reason = "tests")]

use std::time::{Duration, Instant};

use crate::gateway_common::*;
use serde_json::{Value, json};
use tenzro_gateway::clock::ManualClock;

fn chat_body(stream: bool) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream})
}

#[tokio::test]
async fn a_500_fails_over_to_the_next_provider() {
    let bad = mock_provider("a", Behaviour::Fail500).await;
    let good = mock_provider("b", Behaviour::Ok { chunks: 3 }).await;
    let (bu, gu) = (bad.url.clone(), good.url.clone());
    let gw = start_gateway(
        |d| {
            test_config(
                vec![static_provider("a", &bu), static_provider("b", &gu)],
                d,
            )
        },
        None,
    )
    .await;

    let resp = gw.chat(chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-tenzro-provider"], "b");
    assert_eq!(resp.headers()["x-tenzro-asset"], "TNZO");
    let cost: u128 = resp.headers()["x-tenzro-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(resp.headers().contains_key("x-request-id"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["system_fingerprint"], "b");
    // 7 prompt + 3 completion tokens at 500 base units each.
    assert_eq!(cost, 10 * TOKEN_COST);
    assert_eq!(body["usage"]["cost"], cost.to_string());
    assert_eq!(body["usage"]["asset"], "TNZO");
    assert_eq!((bad.calls(), good.calls()), (1, 1));
    assert_eq!(gw.balance(), FUNDS - cost);

    // The same for a stream: failover happens before the first byte.
    let resp = gw.chat(chat_body(true)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!((bad.calls(), good.calls()), (2, 2));
}

#[tokio::test]
async fn a_hanging_provider_times_out_and_the_next_answers() {
    let hang = mock_provider("a", Behaviour::Hang).await;
    let good = mock_provider("b", Behaviour::Ok { chunks: 2 }).await;
    let (hu, gu) = (hang.url.clone(), good.url.clone());
    let gw = start_gateway(
        |d| {
            test_config(
                vec![static_provider("a", &hu), static_provider("b", &gu)],
                d,
            )
        },
        None,
    )
    .await;
    let t = Instant::now();
    let resp = gw.chat(chat_body(true)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-tenzro-provider"], "b");
    let _ = resp.text().await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(hang.calls(), 1);
}

#[tokio::test]
async fn when_every_provider_fails_the_client_gets_a_502_and_pays_nothing() {
    let a = mock_provider("a", Behaviour::Fail500).await;
    let b = mock_provider("b", Behaviour::Hang).await;
    let (au, bu) = (a.url.clone(), b.url.clone());
    let gw = start_gateway(
        |d| {
            test_config(
                vec![static_provider("a", &au), static_provider("b", &bu)],
                d,
            )
        },
        None,
    )
    .await;
    let resp = gw.chat(chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 provider"),
        "{body}"
    );
    assert_eq!(gw.balance(), FUNDS);
}

#[tokio::test]
async fn a_stream_cut_half_way_ends_with_an_error_event_and_is_charged_for_what_arrived() {
    let dying = mock_provider("a", Behaviour::DieMidStream { after: 3 }).await;
    let du = dying.url.clone();
    let gw = start_gateway(|d| test_config(vec![static_provider("a", &du)], d), None).await;
    for include_usage in [false, true] {
        let before = gw.balance();
        let mut body = chat_body(true);
        body["stream_options"] = json!({"include_usage": include_usage});
        let resp = gw.chat(body).send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(
            status,
            200,
            "include_usage={include_usage} {text} {:?}",
            gw.state.registry.views()
        );
        let (data, _) = sse_parts(&text);
        let chunks: Vec<Value> = data
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks.len(), 4, "{text}");
        for c in &chunks[..3] {
            assert_eq!(c["object"], "chat.completion.chunk");
        }
        assert_eq!(chunks[3]["error"]["type"], "upstream_error");
        assert_eq!(chunks[3]["error"]["code"], "stream_interrupted");
        assert!(!text.contains("[DONE]"));
        // Three one-token chunks reached the client, so the prompt is owed too: at
        // the gateway's estimate (2 bytes + 16 + 16 = 34), as no usage arrived.
        assert_eq!(
            gw.balance_eventually(before - (3 + 34) * TOKEN_COST).await,
            before - (3 + 34) * TOKEN_COST
        );
    }
    let v = gw.state.registry.views();
    assert_eq!(v[0].failed, 2, "a cut stream counts against the provider");
}

#[tokio::test]
async fn a_slow_provider_within_the_timeouts_is_relayed_chunk_by_chunk() {
    let slow = mock_provider(
        "a",
        Behaviour::Slow {
            chunks: 4,
            delay_ms: 100,
        },
    )
    .await;
    let su = slow.url.clone();
    let gw = start_gateway(|d| test_config(vec![static_provider("a", &su)], d), None).await;
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = gw.chat(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let (data, comments) = sse_parts(&text);
    assert_eq!(data.len(), 6, "4 chunks, usage, [DONE]: {text}");
    let usage: Value = serde_json::from_str(&data[4]).unwrap();
    let cost = 11 * TOKEN_COST; // 7 prompt + 4 completion.
    assert_eq!(usage["usage"]["cost"], cost.to_string());
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(
        comments,
        vec![format!("x-tenzro-cost={cost} x-tenzro-asset=TNZO")]
    );
    assert_eq!(gw.balance_eventually(FUNDS - cost).await, FUNDS - cost);
}

#[tokio::test]
async fn a_provider_slower_than_the_idle_timeout_is_cut() {
    let slow = mock_provider(
        "a",
        Behaviour::Slow {
            chunks: 4,
            delay_ms: 1_000,
        },
    )
    .await;
    let su = slow.url.clone();
    let gw = start_gateway(
        |d| {
            let mut c = test_config(vec![static_provider("a", &su)], d);
            c.upstream.first_byte_timeout_ms = 3_000;
            c
        },
        None,
    )
    .await;
    let text = gw
        .chat(chat_body(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (data, _) = sse_parts(&text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted", "{text}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("silent")
    );
}

#[tokio::test]
async fn the_breaker_opens_at_the_fifth_failure_and_half_opens_after_sixty_seconds() {
    let bad = mock_provider("a", Behaviour::Fail500).await;
    let bu = bad.url.clone();
    let clock = ManualClock::new();
    let gw = start_gateway(
        |d| test_config(vec![static_provider("a", &bu)], d),
        Some(clock.clone()),
    )
    .await;
    for i in 1..=5 {
        let resp = gw.chat(chat_body(false)).send().await.unwrap();
        assert_eq!(resp.status(), 502, "request {i}");
        assert_eq!(bad.calls(), i);
    }
    let resp = gw.chat(chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["param"], "circuit_breaker", "{body}");
    assert_eq!(bad.calls(), 5, "an open breaker keeps the provider out");

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
        metrics.contains("tenzro_gateway_breaker_state{provider=\"a\"} 1"),
        "{metrics}"
    );

    clock.advance(Duration::from_secs(59));
    assert_eq!(
        gw.chat(chat_body(false)).send().await.unwrap().status(),
        503
    );
    clock.advance(Duration::from_secs(1));
    // Half-open: one trial goes through (and fails, reopening the breaker).
    assert_eq!(
        gw.chat(chat_body(false)).send().await.unwrap().status(),
        502
    );
    assert_eq!(bad.calls(), 6);
    assert_eq!(
        gw.chat(chat_body(false)).send().await.unwrap().status(),
        503
    );
    assert_eq!(bad.calls(), 6);
    assert_eq!(gw.balance(), FUNDS);
}

#[tokio::test]
async fn failover_skips_a_provider_whose_breaker_is_open() {
    let bad = mock_provider("a", Behaviour::Fail500).await;
    let good = mock_provider("b", Behaviour::Ok { chunks: 1 }).await;
    let (bu, gu) = (bad.url.clone(), good.url.clone());
    let gw = start_gateway(
        |d| {
            test_config(
                vec![static_provider("a", &bu), static_provider("b", &gu)],
                d,
            )
        },
        None,
    )
    .await;
    for _ in 0..8 {
        assert_eq!(
            gw.chat(chat_body(false)).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(bad.calls(), 5);
    assert_eq!(good.calls(), 8);
}
