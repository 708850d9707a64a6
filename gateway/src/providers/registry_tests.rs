#![expect(clippy::unwrap_used, reason = "tests")]

use super::*;
use crate::clock::ManualClock;
use crate::money::slashing::Reason;
use crate::providers::breaker::BreakerState;
use tenzro_attest::keys::ProviderKey;
use tenzro_models::api::ModelCategory;
use tenzro_models::api::ModelInfo;

const NOW: u64 = 1_700_000_000;

fn model(id: &str) -> ModelInfo {
    ModelInfo {
        id: id.into(),
        name: None,
        version: None,
        category: ModelCategory::Llm,
        modality: None,
        price_per_token: "1000".into(),
        max_context: Some(2048),
        parameters: Some(135_000_000),
        formats: vec![],
        tee_required: false,
        weight_sha256: None,
    }
}

fn registration(key: &ProviderKey, id: &str) -> RegisterRequest {
    RegisterRequest {
        provider_id: id.into(),
        endpoint: "http://127.0.0.1:9/".into(),
        public_key: key.public_key_hex(),
        models: vec![model("m")],
        stake: (100_000 * pricing::ONE).to_string(),
        tee: "none".into(),
        max_concurrency: Some(2),
        heartbeat_interval_s: None,
        timestamp: NOW,
    }
}

fn sign(key: &ProviderKey, domain: &[u8], payload: String) -> Signed {
    let signature = key.sign(&Signed::signed_bytes(domain, &payload)).to_hex();
    Signed { payload, signature }
}

fn setup() -> (Registry, Arc<ManualClock>) {
    let clock = ManualClock::new();
    (
        Registry::new(RegistryConfig::default(), clock.clone()),
        clock,
    )
}

#[test]
fn signed_registration_and_heartbeat() {
    let (reg, clock) = setup();
    let key = ProviderKey::from_seed(&[1; 32]);
    let p1 = key.did();
    let r = registration(&key, &p1);
    let resp = reg
        .register(
            &sign(&key, REGISTER_DOMAIN, serde_json::to_string(&r).unwrap()),
            NOW,
        )
        .unwrap();
    assert_eq!(resp.status, "Active");
    assert_eq!(reg.get(&p1).unwrap().info.endpoint, "http://127.0.0.1:9");

    clock.advance(Duration::from_secs(6 * 60));
    assert_eq!(reg.status_of(&reg.get(&p1).unwrap()), Status::Degraded);
    let hb = Heartbeat {
        provider_id: p1.clone(),
        timestamp: NOW + 360,
        in_flight: None,
    };
    let resp = reg
        .heartbeat(
            &sign(&key, HEARTBEAT_DOMAIN, serde_json::to_string(&hb).unwrap()),
            NOW + 360,
        )
        .unwrap();
    assert_eq!(resp.status, "Active");
    clock.advance(Duration::from_secs(61 * 60));
    assert_eq!(reg.status_of(&reg.get(&p1).unwrap()), Status::Inactive);
}

#[test]
fn refuses_bad_signatures_stale_times_and_key_changes() {
    let (reg, _) = setup();
    let key = ProviderKey::from_seed(&[1; 32]);
    let other = ProviderKey::from_seed(&[2; 32]);
    let payload = serde_json::to_string(&registration(&key, &key.did())).unwrap();

    // Signed by another key than the one inside.
    let forged = sign(&other, REGISTER_DOMAIN, payload.clone());
    assert_eq!(reg.register(&forged, NOW), Err(RegistryError::BadSignature));
    // Signed under the heartbeat domain.
    let wrong_domain = sign(&key, HEARTBEAT_DOMAIN, payload.clone());
    assert_eq!(
        reg.register(&wrong_domain, NOW),
        Err(RegistryError::BadSignature)
    );
    // Payload changed after signing.
    let mut tampered = sign(&key, REGISTER_DOMAIN, payload.clone());
    tampered.payload = tampered.payload.replace("1000", "1");
    assert_eq!(
        reg.register(&tampered, NOW),
        Err(RegistryError::BadSignature)
    );
    // Too old.
    assert_eq!(
        reg.register(&sign(&key, REGISTER_DOMAIN, payload.clone()), NOW + 301),
        Err(RegistryError::Stale(301))
    );

    reg.register(&sign(&key, REGISTER_DOMAIN, payload), NOW)
        .unwrap();
    // Another key claiming the first one's id (its DID), or any made-up id.
    for claimed in [key.did(), "p1".to_owned()] {
        let hijack = serde_json::to_string(&registration(&other, &claimed)).unwrap();
        assert_eq!(
            reg.register(&sign(&other, REGISTER_DOMAIN, hijack), NOW),
            Err(RegistryError::IdNotKey {
                claimed,
                did: other.did()
            })
        );
    }
    assert_eq!(
        reg.get(&key.did()).unwrap().info.public_key,
        Some(key.public_key())
    );

    let hb = Heartbeat {
        provider_id: "nobody".into(),
        timestamp: NOW,
        in_flight: None,
    };
    let r = reg.heartbeat(
        &sign(&key, HEARTBEAT_DOMAIN, serde_json::to_string(&hb).unwrap()),
        NOW,
    );
    assert_eq!(r, Err(RegistryError::UnknownProvider("nobody".into())));
}

