//! Model audits by a TEE-verified peer (issue 16): against a real in-process gateway,
//! a provider's answers (streamed and not) are scored by another admitted provider
//! whose verdict is trusted and fresh for the same weight digest, paid from the
//! operator's `[audit] account` through a payer-signed request on its channel, like
//! any paid request. The peer's scoring is canned (every served token far below its
//! top token), so the audited provider fails and is slashed once, with the peer
//! named in the evidence. A peer whose verdict went stale is not asked: the
//! reference is, as before.
//!
//! A peer's failing score slashes only once confirmed: by the reference when one
//! is configured (a reference that passes the answer disputes it: no slash), else
//! by a second eligible peer. Peers are paid at most `[audit]
//! max_price_per_token` and `max_spend_per_hour`; past either the reference
//! scores.
//!
//! Trusted evidence over the gateway's nonce cannot be produced here (no TEE), so
//! the peer's verdict is stored through the registry, as the verifier stores it
//! (as in `attest_policy`); the verification itself is tested with the recorded
//! vectors in the gateway's `policy` and `collateral` tests.

#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};
use std::sync::Mutex;
use tenzro_attest::payer::{PAYER_AUTH_HEADER, PaidRequest};
use tenzro_gateway::AppState;
use tenzro_gateway::accounts::KeyScope;
use tenzro_gateway::audit::AuditSection;
use tenzro_gateway::config::StaticProvider;
use tenzro_gateway::money::slashing::Reason;
use tenzro_gateway::pricing::Asset;
use tenzro_gateway::providers::verdict::AttestationVerdict;

use crate::gateway_common::*;

const DIGEST: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const RENDERED: &str = "<|user|>hi<|assistant|>";

/// What a scorer saw of each scoring call: (channel, payer auth, body); and
/// whether it scores answers as a substituted model's (the default) or as the
/// registered model's own.
#[derive(Clone)]
struct Seen(Arc<Mutex<Vec<(String, String, Bytes)>>>, Arc<AtomicBool>);

impl Default for Seen {
    fn default() -> Self {
        Seen(Arc::default(), Arc::new(AtomicBool::new(true)))
    }
}

