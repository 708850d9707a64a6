//! Pricing and routing follow verification (issue 16): against a real in-process
//! gateway with mock providers, the +20% TEE premium is charged only when the
//! request asks for a TEE (or the model requires one) *and* the serving provider's
//! verdict is trusted and fresh; a declared TEE without such a verdict is priced
//! and routed as non-TEE; a model registered `tee_required` is routed only to a
//! verified provider, asked or not; `/v1/models` shows both prices.
//!
//! Trusted evidence over the gateway's nonce cannot be produced here (no TEE), so
//! the verdicts are stored through the registry, as the verifier stores them; the
//! verification itself is tested with real vectors in the gateway's `policy` and
//! `collateral` tests.

#![expect(clippy::unwrap_used, reason = "tests")]

use serde_json::{Value, json};
use tenzro_gateway::providers::verdict::AttestationVerdict;

use crate::gateway_common::*;

fn chat_body(tee: bool) -> Value {
    let mut b =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    if tee {
        b["tenzro"] = json!({"tee": true});
    }
    b
}

/// Sends a chat; `Ok(charged)` on 200, `Err((status, error.param))` otherwise.
async fn charge(gw: &Gateway, tee: bool) -> Result<u128, (u16, Value)> {
    let before = gw.balance();
    let resp = gw.chat(chat_body(tee)).send().await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    if status != 200 {
        return Err((status, body["error"]["param"].clone()));
    }
    // The charge settles when the response is done.
    for _ in 0..100 {
        if gw.balance() < before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(before - gw.balance())
}

/// Stores a verdict on provider `id` as the verifier would: trusted, and fresh for
/// `fresh_for` seconds from now (negative: already expired).
fn set_verdict(gw: &Gateway, id: &str, trusted: bool, fresh_for: i64) {
    let reg = &gw.state.registry;
    let now = reg.unix_now();
    let entry = reg.get(id).unwrap();
    let verified_at = if fresh_for < 0 { now - 7200 } else { now };
    let expires_at = now.saturating_add_signed(fresh_for);
    reg.record_attestation(
        &entry,
        AttestationVerdict {
            trusted,
            tee_kind: Some("tdx".into()),
            reasons: if trusted {
                vec![]
            } else {
                vec!["tcb: OutOfDate".into()]
            },
            verified_at,
            expires_at,
            slashable: false,
        },
    );
}

async fn gateway_with(tee: &str, tee_required: bool) -> (Gateway, MockProvider) {
    let mock = mock_provider("a", Behaviour::Ok { chunks: 3 }).await;
    let mut p = static_provider("a", &mock.url);
    p.tee = tee.into();
    for m in &mut p.models {
        m.tee_required = tee_required;
    }
    let gw = start_gateway(
        |d| {
            let mut cfg = test_config(vec![p], d);
            // The mock signs no receipts; only pricing and routing are under test.
            cfg.receipts.verify_sample_ppm = 0;
            cfg
        },
        None,
    )
    .await;
    (gw, mock)
}

async fn model_card(gw: &Gateway) -> Value {
    let resp = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(&gw.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let list: Value = resp.json().await.unwrap();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == MODEL)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn the_tee_premium_follows_the_verdict_and_the_request() {
    let (gw, mock) = gateway_with("tdx", false).await;
    // Declared TDX, no verdict: priced and routed as non-TEE.
    let plain = charge(&gw, false).await.unwrap();
    assert!(plain > 0);
    assert_eq!(charge(&gw, true).await.unwrap_err(), (503, json!("tee")));
    let card = model_card(&gw).await;
    assert_eq!(card["tee_available"], json!(false), "{card}");
    assert_eq!(card["min_tee_price_per_token"], Value::Null, "{card}");
    assert_eq!(
        card["min_price_per_token"],
        json!(PRICE.to_string()),
        "{card}"
    );

    // An untrusted verdict changes nothing.
    set_verdict(&gw, "a", false, 3600);
    assert_eq!(charge(&gw, false).await.unwrap(), plain);
    assert_eq!(charge(&gw, true).await.unwrap_err(), (503, json!("tee")));

    // Trusted and fresh: the premium only when asked for.
    set_verdict(&gw, "a", true, 3600);
    assert_eq!(
        charge(&gw, false).await.unwrap(),
        plain,
        "not asked: no premium"
    );
    let tee = charge(&gw, true).await.unwrap();
    assert_eq!(tee * 5, plain * 6, "+20%: {tee} vs {plain}");
    let card = model_card(&gw).await;
    assert_eq!(card["tee_available"], json!(true), "{card}");
    assert_eq!(
        card["min_tee_price_per_token"],
        json!((PRICE * 6 / 5).to_string()),
        "{card}"
    );
    assert_eq!(
        card["min_price_per_token"],
        json!(PRICE.to_string()),
        "{card}"
    );

    // Trusted but stale: back to non-TEE.
    set_verdict(&gw, "a", true, -3600);
    assert_eq!(charge(&gw, true).await.unwrap_err(), (503, json!("tee")));
    assert_eq!(charge(&gw, false).await.unwrap(), plain);
    assert_eq!(model_card(&gw).await["tee_available"], json!(false));
    assert_eq!(mock.calls(), 5);
}

#[tokio::test]
async fn a_tee_required_model_goes_only_to_a_verified_provider() {
    let (gw, mock) = gateway_with("tdx", true).await;
    // Not asked for, but the model requires it: refused while unverified.
    assert_eq!(charge(&gw, false).await.unwrap_err(), (503, json!("tee")));
    assert_eq!(charge(&gw, true).await.unwrap_err(), (503, json!("tee")));
    assert_eq!(mock.calls(), 0, "never reached an unverified provider");

    set_verdict(&gw, "a", true, 3600);
    let required = charge(&gw, false).await.unwrap();
    let asked = charge(&gw, true).await.unwrap();
    assert_eq!(required, asked, "the model requires it: premium either way");
    assert_eq!(mock.calls(), 2);

    // The same provider without `tee_required` gives the plain price to compare.
    let (plain_gw, _m) = gateway_with("tdx", false).await;
    set_verdict(&plain_gw, "a", true, 3600);
    let plain = charge(&plain_gw, false).await.unwrap();
    assert_eq!(required * 5, plain * 6, "{required} vs {plain}");

    set_verdict(&gw, "a", true, -1);
    assert_eq!(charge(&gw, false).await.unwrap_err(), (503, json!("tee")));
}