#[test]
fn validation_rejects_nonsense() {
    let key = ProviderKey::from_seed(&[1; 32]);
    type Case = Box<dyn Fn(&mut RegisterRequest)>;
    let cases: Vec<Case> = vec![
        Box::new(|r| r.endpoint = "ftp://x".into()),
        Box::new(|r| r.stake = "-1".into()),
        Box::new(|r| r.tee = "sgx".into()),
        Box::new(|r| r.models.clear()),
        Box::new(|r| r.models[0].price_per_token = "0.5".into()),
        Box::new(|r| r.models[0].tee_required = true),
        Box::new(|r| r.public_key = "zz".into()),
        Box::new(|r| r.provider_id = String::new()),
    ];
    for (i, f) in cases.iter().enumerate() {
        let mut r = registration(&key, "p");
        f(&mut r);
        assert!(
            matches!(
                ProviderInfo::from_registration(r, false),
                Err(RegistryError::Malformed(_))
            ),
            "case {i}"
        );
    }
}

#[test]
fn failures_make_a_provider_inactive_until_they_age_out() {
    let (reg, clock) = setup();
    let key = ProviderKey::from_seed(&[1; 32]);
    let mut info = ProviderInfo::from_registration(registration(&key, "p"), false).unwrap();
    info.from_config = true; // No heartbeat expiry in this test.
    let e = reg.upsert(info).unwrap();
    let now = reg.now();
    for _ in 0..8 {
        e.record(
            now,
            Outcome::Success {
                latency: Duration::from_millis(10),
            },
        );
    }
    for _ in 0..2 {
        e.record(now, Outcome::Failure);
    }
    assert_eq!(reg.status_of(&e), Status::Degraded, "20% failures");
    e.record(now, Outcome::Failure);
    assert_eq!(reg.status_of(&e), Status::Inactive, "27% failures");
    clock.advance(Duration::from_secs(10 * 60));
    assert_eq!(
        reg.status_of(&e),
        Status::Active,
        "recovered once the window forgot"
    );
    assert!(reg.ban("p", "test").unwrap().is_some());
    assert_eq!(reg.status_of(&e), Status::Banned);
    let again = ProviderInfo::from_registration(registration(&key, "p"), false).unwrap();
    assert_eq!(
        reg.upsert(again).unwrap_err(),
        RegistryError::Banned("p".into())
    );
}

#[test]
fn metrics_and_candidates() {
    let (reg, _) = setup();
    let key = ProviderKey::from_seed(&[1; 32]);
    let e = reg
        .upsert(ProviderInfo::from_registration(registration(&key, "p"), false).unwrap())
        .unwrap();
    let now = reg.now();
    e.record(
        now,
        Outcome::Success {
            latency: Duration::from_millis(10),
        },
    );
    e.record(
        now,
        Outcome::Success {
            latency: Duration::from_millis(20),
        },
    );
    e.record(now, Outcome::Failure);
    let v = &reg.views()[0];
    assert_eq!((v.total, v.successful, v.failed), (3, 2, 1));
    assert_eq!(v.ema_latency_ms, Some(12.0));
    let c = reg.candidates("m", Asset::Tnzo, &Rates::default());
    assert_eq!(c.len(), 1);
    assert!(c[0].1.serves_model);
    // 1000 × complexity 1 × idle 0.5 × no TEE = 500 per token, in 10^-12 units for
    // comparison.
    assert_eq!(c[0].1.price, 500 * 1_000_000_000_000);
    assert_eq!(c[0].2.unwrap().cost(10).unwrap(), 5000);
    // A provider that did not declare the model is not a candidate at all.
    assert!(
        reg.candidates("other", Asset::Tnzo, &Rates::default())
            .is_empty()
    );
}

