//! The gateway's handlers read its one clock (`AppState.clock`), not the system
//! time: on a manual clock moved 30 days ahead, what they stamp is the clock's time.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use tenzro_attest::keys::ProviderKey;
use tenzro_gateway::clock::{Clock, ManualClock, SharedClock, unix_now};

use crate::gateway_common::*;

const AHEAD: Duration = Duration::from_secs(30 * 86_400);

#[tokio::test]
async fn identity_handlers_stamp_the_gateways_clock() {
    let clock = ManualClock::new();
    clock.advance(AHEAD);
    let gw = start_gateway(
        |d| test_config(vec![], d),
        Some(clock.clone() as SharedClock),
    )
    .await;
    let key = ProviderKey::from_seed(&[41; 32]);
    let r = gw
        .post("/admin/identities", Some("admin-secret"))
        .json(&json!({"display_name": "Grace Hopper", "kyc_tier": 1, "public_key": key.public_key_hex()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let human: Value = r.json().await.unwrap();
    let did = human["did"].as_str().unwrap().to_owned();
    let r = gw
        .http
        .get(format!("{}/v1/identities/{did}", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let public: Value = r.json().await.unwrap();
    let created = public["created_at"].as_u64().unwrap();
    let expected = clock.unix();
    assert!(
        created + 5 >= expected && created <= expected,
        "created_at {created} is not the gateway's clock ({expected}); the system says {}",
        unix_now()
    );
    // The system time is 30 days behind: a handler reading it would be caught.
    assert!(created >= unix_now() + AHEAD.as_secs() - 5, "{public}");
}

/// Accounts and keys are stamped, and keys rate limited, on the gateway's clock:
/// a key's requests per minute come back when the clock moves, with no sleep.
#[tokio::test]
async fn accounts_and_rate_limits_run_on_the_gateways_clock() {
    let clock = ManualClock::new();
    clock.advance(AHEAD);
    let scope = tenzro_gateway::accounts::KeyScope {
        requests_per_minute: Some(1),
        ..Default::default()
    };
    let gw = start_gateway_with_scope(
        |d| test_config(vec![], d),
        Some(clock.clone() as SharedClock),
        scope,
    )
    .await;
    let r = gw
        .http
        .get(format!("{}/admin/accounts/{}", gw.url, gw.account))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let got: Value = r.json().await.unwrap();
    let expected = clock.unix();
    for created in [&got["account"]["created"], &got["keys"][0]["created"]] {
        let created = created.as_u64().unwrap();
        assert!(
            created + 5 >= expected && created <= expected,
            "created {created} is not the gateway's clock ({expected}): {got}"
        );
    }
    // `tasks/get` counts against the key's requests per minute.
    let get = || {
        gw.post("/a2a", Some(&gw.key)).json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"id": "none"}
        }))
    };
    assert_eq!(get().send().await.unwrap().status().as_u16(), 200);
    assert_eq!(get().send().await.unwrap().status().as_u16(), 429);
    clock.advance(Duration::from_secs(61));
    assert_eq!(get().send().await.unwrap().status().as_u16(), 200);
}
