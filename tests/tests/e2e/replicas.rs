//! Several gateway replicas on one PostgreSQL (issue 17), in process on real TCP:
//! requests for an account land on any replica and are forwarded to the one
//! holding its lease (never `replica_busy` in normal operation), the forward header
//! is refused from outside, and providers, bans and key revocations written by one
//! replica reach the others. `TENZRO_TEST_POSTGRES_URL` is required under CI (as
//! for the other PostgreSQL tests); the kill -9 test with real processes is
//! `tests/python/test_replicas.py`.

#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenzro_attest::keys::ProviderKey;
use tenzro_gateway::AppState;
use tenzro_gateway::accounts::KeyScope;
use tenzro_gateway::clock::{Clock, SharedClock, SystemClock};
use tenzro_gateway::config::{Config, Secret};
use tenzro_gateway::pricing::Asset;
use tokio_util::sync::CancellationToken;

use crate::gateway_common::*;
use crate::gateway_money::fresh_postgres_database;

const SECRET: &str = "replicas-share-this-secret";

struct Replica {
    url: String,
    state: AppState,
    _dir: Option<tempfile::TempDir>,
}

/// A replica on `db` serving on its own port, which it advertises to the others.
async fn replica(db: &str, providers: &[&str], tune: impl FnOnce(&mut Config)) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let mut r = replica_at(db, dir.path(), providers, tune, SystemClock::shared())
        .await
        .unwrap();
    r._dir = Some(dir);
    r
}

/// A replica on `db` with data directory `dir`, on `clock`.
async fn replica_at(
    db: &str,
    dir: &std::path::Path,
    providers: &[&str],
    tune: impl FnOnce(&mut Config),
    clock: SharedClock,
) -> Result<Replica, tenzro_gateway::StartError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let statics = providers
        .iter()
        .enumerate()
        .map(|(i, u)| static_provider(&format!("p{i}"), u))
        .collect();
    let mut cfg = test_config(statics, dir);
    cfg.store.url = Secret::new(db.to_owned());
    cfg.cluster.advertise = format!("http://{addr}");
    cfg.cluster.secret = SECRET.into();
    cfg.cluster.reconcile_s = 1;
    tune(&mut cfg);
    let state = tenzro_gateway::build_with_clock(cfg, clock).await?;
    let s = state.clone();
    tokio::spawn(async move {
        let _ = tenzro_gateway::serve(listener, s).await;
    });
    Ok(Replica {
        url: format!("http://{addr}"),
        state,
        _dir: None,
    })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn chat_body(stream: bool) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream})
}

/// One chat through replica `r`: status, the cost it was told, whether it was
/// forwarded, and the error code if any.
async fn chat_on(r: &Replica, key: &str, stream: bool) -> (u16, u128, bool, String) {
    let resp = http()
        .post(format!("{}/v1/chat/completions", r.url))
        .bearer_auth(key)
        .json(&chat_body(stream))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let forwarded = resp.headers().contains_key("x-tenzro-forwarded");
    let header_cost = resp
        .headers()
        .get("x-tenzro-cost")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u128>().ok());
    let body = resp.text().await.unwrap();
    if status != 200 {
        let e: Value = serde_json::from_str(&body).unwrap_or_default();
        let code = e["error"]["code"].as_str().unwrap_or_default().to_owned();
        return (status, 0, forwarded, code);
    }
    let cost = if stream {
        let (data, comments) = sse_parts(&body);
        assert_eq!(
            data.last().map(String::as_str),
            Some("[DONE]"),
            "a forwarded stream arrives whole: {body}"
        );
        comments
            .iter()
            .find_map(|c| c.strip_prefix("x-tenzro-cost="))
            .and_then(|c| c.split_whitespace().next())
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no cost comment in {body}"))
    } else {
        header_cost.unwrap_or_else(|| panic!("no x-tenzro-cost header: {body}"))
    };
    (status, cost, forwarded, String::new())
}

