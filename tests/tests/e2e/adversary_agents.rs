//! Agents that attack their delegation (issue 11), against a gateway serving HTTP
//! with a fake upstream: the scope escape through a sub-agent, an owner lifting an
//! admin's suspension, anonymous reads of personal fields, a sub-sub-agent's
//! concurrent requests against the chain's daily limits, and the cap of agents per
//! owner. Each attack is refused and the book's conservation audit holds after it.

#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use crate::gateway_common::*;
use serde_json::{Value, json};
use tenzro_attest::keys::ProviderKey;
use tenzro_gateway::config::Config;
use tenzro_gateway::pricing::Asset;

async fn gateway_with(edit: impl FnOnce(&mut Config)) -> (MockProvider, Gateway) {
    let p = mock_provider("a", Behaviour::Ok { chunks: 4 }).await;
    let mut sp = static_provider("a", &p.url);
    sp.max_concurrency = Some(100_000);
    let gw = start_gateway(
        |d| {
            let mut c = test_config(vec![sp], d);
            edit(&mut c);
            c
        },
        None,
    )
    .await;
    (p, gw)
}

fn chat() -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
}

async fn get(gw: &Gateway, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut rb = gw.http.get(format!("{}{path}", gw.url));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn post(gw: &Gateway, path: &str, key: &str, body: Value) -> (u16, Value) {
    let r = gw.post(path, Some(key)).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A person (admin-registered) with a funded account: (DID, account id, key).
async fn owner(gw: &Gateway, seed: u8) -> (String, String, String) {
    let key = ProviderKey::from_seed(&[seed; 32]);
    let (s, human) = post(
        gw,
        "/admin/identities",
        "admin-secret",
        json!({"display_name": "Ada Lovelace", "kyc_tier": 2, "public_key": key.public_key_hex()}),
    )
    .await;
    assert_eq!(s, 201, "{human}");
    let did = human["did"].as_str().unwrap().to_owned();
    let (s, acct) = post(
        gw,
        "/admin/accounts",
        "admin-secret",
        json!({"name": "ada", "balance": "1000", "identity": did}),
    )
    .await;
    assert_eq!(s, 201, "{acct}");
    let account = acct["account"]["id"]
        .as_str()
        .or(acct["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    (did, account, acct["key"].as_str().unwrap().to_owned())
}

/// Asks `parent_key` to create an agent with `scope`: the status and the body.
async fn try_agent(gw: &Gateway, parent_key: &str, seed: u8, scope: Value) -> (u16, Value) {
    let k = ProviderKey::from_seed(&[seed; 32]);
    post(
        gw,
        "/v1/identities/agents",
        parent_key,
        json!({"public_key": k.public_key_hex(), "capabilities": ["chat"], "scope": scope}),
    )
    .await
}

/// An agent that must be created: (DID, key).
async fn agent(gw: &Gateway, parent_key: &str, seed: u8, scope: Value) -> (String, String) {
    let (s, v) = try_agent(gw, parent_key, seed, scope).await;
    assert_eq!(s, 201, "{v}");
    (
        v["identity"]["did"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

async fn chat_status(gw: &Gateway, key: &str) -> (u16, Value) {
    post(gw, "/v1/chat/completions", key, chat()).await
}

/// The account behind `key`, audited: funded = balances + deposits + closed spent.
async fn audit(gw: &Gateway, key: &str) {
    let (s, a) = get(gw, "/v1/account", Some(key)).await;
    assert_eq!(s, 200, "{a}");
    let account = a["id"].as_str().unwrap().to_owned();
    gw.state.book.audit(&account, Asset::Tnzo).unwrap();
    gw.state.book.audit(&gw.account, Asset::Tnzo).unwrap();
}

fn balance_of(gw: &Gateway, account: &str) -> u128 {
    gw.state
        .book
        .funds(account, Asset::Tnzo)
        .map(|f| f.balance)
        .unwrap_or(0)
}

/// The escape of issue 11: a tightly scoped agent creates a sub-agent with `scope:
/// {}`. The sub-agent inherits the parent's scope (its chat is 403 like the
/// parent's), a wider scope is refused naming the field, and nothing is charged.
#[tokio::test]
async fn a_sub_agent_cannot_escape_its_parents_scope() {
    let (p, gw) = gateway_with(|_| {}).await;
    let (_, account, owner_key) = owner(&gw, 7).await;
    let tight =
        json!({"allowed_models": ["nope"], "max_transaction_value": "1", "max_daily_spend": "1"});
    let (_, parent) = agent(&gw, &owner_key, 10, tight.clone()).await;
    let (s, v) = chat_status(&gw, &parent).await;
    assert_eq!(s, 403, "{v}");
    let before = balance_of(&gw, &account);

    // `scope: {}` inherits: the child is bound by the parent's scope.
    let (s, v) = try_agent(&gw, &parent, 11, json!({})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["scope"]["allowed_models"], json!(["nope"]), "{v}");
    assert_eq!(v["scope"]["max_daily_spend"], json!("1"), "{v}");
    let child = v["key"].as_str().unwrap().to_owned();
    let (s, v) = chat_status(&gw, &child).await;
    assert_eq!(s, 403, "the sub-agent is bound by its parent's scope: {v}");
    // And its own sub-agent too.
    let (_, grandchild) = agent(&gw, &child, 12, json!({})).await;
    assert_eq!(chat_status(&gw, &grandchild).await.0, 403);

    // Asking for more than the parent has is refused, naming the field.
    for (seed, wider, field) in [
        (13, json!({"allowed_models": [MODEL]}), "allowed_models"),
        (14, json!({"max_daily_spend": "1000000"}), "max_daily_spend"),
        (
            15,
            json!({"max_transaction_value": "2"}),
            "max_transaction_value",
        ),
        (16, json!({"requests_per_minute": 0}), "requests_per_minute"),
    ] {
        let (s, v) = try_agent(&gw, &parent, seed, wider).await;
        assert_eq!(s, 403, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "{msg}");
    }
    // A request cannot plant ancestors of its own.
    let (s, v) = try_agent(&gw, &parent, 17, json!({"ancestors": []})).await;
    assert_eq!(s, 201, "an empty list is no claim: {v}");
    let (s, v) = try_agent(
        &gw,
        &parent,
        18,
        json!({"ancestors": [{"key_id": "key_x"}]}),
    )
    .await;
    assert_eq!(s, 400, "{v}");

    assert_eq!(p.calls(), 0, "no request reached the provider");
    assert_eq!(balance_of(&gw, &account), before, "nothing was charged");
    audit(&gw, &owner_key).await;
}

/// Creating agents, reading the account and acting on identities are operations a
/// scope must allow.
#[tokio::test]
async fn operations_a_scope_does_not_grant_are_refused() {
    let (_p, gw) = gateway_with(|_| {}).await;
    let (owner_did, _, owner_key) = owner(&gw, 7).await;
    let (_, chat_only) = agent(&gw, &owner_key, 20, json!({"allowed_operations": ["chat"]})).await;
    assert_eq!(chat_status(&gw, &chat_only).await.0, 200);
    let (s, v) = try_agent(&gw, &chat_only, 21, json!({})).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agents:create"),
        "{v}"
    );
    let (s, v) = get(&gw, "/v1/account", Some(&chat_only)).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`account`"),
        "{v}"
    );
    // Its own identity's personal fields need `identities`.
    let (s, v) = get(
        &gw,
        &format!("/v1/identities/{owner_did}"),
        Some(&chat_only),
    )
    .await;
    assert_eq!(s, 200);
    assert!(v.get("display_name").is_none(), "{v}");

    // An agent that may create agents cannot give its child an operation it lacks.
    let (_, creator) = agent(
        &gw,
        &owner_key,
        22,
        json!({"allowed_operations": ["chat", "agents:create"]}),
    )
    .await;
    let (s, v) = try_agent(
        &gw,
        &creator,
        23,
        json!({"allowed_operations": ["chat", "account"]}),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = try_agent(&gw, &creator, 24, json!({})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["scope"]["allowed_operations"],
        json!(["chat", "agents:create"])
    );
    audit(&gw, &owner_key).await;
}

/// An admin's suspension is lifted only by an admin; the owner's /resume is 403
/// and the agent's key (and its sub-agent's) stays refused.
#[tokio::test]
async fn an_owner_cannot_lift_an_admins_suspension() {
    let (_p, gw) = gateway_with(|_| {}).await;
    let (_, _, owner_key) = owner(&gw, 7).await;
    let (agent_did, agent_key) = agent(&gw, &owner_key, 30, json!({})).await;
    let (_, sub_key) = agent(&gw, &agent_key, 31, json!({})).await;
    assert_eq!(chat_status(&gw, &sub_key).await.0, 200);

    let (s, v) = post(
        &gw,
        &format!("/v1/identities/{agent_did}/suspend"),
        "admin-secret",
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(chat_status(&gw, &agent_key).await.0, 403);
    assert_eq!(
        chat_status(&gw, &sub_key).await.0,
        403,
        "suspended with its controller"
    );

    let (s, v) = post(
        &gw,
        &format!("/v1/identities/{agent_did}/resume"),
        &owner_key,
        json!({}),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("admin"),
        "{v}"
    );
    assert_eq!(chat_status(&gw, &agent_key).await.0, 403);
    // Suspending it again as the owner does not turn it into the owner's suspension.
    let (s, _) = post(
        &gw,
        &format!("/v1/identities/{agent_did}/suspend"),
        &owner_key,
        json!({}),
    )
    .await;
    assert_eq!(s, 409);
    let (s, _) = post(
        &gw,
        &format!("/v1/identities/{agent_did}/resume"),
        &owner_key,
        json!({}),
    )
    .await;
    assert_eq!(s, 403);

    let (s, v) = post(
        &gw,
        &format!("/v1/identities/{agent_did}/resume"),
        "admin-secret",
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(chat_status(&gw, &agent_key).await.0, 200);
    assert_eq!(chat_status(&gw, &sub_key).await.0, 200);

    // The owner's own suspension is still the owner's to lift.
    let (s, _) = post(
        &gw,
        &format!("/v1/identities/{agent_did}/suspend"),
        &owner_key,
        json!({}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = post(
        &gw,
        &format!("/v1/identities/{agent_did}/resume"),
        &owner_key,
        json!({}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(chat_status(&gw, &agent_key).await.0, 200);
    audit(&gw, &owner_key).await;
}

/// Anonymous reads of an identity show the public DID-document view only; the
/// owner and the admin see the personal fields; a stranger's key sees what
/// anybody sees.
#[tokio::test]
async fn anonymous_identity_reads_show_no_personal_fields() {
    let (_p, gw) = gateway_with(|_| {}).await;
    let (did, _, owner_key) = owner(&gw, 7).await;
    let (agent_did, _) = agent(&gw, &owner_key, 40, json!({})).await;
    let (_, _, stranger) = owner(&gw, 8).await;
    let personal = [
        "display_name",
        "kyc_tier",
        "credentials",
        "capabilities",
        "reputation",
    ];
    for (path, who) in [
        (&did, None),
        (&agent_did, None),
        (&did, Some(stranger.as_str())),
    ] {
        let (s, v) = get(&gw, &format!("/v1/identities/{path}"), who).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["did"], json!(path));
        assert_eq!(v["document"]["id"], json!(path), "{v}");
        for field in personal {
            assert!(v.get(field).is_none(), "{field} shown to {who:?}: {v}");
        }
        assert!(!v.to_string().contains("Ada Lovelace"), "{v}");
    }
    let (_, v) = get(&gw, &format!("/v1/identities/{did}"), Some(&owner_key)).await;
    assert_eq!(v["display_name"], json!("Ada Lovelace"), "{v}");
    let (_, v) = get(
        &gw,
        &format!("/v1/identities/{agent_did}"),
        Some(&owner_key),
    )
    .await;
    assert_eq!(v["kyc_tier"], json!(2), "{v}");
    let (_, v) = get(&gw, &format!("/v1/identities/{did}"), Some("admin-secret")).await;
    assert_eq!(v["kyc_tier"], json!(2), "{v}");
    let (s, _) = get(&gw, &format!("/v1/identities/{did}"), Some("tz-wrong")).await;
    assert_eq!(s, 401);
    audit(&gw, &owner_key).await;
}

/// The worst case the gateway reserves for `chat()`, read from a refusal.
async fn worst_case(gw: &Gateway, owner_key: &str) -> u128 {
    let (_, probe) = agent(gw, owner_key, 99, json!({"max_transaction_value": "1"})).await;
    let (s, v) = chat_status(gw, &probe).await;
    assert_eq!(s, 402, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    msg.split("may cost up to ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

/// 100 simultaneous requests from a sub-sub-agent stay within the tightest daily
/// limit of its chain, and what its siblings spent counts at the shared ancestor.
#[tokio::test]
async fn a_hundred_concurrent_requests_stay_within_the_chains_tightest_limit() {
    let (_p, gw) = gateway_with(|_| {}).await;
    let (_, account, owner_key) = owner(&gw, 7).await;
    let worst = worst_case(&gw, &owner_key).await;
    // a (6.5 worst cases a day) -> b (the same) -> c (generous within b).
    let limit = worst * 6 + worst / 2;
    let (_, a) = agent(
        &gw,
        &owner_key,
        50,
        json!({"max_daily_spend": limit.to_string()}),
    )
    .await;
    let (_, b) = agent(&gw, &a, 51, json!({})).await;
    let (_, c) = agent(&gw, &b, 52, json!({})).await;
    // A sibling of b spends under a first.
    let (_, sibling) = agent(&gw, &a, 53, json!({})).await;
    let mut sibling_spent = 0u128;
    for _ in 0..2 {
        let r = gw
            .post("/v1/chat/completions", Some(&sibling))
            .json(&chat())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        sibling_spent += r.headers()["x-tenzro-cost"]
            .to_str()
            .unwrap()
            .parse::<u128>()
            .unwrap();
    }
    let before = balance_of(&gw, &account);

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (http, url, key) = (gw.http.clone(), gw.url.clone(), c.clone());
            tokio::spawn(async move {
                let r = http
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(key)
                    .json(&chat())
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let cost = r
                    .headers()
                    .get("x-tenzro-cost")
                    .map(|c| c.to_str().unwrap().parse::<u128>().unwrap());
                let body: Value = r.json().await.unwrap();
                (status, cost, body)
            })
        })
        .collect();
    let (mut spent, mut admitted) = (0u128, 0);
    for t in tasks {
        let (status, cost, body) = t.await.unwrap();
        match status {
            200 => {
                admitted += 1;
                spent += cost.unwrap();
            }
            402 => {
                let msg = body["error"]["message"].as_str().unwrap();
                assert!(msg.contains("max_daily_spend"), "{msg}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(admitted >= 1, "some requests fit");
    assert!(admitted < 100, "the limit refused some: {admitted}");
    assert!(
        sibling_spent + spent <= limit,
        "the chain spent {} over a's limit {limit}",
        sibling_spent + spent
    );
    let after = gw
        .state
        .book
        .funds(&account, Asset::Tnzo)
        .map(|f| f.balance)
        .unwrap_or(0);
    assert_eq!(
        before - after,
        spent,
        "the owner paid exactly what was admitted"
    );
    // Every key of the chain reports the spending under it.
    let (_, va) = get(&gw, "/v1/account", Some(&a)).await;
    assert_eq!(
        va["spent_today"]["TNZO"],
        json!((sibling_spent + spent).to_string()),
        "{va}"
    );
    let (_, vc) = get(&gw, "/v1/account", Some(&c)).await;
    assert_eq!(vc["spent_today"]["TNZO"], json!(spent.to_string()), "{vc}");
    audit(&gw, &owner_key).await;
}

/// Revoking a key revokes the keys it delegated to, at any depth.
#[tokio::test]
async fn revoking_a_key_revokes_its_delegates() {
    let (_p, gw) = gateway_with(|_| {}).await;
    let (_, _, owner_key) = owner(&gw, 7).await;
    let (s, v) = try_agent(&gw, &owner_key, 70, json!({})).await;
    assert_eq!(s, 201, "{v}");
    let (parent_id, parent) = (
        v["key_id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    );
    let (_, child) = agent(&gw, &parent, 71, json!({})).await;
    let (_, grandchild) = agent(&gw, &child, 72, json!({})).await;
    let (_, sibling) = agent(&gw, &owner_key, 73, json!({})).await;
    assert_eq!(chat_status(&gw, &grandchild).await.0, 200);
    let r = gw
        .http
        .delete(format!("{}/admin/keys/{parent_id}", gw.url))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for k in [&parent, &child, &grandchild] {
        assert_eq!(chat_status(&gw, k).await.0, 401);
    }
    assert_eq!(chat_status(&gw, &sibling).await.0, 200);
    audit(&gw, &owner_key).await;
}

/// An owner has at most `identities.max_agents_per_owner` live agents, counting
/// sub-agents; terminating one makes room.
#[tokio::test]
async fn agents_per_owner_are_capped() {
    let (_p, gw) = gateway_with(|c| c.identities.max_agents_per_owner = 3).await;
    let (_, _, owner_key) = owner(&gw, 7).await;
    let (first, first_key) = agent(&gw, &owner_key, 60, json!({})).await;
    agent(&gw, &owner_key, 61, json!({})).await;
    agent(&gw, &first_key, 62, json!({})).await;
    for (parent, seed) in [(&owner_key, 63), (&first_key, 64)] {
        let (s, v) = try_agent(&gw, parent, seed, json!({})).await;
        assert_eq!(s, 403, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("max_agents_per_owner = 3"), "{msg}");
    }
    // Another owner is not affected.
    let (_, _, other) = owner(&gw, 8).await;
    agent(&gw, &other, 65, json!({})).await;
    // Terminating `first` (and its sub-agent) makes room for two.
    let (s, _) = post(
        &gw,
        &format!("/v1/identities/{first}/terminate"),
        &owner_key,
        json!({}),
    )
    .await;
    assert_eq!(s, 200);
    agent(&gw, &owner_key, 66, json!({})).await;
    agent(&gw, &owner_key, 67, json!({})).await;
    assert_eq!(try_agent(&gw, &owner_key, 68, json!({})).await.0, 403);
    audit(&gw, &owner_key).await;
}

/// The rate-limit escape of the security review: an agent limited to N requests a
/// minute makes sub-agents (each inheriting N) and floods through all of them at
/// once. Their requests count against the parent's minute too: N of them pass in
/// all, the rest get 429 with a Retry-After, the parent's own next request too, and
/// only what passed was charged.
#[tokio::test]
async fn sub_agents_share_their_parents_requests_per_minute() {
    // One cell every 15 s: the test runs well inside one.
    const N: usize = 4;
    const SUBS: u8 = 6;
    const EACH: usize = 3;
    let (p, gw) = gateway_with(|_| {}).await;
    let (_, account, owner_key) = owner(&gw, 7).await;
    let (_, parent) = agent(&gw, &owner_key, 80, json!({"requests_per_minute": N})).await;
    let mut subs = Vec::new();
    for seed in 0..SUBS {
        let (s, v) = try_agent(&gw, &parent, 81 + seed, json!({})).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["scope"]["requests_per_minute"], json!(N), "{v}");
        subs.push(v["key"].as_str().unwrap().to_owned());
    }
    // A grandchild counts against the parent as well.
    let (_, grandchild) = agent(&gw, &subs[0], 99, json!({})).await;
    subs.push(grandchild);
    let before = balance_of(&gw, &account);

    let tasks: Vec<_> = subs
        .iter()
        .flat_map(|k| std::iter::repeat_n(k.clone(), EACH))
        .map(|key| {
            let (http, url) = (gw.http.clone(), gw.url.clone());
            tokio::spawn(async move {
                let r = http
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(key)
                    .json(&chat())
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
                let cost = r
                    .headers()
                    .get("x-tenzro-cost")
                    .map(|c| c.to_str().unwrap().parse::<u128>().unwrap());
                let body: Value = r.json().await.unwrap();
                (status, retry, cost, body)
            })
        })
        .collect();
    let total = tasks.len();
    let (mut admitted, mut spent) = (0usize, 0u128);
    for t in tasks {
        let (status, retry, cost, body) = t.await.unwrap();
        match status {
            200 => {
                admitted += 1;
                spent += cost.unwrap();
            }
            429 => {
                assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
                let retry = retry.unwrap();
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(
        admitted,
        N,
        "{total} requests by {} sub-agents of a key limited to {N} a minute",
        subs.len()
    );
    assert_eq!(p.calls(), N, "only the admitted reached the provider");
    let (s, v) = chat_status(&gw, &parent).await;
    assert_eq!(s, 429, "the parent's minute is spent by its agents: {v}");
    assert_eq!(
        before - balance_of(&gw, &account),
        spent,
        "the owner paid exactly what was admitted"
    );
    audit(&gw, &owner_key).await;
}
