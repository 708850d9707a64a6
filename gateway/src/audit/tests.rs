#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use bytes::Bytes;
use serde_json::{Value, json};
use tenzro_models::api::{ModelCategory, ModelInfo, RegisterRequest};

use super::sample::{Case, Prompt, case, cut};
use super::score::{scored_tokens, scoring_body};
use super::*;
use crate::clock::ManualClock;
use crate::money::slashing::Reason;
use crate::providers::info::ProviderInfo;
use crate::providers::registry::{Registry, RegistryConfig};

fn sample(chat: bool, req: Value, resp: Value) -> Sample {
    Sample {
        request_id: "req_1".into(),
        provider: "p".into(),
        endpoint: "http://127.0.0.1:9".into(),
        model: "m".into(),
        weight_sha256: Some("ab".repeat(32)),
        chat,
        streamed: false,
        request: Bytes::from(serde_json::to_vec(&req).unwrap()),
        response: Bytes::from(serde_json::to_vec(&resp).unwrap()),
    }
}

fn completion(text: &str) -> Value {
    json!({"choices": [{"index": 0, "text": text, "finish_reason": "length"}]})
}

fn chat_answer(text: &str) -> Value {
    json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
}

/// `case` of a sample, or the skip reason.
fn check(s: Sample, expect: Result<Case, &str>) {
    match (case(&s, 1 << 16, 4096), expect) {
        (Ok(got), Ok(want)) => assert_eq!(got, want),
        (Err(got), Err(want)) => assert!(got.contains(want), "{got:?} does not say {want:?}"),
        (got, want) => panic!("got {got:?}, expected {want:?}"),
    }
}

#[test]
fn completions_and_plain_chats_are_audited_as_served() {
    check(
        sample(
            false,
            json!({"model": "m", "prompt": "Once", "temperature": 0.8}),
            completion(" upon"),
        ),
        Ok(Case {
            prompt: Prompt::Text("Once".into()),
            answer: " upon".into(),
            temperature: 0.8,
        }),
    );
    check(
        sample(
            false,
            json!({"model": "m", "prompt": ["Once"]}),
            completion(" upon"),
        ),
        Ok(Case {
            prompt: Prompt::Text("Once".into()),
            answer: " upon".into(),
            temperature: 1.0,
        }),
    );
    let messages = json!([{"role": "user", "content": "Hi"}]);
    check(
        sample(
            true,
            json!({"model": "m", "messages": messages, "temperature": 1.0}),
            chat_answer("Hello!"),
        ),
        Ok(Case {
            prompt: Prompt::Chat(messages),
            answer: "Hello!".into(),
            temperature: 1.0,
        }),
    );
}

#[test]
fn sampling_the_bound_does_not_cover_is_skipped() {
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    let cases = [
        (
            false,
            json!({"prompt": "a", "temperature": 1.5}),
            "temperature",
        ),
        (
            false,
            json!({"prompt": "a", "logit_bias": {"5": 10}}),
            "logit_bias",
        ),
        (
            false,
            json!({"prompt": "a", "frequency_penalty": 0.5}),
            "frequency_penalty",
        ),
        (false, json!({"prompt": "a", "echo": true}), "echo"),
        (false, json!({"prompt": [1, 2, 3]}), "single text prompt"),
        (true, json!({"messages": msgs, "tools": []}), "tools"),
        (
            true,
            json!({"messages": msgs, "response_format": {"type": "json_object"}}),
            "response_format",
        ),
    ];
    for (chat, req, why) in cases {
        let resp = if chat {
            chat_answer("x")
        } else {
            completion("x")
        };
        check(sample(chat, req, resp), Err(why));
    }
    check(
        sample(false, json!({"prompt": "a"}), completion("")),
        Err("empty"),
    );
    let big = json!({"prompt": "a".repeat(1 << 17)});
    check(sample(false, big, completion("x")), Err("bytes"));
}