impl Seen {
    fn calls(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

async fn tokenize() -> axum::Json<Value> {
    axum::Json(json!({"text": RENDERED, "tokens": [1, 2, 3]}))
}

/// Teacher-forced scoring: one token per character of the prompt, each one far
/// below the scorer's top token (a substituted model's answer, as the scorer sees
/// it), or each its top token when the scorer passes answers.
async fn score(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> axum::Json<Value> {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    seen.0
        .lock()
        .unwrap()
        .push((h("x-tenzro-channel"), h(PAYER_AUTH_HEADER), body.clone()));
    let req: Value = serde_json::from_slice(&body).unwrap();
    let text = req["prompt"].as_str().unwrap();
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let n = chars.len();
    let fail = seen.1.load(Ordering::SeqCst);
    let tops: Vec<Value> = chars
        .iter()
        .map(|c| {
            if fail {
                json!({"\u{1}": -0.01})
            } else {
                json!({c.as_str(): -0.01})
            }
        })
        .collect();
    axum::Json(json!({
        "object": "text_completion", "model": MODEL,
        "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": {
            "tokens": chars,
            "token_logprobs": vec![if fail { -9.0 } else { -0.01 }; n],
            "top_logprobs": tops,
            "text_offset": (0..n).collect::<Vec<_>>(),
        }}],
        "usage": {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n},
    }))
}

async fn scoring_peer(seen: Seen) -> String {
    let app = Router::new()
        .route("/tokenize", post(tokenize))
        .route("/v1/completions", post(score))
        .route("/v1/chat/completions", post(score))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn with_digest(mut p: StaticProvider) -> StaticProvider {
    for m in &mut p.models {
        m.weight_sha256 = Some(DIGEST.into());
    }
    p
}

/// An in-process gateway whose audits pay from the operator's account.
struct Audited {
    url: String,
    state: AppState,
    key: String,
    operator: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Audited {
    async fn chat(&self, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

fn set_verdict(gw: &Audited, id: &str, fresh_for: i64) {
    let reg = &gw.state.registry;
    let now = reg.unix_now();
    let entry = reg.get(id).unwrap();
    reg.mark_reached(&entry);
    reg.record_attestation(
        &entry,
        AttestationVerdict {
            trusted: true,
            tee_kind: Some("tdx".into()),
            reasons: vec![],
            verified_at: if fresh_for < 0 { now - 7200 } else { now },
            expires_at: now.saturating_add_signed(fresh_for),
            slashable: false,
        },
    );
}

/// A gateway auditing every answer of `a` (the mock) with `b` (the scoring peer)
/// admitted for the same digest, the reference at `reference`; the operator's
/// account pays `b`.
async fn audited_gateway(a_url: &str, b_url: &str, reference: &str) -> Audited {
    audited_by(a_url, &[("b", b_url)], reference, |_| ()).await
}

/// [`audited_gateway`] with any scoring peers, and `tweak` applied to `[audit]`
/// (after the account is set; an empty `reference` there: no reference).
async fn audited_by(
    a_url: &str,
    peers: &[(&str, &str)],
    reference: &str,
    tweak: impl FnOnce(&mut AuditSection),
) -> Audited {
    let mut providers = vec![with_digest(static_provider("a", a_url))];
    for (id, url) in peers {
        providers.push(with_digest(static_provider(id, url)));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(providers, dir.path());
    // The mocks sign no receipts; the audit is under test.
    cfg.receipts.verify_sample_ppm = 0;
    cfg.upstream.first_byte_timeout_ms = 5_000;
    cfg.upstream.idle_timeout_ms = 5_000;
    cfg.attestation.audit_rate = 1.0;
    // Peers audit only where the policy pins the code their TEE runs.
    cfg.attestation.policy =
        serde_json::from_value(json!({"tdx": {"mrtd": ["00".repeat(48)]}})).unwrap();
    // Audits run when the gateway starts with an auditor (set again below).
    cfg.audit.reference = "http://127.0.0.1:9".into();
    cfg.audit.min_tokens = 4;
    cfg.audit.timeout_ms = 5_000;
    let mut state = tenzro_gateway::build(cfg).await.unwrap();
    let (key, _, _) = state
        .accounts
        .create_account("user", Asset::Tnzo, FUNDS, KeyScope::default(), None)
        .await
        .unwrap();
    let (_, operator, _) = state
        .accounts
        .create_account("operator", Asset::Tnzo, FUNDS, KeyScope::default(), None)
        .await
        .unwrap();
    // `[audit] account` names an account the operator created beforehand.
    let mut section = AuditSection {
        account: operator.id.clone(),
        reference: reference.into(),
        ..(*state.audits.config).clone()
    };
    tweak(&mut section);
    state.inner_mut().unwrap().audits.config = Arc::new(section);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = state.clone();
    tokio::spawn(async move {
        let _ = tenzro_gateway::serve(listener, s).await;
    });
    Audited {
        url: format!("http://{addr}"),
        state,
        key,
        operator: operator.id,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        _dir: dir,
    }
}

/// Waits until every sampled answer's audit finished; the counters then.
async fn settled_audits(gw: &Audited) -> tenzro_gateway::audit::CountersView {
    for _ in 0..250 {
        let c = gw.state.audits.counters.view();
        if c.sampled > 0 && c.sampled == c.dropped + c.skipped + c.errors + c.passed + c.failed {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "audits did not finish: {:?}",
        gw.state.audits.counters.view()
    );
}

#[tokio::test]
async fn a_tee_verified_peer_audits_streamed_answers_and_is_paid_from_the_operator_account() {
    let a = mock_provider("a", Behaviour::Ok { chunks: 6 }).await;
    let seen = Seen::default();
    let b_url = scoring_peer(seen.clone()).await;
    // The reference fails the answers too: it confirms the peer's verdict.
    let reference = Seen::default();
    let r_url = scoring_peer(reference.clone()).await;
    let gw = audited_gateway(&a.url, &b_url, &r_url).await;
    let operator = gw.operator.clone();
    set_verdict(&gw, "b", 3600);
    let before = gw
        .state
        .book
        .funds(&operator, Asset::Tnzo)
        .unwrap()
        .available();

    // A streamed answer, served by `a` (lowest price, ties by id).
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8, "temperature": 0, "stream": true});
    let resp = gw.chat(body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-tenzro-provider"], "a");
    let text = resp.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    let c = settled_audits(&gw).await;
    assert_eq!(
        (c.sampled, c.failed, c.by_peer, c.errors),
        (1, 1, 1, 0),
        "{c:?}"
    );

    // Slashed once for model hash mismatch, the peer named in the evidence.
    let slashes = gw.state.registry.slashes();
    assert_eq!(slashes.len(), 1, "{slashes:?}");
    let s = &slashes[0];
    assert_eq!(
        (s.provider.as_str(), s.reason),
        ("a", Reason::ModelHashMismatch)
    );
    assert!(s.detail.contains("(streamed)"), "{}", s.detail);
    let flags = gw.state.audits.flags.all();
    assert_eq!(flags.len(), 1);
    let detail = &flags[0].finding.detail;
    assert!(detail.contains("TEE-verified peer b"), "{detail}");
    assert!(detail.contains("confirmed by reference"), "{detail}");
    assert_eq!(reference.calls(), 1);

    // The peer got a payer-signed request on a channel of the operator's account,
    // scoring the rendered prompt + the streamed answer exactly.
    let calls = seen.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (channel, auth, scored) = &calls[0];
    let payer = gw.state.payer_key.public_key();
    let now = tenzro_gateway::clock::unix_now();
    PaidRequest {
        method: "POST",
        path_and_query: "/v1/completions",
        channel_id: channel,
        body: scored,
    }
    .verify(Some(auth), &payer, now)
    .unwrap();
    let scored: Value = serde_json::from_slice(scored).unwrap();
    assert_eq!(scored["prompt"], format!("{RENDERED}t0 t1 t2 t3 t4 t5 "));
    assert_eq!(
        (scored["echo"].clone(), scored["max_tokens"].clone()),
        (json!(true), json!(0))
    );
    let channels = gw.state.book.channels_of(&operator);
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0].channel.provider, "b");
    assert_eq!(&channels[0].channel.id, channel);
    // Paid: the peer's prompt tokens at its TEE price (idle: congestion 0.5).
    let tokens = RENDERED.len() as u128 + 18;
    let cost = tokens * PRICE / 2 * 6 / 5;
    let after = gw
        .state
        .book
        .funds(&operator, Asset::Tnzo)
        .unwrap()
        .available();
    assert_eq!(before - after, cost, "operator paid {}", before - after);

    // A whole answer fails again: counted, not slashed twice.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8, "temperature": 0});
    assert_eq!(gw.chat(body).await.status(), 200);
    let c = settled_audits(&gw).await;
    assert_eq!((c.sampled, c.failed, c.by_peer), (2, 2, 2), "{c:?}");
    assert_eq!(gw.state.registry.slashes().len(), 1);

    // The peer's verdict goes stale: it is not asked; the reference is.
    set_verdict(&gw, "b", -1);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8, "temperature": 0});
    assert_eq!(gw.chat(body).await.status(), 200);
    let c = settled_audits(&gw).await;
    assert_eq!(
        (c.sampled, c.failed, c.by_peer, c.errors),
        (3, 3, 2, 0),
        "{c:?}"
    );
    assert_eq!(seen.calls(), 2);
    assert_eq!(reference.calls(), 3);
    assert_eq!(gw.state.registry.slashes().len(), 1);
    assert_eq!(a.calls.load(Ordering::SeqCst), 3);
}

fn greedy_chat() -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8, "temperature": 0})
}

