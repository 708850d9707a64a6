//! Bonded stake against the real `tenzro-gateway` binary (from `cargo build`,
//! target/debug unless `TENZRO_BIN_DIR` says otherwise): bonding needs the
//! provider key's consent once, moves the balance, is refused with 402
//! `insufficient_balance` when the balance is short, 403 for agent keys and for
//! another account; unbonding returns the amount after `[bonds] unbonding_s`; a
//! `kill -9` and restart keep bonds and balances together.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenzro_attest::ProviderKey;
use tenzro_attest::bond::sign_owner;

const ONE: u128 = 1_000_000_000_000_000_000;
const ADMIN: &str = "bond-admin";

fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("TENZRO_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Gateway {
    child: Child,
    url: String,
    config: PathBuf,
    http: reqwest::Client,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\nadmin_token = \"{ADMIN}\"\n\n[bonds]\nunbonding_s = 2\npayout_interval_s = 3600\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    config
}

async fn start(config: &Path) -> Gateway {
    let port = free_port();
    let child = Command::new(binary("tenzro-gateway"))
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting tenzro-gateway");
    let gw = Gateway {
        child,
        url: format!("http://127.0.0.1:{port}"),
        config: config.to_owned(),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = gw.http.get(format!("{}/health", gw.url)).send().await
            && r.status().is_success()
        {
            return gw;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn new_key(config: &Path, whole_tokens: u64) -> String {
    let out = Command::new(binary("tenzro-gateway"))
        .args(["keys", "create", "--config"])
        .arg(config)
        .args(["--balance", &whole_tokens.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Gateway {
    async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn account(&self, key: &str) -> Value {
        let (s, a) = self.get("/v1/account", key).await;
        assert_eq!(s, 200, "{a}");
        a
    }
}

fn amount(v: &Value) -> u128 {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

/// Balance + bonded + unbonding of an account, from its `GET /v1/account`.
fn owned(a: &Value) -> u128 {
    let bonds: u128 = a["bonds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| amount(&b["bonded"]) + amount(&b["unbonding"]))
        .sum();
    amount(&a["balances"]["TNZO"]) + bonds
}

/// An agent key controlled by a fresh person's account.
async fn agent_key(gw: &Gateway) -> String {
    let person = ProviderKey::from_seed(&[9; 32]);
    let r = gw
        .http
        .post(format!("{}/admin/identities", gw.url))
        .bearer_auth(ADMIN)
        .json(&json!({"display_name": "Ada", "kyc_tier": 2, "public_key": person.public_key_hex()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let did = r.json::<Value>().await.unwrap()["did"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = gw
        .http
        .post(format!("{}/admin/accounts", gw.url))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "ada", "balance": "1000", "identity": did}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let owner = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = ProviderKey::from_seed(&[10; 32]);
    let (s, v) = gw
        .post(
            "/v1/identities/agents",
            &owner,
            json!({"public_key": agent.public_key_hex(), "capabilities": ["chat"], "scope": {}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn bond_unbond_and_restart_against_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let key = new_key(&config, 1000);
    let other = new_key(&config, 1000);
    let mut gw = start(&config).await;

    let account = gw.account(&key).await["id"].as_str().unwrap().to_owned();
    let provider = ProviderKey::from_seed(&[7; 32]);
    let pk = provider.public_key_hex();
    let consent = sign_owner(&provider, &account).to_hex();
    let bond = |amount: &str, sig: Option<&str>| {
        let mut b = json!({"provider_key": pk, "amount": amount, "asset": "TNZO"});
        if let Some(s) = sig {
            b["owner_signature"] = json!(s);
        }
        b
    };

    // The first bond needs the key's consent naming this account.
    let (s, e) = gw.post("/v1/providers/bonds", &key, bond("1", None)).await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (400, Some("owner_signature")),
        "{e}"
    );
    let wrong = sign_owner(&provider, "someone-else").to_hex();
    let (s, e) = gw
        .post("/v1/providers/bonds", &key, bond("1", Some(&wrong)))
        .await;
    assert_eq!(s, 403, "{e}");

    // Too much: 402 with the balance and the amount in the message.
    let (s, e) = gw
        .post("/v1/providers/bonds", &key, bond("1000.5", Some(&consent)))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (402, Some("insufficient_balance")),
        "{e}"
    );
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&(1000 * ONE).to_string()) && msg.contains(&(10_005 * ONE / 10).to_string()),
        "{msg}"
    );

    let (s, b) = gw
        .post("/v1/providers/bonds", &key, bond("400", Some(&consent)))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["provider_key"], json!(pk));
    assert_eq!(b["provider_id"], json!(provider.public_key().did()));
    assert_eq!(amount(&b["bonded"]), 400 * ONE);
    assert_eq!(amount(&b["unbonding"]), 0);
    // Later bonds by the owner need no signature.
    let (s, b) = gw
        .post("/v1/providers/bonds", &key, bond("100", None))
        .await;
    assert_eq!((s, amount(&b["bonded"])), (200, 500 * ONE), "{b}");

    let a = gw.account(&key).await;
    assert_eq!(amount(&a["balances"]["TNZO"]), 500 * ONE);
    assert_eq!(amount(&a["bonds"][0]["bonded"]), 500 * ONE);
    assert_eq!(owned(&a), 1000 * ONE);

    // Another account cannot bond or unbond this key, even with a consent of its own.
    let (s, e) = gw
        .post("/v1/providers/bonds", &other, bond("1", Some(&consent)))
        .await;
    assert_eq!(s, 403, "{e}");
    let (s, e) = gw
        .post("/v1/providers/bonds/unbond", &other, bond("1", None))
        .await;
    assert_eq!(s, 403, "{e}");
    // Agent keys cannot bond at all.
    let agent = agent_key(&gw).await;
    let (s, e) = gw
        .post("/v1/providers/bonds", &agent, bond("1", Some(&consent)))
        .await;
    assert_eq!(s, 403, "{e}");
    let (s, e) = gw.get("/v1/providers/bonds", &agent).await;
    assert_eq!(s, 403, "{e}");

    // Unbonding: the amount waits, then returns to the balance.
    let (s, e) = gw
        .post(
            "/v1/providers/bonds/unbond",
            &key,
            bond("500.000000000000000001", None),
        )
        .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (400, Some("amount")),
        "{e}"
    );
    let (s, b) = gw
        .post("/v1/providers/bonds/unbond", &key, bond("200", None))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (amount(&b["bonded"]), amount(&b["unbonding"])),
        (300 * ONE, 200 * ONE)
    );
    assert!(b["unbonding_until"].as_u64().is_some(), "{b}");

    // kill -9, then restart: bonds and balances come back together.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    let config = gw.config.clone();
    drop(gw);
    let gw = start(&config).await;
    let (s, list) = gw.get("/v1/providers/bonds", &key).await;
    assert_eq!(s, 200, "{list}");
    let b = &list["data"][0];
    assert_eq!(amount(&b["bonded"]), 300 * ONE, "{list}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // The view reads the balance before the bonds, so a maturing unbonding can
        // only be missed in between, never counted twice.
        let a = gw.account(&key).await;
        assert!(owned(&a) <= 1000 * ONE, "nothing doubled: {a}");
        if amount(&a["balances"]["TNZO"]) == 700 * ONE {
            assert_eq!(amount(&a["bonds"][0]["unbonding"]), 0, "{a}");
            assert_eq!(owned(&a), 1000 * ONE, "nothing lost: {a}");
            break;
        }
        assert!(Instant::now() < deadline, "unbonding never returned: {a}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A ban slashes the whole bond into the treasury, once.
    let did = provider.public_key().did();
    for _ in 0..2 {
        let r = gw
            .http
            .post(format!("{}/admin/providers/{did}/ban", gw.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = gw.account(&key).await;
        let b = &a["bonds"][0];
        if amount(&b["slashed"]) > 0 {
            assert_eq!(
                (amount(&b["bonded"]), amount(&b["slashed"])),
                (0, 300 * ONE),
                "{a}"
            );
            assert_eq!(amount(&a["balances"]["TNZO"]), 700 * ONE, "{a}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ban never reached the bond: {a}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = gw
        .http
        .get(format!("{}/admin/pools", gw.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let pools: Value = r.json().await.unwrap();
    assert_eq!(
        amount(&pools["pools"]["TNZO"]["treasury"]),
        300 * ONE,
        "{pools}"
    );
    // The slashed money stays slashed after a restart.
    drop(gw);
    let gw = start(&config).await;
    let a = gw.account(&key).await;
    assert_eq!(amount(&a["bonds"][0]["slashed"]), 300 * ONE, "{a}");
    assert_eq!(
        owned(&a) + amount(&a["bonds"][0]["slashed"]),
        1000 * ONE,
        "{a}"
    );
}
