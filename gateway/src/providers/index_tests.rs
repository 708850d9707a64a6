#![expect(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

use tenzro_attest::keys::ProviderKey;
use tenzro_models::api::{ModelCategory, ModelInfo, RegisterRequest};

use crate::clock::ManualClock;
use crate::pricing::{Asset, Rates};
use crate::providers::info::ProviderInfo;
use crate::providers::registry::{Registry, RegistryConfig};

fn model(id: &str) -> ModelInfo {
    ModelInfo {
        id: id.into(),
        name: None,
        version: None,
        category: ModelCategory::Llm,
        modality: None,
        price_per_token: "1000".into(),
        max_context: Some(2048),
        parameters: None,
        formats: vec![],
        tee_required: false,
        weight_sha256: None,
    }
}

fn request(id: &str, public_key: String, models: &[&str]) -> RegisterRequest {
    RegisterRequest {
        provider_id: id.into(),
        endpoint: "http://127.0.0.1:9".into(),
        public_key,
        models: models.iter().map(|m| model(m)).collect(),
        stake: "100000".into(),
        tee: "none".into(),
        max_concurrency: Some(1),
        heartbeat_interval_s: None,
        timestamp: 0,
    }
}

/// An operator-configured provider (no key, no caps) serving `models`.
fn configured(id: &str, models: &[&str]) -> ProviderInfo {
    ProviderInfo::from_registration(request(id, String::new(), models), true).unwrap()
}

fn ids(reg: &Registry, model: &str) -> Vec<String> {
    reg.candidates(model, Asset::Tnzo, &Rates::default())
        .into_iter()
        .map(|(e, c, _)| {
            assert_eq!(e.info.id, c.provider);
            c.provider
        })
        .collect()
}

/// With 10,000 providers of other models in the registry, a routing decision for
/// `m` builds candidates for exactly the three providers that declared `m`: the
/// others are never read (candidates are built one per provider read, each with
/// its state lock, quote and stake).
#[test]
fn routing_reads_only_the_models_candidates() {
    let reg = Registry::new(RegistryConfig::default(), ManualClock::new());
    for i in 0..10_000 {
        let other = format!("other-{}", i % 10);
        reg.upsert(configured(&format!("p{i:05}"), &[&other]))
            .unwrap();
    }
    for id in ["m-a", "m-b", "m-c"] {
        reg.upsert(configured(id, &["m", "other-0"])).unwrap();
    }
    assert_eq!(reg.all().len(), 10_003);
    assert_eq!(ids(&reg, "m"), ["m-a", "m-b", "m-c"]);
    assert_eq!(reg.serving_count("m"), 3);
    assert_eq!(reg.serving_count("other-0"), 1_003);
    assert!(ids(&reg, "absent").is_empty());
}

/// A new registration with other models moves the provider in the index, and a
/// provider that leaves memory leaves the index too.
#[test]
fn index_follows_replacements_and_evictions() {
    let clock = ManualClock::new();
    let reg = Registry::new(RegistryConfig::default(), clock.clone());
    let key = ProviderKey::from_seed(&[7; 32]);
    let did = key.did();
    let info = |models: &[&str]| {
        ProviderInfo::from_registration(request(&did, key.public_key_hex(), models), false).unwrap()
    };
    reg.upsert(info(&["m", "n"])).unwrap();
    assert_eq!(ids(&reg, "m"), std::slice::from_ref(&did));
    assert_eq!(ids(&reg, "n"), std::slice::from_ref(&did));
    reg.upsert(info(&["n"])).unwrap();
    assert!(ids(&reg, "m").is_empty(), "no longer declared");
    assert_eq!(ids(&reg, "n"), std::slice::from_ref(&did));
    assert_eq!(reg.serving_count("m"), 0);
    // Unreached past its TTL: it leaves memory and the index.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(reg.evict_stale(), std::slice::from_ref(&did));
    assert!(ids(&reg, "n").is_empty());
    assert!(reg.all().is_empty());
}