#[test]
fn breaker_through_the_entry() {
    let (reg, clock) = setup();
    let key = ProviderKey::from_seed(&[1; 32]);
    let e = reg
        .upsert(ProviderInfo::from_registration(registration(&key, "p"), false).unwrap())
        .unwrap();
    for _ in 0..5 {
        assert!(e.try_acquire(reg.now()));
        e.record(reg.now(), Outcome::Failure);
    }
    assert_eq!(e.breaker_state(reg.now()), BreakerState::Open);
    assert!(
        !reg.candidates("m", Asset::Tnzo, &Rates::default())[0]
            .1
            .breaker_admits
    );
    clock.advance(Duration::from_secs(60));
    assert!(e.try_acquire(reg.now()));
    assert!(!e.try_acquire(reg.now()));
    e.record(
        reg.now(),
        Outcome::Success {
            latency: Duration::from_millis(1),
        },
    );
    assert_eq!(e.breaker_state(reg.now()), BreakerState::Closed);
}

#[test]
fn a_day_of_silence_is_slashed_once_per_outage() {
    let (reg, clock) = setup();
    let key = ProviderKey::from_seed(&[4; 32]);
    let p4 = key.did();
    let r = registration(&key, &p4);
    reg.register(
        &sign(&key, REGISTER_DOMAIN, serde_json::to_string(&r).unwrap()),
        NOW,
    )
    .unwrap();
    let stake = 100_000 * pricing::ONE;
    reg.set_bond(&p4, stake, false);
    clock.advance(Duration::from_secs(23 * 3600));
    assert!(reg.slash_downtime().is_empty(), "23 h is not downtime");
    clock.advance(Duration::from_secs(2 * 3600));
    let s = reg.slash_downtime();
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].reason, s[0].amount),
        (crate::money::slashing::Reason::Downtime, stake / 100)
    );
    assert!(reg.slash_downtime().is_empty(), "once per outage");
    // A heartbeat ends the outage; the next one is slashed again.
    let hb = Heartbeat {
        provider_id: p4.clone(),
        timestamp: NOW + 25 * 3600,
        in_flight: None,
    };
    reg.heartbeat(
        &sign(&key, HEARTBEAT_DOMAIN, serde_json::to_string(&hb).unwrap()),
        NOW + 25 * 3600,
    )
    .unwrap();
    clock.advance(Duration::from_secs(25 * 3600));
    assert_eq!(reg.slash_downtime().len(), 1);
    assert_eq!(
        reg.stake_of(&reg.get(&p4).unwrap()),
        stake - stake / 100 - (stake - stake / 100) / 100
    );
}

fn signed_reg(key: &ProviderKey, f: impl FnOnce(&mut RegisterRequest)) -> Signed {
    let mut r = registration(key, &key.did());
    f(&mut r);
    sign(key, REGISTER_DOMAIN, serde_json::to_string(&r).unwrap())
}

#[test]
fn config_providers_are_a_namespace_registrations_cannot_touch() {
    let (reg, _) = setup();
    let operator = ProviderKey::from_seed(&[7; 32]);
    // A config entry named by a made-up id, and one named by a key's DID.
    for id in ["local".to_owned(), operator.did()] {
        let mut info = ProviderInfo::from_registration(registration(&operator, &id), true).unwrap();
        info.public_key = None;
        reg.upsert(info).unwrap();
    }
    let attacker = ProviderKey::from_seed(&[8; 32]);
    let claim = signed_reg(&attacker, |r| r.provider_id = "local".into());
    assert!(matches!(
        reg.register(&claim, NOW),
        Err(RegistryError::IdNotKey { .. })
    ));
    // Even the key whose DID the operator used cannot replace the config entry.
    assert_eq!(
        reg.register(&signed_reg(&operator, |_| {}), NOW),
        Err(RegistryError::ConfigProvider(operator.did()))
    );
    assert_eq!(
        reg.get("local").unwrap().info.endpoint,
        "http://127.0.0.1:9"
    );
    assert!(reg.get(&operator.did()).unwrap().info.from_config);
}