#[tokio::test]
async fn a_peers_failing_score_the_reference_disputes_slashes_nothing() {
    let a = mock_provider("a", Behaviour::Ok { chunks: 6 }).await;
    let peer = Seen::default();
    let b_url = scoring_peer(peer.clone()).await;
    // The reference serves the registered model and finds the answer its own.
    let reference = Seen::default();
    reference.1.store(false, Ordering::SeqCst);
    let r_url = scoring_peer(reference.clone()).await;
    let gw = audited_gateway(&a.url, &b_url, &r_url).await;
    set_verdict(&gw, "b", 3600);
    assert_eq!(gw.chat(greedy_chat()).await.status(), 200);
    let c = settled_audits(&gw).await;
    assert_eq!(
        (c.sampled, c.passed, c.failed, c.by_peer, c.disputed),
        (1, 1, 0, 1, 1),
        "{c:?}"
    );
    assert_eq!((peer.calls(), reference.calls()), (1, 1));
    assert!(gw.state.registry.slashes().is_empty());
    assert!(gw.state.audits.flags.all().is_empty());
}

#[tokio::test]
async fn without_a_reference_a_second_peer_of_another_owner_must_agree() {
    let a = mock_provider("a", Behaviour::Ok { chunks: 6 }).await;
    let (b, c) = (Seen::default(), Seen::default());
    let b_url = scoring_peer(b.clone()).await;
    let c_url = scoring_peer(c.clone()).await;
    let gw = audited_by(&a.url, &[("b", &b_url), ("c", &c_url)], "", |_| ()).await;
    // Only `b` is TEE-verified: its failing score has no one to confirm it.
    set_verdict(&gw, "b", 3600);
    assert_eq!(gw.chat(greedy_chat()).await.status(), 200);
    let v = settled_audits(&gw).await;
    assert_eq!(
        (v.errors, v.failed, v.disputed, v.by_peer),
        (1, 0, 1, 1),
        "{v:?}"
    );
    assert!(gw.state.registry.slashes().is_empty());
    // With `c` verified too, one scores and the other confirms: slashed once.
    set_verdict(&gw, "c", 3600);
    assert_eq!(gw.chat(greedy_chat()).await.status(), 200);
    let v = settled_audits(&gw).await;
    assert_eq!((v.failed, v.by_peer), (1, 3), "{v:?}");
    assert_eq!((b.calls() + c.calls(), c.calls().min(b.calls())), (3, 1));
    let slashes = gw.state.registry.slashes();
    assert_eq!(slashes.len(), 1, "{slashes:?}");
    assert_eq!(slashes[0].provider, "a");
    let detail = &gw.state.audits.flags.all()[0].finding.detail;
    assert!(detail.contains("confirmed by"), "{detail}");
}

