//! Model audits by a TEE-verified peer (issue 16): against a real in-process gateway,
//! a provider's answers (streamed and not) are scored by another admitted provider
//! whose verdict is trusted and fresh for the same weight digest, paid from the
//! operator's `[audit] account` through a payer-signed request on its channel, like
//! any paid request. The peer's scoring is canned (every served token far below its
//! top token), so the audited provider fails and is slashed once, with the peer
//! named in the evidence. A peer whose verdict went stale is not asked: the
//! reference is, as before.
//!
//! Trusted evidence over the gateway's nonce cannot be produced here (no TEE), so
//! the peer's verdict is stored through the registry, as the verifier stores it
//! (as in `attest_policy`); the verification itself is tested with the recorded
//! vectors in the gateway's `policy` and `collateral` tests.

#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::sync::Arc;
use std::sync::atomic::Ordering;
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

/// What the peer saw of each scoring call: (channel, payer auth, body).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, String, Bytes)>>>);

async fn tokenize() -> axum::Json<Value> {
    axum::Json(json!({"text": RENDERED, "tokens": [1, 2, 3]}))
}

/// Teacher-forced scoring: one token per character of the prompt, each one far
/// below the peer's top token (a substituted model's answer, as the peer sees it).
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
    axum::Json(json!({
        "object": "text_completion", "model": MODEL,
        "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": {
            "tokens": chars,
            "token_logprobs": vec![-9.0; n],
            "top_logprobs": vec![json!({"\u{1}": -0.01}); n],
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
/// admitted for the same digest; the operator's account pays `b`.
async fn audited_gateway(a_url: &str, b_url: &str) -> Audited {
    let providers = vec![
        with_digest(static_provider("a", a_url)),
        with_digest(static_provider("b", b_url)),
    ];
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
    // Nothing listens here: an audit that fell back to the reference errs.
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
    state.audits.config = Arc::new(AuditSection {
        account: operator.id.clone(),
        ..(*state.audits.config).clone()
    });
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
    let gw = audited_gateway(&a.url, &b_url).await;
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
    assert!(
        flags[0].finding.detail.contains("TEE-verified peer b"),
        "{:?}",
        flags[0].finding
    );

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

    // The peer's verdict goes stale: it is not asked; the reference is (and here
    // it is unreachable: an auditor error, never a verdict).
    set_verdict(&gw, "b", -1);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8, "temperature": 0});
    assert_eq!(gw.chat(body).await.status(), 200);
    let c = settled_audits(&gw).await;
    assert_eq!((c.sampled, c.errors, c.by_peer), (3, 1, 2), "{c:?}");
    assert_eq!(seen.0.lock().unwrap().len(), 2);
    assert_eq!(a.calls.load(Ordering::SeqCst), 3);
}