#[test]
fn declarations_past_the_bounds_are_refused() {
    let (reg, _) = setup();
    let key = ProviderKey::from_seed(&[9; 32]);
    type Case = (Box<dyn Fn(&mut RegisterRequest)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            Box::new(|r| r.models[0].price_per_token = u128::MAX.to_string()),
            "max_price_per_token",
        ),
        (
            Box::new(|r| r.models[0].price_per_token = (pricing::ONE / 100 + 1).to_string()),
            "max_price_per_token",
        ),
        (
            Box::new(|r| r.models[0].max_context = Some(u32::MAX)),
            "max_context",
        ),
        (
            Box::new(|r| r.models = (0..65).map(|i| model(&format!("m{i}"))).collect()),
            "max_models",
        ),
        (
            Box::new(|r| r.max_concurrency = Some(u32::MAX)),
            "max_concurrency",
        ),
        (Box::new(|r| r.models[0].id = "x".repeat(300)), "256 bytes"),
        (
            Box::new(|r| r.endpoint = "http://user:pw@example.com".into()),
            "credentials",
        ),
    ];
    for (f, why) in cases {
        let r = reg.register(&signed_reg(&key, f), NOW);
        assert!(
            matches!(&r, Err(RegistryError::OutOfBounds(m)) if m.contains(why)),
            "{why}: {r:?}"
        );
    }
    assert!(reg.all().is_empty());
    // At the cap is fine.
    reg.register(
        &signed_reg(&key, |r| {
            r.models[0].price_per_token = (pricing::ONE / 100).to_string()
        }),
        NOW,
    )
    .unwrap();
}

#[test]
fn stake_is_the_bond_and_unbonding_takes_no_new_requests() {
    let (reg, _) = setup();
    let key = ProviderKey::from_seed(&[10; 32]);
    let id = key.did();
    // Declares 10^27 base units: counts for nothing.
    reg.register(
        &signed_reg(&key, |r| r.stake = "1000000000000000000000000000".into()),
        NOW,
    )
    .unwrap();
    let e = reg.get(&id).unwrap();
    assert_eq!(reg.stake_of(&e), 0);
    reg.set_bond(&id, 5_000, false);
    reg.mark_reached(&e);
    let cand = |reg: &Registry| {
        reg.candidates("m", Asset::Tnzo, &Rates::default())[0]
            .1
            .clone()
    };
    assert_eq!(
        (cand(&reg).stake, cand(&reg).unbonding, cand(&reg).reachable),
        (5_000, false, true)
    );
    assert!(reg.routable(&e));
    reg.set_bond(&id, 5_000, true);
    assert!(cand(&reg).unbonding && !reg.routable(&e));
    assert_eq!(
        reg.status_of(&e),
        Status::Active,
        "unbonding stays registered"
    );
    // A slash shrinks the bond at once; a ban takes the rest, once.
    reg.set_bond(&id, 5_000, false);
    let s = reg.slash(&id, Reason::FraudulentResults, "x").unwrap();
    assert_eq!((s.amount, reg.stake_of(&e)), (1_250, 3_750));
    let b = reg.ban(&id, "fraud").unwrap().unwrap();
    assert_eq!(
        (b.reason, b.amount, reg.stake_of(&e)),
        (Reason::Ban, 3_750, 0)
    );
    assert_eq!(reg.ban(&id, "again").unwrap(), None, "one slash per ban");
    reg.unban(&id).unwrap();
    assert_eq!(reg.stake_of(&e), 0, "un-banning restores nothing");
    // The bond of a provider not in memory can still be slashed.
    reg.set_bond("did:tenzro:machine:gone", 100, false);
    assert_eq!(
        reg.slash("did:tenzro:machine:gone", Reason::Downtime, "")
            .unwrap()
            .amount,
        1
    );
    assert!(
        reg.slash("did:tenzro:machine:unknown", Reason::Downtime, "")
            .is_none()
    );
}