#[tokio::test]
async fn peers_above_the_price_cap_or_the_hours_spend_are_not_asked() {
    let a = mock_provider("a", Behaviour::Ok { chunks: 6 }).await;
    let peer = Seen::default();
    let b_url = scoring_peer(peer.clone()).await;
    let reference = Seen::default();
    reference.1.store(false, Ordering::SeqCst);
    let r_url = scoring_peer(reference.clone()).await;
    // The peer's TEE price here: PRICE base units × congestion 0.5 × TEE 1.2 =
    // 600 per token; a cap of 599 leaves it out.
    let gw = audited_by(&a.url, &[("b", &b_url)], &r_url, |s| {
        s.max_price_per_token = "0.000000000000000599".into();
    })
    .await;
    set_verdict(&gw, "b", 3600);
    assert_eq!(gw.chat(greedy_chat()).await.status(), 200);
    let v = settled_audits(&gw).await;
    assert_eq!((v.passed, v.by_peer), (1, 0), "{v:?}");
    assert_eq!((peer.calls(), reference.calls()), (0, 1));

    // At 600 it is asked; an hour's spend below one scoring's hold leaves it out.
    let gw = audited_by(&a.url, &[("b", &b_url)], &r_url, |s| {
        s.max_price_per_token = "0.0000000000000006".into();
        s.max_spend_per_hour = "0.000000000000001".into();
    })
    .await;
    set_verdict(&gw, "b", 3600);
    assert_eq!(gw.chat(greedy_chat()).await.status(), 200);
    let v = settled_audits(&gw).await;
    assert_eq!((v.passed, v.by_peer), (1, 0), "{v:?}");
    assert_eq!((peer.calls(), reference.calls()), (0, 2));
    assert_eq!(
        gw.state.audits.spend.spent(),
        0,
        "the refused hold is not counted"
    );

    let gw = audited_by(&a.url, &[("b", &b_url)], &r_url, |s| {
        s.max_price_per_token = "0.0000000000000006".into();
    })
    .await;
    set_verdict(&gw, "b", 3600);
    assert_eq!(gw.chat(greedy_chat()).await.status(), 200);
    let v = settled_audits(&gw).await;
    // The peer scores (and fails it); the reference disputes it.
    assert_eq!((v.passed, v.by_peer, v.disputed), (1, 1, 1), "{v:?}");
    assert_eq!(peer.calls(), 1);
    assert!(gw.state.audits.spend.spent() > 0);
}
