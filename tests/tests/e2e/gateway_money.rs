//! The money API over HTTP against mock providers: the account view, channels,
//! delegation scopes under concurrency, agent identities and their lifecycle.

#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use crate::gateway_common::*;
use serde_json::{Value, json};
use tenzro_attest::keys::ProviderKey;
use tenzro_gateway::pricing::Asset;

/// One provider with room for every concurrent request, so that congestion
/// pricing (which rises with in-flight requests) keeps the worst case constant.
async fn one_provider() -> (MockProvider, Gateway) {
    let p = mock_provider("a", Behaviour::Ok { chunks: 4 }).await;
    let mut sp = static_provider("a", &p.url);
    sp.max_concurrency = Some(100_000);
    let gw = start_gateway(|d| test_config(vec![sp], d), None).await;
    (p, gw)
}

fn chat(stream: bool) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream})
}

async fn get(gw: &Gateway, path: &str, key: &str) -> (u16, Value) {
    let r = gw
        .http
        .get(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_account_shows_balances_spend_and_the_channel() {
    let (_p, gw) = one_provider().await;
    let resp = gw.chat(chat(true)).send().await.unwrap();
    let channel = resp.headers()["x-tenzro-channel"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = resp.text().await.unwrap();
    let (_, comments) = sse_parts(&body);
    let cost: u128 = comments
        .iter()
        .find_map(|c| c.strip_prefix("x-tenzro-cost="))
        .and_then(|c| c.split_whitespace().next())
        .unwrap_or_else(|| panic!("no cost comment in {comments:?}"))
        .parse()
        .unwrap();
    assert!(cost > 0);
    gw.balance_eventually(FUNDS - cost).await;

    let (s, a) = get(&gw, "/v1/account", &gw.key).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["balances"]["TNZO"], json!((FUNDS - cost).to_string()));
    assert_eq!(a["spent_today"]["TNZO"], json!(cost.to_string()));
    let ch = &a["channels"][0];
    assert_eq!(
        (
            ch["id"].as_str(),
            ch["provider"].as_str(),
            ch["state"].as_str()
        ),
        (Some(channel.as_str()), Some("a"), Some("open"))
    );
    assert_eq!(ch["spent"], json!(cost.to_string()));
    assert!(
        ch["nonce"].as_u64().unwrap() >= 1,
        "a nonce per metered chunk: {ch}"
    );
    assert_eq!(
        ch["deposit"], ch["spent"],
        "the deposit grew only as the request needed"
    );
    gw.state.book.audit(&gw.account, Asset::Tnzo).unwrap();

    // Another account cannot see it.
    let (other, _, _) = gw
        .state
        .accounts
        .create_account("other", Asset::Tnzo, 5, Default::default(), None)
        .await
        .unwrap();
    assert_eq!(
        get(&gw, &format!("/v1/channels/{channel}"), &other).await.0,
        404
    );
    assert_eq!(
        get(&gw, &format!("/v1/channels/{channel}"), &gw.key)
            .await
            .0,
        200
    );
    // No countersigned voucher from a mock provider, so closing goes to a dispute.
    assert_eq!(
        get(&gw, &format!("/v1/channels/{channel}/voucher"), &gw.key)
            .await
            .0,
        404
    );
    let r = gw
        .post(&format!("/v1/channels/{channel}/close"), Some(&gw.key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["channel"]["state"], "disputed");
    assert_eq!(v["channel"]["dispute"]["spent"], json!(cost.to_string()));
    // A new request opens a new channel; the disputed one takes no more.
    let resp = gw.chat(chat(false)).send().await.unwrap();
    assert_ne!(resp.headers()["x-tenzro-provider"], "");
    assert_ne!(
        resp.headers()["x-tenzro-channel"].to_str().unwrap(),
        channel,
        "a new channel, named on non-streamed answers too"
    );
    let (_, a) = get(&gw, "/v1/account", &gw.key).await;
    assert_eq!(a["channels"].as_array().unwrap().len(), 2);
    gw.state.book.audit(&gw.account, Asset::Tnzo).unwrap();
}

/// Registers a person (admin), gives them a funded account, and returns its key.
async fn owner(gw: &Gateway) -> (String, String) {
    let key = ProviderKey::from_seed(&[7; 32]);
    let r = gw
        .post("/admin/identities", Some("admin-secret"))
        .json(&json!({"display_name": "Ada", "kyc_tier": 2, "public_key": key.public_key_hex()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let human: Value = r.json().await.unwrap();
    let did = human["did"].as_str().unwrap().to_owned();
    assert!(did.starts_with("did:tenzro:human:"), "{did}");
    let r = gw
        .post("/admin/accounts", Some("admin-secret"))
        .json(&json!({"name": "ada", "balance": "1000", "identity": did}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let acct: Value = r.json().await.unwrap();
    (did, acct["key"].as_str().unwrap().to_owned())
}

async fn agent(gw: &Gateway, owner_key: &str, seed: u8, scope: Value) -> (String, String) {
    let k = ProviderKey::from_seed(&[seed; 32]);
    let r = gw
        .post("/v1/identities/agents", Some(owner_key))
        .json(&json!({"public_key": k.public_key_hex(), "capabilities": ["chat"], "scope": scope}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    (
        v["identity"]["did"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

/// The worst case the gateway reserves for `chat(false)`, read from a refusal.
async fn worst_case(gw: &Gateway, owner_key: &str) -> u128 {
    let (_, probe) = agent(gw, owner_key, 40, json!({"max_transaction_value": "1"})).await;
    let r = gw
        .post("/v1/chat/completions", Some(&probe))
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 402);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("max_transaction_value"), "{msg}");
    msg.split("may cost up to ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

/// 100 simultaneous requests from one agent never spend past its daily limit,
/// and each refusal names the limit.
#[tokio::test]
async fn a_hundred_concurrent_requests_stay_within_the_agents_scope() {
    let (_p, gw) = one_provider().await;
    let (_, owner_key) = owner(&gw).await;
    let worst = worst_case(&gw, &owner_key).await;
    let limit = worst * 10 + worst / 2;
    let (agent_did, agent_key) = agent(
        &gw,
        &owner_key,
        41,
        json!({"max_daily_spend": limit.to_string()}),
    )
    .await;
    assert!(
        agent_did.starts_with("did:tenzro:machine:did:tenzro:human:"),
        "{agent_did}"
    );

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (http, url, key) = (gw.http.clone(), gw.url.clone(), agent_key.clone());
            tokio::spawn(async move {
                let r = http
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(key)
                    .json(&chat(false))
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
    let mut spent = 0u128;
    let mut admitted = 0;
    let mut refusals = Vec::new();
    for t in tasks {
        let (status, cost, body) = t.await.unwrap();
        match status {
            200 => {
                admitted += 1;
                spent += cost.unwrap();
            }
            402 => {
                let m = body["error"]["message"].as_str().unwrap().to_owned();
                assert!(m.contains("max_daily_spend"), "{body}");
                refusals.push(m);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        admitted >= 10,
        "at least the worst-case count fits: {admitted}; worst {worst}, limit {limit}; {:?}",
        refusals.first()
    );
    assert!(spent <= limit, "spent {spent} over the limit {limit}");
    let (_, a) = get(&gw, "/v1/account", &agent_key).await;
    assert_eq!(a["spent_today"]["TNZO"], json!(spent.to_string()));
    assert_eq!(a["scope"]["max_daily_spend"], json!(limit.to_string()));
    assert_eq!(a["identity"], json!(agent_did));
}

#[tokio::test]
async fn suspending_the_owner_cascades_to_its_agents_keys() {
    let (_p, gw) = one_provider().await;
    let (owner_did, owner_key) = owner(&gw).await;
    let (agent_did, agent_key) = agent(&gw, &owner_key, 50, json!({})).await;
    let ok = |k: String| {
        let (http, url) = (gw.http.clone(), gw.url.clone());
        async move {
            http.post(format!("{url}/v1/chat/completions"))
                .bearer_auth(k)
                .json(&chat(false))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(ok(agent_key.clone()).await, 200);

    // The DID document and the resolved identity.
    let doc: Value = gw
        .http
        .get(format!("{}/v1/identities/{agent_did}/document", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["id"], json!(agent_did));
    assert_eq!(doc["controller"], json!(owner_did));
    assert!(
        doc["verificationMethod"][0]["publicKeyMultibase"]
            .as_str()
            .unwrap()
            .starts_with("z6Mk")
    );
    let who: Value = gw
        .http
        .get(format!("{}/v1/identities/{agent_did}", gw.url))
        // Personal fields (the KYC tier) are shown to the identity's controllers only.
        .bearer_auth(&owner_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (who["kind"].as_str(), who["kyc_tier"].as_u64()),
        (Some("agent"), Some(2)),
        "the agent inherits its owner's KYC tier: {who}"
    );

    let r = gw
        .post(
            &format!("/v1/identities/{owner_did}/suspend"),
            Some("admin-secret"),
        )
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["changed"], json!([owner_did.clone(), agent_did.clone()]));
    assert_eq!(ok(agent_key.clone()).await, 403);
    assert_eq!(ok(owner_key.clone()).await, 403);
    // Only the admin or a controller may act; the agent cannot resume its owner.
    assert_eq!(
        gw.post(
            &format!("/v1/identities/{owner_did}/resume"),
            Some(&agent_key)
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16(),
        403
    );
    gw.post(
        &format!("/v1/identities/{owner_did}/resume"),
        Some("admin-secret"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(ok(agent_key.clone()).await, 200);
    // The owner terminates its agent: final.
    let r = gw
        .post(
            &format!("/v1/identities/{agent_did}/terminate"),
            Some(&owner_key),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(ok(agent_key.clone()).await, 403);
    assert_eq!(
        gw.post(
            &format!("/v1/identities/{agent_did}/resume"),
            Some("admin-secret")
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16(),
        409
    );
    assert_eq!(ok(owner_key).await, 200);
}

/// The URL of a new, empty database on the server named by
/// `TENZRO_TEST_POSTGRES_URL` (`scripts/postgres`); `None` when it is unset, which
/// CI does not allow.
pub(crate) async fn fresh_postgres_database() -> Option<String> {
    use sqlx::Executor;
    let Ok(admin) = std::env::var("TENZRO_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set TENZRO_TEST_POSTGRES_URL"
        );
        eprintln!("TENZRO_TEST_POSTGRES_URL unset: skipped");
        return None;
    };
    sqlx::any::install_default_drivers();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    pool.close().await;
    Some(format!("{}/{name}", admin.rsplit_once('/').unwrap().0))
}

/// The same gateway on PostgreSQL (`TENZRO_TEST_POSTGRES_URL`, required under CI):
/// a streamed request's charge and channel survive a restart on the same database.
#[tokio::test]
async fn the_gateway_keeps_its_money_in_postgresql() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };

    let p = mock_provider("a", Behaviour::Ok { chunks: 4 }).await;
    let purl = p.url.clone();
    let db = url.clone();
    let gw = start_gateway(
        move |d| {
            let mut c = test_config(vec![static_provider("a", &purl)], d);
            c.store.url = tenzro_gateway::config::Secret::new(db);
            c
        },
        None,
    )
    .await;
    assert!(!gw.state.store.is_sqlite());
    let body = gw
        .chat(chat(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("[DONE]"));
    let (_, before) = get(&gw, "/v1/account", &gw.key).await;
    let spent = before["spent_today"]["TNZO"].clone();
    assert_ne!(spent, json!("0"));

    // Stop it cleanly (the last commit) and start another gateway on the database.
    gw.state.cancel.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(vec![static_provider("a", &p.url)], dir.path());
    cfg.store.url = tenzro_gateway::config::Secret::new(url);
    let again = tenzro_gateway::build(cfg).await.unwrap();
    let key = again.accounts.lookup(&gw.key).await.unwrap().unwrap();
    again
        .leases
        .ensure(
            &again.store,
            &again.book,
            &key.record.account,
            tenzro_gateway::clock::unix_now(),
        )
        .await
        .unwrap();
    let f = again.book.funds(&key.record.account, Asset::Tnzo).unwrap();
    assert_eq!(
        f.available().to_string(),
        before["balances"]["TNZO"].as_str().unwrap()
    );
    assert_eq!(
        again
            .book
            .spent_today(&key.record.id, tenzro_gateway::clock::unix_now())
            .to_string(),
        spent.as_str().unwrap()
    );
    let ch = again.book.channels_of(&key.record.account);
    assert_eq!(ch.len(), 1);
    assert_eq!(
        ch[0].channel.spent.to_string(),
        before["channels"][0]["spent"].as_str().unwrap()
    );
    again.book.audit(&key.record.account, Asset::Tnzo).unwrap();
}

/// Two replicas on one PostgreSQL database: an account is served by one at a time.
/// The other answers 503 with Retry-After until the first releases the idle account,
/// then takes it over with the balance and channels the first committed.
#[tokio::test]
async fn replicas_on_one_database_take_turns_with_an_account() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let p = mock_provider("a", Behaviour::Ok { chunks: 4 }).await;
    let cfg = |d: &std::path::Path, url: &str, purl: &str| {
        let mut c = test_config(vec![static_provider("a", purl)], d);
        c.store.url = tenzro_gateway::config::Secret::new(url.to_owned());
        c.store.lease_idle_s = 1;
        c
    };
    let (u1, p1) = (url.clone(), p.url.clone());
    let a = start_gateway(move |d| cfg(d, &u1, &p1), None).await;
    let (u2, p2) = (url.clone(), p.url.clone());
    let b = start_gateway(move |d| cfg(d, &u2, &p2), None).await;

    // A serves the key first; B refuses it while A holds the account.
    assert_eq!(
        a.chat(chat(false)).send().await.unwrap().status().as_u16(),
        200
    );
    let r = b
        .post("/v1/chat/completions", Some(&a.key))
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "replica_busy", "{e}");
    let (_, on_a) = get(&a, "/v1/account", &a.key).await;

    // Idle for over a second, A commits, drops and releases it; B takes it over.
    let mut status = 0;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = b
            .post("/v1/chat/completions", Some(&a.key))
            .json(&chat(false))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200, "B took the account over");
    let (_, on_b) = get(&b, "/v1/account", &a.key).await;
    let cost_a: u128 = on_a["spent_today"]["TNZO"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let spent_b: u128 = on_b["spent_today"]["TNZO"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        spent_b > cost_a,
        "B sees A's spend and its own: {cost_a} then {spent_b}"
    );
    let balance_b: u128 = on_b["balances"]["TNZO"].as_str().unwrap().parse().unwrap();
    assert_eq!(balance_b, FUNDS - spent_b, "one balance across replicas");
    assert_eq!(
        on_b["channels"].as_array().unwrap().len(),
        1,
        "the same channel, served by B now: {on_b}"
    );
    assert_eq!(
        get(&a, "/v1/account", &a.key).await.0,
        503,
        "and A refuses it now"
    );
}