#[test]
fn new_registrations_wait_to_be_reached_and_stale_ones_leave() {
    let clock = ManualClock::new();
    let cfg = RegistryConfig {
        stale_after: Duration::from_secs(3600),
        ..RegistryConfig::default()
    };
    let reg = Registry::new(cfg, clock.clone());
    let key = ProviderKey::from_seed(&[11; 32]);
    let id = key.did();
    reg.register(&signed_reg(&key, |_| {}), NOW).unwrap();
    let e = reg.get(&id).unwrap();
    assert!(
        !reg.routable(&e)
            && !reg.candidates("m", Asset::Tnzo, &Rates::default())[0]
                .1
                .reachable
    );
    assert_eq!(reg.unreached(), vec![id.clone()]);
    reg.mark_reached(&e);
    assert!(reg.routable(&e) && reg.unreached().is_empty());
    // Re-registering at the same endpoint keeps it reached; a new endpoint does not.
    reg.register(&signed_reg(&key, |_| {}), NOW).unwrap();
    assert!(reg.is_reached(&id));
    reg.register(
        &signed_reg(&key, |r| r.endpoint = "http://127.0.0.1:10".into()),
        NOW,
    )
    .unwrap();
    assert!(!reg.is_reached(&id));
    clock.advance(Duration::from_secs(3601));
    assert_eq!(reg.evict_stale(), vec![id.clone()]);
    assert!(reg.get(&id).is_none());
}

#[test]
fn the_registry_is_bounded() {
    let clock = ManualClock::new();
    let cfg = RegistryConfig {
        max_registered: 2,
        ..RegistryConfig::default()
    };
    let reg = Registry::new(cfg, clock);
    for seed in 20..22 {
        let key = ProviderKey::from_seed(&[seed; 32]);
        reg.register(&signed_reg(&key, |_| {}), NOW).unwrap();
        reg.mark_reached(&reg.get(&key.did()).unwrap());
    }
    let third = reg.register(&signed_reg(&ProviderKey::from_seed(&[22; 32]), |_| {}), NOW);
    assert_eq!(third, Err(RegistryError::Full(2)));
    // Known providers may still register again.
    reg.register(&signed_reg(&ProviderKey::from_seed(&[20; 32]), |_| {}), NOW)
        .unwrap();
}

#[test]
fn unreached_registrations_cannot_lock_out_providers_that_answer() {
    let clock = ManualClock::new();
    let cfg = RegistryConfig {
        max_registered: 2,
        max_unreached: 3,
        unreached_ttl: Duration::from_secs(600),
        ..RegistryConfig::default()
    };
    let reg = Registry::new(cfg, clock.clone());
    // Junk at endpoints nobody serves fills its own cap, not the registry's.
    for seed in 30..33 {
        reg.register(
            &signed_reg(&ProviderKey::from_seed(&[seed; 32]), |_| {}),
            NOW,
        )
        .unwrap();
    }
    let fourth = reg.register(&signed_reg(&ProviderKey::from_seed(&[33; 32]), |_| {}), NOW);
    assert_eq!(fourth, Err(RegistryError::PendingFull(3)));
    // Registering again does not extend an unreached entry's time.
    clock.advance(Duration::from_secs(300));
    reg.register(&signed_reg(&ProviderKey::from_seed(&[30; 32]), |_| {}), NOW)
        .unwrap();
    clock.advance(Duration::from_secs(301));
    let mut gone = reg.evict_stale();
    gone.sort();
    let mut junk: Vec<String> = (30..33)
        .map(|s| ProviderKey::from_seed(&[s; 32]).did())
        .collect();
    junk.sort();
    assert_eq!(gone, junk, "unreached entries leave after unreached_ttl");
    // Honest providers register, are reached, and stay.
    for seed in 40..42 {
        let key = ProviderKey::from_seed(&[seed; 32]);
        reg.register(&signed_reg(&key, |_| {}), NOW).unwrap();
        reg.mark_reached(&reg.get(&key.did()).unwrap());
    }
    // Once the reached ones fill their cap, new registrations wait.
    let more = reg.register(&signed_reg(&ProviderKey::from_seed(&[34; 32]), |_| {}), NOW);
    assert_eq!(more, Err(RegistryError::Full(2)));
    clock.advance(Duration::from_secs(601));
    assert!(reg.evict_stale().is_empty(), "reached providers stay");
    assert!(reg.is_reached(&ProviderKey::from_seed(&[40; 32]).did()));
}

