use super::*;

use std::path::Path;

use crate::providers::routing::StakeMinimums;

#[test]
fn amounts_are_parsed_at_load_and_a_bad_one_names_its_field() {
    let cfg = Config::parse("[faucet]\namount = \"2.5\"\n").unwrap();
    assert_eq!(cfg.amounts().unwrap().faucet, 2_500_000_000_000_000_000);
    for (table, field) in [
        ("faucet", "amount"),
        ("channels", "initial_deposit"),
        ("limits", "dev_balance"),
    ] {
        let cfg = Config::parse(&format!("[{table}]\n{field} = \"ten\"\n")).unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(&format!("{table}.{field}")), "{e}");
    }
}

#[test]
fn the_example_config_parses_and_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/gateway.toml");
    let cfg = Config::load(Some(&path), |_| None, &Overrides::default()).unwrap();
    assert_eq!(cfg.breaker.failure_threshold, 5);
    assert_eq!(cfg.store_url(), "sqlite://.tenzro/gateway/gateway.db");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/gateway-postgres.toml");
    let env = |k: &str| (k == "TENZRO_STORE_URL").then(|| "postgres://u:p@db/t".to_owned());
    let cfg = Config::load(Some(&path), env, &Overrides::default()).unwrap();
    assert_eq!(
        (cfg.store_url().as_str(), cfg.store.lease_idle_s),
        ("postgres://u:p@db/t", 30)
    );
}

/// Every gateway config in configs/ loads; the development example has zero
/// stake minimums and allows private endpoints, the production one the
/// whitepaper's minimums and public endpoints only.
#[test]
fn every_gateway_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("gateway") && name.ends_with(".toml")) {
            continue;
        }
        let cfg = Config::load(Some(&path), |_| None, &Overrides::default())
            .map_err(|e| format!("{name}: {e}"))
            .unwrap();
        seen += 1;
        let (stakes, bounds) = (cfg.stakes().unwrap(), cfg.registration_bounds().unwrap());
        match name.as_str() {
            "gateway.toml" => {
                assert_eq!(stakes.llm, 0);
                assert!(bounds.allow_private_endpoints);
            }
            "gateway-production.toml" => {
                assert_eq!(stakes, StakeMinimums::default());
                assert_eq!(stakes.llm, 100_000 * crate::pricing::ONE);
                assert!(!bounds.allow_private_endpoints);
            }
            _ => {}
        }
    }
    assert!(seen >= 3, "{seen} gateway configs");
    // Built in: public endpoints only.
    assert!(
        !Config::default()
            .registration_bounds()
            .unwrap()
            .allow_private_endpoints
    );
}

#[test]
fn unknown_fields_are_refused() {
    assert!(Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").is_err());
    assert!(Config::parse("[nope]\n").is_err());
}

#[test]
fn precedence_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:1000\"\nadmin_token = \"file\"\n",
    )
    .unwrap();
    let env = |k: &str| match k {
        "TENZRO_LISTEN" => Some("127.0.0.1:2000".to_owned()),
        "TENZRO_ADMIN_TOKEN" => Some("env".to_owned()),
        _ => None,
    };
    let cfg = Config::load(Some(&path), env, &Overrides::default()).unwrap();
    assert_eq!(cfg.server.listen.port(), 2000);
    assert_eq!(cfg.server.admin_token.expose(), "env");
    assert_eq!(format!("{:?}", cfg.server.admin_token), "Secret(***)");
    let flags = Overrides {
        listen: Some("127.0.0.1:3000".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(
        Config::load(Some(&path), env, &flags)
            .unwrap()
            .server
            .listen
            .port(),
        3000
    );
    assert!(Config::load(Some(&path), |_| Some("x".into()), &Overrides::default()).is_err());
}
