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