#[test]
fn answers_are_cut_at_a_character_boundary() {
    assert_eq!(cut("héllo", 2), "h");
    assert_eq!(cut("héllo", 3), "hé");
    assert_eq!(cut("abc", 10), "abc");
    let s = sample(false, json!({"prompt": "p"}), completion(&"é".repeat(5000)));
    let c = case(&s, 1 << 16, 4095).unwrap();
    assert_eq!(c.answer.len(), 4094);
}

fn legacy(tokens: &[&str], lps: &[Option<f64>], tops: &[Value], offsets: &[u64]) -> Value {
    json!({"choices": [{"text": "", "logprobs": {
        "tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}}]})
}

#[test]
fn the_auditors_scoring_is_read_from_the_answers_first_character() {
    let resp = legacy(
        &["The", " cat", " sat", " down"],
        &[None, Some(-1.0), Some(-0.1), Some(-6.0)],
        &[
            Value::Null,
            json!({" cat": -1.0, " dog": -1.2}),
            json!({" sat": -0.1, " ran": -3.0}),
            json!({" up": -0.2, " in": -2.0}),
        ],
        &[0, 3, 7, 11],
    );
    // Prompt "The cat" (7 characters): the answer is " sat down".
    let t = scored_tokens(&resp, 7).unwrap();
    assert_eq!(t.len(), 2);
    assert!(t[0].in_top_k && !t[1].in_top_k);
    assert_eq!(t[1].logprob, -6.0);
    assert_eq!(t[1].top_logprobs.len(), 2);
    // Malformed answers are the auditor's error, not a verdict.
    let short = legacy(&["a"], &[None, None], &[Value::Null], &[0]);
    assert!(scored_tokens(&short, 0).unwrap_err().contains("length"));
    let missing = legacy(
        &["a", "b"],
        &[None, None],
        &[Value::Null, Value::Null],
        &[0, 1],
    );
    assert!(scored_tokens(&missing, 1).is_err());
    assert!(scored_tokens(&json!({}), 0).is_err());
    let body = scoring_body("m", "The cat sat", 5);
    assert_eq!(body["max_tokens"], 0);
    assert_eq!(body["echo"], true);
    assert_eq!(body["logprobs"], 5);
}

#[test]
fn the_section_is_validated_naming_the_field() {
    let ok = AuditSection {
        reference: "http://127.0.0.1:8000".into(),
        ..AuditSection::default()
    };
    assert!(ok.validate(0.01).is_ok());
    assert!(ok.validate(1.5).unwrap_err().contains("audit_rate"));
    assert!(ok.validate(f64::NAN).unwrap_err().contains("audit_rate"));
    let bad = AuditSection {
        reference: "ftp://x".into(),
        ..AuditSection::default()
    };
    assert!(bad.validate(0.1).unwrap_err().contains("audit.reference"));
    let bad = AuditSection {
        top_logprobs: 0,
        ..AuditSection::default()
    };
    assert!(bad.validate(0.1).unwrap_err().contains("top_logprobs"));
}

#[test]
fn a_full_queue_drops_samples_without_waiting() {
    let cfg = AuditSection {
        reference: "http://127.0.0.1:9".into(),
        queue: 2,
        ..AuditSection::default()
    };
    let audits = Audits::new(1.0, cfg.clone());
    for _ in 0..5 {
        audits.offer(|| sample(false, json!({"prompt": "a"}), completion("b")));
    }
    let v = audits.counters.view();
    assert_eq!((v.sampled, v.dropped), (5, 3));
    assert!(audits.take_receiver().is_some() && audits.take_receiver().is_none());
    // Off: rate 0, or no auditor.
    for off in [
        Audits::new(0.0, cfg),
        Audits::new(1.0, AuditSection::default()),
    ] {
        off.offer(|| panic!("not sampled"));
        assert_eq!(off.counters.view().sampled, 0);
    }
}

fn registry_with_provider() -> Registry {
    let reg = Registry::new(RegistryConfig::default(), ManualClock::new());
    let info = ProviderInfo::from_registration(
        RegisterRequest {
            provider_id: "p".into(),
            endpoint: "http://127.0.0.1:9".into(),
            public_key: String::new(),
            models: vec![ModelInfo {
                id: "m".into(),
                name: None,
                version: None,
                category: ModelCategory::Llm,
                modality: None,
                price_per_token: "1000".into(),
                max_context: None,
                parameters: None,
                formats: vec![],
                tee_required: false,
                weight_sha256: Some("ab".repeat(32)),
            }],
            stake: "1000000".into(),
            tee: "none".into(),
            max_concurrency: None,
            heartbeat_interval_s: None,
            timestamp: 0,
        },
        true,
    )
    .unwrap();
    reg.upsert(info).unwrap();
    reg
}

#[test]
fn a_failed_audit_slashes_once_per_offence_and_flags_the_provider() {
    let reg = registry_with_provider();
    let flags = Flags::default();
    let s = sample(false, json!({"prompt": "a"}), completion("b"));
    let bad: Vec<_> = (0..32)
        .map(|_| ScoredToken {
            logprob: -9.0,
            in_top_k: false,
            top_logprobs: vec![-0.01; 1],
        })
        .collect();
    let finding = judge(&bad, 1.0, &AuditRule::default());
    assert!(finding.mismatch);
    let slash = flags.record(&reg, &s, &finding).unwrap();
    assert_eq!(slash.reason, Reason::ModelHashMismatch);
    assert_eq!(slash.amount, 50_000, "5% of 1,000,000");
    assert!(slash.detail.contains("request req_1") && slash.detail.contains("32 outside"));
    assert!(flags.record(&reg, &s, &finding).is_none(), "slashed once");
    assert!(flags.is_flagged("p") && !flags.is_flagged("q"));
    let all = flags.all();
    assert_eq!((all.len(), all[0].failed_audits), (1, 2));
    assert_eq!(reg.slashes().len(), 1);
    // After a restart the stored slash still counts: flagged, not slashed again.
    let fresh = Flags::default();
    assert!(fresh.record(&reg, &s, &finding).is_none());
    assert!(fresh.is_flagged("p"));
    assert_eq!(reg.slashes().len(), 1);
}

/// An auditor-on audits handle at rate 1 and its queue.
fn tapped(max_answer_bytes: usize) -> (Audits, tokio::sync::mpsc::Receiver<Sample>) {
    let cfg = AuditSection {
        reference: "http://127.0.0.1:1".into(),
        max_answer_bytes,
        ..AuditSection::default()
    };
    let a = Audits::new(1.0, cfg);
    let rx = a.take_receiver().unwrap();
    (a, rx)
}

#[test]
fn a_finished_stream_is_judged_as_its_whole_answer() {
    let reg = registry_with_provider();
    let entry = reg.get("p").unwrap();
    let (a, mut rx) = tapped(4096);
    let req = Bytes::from(
        serde_json::to_vec(&json!({"model": "m", "stream": true, "temperature": 0,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap(),
    );
    let mut tap = a
        .tap("r1", &entry, "m", "/v1/chat/completions", &req)
        .unwrap();
    tap.push(0, Some("Hello"), false);
    tap.push(1, Some("another choice"), false);
    tap.push(0, None, false);
    tap.push(0, Some(", world"), false);
    tap.finish();
    let s = rx.try_recv().unwrap();
    assert!(s.streamed && s.chat && s.provider == "p");
    assert_eq!(s.weight_sha256, Some("ab".repeat(32)));
    let c = case(&s, 1 << 16, 4096).unwrap();
    assert_eq!(c.answer, "Hello, world");
    assert_eq!(c.temperature, 0.0);
    assert!(matches!(c.prompt, Prompt::Chat(_)));
    assert_eq!(a.counters.view().sampled, 1);
}

#[test]
fn a_streamed_answer_keeps_at_most_the_configured_bytes() {
    let reg = registry_with_provider();
    let entry = reg.get("p").unwrap();
    let (a, mut rx) = tapped(5);
    let req = Bytes::from_static(br#"{"model":"m","stream":true,"prompt":"Once"}"#);
    let mut tap = a.tap("r2", &entry, "m", "/v1/completions", &req).unwrap();
    for _ in 0..1000 {
        tap.push(0, Some("\u{e9}\u{e9}\u{e9}"), false);
    }
    tap.finish();
    let s = rx.try_recv().unwrap();
    assert!(s.response.len() < 100, "{} bytes kept", s.response.len());
    let c = case(&s, 1 << 16, 4096).unwrap();
    assert_eq!(c.answer, "\u{e9}\u{e9}");
    assert_eq!(c.prompt, Prompt::Text("Once".into()));
}

#[test]
fn streamed_tool_calls_are_skipped_and_off_audits_tap_nothing() {
    let reg = registry_with_provider();
    let entry = reg.get("p").unwrap();
    let (a, mut rx) = tapped(4096);
    let req = Bytes::from_static(br#"{"model":"m","messages":[]}"#);
    let mut tap = a
        .tap("r3", &entry, "m", "/v1/chat/completions", &req)
        .unwrap();
    tap.push(0, Some("x"), true);
    tap.finish();
    let s = rx.try_recv().unwrap();
    check(s, Err("tool calls"));
    // Too large to audit: never picked, so no text is kept.
    let (small, _rx) = {
        let cfg = AuditSection {
            reference: "http://127.0.0.1:1".into(),
            max_request_bytes: 8,
            ..AuditSection::default()
        };
        let a = Audits::new(1.0, cfg);
        let rx = a.take_receiver();
        (a, rx)
    };
    assert!(
        small
            .tap("r4", &entry, "m", "/v1/completions", &req)
            .is_none()
    );
    for off in [
        Audits::new(0.0, AuditSection::default()),
        Audits::new(1.0, AuditSection::default()),
    ] {
        assert!(
            off.tap("r5", &entry, "m", "/v1/completions", &req)
                .is_none()
        );
        assert_eq!(off.counters.view().sampled, 0);
    }
}

/// A registry with configured providers `(id, weight digest)` serving `m`, each
/// reached, at its own endpoint.
fn registry_of(providers: &[(&str, &str)]) -> Registry {
    let mut reg = Registry::new(RegistryConfig::default(), ManualClock::new());
    // Peers audit only where the policy pins the code their TEE runs.
    reg.attest_policy.tdx.mrtd = vec!["00".repeat(48)];
    for (i, (id, digest)) in providers.iter().enumerate() {
        let info = ProviderInfo::from_registration(
            RegisterRequest {
                provider_id: (*id).into(),
                endpoint: format!("http://127.0.0.1:{}", 9000 + i),
                public_key: String::new(),
                models: vec![ModelInfo {
                    id: "m".into(),
                    name: None,
                    version: None,
                    category: ModelCategory::Llm,
                    modality: None,
                    price_per_token: "1000".into(),
                    max_context: None,
                    parameters: None,
                    formats: vec![],
                    tee_required: false,
                    weight_sha256: Some((*digest).into()),
                }],
                stake: "1000000".into(),
                tee: "tdx".into(),
                max_concurrency: None,
                heartbeat_interval_s: None,
                timestamp: 0,
            },
            true,
        )
        .unwrap();
        let entry = reg.upsert(info).unwrap();
        reg.mark_reached(&entry);
    }
    reg
}

/// Stores a trusted verdict on `id`, fresh for `fresh_for` seconds (negative:
/// expired), as the verifier does.
fn verified(reg: &Registry, id: &str, fresh_for: i64) {
    let now = reg.unix_now();
    let entry = reg.get(id).unwrap();
    reg.record_attestation(
        &entry,
        crate::providers::verdict::AttestationVerdict {
            trusted: true,
            tee_kind: Some("tdx".into()),
            reasons: vec![],
            verified_at: now.saturating_sub(10),
            expires_at: now.saturating_add_signed(fresh_for),
            slashable: false,
        },
    );
}

#[test]
fn a_peer_auditor_is_tee_verified_for_the_same_digest_and_not_the_audited_one() {
    use crate::money::book::{Book, BookConfig};
    use crate::pricing::Asset;
    let d = "ab".repeat(32);
    let other = "cd".repeat(32);
    let reg = registry_of(&[("p", &d), ("q", &d), ("r", &other), ("u", &d)]);
    let book = Book::new(BookConfig::default());
    let flags = Flags::default();
    let s = {
        let mut s = sample(false, json!({"prompt": "a"}), completion("b"));
        s.endpoint = reg.get("p").unwrap().info.endpoint.clone();
        s
    };
    let pick = |flags: &Flags, book: &Book, seed| {
        peer::pick(&reg, book, flags, &s, seed).map(|e| e.info.id.clone())
    };
    // No verdicts: no peer (the reference audits).
    assert_eq!(pick(&flags, &book, 0), None);
    // The audited provider's own verdict never makes it its own auditor; another
    // digest does not qualify; a verified peer with the same digest does.
    verified(&reg, "p", 3600);
    verified(&reg, "r", 3600);
    assert_eq!(pick(&flags, &book, 0), None);
    verified(&reg, "q", 3600);
    for seed in 0..8 {
        assert_eq!(pick(&flags, &book, seed).as_deref(), Some("q"));
    }
    // A stale verdict does not count.
    verified(&reg, "q", -1);
    assert_eq!(pick(&flags, &book, 0), None);
    verified(&reg, "q", 3600);
    // Both eligible peers are drawn.
    verified(&reg, "u", 3600);
    let drawn: std::collections::BTreeSet<_> = (0..16)
        .filter_map(|seed| pick(&flags, &book, seed))
        .collect();
    assert_eq!(drawn.into_iter().collect::<Vec<_>>(), ["q", "u"]);
    // A peer bonded by the audited provider's owner is not independent.
    book.credit("owner", Asset::Tnzo, 1_000).unwrap();
    book.credit("other", Asset::Tnzo, 1_000).unwrap();
    book.bond("owner", "kp", "p", 10, true).unwrap();
    book.bond("owner", "kq", "q", 10, true).unwrap();
    book.bond("other", "ku", "u", 10, true).unwrap();
    for seed in 0..8 {
        assert_eq!(pick(&flags, &book, seed).as_deref(), Some("u"));
    }
    // A flagged provider audits no one.
    let u = Sample {
        provider: "u".into(),
        ..s.clone()
    };
    let bad: Vec<_> = (0..32)
        .map(|_| ScoredToken {
            logprob: -9.0,
            in_top_k: false,
            top_logprobs: vec![-0.01],
        })
        .collect();
    flags.record(&reg, &u, &judge(&bad, 1.0, &AuditRule::default()));
    assert_eq!(pick(&flags, &book, 0), None);
    // No declared digest: nothing to match a peer on.
    let undeclared = Sample {
        weight_sha256: None,
        ..s.clone()
    };
    assert!(peer::pick(&reg, &book, &Flags::default(), &undeclared, 0).is_none());
}

#[test]
fn a_peer_audits_only_where_the_policy_pins_its_code() {
    use tenzro_attest::{Policy, TeeKind};
    let mut p = Policy::default();
    // Genuine hardware running unknown code is no auditor.
    assert!(!peer::code_pinned(&p, TeeKind::Tdx));
    p.tdx.mrtd = vec!["00".repeat(48)];
    assert!(peer::code_pinned(&p, TeeKind::Tdx));
    assert!(!peer::code_pinned(&p, TeeKind::SevSnp));
    assert!(!peer::code_pinned(&p, TeeKind::NvidiaCc));
    assert!(!peer::code_pinned(&p, TeeKind::None));
    p.sev_snp.measurements = vec!["00".repeat(48)];
    assert!(peer::code_pinned(&p, TeeKind::SevSnp));
}