async fn account(r: &Replica, key: &str) -> Value {
    let resp = http()
        .get(format!("{}/v1/account", r.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

fn amount(v: &Value) -> u128 {
    v.as_str().unwrap().parse().unwrap()
}

/// Three replicas behind a round-robin client over four accounts, streamed and
/// not: every request is served (forwarded to each account's lease holder), none
/// is answered `replica_busy`, and each account has one balance: what its client
/// was told it spent, whichever replica it asks.
#[tokio::test]
async fn a_round_robin_client_over_three_replicas_never_sees_replica_busy() {
    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let p = mock_provider("rr", Behaviour::Ok { chunks: 4 }).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&db, &[&p.url], |_| {}).await);
    }
    let mut keys = Vec::new();
    for i in 0..4 {
        let (key, _, _) = replicas[0]
            .state
            .accounts
            .create_account(
                &format!("a{i}"),
                Asset::Tnzo,
                FUNDS,
                KeyScope::default(),
                None,
            )
            .await
            .unwrap();
        keys.push(key);
    }
    let mut told = [0u128; 4];
    let mut forwarded = 0;
    for i in 0..36 {
        let (r, a) = (&replicas[i % 3], i % 4);
        let (status, cost, fwd, code) = chat_on(r, &keys[a], i % 2 == 0).await;
        assert_eq!(
            (status, code.as_str()),
            (200, ""),
            "request {i} on replica {}",
            i % 3
        );
        told[a] += cost;
        forwarded += usize::from(fwd);
    }
    assert!(
        forwarded >= 12,
        "most requests landed off their holder: {forwarded} forwarded"
    );
    for (a, key) in keys.iter().enumerate() {
        for r in &replicas {
            let acct = account(r, key).await;
            let spent = amount(&acct["spent_today"]["TNZO"]);
            assert_eq!(
                spent, told[a],
                "account {a} as replica {} sees it: {acct}",
                r.url
            );
            assert_eq!(amount(&acct["balances"]["TNZO"]), FUNDS - spent);
        }
    }
    // Each account is held by exactly one replica.
    let now = tenzro_gateway::clock::unix_now();
    for key in &keys {
        let id = replicas[0]
            .state
            .accounts
            .lookup(key)
            .await
            .unwrap()
            .unwrap();
        let holders = replicas
            .iter()
            .filter(|r| r.state.leases.holds(&id.record.account, now))
            .count();
        assert_eq!(holders, 1);
    }

    // An admin's credit sent to a replica that does not hold the account is
    // forwarded to the one that does; every replica then shows the new balance.
    let id = replicas[0]
        .state
        .accounts
        .lookup(&keys[0])
        .await
        .unwrap()
        .unwrap()
        .record
        .account
        .clone();
    let other = replicas
        .iter()
        .find(|r| !r.state.leases.holds(&id, now))
        .unwrap();
    let r = http()
        .post(format!("{}/admin/accounts/{id}/credit", other.url))
        .bearer_auth("admin-secret")
        .json(&json!({"asset": "TNZO", "amount": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    for r in &replicas {
        let acct = account(r, &keys[0]).await;
        assert_eq!(
            amount(&acct["balances"]["TNZO"]),
            FUNDS - told[0] + 10u128.pow(18),
            "credited once, seen from {}",
            r.url
        );
    }
}

/// The forward header is the replicas' own: from outside, with a wrong secret or
/// on a gateway not in a cluster, it is refused 403 and nothing is served.
#[tokio::test]
async fn the_forward_header_is_refused_from_outside() {
    let p = mock_provider("fwd", Behaviour::Ok { chunks: 2 }).await;
    let single = start_gateway(|d| test_config(vec![static_provider("a", &p.url)], d), None).await;
    for secret in ["", "guess", SECRET] {
        let r = single
            .chat(chat_body(false))
            .header("x-tenzro-forward", secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "no cluster: {secret:?} refused");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "permission_denied", "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("x-tenzro-forward")
        );
    }
    assert_eq!(p.calls(), 0, "nothing reached the provider");

    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let a = replica(&db, &[&p.url], |_| {}).await;
    let b = replica(&db, &[&p.url], |_| {}).await;
    let (key, _, _) = a
        .state
        .accounts
        .create_account("x", Asset::Tnzo, FUNDS, KeyScope::default(), None)
        .await
        .unwrap();
    assert_eq!(chat_on(&a, &key, false).await.0, 200);
    let calls = p.calls();
    // B would forward to A; a caller claiming to be a replica is refused instead
    // of being served on B (which does not hold the lease) or forwarded.
    for wrong in ["", "replicas-share-this-secreT", "x"] {
        let r = http()
            .post(format!("{}/v1/chat/completions", b.url))
            .bearer_auth(&key)
            .header("x-tenzro-forward", wrong)
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{wrong:?}");
    }
    assert_eq!(p.calls(), calls);
    // The secret itself is no header either.
    let sign_for = |to: &str, key: &str, body: &[u8], at: u64| {
        let auth = format!("Bearer {key}");
        tenzro_gateway::cluster::auth::sign(
            SECRET,
            &tenzro_gateway::cluster::auth::Forwarded {
                method: "POST",
                path_and_query: "/v1/chat/completions",
                body,
                authorization: Some(auth.as_bytes()),
                to,
            },
            at,
        )
    };
    let signed =
        |key: &str, body: &[u8], at: u64| sign_for(&b.state.cluster.replica, key, body, at);
    let send = |key: &str, header: String, body: Vec<u8>| {
        http()
            .post(format!("{}/v1/chat/completions", b.url))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .header("x-tenzro-forward", header)
            .body(body)
    };
    let body = serde_json::to_vec(&chat_body(false)).unwrap();
    let now = tenzro_gateway::clock::unix_now();
    assert_eq!(
        send(&key, SECRET.into(), body.clone())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    // A replica's header made for another body, key or time is refused too.
    let other = serde_json::to_vec(&chat_body(true)).unwrap();
    for (header, why) in [
        (signed(&key, &other, now), "another body"),
        (signed("tz-other", &body, now), "another key"),
        (signed(&key, &body, now - 120), "too old"),
        (
            sign_for(&a.state.cluster.replica, &key, &body, now),
            "made for another replica",
        ),
    ] {
        let r = send(&key, header, body.clone()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{why}");
    }
    assert_eq!(p.calls(), calls);
    // Signed as a replica would, B serves it itself: it does not hold the
    // account, so it answers 503 rather than forwarding in a loop; the same
    // header again is a replay.
    let header = signed(&key, &body, now);
    let r = send(&key, header.clone(), body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let r = send(&key, header, body.clone()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "a replayed forward");
    // And the forward never skips the key check.
    let r = send(
        "tz-not-a-key",
        signed("tz-not-a-key", &body, now),
        body.clone(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

async fn eventually(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {within:?}");
}

/// A provider registered with replica A is served by replica B too; A's ban and
/// A's key revocation reach B through the hint, well before the reconcile (set to
/// a minute here).
#[tokio::test]
async fn providers_bans_and_revocations_reach_every_replica() {
    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let p = mock_provider("shared", Behaviour::Ok { chunks: 2 }).await;
    let slow = |c: &mut Config| {
        c.cluster.reconcile_s = 60;
        c.registration.heartbeat_interval_s = 1;
    };
    let a = replica(&db, &[], slow).await;
    let b = replica(&db, &[], slow).await;

    let key = ProviderKey::from_seed(&[17; 32]);
    let id = key.did();
    let registration = registration(&key, &p.url, 0);
    let cancel = CancellationToken::new();
    tokio::spawn(tenzro_provider::register::run(
        a.url.clone(),
        registration,
        move |bytes| key.sign(bytes).to_hex(),
        cancel.clone(),
    ));
    let took = eventually(
        "B reaches A's provider",
        Duration::from_secs(10),
        async || b.state.registry.is_reached(&id),
    )
    .await;
    eprintln!("provider registered on A was routable on B after {took:?}");

    // An account used on B first: B holds its lease and serves it from its cache.
    let (user, _, rec) = a
        .state
        .accounts
        .create_account("u", Asset::Tnzo, FUNDS, KeyScope::default(), None)
        .await
        .unwrap();
    let (status, _, fwd, code) = chat_on(&b, &user, false).await;
    assert_eq!((status, fwd, code.as_str()), (200, false, ""));

    let admin = |r: &Replica, method: reqwest::Method, path: &str| {
        http()
            .request(method, format!("{}{path}", r.url))
            .bearer_auth("admin-secret")
    };
    let r = admin(
        &a,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{}", rec.id),
    )
    .send()
    .await
    .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let took = eventually(
        "B refuses the key A revoked",
        Duration::from_secs(5),
        async || chat_on(&b, &user, false).await.0 == 401,
    )
    .await;
    eprintln!("revocation on A refused on B after {took:?}");

    let r = admin(
        &a,
        reqwest::Method::POST,
        &format!("/admin/providers/{id}/ban"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let took = eventually("B takes A's ban", Duration::from_secs(5), async || {
        b.state.registry.is_banned(&id)
    })
    .await;
    eprintln!("ban on A applied on B after {took:?}");
    assert_eq!(
        b.state.registry.slashed(&id),
        0,
        "A recorded the ban's slash, B did not repeat it"
    );
    cancel.cancel();
}

/// A forwarded stream passes through chunk by chunk, and one whose holder dies
/// mid-stream ends with an `error` event (`replica_lost`). The holder here is a
/// bare TCP server standing for a replica that holds the account's lease: it
/// checks that the forward carries the shared secret and the caller's key, sends
/// one chunk, waits until the client has it, and drops the connection.
#[tokio::test]
async fn a_forwarded_stream_passes_chunk_by_chunk_and_ends_with_an_error_event_when_its_holder_dies()
 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let p = mock_provider("lost", Behaviour::Ok { chunks: 2 }).await;
    let b = replica(&db, &[&p.url], |_| {}).await;
    let (key, acct, _) = b
        .state
        .accounts
        .create_account("held", Asset::Tnzo, FUNDS, KeyScope::default(), None)
        .await
        .unwrap();

    let holder = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", holder.local_addr().unwrap());
    let now = tenzro_gateway::clock::unix_now();
    b.state
        .store
        .claim_replica("replica_dying", "its-token", &address, 60)
        .await
        .unwrap();
    let dying_owner = tenzro_gateway::store::LeaseOwner {
        id: "replica_dying",
        token: "its-token",
    };
    assert_eq!(
        b.state
            .store
            .claim(&acct.id, dying_owner, now + 60, now)
            .await
            .unwrap(),
        tenzro_gateway::store::Claim::Taken
    );

    let (got_first, first_seen) = tokio::sync::oneshot::channel::<()>();
    let dying = tokio::spawn(async move {
        let (mut s, _) = holder.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the forward ended before its headers");
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert!(head.contains("x-tenzro-forward: v1."), "{head}");
        assert!(
            !head.contains(SECRET),
            "the shared secret never travels: {head}"
        );
        assert!(
            head.contains("authorization: bearer tz-"),
            "the caller's key travels: {head}"
        );
        let chunk = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one\"}}]}\n\n";
        let out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
            chunk.len()
        );
        s.write_all(out.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        // The client has the first chunk while the holder is still streaming.
        first_seen.await.unwrap();
        drop(s);
    });

    let resp = http()
        .post(format!("{}/v1/chat/completions", b.url))
        .bearer_auth(&key)
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["x-tenzro-forwarded"], "1");
    let mut stream = futures::StreamExt::fuse(resp.bytes_stream());
    let mut body = String::new();
    let mut got_first = Some(got_first);
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if body.contains("\"one\"")
            && let Some(tx) = got_first.take()
        {
            tx.send(()).unwrap();
        }
    }
    dying.await.unwrap();
    let (data, _) = sse_parts(&body);
    assert_eq!(data.len(), 2, "{body}");
    let e: Value = serde_json::from_str(&data[1]).unwrap();
    assert_eq!(e["error"]["code"], "replica_lost", "{e}");
    assert_eq!(p.calls(), 0, "B served nothing itself");
}

/// A provider that heartbeats to replica A only stays alive on replica B: A
/// writes the heartbeats it got once per reconcile, in one batch, and B reads them
/// (without it, B's view would age from the registration on).
#[tokio::test]
async fn heartbeats_to_one_replica_keep_the_provider_alive_on_the_others() {
    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let p = mock_provider("alive", Behaviour::Ok { chunks: 2 }).await;
    let beat = |c: &mut Config| c.registration.heartbeat_interval_s = 1;
    let a = replica(&db, &[], beat).await;
    let b = replica(&db, &[], beat).await;
    let key = ProviderKey::from_seed(&[23; 32]);
    let id = key.did();
    let registration = registration(&key, &p.url, 0);
    let cancel = CancellationToken::new();
    tokio::spawn(tenzro_provider::register::run(
        a.url.clone(),
        registration,
        move |bytes| key.sign(bytes).to_hex(),
        cancel.clone(),
    ));
    eventually(
        "B knows A's provider",
        Duration::from_secs(10),
        async || b.state.registry.get(&id).is_some(),
    )
    .await;
    let age = |r: &Replica| {
        r.state
            .registry
            .views()
            .into_iter()
            .find(|v| v.id == id)
            .and_then(|v| v.last_heartbeat_s_ago)
            .unwrap()
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(age(&a) <= 2, "A gets the heartbeats: {} s", age(&a));
    assert!(
        age(&b) <= 3,
        "B hears of them through the store: last heartbeat {} s ago",
        age(&b)
    );
    cancel.cancel();
}

/// Two processes started with one data directory (a copied one) would share a
/// replica id, and with it every lease fence: the second is refused at start,
/// naming the id and the directory, after watching the first beat for a liveness
/// window; once the first has stopped, the id is free again.
#[tokio::test]
async fn a_second_process_with_the_same_data_dir_is_refused_at_start() {
    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fast = |c: &mut Config| c.cluster.heartbeat_s = 1;
    let a = replica_at(&db, dir.path(), &[], fast, SystemClock::shared())
        .await
        .unwrap();
    let started = Instant::now();
    let e = match replica_at(&db, dir.path(), &[], fast, SystemClock::shared()).await {
        Ok(_) => panic!(
            "a second process with replica id {} started",
            a.state.leases.owner
        ),
        Err(e) => e.to_string(),
    };
    assert!(e.contains(&a.state.leases.owner), "{e}");
    assert!(e.contains(&dir.path().display().to_string()), "{e}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "it waited to see whether the holder is alive: {:?}",
        started.elapsed()
    );
    a.state.cancel.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = replica_at(&db, dir.path(), &[], fast, SystemClock::shared()).await;
    assert!(again.is_ok(), "the id is free once its holder stopped");
}

/// A clock an hour behind the others.
#[derive(Debug)]
struct Behind(SharedClock);

impl Clock for Behind {
    fn now(&self) -> Duration {
        self.0.now()
    }
    fn unix(&self) -> u64 {
        self.0.unix() - 3600
    }
}

/// Replica A, its clock an hour behind, and replica B, on time, both on `db`
/// with `providers`.
async fn behind_and_on_time(db: &str, providers: &[&str]) -> (Replica, Replica) {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = std::sync::Arc::new(Behind(SystemClock::shared()));
    let mut a = replica_at(db, dir.path(), providers, |_| {}, clock)
        .await
        .unwrap();
    a._dir = Some(dir);
    let b = replica(db, providers, |_| {}).await;
    (a, b)
}

/// A replica whose clock is an hour behind keeps its leases and is seen alive:
/// lease ends and heartbeats are compared on the store's clock, never one
/// replica's clock against another's (else B took A's live lease as expired and
/// A's next commit lost it).
#[tokio::test]
async fn a_replica_with_a_wrong_clock_keeps_its_leases_and_is_forwarded_to() {
    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let p = mock_provider("skew", Behaviour::Ok { chunks: 2 }).await;
    let (a, b) = behind_and_on_time(&db, &[&p.url]).await;
    let (key, acct, _) = a
        .state
        .accounts
        .create_account("late", Asset::Tnzo, FUNDS, KeyScope::default(), None)
        .await
        .unwrap();
    assert_eq!(chat_on(&a, &key, false).await.0, 200);
    let (status, _, forwarded, code) = chat_on(&b, &key, true).await;
    assert_eq!(
        (status, forwarded, code.as_str()),
        (200, true, ""),
        "B forwards to A, the live holder"
    );
    let h = b.state.store.lease_holder(&acct.id).await.unwrap().unwrap();
    assert_eq!(h.owner, a.state.leases.owner, "the lease is still A's");
    assert!(h.seen_age <= 6, "A is seen alive: {h:?}");
}

/// A replica whose clock is an hour behind writes a provider's registration and
/// a key revocation, and its hints are lost: the other replica's reconcile still
/// finds both, as they are stamped on the store's clock, not the writer's (which
/// the reconcile's "changed since its last pass" would have missed).
#[tokio::test]
async fn a_slow_writers_changes_reach_the_others_without_their_hints() {
    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let p = mock_provider("slow-writer", Behaviour::Ok { chunks: 2 }).await;
    let (a, b) = behind_and_on_time(&db, &[]).await;
    let (user, _, rec) = a
        .state
        .accounts
        .create_account("slow", Asset::Tnzo, FUNDS, KeyScope::default(), None)
        .await
        .unwrap();
    let status_on_b = async || {
        http()
            .get(format!("{}/v1/account", b.url))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status_on_b().await, 200, "B knows the key");

    // What A's handlers write, with A's clock, and no hint sent.
    let a_now = a.state.clock.unix();
    assert!(a.state.store.revoke_key(&rec.id, a_now).await.unwrap());
    let key = ProviderKey::from_seed(&[31; 32]);
    a.state
        .store
        .put_registered(&tenzro_gateway::store::registry::StoredProvider {
            registration: registration(&key, &p.url, a_now),
            attestation: None,
            last_seen: a_now,
        })
        .await
        .unwrap();
    let took = eventually(
        "B refuses the key A revoked, with no hint",
        Duration::from_secs(10),
        async || status_on_b().await == 401,
    )
    .await;
    eprintln!("a slow writer's revocation reached B by its reconcile after {took:?}");
    eventually(
        "B learns the provider A registered, with no hint",
        Duration::from_secs(10),
        async || b.state.registry.get(&key.did()).is_some(),
    )
    .await;
}

/// A heartbeat from a provider id this replica does not know reads the store
/// once (it may have registered with another replica); repeats within the miss
/// window are answered from memory, so a flood of unknown ids costs no store
/// reads, and an id that is not a key's DID is never looked up.
#[tokio::test]
async fn heartbeats_from_unknown_ids_do_not_each_read_the_store() {
    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let p = mock_provider("unknown", Behaviour::Ok { chunks: 2 }).await;
    let a = replica(&db, &[], |c| c.cluster.reconcile_s = 60).await;
    let key = ProviderKey::from_seed(&[29; 32]);
    let id = key.did();
    let beat = |id: &str| {
        let hb = tenzro_models::api::Heartbeat {
            provider_id: id.to_owned(),
            timestamp: tenzro_gateway::clock::unix_now(),
            in_flight: Some(0),
        };
        let payload = serde_json::to_string(&hb).unwrap();
        let signature = key
            .sign(&tenzro_models::api::Signed::signed_bytes(
                tenzro_models::api::HEARTBEAT_DOMAIN,
                &payload,
            ))
            .to_hex();
        http()
            .post(format!("{}/v1/providers/heartbeat", a.url))
            .json(&json!({"payload": payload, "signature": signature}))
            .send()
    };
    assert_eq!(beat(&id).await.unwrap().status().as_u16(), 404);
    // Its row appears in the store with no hint (another replica's, its hint
    // lost); the reconcile, which reads what changed since its last pass, comes
    // only after a minute here.
    let registration = registration(&key, &p.url, tenzro_gateway::clock::unix_now());
    a.state
        .store
        .put_registered(&tenzro_gateway::store::registry::StoredProvider {
            registration,
            attestation: None,
            last_seen: tenzro_gateway::clock::unix_now() - 3600,
        })
        .await
        .unwrap();
    for _ in 0..20 {
        let r = beat(&id).await.unwrap();
        assert_eq!(
            r.status().as_u16(),
            404,
            "answered from the miss cache, not a store read"
        );
    }
    assert!(a.state.registry.get(&id).is_none());
    // Not a key's DID: refused without a lookup.
    assert_eq!(beat("p-anything").await.unwrap().status().as_u16(), 404);
    // After the miss window the store is asked again and the row found.
    tokio::time::sleep(tenzro_gateway::cluster::misses::MISS_TTL).await;
    assert_eq!(beat(&id).await.unwrap().status().as_u16(), 200);
}

/// A slash made on replica A (an admin's ban of a configured provider) is shown
/// by replica B too (`/admin/slashes`, the providers' view) and counted in the
/// provider's stake there, read from the store.
#[tokio::test]
async fn a_slash_made_on_one_replica_is_shown_by_every_replica() {
    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let p = mock_provider("slashed", Behaviour::Ok { chunks: 2 }).await;
    let a = replica(&db, &[&p.url], |_| {}).await;
    let b = replica(&db, &[&p.url], |_| {}).await;
    let r = http()
        .post(format!("{}/admin/providers/p0/ban", a.url))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let slashes_on = |r: &Replica| {
        let url = format!("{}/admin/slashes", r.url);
        async move {
            let v: Value = http()
                .get(url)
                .bearer_auth("admin-secret")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["data"].as_array().cloned().unwrap_or_default()
        }
    };
    let on_a = slashes_on(&a).await;
    assert_eq!(on_a.len(), 1, "{on_a:?}");
    let took = eventually("B shows A's slash", Duration::from_secs(10), async || {
        slashes_on(&b).await == on_a
    })
    .await;
    eprintln!("slash on A shown on B after {took:?}");
    assert_eq!(
        b.state.registry.slashed("p0"),
        a.state.registry.slashed("p0")
    );
    let view: Value = http()
        .get(format!("{}/admin/providers", b.url))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["slashes"].as_array().unwrap().len(), 1, "{view}");
}

/// A dispute signed by the channel's provider (no API key) that lands on a
/// replica not holding the payer's account is forwarded to the holder, as the
/// payer's own requests are, instead of being answered `replica_busy`.
#[tokio::test]
async fn a_providers_dispute_is_forwarded_to_the_payers_replica() {
    use tenzro_gateway::money::dispute_auth::{HEADER, SignedDispute};
    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let p = mock_provider("disputer", Behaviour::Ok { chunks: 2 }).await;
    let fast = |c: &mut Config| c.registration.heartbeat_interval_s = 1;
    let a = replica(&db, &[], fast).await;
    let b = replica(&db, &[], fast).await;
    let key = ProviderKey::from_seed(&[31; 32]);
    let id = key.did();
    let registration = registration(&key, &p.url, 0);
    let cancel = CancellationToken::new();
    let signer = ProviderKey::from_seed(&[31; 32]);
    tokio::spawn(tenzro_provider::register::run(
        a.url.clone(),
        registration,
        move |bytes| signer.sign(bytes).to_hex(),
        cancel.clone(),
    ));
    eventually(
        "A reaches the provider",
        Duration::from_secs(10),
        async || a.state.registry.is_reached(&id),
    )
    .await;
    let (user, acct, _) = a
        .state
        .accounts
        .create_account("payer", Asset::Tnzo, FUNDS, KeyScope::default(), None)
        .await
        .unwrap();
    let resp = http()
        .post(format!("{}/v1/chat/completions", a.url))
        .bearer_auth(&user)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let channel = resp.headers()["x-tenzro-channel"]
        .to_str()
        .unwrap()
        .to_owned();
    // Committed, so the channel's payer can be found from B.
    eventually(
        "the channel is stored",
        Duration::from_secs(5),
        async || {
            b.state
                .store
                .channel_parties(&channel)
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    let path = format!("/v1/channels/{channel}/dispute");
    let auth = SignedDispute {
        method: "POST",
        path_and_query: &path,
        channel_id: &channel,
        body: b"",
    }
    .sign(&key, tenzro_gateway::clock::unix_now());
    let r = http()
        .post(format!("{}{path}", b.url))
        .header(HEADER, auth)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let forwarded = r.headers().contains_key("x-tenzro-forwarded");
    let body: Value = r.json().await.unwrap_or_default();
    assert_eq!((status, forwarded), (202, true), "{body}");
    assert_eq!(body["state"], "disputed", "{body}");
    let h = b.state.store.lease_holder(&acct.id).await.unwrap().unwrap();
    assert_eq!(h.owner, a.state.leases.owner, "A kept the payer's account");
    cancel.cancel();
}
