//! The provider's registration module (`tenzro_provider::register`) against an
//! in-process gateway: it registers, heartbeats, and registers again after the
//! gateway forgets it.

#![expect(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

use crate::gateway_common::*;
use tenzro_attest::keys::ProviderKey;
use tenzro_models::api::{ModelCategory, RegisterRequest};
use tenzro_provider::register;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_provider_registers_and_heartbeats() {
    let p = mock_provider("reg", Behaviour::Ok { chunks: 2 }).await;
    let gw = start_gateway(
        |d| {
            let mut c = test_config(vec![], d);
            c.registration.heartbeat_interval_s = 1;
            c
        },
        None,
    )
    .await;
    let key = ProviderKey::from_seed(&[3; 32]);
    let id = key.did();
    let registration = RegisterRequest {
        provider_id: id.clone(),
        endpoint: p.url.clone(),
        public_key: key.public_key_hex(),
        models: vec![model(MODEL, ModelCategory::Llm)],
        stake: (100_000u128 * 10u128.pow(18)).to_string(),
        tee: "none".into(),
        max_concurrency: Some(2),
        heartbeat_interval_s: None,
        timestamp: 0,
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(register::run(
        gw.url.clone(),
        registration,
        move |bytes| key.sign(bytes).to_hex(),
        cancel.clone(),
    ));
    let mut registered = false;
    for _ in 0..100 {
        if gw.state.registry.is_reached(&id) {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(registered, "the provider never registered");
    let body = serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    assert_eq!(gw.chat(body).send().await.unwrap().status(), 200);

    // Heartbeats keep `last_heartbeat` fresh (one per second here).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let view = gw
        .state
        .registry
        .views()
        .into_iter()
        .find(|v| v.id == id)
        .unwrap();
    assert!(view.last_heartbeat_s_ago.unwrap() <= 1, "{view:?}");

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}