#[test]
fn unsigned_junk_does_not_use_up_a_source_limit() {
    let clock = ManualClock::new();
    let cfg = RegistryConfig {
        registrations_per_minute: 2,
        ..RegistryConfig::default()
    };
    let reg = Registry::new(cfg, clock);
    let ip: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    let key = ProviderKey::from_seed(&[50; 32]);
    let mut junk = signed_reg(&key, |_| {});
    junk.signature = "00".repeat(64);
    for _ in 0..10 {
        assert_eq!(
            reg.prepare_from(&junk, NOW, Some(ip)),
            Err(RegistryError::BadSignature)
        );
    }
    // The honest registrant behind the same address still gets through, and signed
    // registrations stay limited.
    for _ in 0..2 {
        reg.prepare_from(&signed_reg(&key, |_| {}), NOW, Some(ip))
            .unwrap();
    }
    assert!(matches!(
        reg.prepare_from(&signed_reg(&key, |_| {}), NOW, Some(ip)),
        Err(RegistryError::RateLimited(_))
    ));
}

#[test]
fn slash_records_in_memory_are_bounded_and_applied_once() {
    let (reg, _) = setup();
    let key = ProviderKey::from_seed(&[60; 32]);
    let id = key.did();
    reg.register(&signed_reg(&key, |_| {}), NOW).unwrap();
    reg.set_bond(&id, 1_000_000_000, false);
    let evidence = "x".repeat(10_000);
    let n = MAX_SLASHES_PER_PROVIDER + 10;
    let mut total = 0u128;
    for _ in 0..n {
        total += reg
            .slash(&id, Reason::RateLimitAbuse, &evidence)
            .unwrap()
            .amount;
    }
    let kept = reg.slashes();
    assert_eq!(
        kept.len(),
        MAX_SLASHES_PER_PROVIDER,
        "newest kept per provider"
    );
    assert!(kept.iter().all(|s| s.detail.len() <= slashing::MAX_DETAIL));
    assert_eq!(reg.slashed(&id), total, "the total counts every record");
    // The bonds module sees each new record once.
    assert_eq!(reg.take_unapplied_slashes().len(), n);
    assert!(reg.take_unapplied_slashes().is_empty());
    reg.slash(&id, Reason::RateLimitAbuse, "one more").unwrap();
    assert_eq!(reg.take_unapplied_slashes().len(), 1);
    // Restored from the store: totals count all, memory keeps the newest.
    let many: Vec<Slash> = (0..MAX_SLASHES_KEPT + 5)
        .map(|i| {
            slashing::slash(
                &format!("p{}", i % 1000),
                1_000_000,
                Reason::Downtime,
                "",
                0,
            )
        })
        .collect();
    reg.restore_slashes(many.clone());
    let kept = reg.slashes();
    assert_eq!(kept.len(), MAX_SLASHES_KEPT);
    assert_eq!(kept.last(), many.last());
    assert_eq!(
        reg.slashed("p0"),
        10_000 * many.iter().filter(|s| s.provider == "p0").count() as u128
    );
    assert_eq!(reg.take_unapplied_slashes().len(), many.len());
}

#[test]
fn only_reached_unbanned_registered_providers_earn_staking() {
    let (reg, _) = setup();
    let key = ProviderKey::from_seed(&[70; 32]);
    let id = key.did();
    assert!(!reg.earns_staking(&id), "a bond on a key never registered");
    reg.register(&signed_reg(&key, |_| {}), NOW).unwrap();
    assert!(!reg.earns_staking(&id), "registered, never reached");
    reg.mark_reached(&reg.get(&id).unwrap());
    assert!(reg.earns_staking(&id));
    reg.set_bond(&id, 100, false);
    reg.ban(&id, "fraud").unwrap();
    assert!(!reg.earns_staking(&id), "banned");
}
