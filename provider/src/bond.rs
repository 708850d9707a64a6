//! The owner's bond: before a provider registers, its owner's account puts up the
//! stake the gateway routes by (issue 10, "How the provider binary gets bonded").
//!
//! With `[gateway] owner_key_env` (default `TENZRO_OWNER_KEY`) or `owner_key` set,
//! [`ensure`] asks the gateway who the owner is (`GET /v1/account` with the owner's
//! API key: its `id`), what is bonded already for this provider's key
//! (`GET /v1/providers/bonds`), and tops the bond up to `[gateway] bond` whole TNZO
//! (`POST /v1/providers/bonds` with the key's consent to its owner,
//! `tenzro_attest::bond::sign_owner`). So a restart bonds nothing more, and a
//! bond of "0" only claims the key for the owner (its earnings go there).
//!
//! Failures the operator must fix (the balance is too low: 402; the owner key is
//! refused; another account owns the key) end the provider with a message saying
//! so; an unreachable gateway is retried (see `main`).

use serde::Deserialize;
use serde_json::json;
use tenzro_attest::ProviderKey;

use crate::register::{send, url};

/// Base units per TNZO.
pub const BASE_UNITS: u128 = 1_000_000_000_000_000_000;
/// The asset bonds are in.
pub const ASSET: &str = "TNZO";

/// A whole-token amount ("100000", "0.5") in base units.
pub fn whole_tokens(text: &str) -> Result<u128, String> {
    let bad = || {
        format!(
            "`{text}` is not an amount of whole TNZO (e.g. \"100000\" or \"0.5\", at most 18 decimals)"
        )
    };
    let text_trimmed = text.trim();
    let (int, frac) = text_trimmed.split_once('.').unwrap_or((text_trimmed, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let dangling = text_trimmed.ends_with('.');
    if int.is_empty()
        || dangling
        || int.len() > 21
        || frac.len() > 18
        || !digits(int)
        || !digits(frac)
    {
        return Err(bad());
    }
    let int: u128 = int.parse().map_err(|_| bad())?;
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<18}").parse().map_err(|_| bad())?
    };
    int.checked_mul(BASE_UNITS)
        .and_then(|v| v.checked_add(frac))
        .ok_or_else(bad)
}

/// Base units as whole TNZO, e.g. 1.5e18 -> "1.5".
pub fn as_tokens(base: u128) -> String {
    let (int, frac) = (base / BASE_UNITS, base % BASE_UNITS);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:018}");
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// Why bonding failed.
#[derive(Debug, thiserror::Error)]
pub enum BondError {
    /// The gateway could not be reached (worth retrying).
    #[error("the gateway is unreachable: {0}")]
    Unreachable(String),
    /// The owner's balance is below the amount to bond.
    #[error(
        "the owner's balance is too low to bond {amount} TNZO for this provider: {message}. Top the owner \
         account up, or lower [gateway] bond"
    )]
    InsufficientBalance { amount: String, message: String },
    /// The gateway refused (a bad owner key, another account owns the key, ...).
    #[error("the gateway refused {what}: HTTP {status}: {message}")]
    Refused {
        what: &'static str,
        status: u16,
        message: String,
    },
}

impl BondError {
    /// Whether trying again later may succeed without the operator doing anything.
    pub fn retryable(&self) -> bool {
        matches!(self, BondError::Unreachable(_))
            || matches!(self, BondError::Refused { status, .. } if *status >= 500)
    }
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bonded {
    /// The owner account's id.
    pub owner: String,
    /// Base units bonded for the key now.
    pub bonded: u128,
    /// Base units this call added (0 when the bond already reached the target).
    pub added: u128,
}

#[derive(Deserialize)]
struct Account {
    id: String,
}

#[derive(Deserialize)]
struct BondList {
    data: Vec<BondView>,
}

#[derive(Deserialize)]
struct BondView {
    provider_key: String,
    #[serde(default)]
    bonded: Option<String>,
}

fn message(body: &[u8]) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let text = json
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    text.chars().take(500).collect()
}

/// Makes the bond of `key`, owned by the account of `owner_key`, at least `target`
/// base units on the gateway at `gateway`.
pub async fn ensure(
    client: &reqwest::Client,
    gateway: &str,
    owner_key: &str,
    key: &ProviderKey,
    target: u128,
) -> Result<Bonded, BondError> {
    let bearer = format!("Bearer {}", owner_key.trim());
    let get = |path: &str| {
        client
            .get(url(gateway, path))
            .header(reqwest::header::AUTHORIZATION, bearer.as_str())
    };
    let (status, body) = send(get("/v1/account"))
        .await
        .map_err(BondError::Unreachable)?;
    if status != 200 {
        return Err(BondError::Refused {
            what: "the owner key",
            status,
            message: message(&body),
        });
    }
    let owner = serde_json::from_slice::<Account>(&body)
        .map_err(|e| BondError::Refused {
            what: "the owner key",
            status,
            message: format!("bad account answer: {e}"),
        })?
        .id;

    let me = key.public_key_hex();
    let (status, body) = send(get("/v1/providers/bonds"))
        .await
        .map_err(BondError::Unreachable)?;
    if status != 200 {
        return Err(BondError::Refused {
            what: "reading the owner's bonds",
            status,
            message: message(&body),
        });
    }
    let list: BondList = serde_json::from_slice(&body).map_err(|e| BondError::Refused {
        what: "reading the owner's bonds",
        status,
        message: format!("bad answer: {e}"),
    })?;
    let current = list
        .data
        .iter()
        .find(|b| b.provider_key.eq_ignore_ascii_case(&me));
    let bonded = current
        .and_then(|b| b.bonded.as_deref())
        .and_then(|b| b.parse::<u128>().ok())
        .unwrap_or(0);
    if current.is_some() && bonded >= target {
        return Ok(Bonded {
            owner,
            bonded,
            added: 0,
        });
    }
    let add = target.saturating_sub(bonded);
    let amount = as_tokens(add);
    let signature = tenzro_attest::bond::sign_owner(key, &owner).to_hex();
    let body =
        json!({"provider_key": me, "amount": amount, "asset": ASSET, "owner_signature": signature});
    let request = client
        .post(url(gateway, "/v1/providers/bonds"))
        .header(reqwest::header::AUTHORIZATION, bearer.as_str())
        .json(&body);
    let (status, body) = send(request).await.map_err(BondError::Unreachable)?;
    match status {
        200 => {}
        402 => {
            return Err(BondError::InsufficientBalance {
                amount,
                message: message(&body),
            });
        }
        _ => {
            return Err(BondError::Refused {
                what: "the bond",
                status,
                message: message(&body),
            });
        }
    }
    let now = serde_json::from_slice::<BondView>(&body)
        .ok()
        .and_then(|b| b.bonded)
        .and_then(|b| b.parse::<u128>().ok())
        .unwrap_or(bonded.saturating_add(add));
    Ok(Bonded {
        owner,
        bonded: now,
        added: add,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn whole_token_amounts_parse_to_base_units() {
        assert_eq!(whole_tokens("0"), Ok(0));
        assert_eq!(whole_tokens("100000"), Ok(100_000 * BASE_UNITS));
        assert_eq!(whole_tokens("0.5"), Ok(BASE_UNITS / 2));
        assert_eq!(whole_tokens("1.000000000000000001"), Ok(BASE_UNITS + 1));
        for bad in [
            "",
            ".5",
            "1.",
            "-1",
            "1e5",
            "0x10",
            "1.0000000000000000001",
            "1 000",
            &"9".repeat(40),
        ] {
            assert!(whole_tokens(bad).is_err(), "{bad}");
        }
        assert!(whole_tokens("x").unwrap_err().contains("whole TNZO"));
    }

    #[test]
    fn base_units_print_as_whole_tokens() {
        assert_eq!(as_tokens(0), "0");
        assert_eq!(as_tokens(100_000 * BASE_UNITS), "100000");
        assert_eq!(as_tokens(BASE_UNITS / 2), "0.5");
        assert_eq!(as_tokens(1), "0.000000000000000001");
    }

    proptest! {
        #[test]
        fn printing_and_parsing_round_trip(base in 0u128..(u128::MAX / 2)) {
            let text = as_tokens(base);
            if text.split('.').next().unwrap_or("").len() <= 21 {
                prop_assert_eq!(whole_tokens(&text), Ok(base));
            }
        }
    }

    #[test]
    fn only_unreachable_gateways_and_server_errors_are_retried() {
        assert!(BondError::Unreachable("x".into()).retryable());
        assert!(
            BondError::Refused {
                what: "the bond",
                status: 503,
                message: String::new()
            }
            .retryable()
        );
        assert!(
            !BondError::Refused {
                what: "the bond",
                status: 403,
                message: String::new()
            }
            .retryable()
        );
        let low = BondError::InsufficientBalance {
            amount: "100000".into(),
            message: "balance 5".into(),
        };
        assert!(!low.retryable());
        assert!(
            low.to_string()
                .contains("balance is too low to bond 100000 TNZO")
        );
    }

    /// A small stand-in for the gateway's bonds API (the real one is driven end to end
    /// by tests/python/test_provider_bond.py): checks the owner's key and the
    /// provider's consent, moves the balance into the bond, 402 when it is short.
    async fn fake_gateway(balance: u128) -> String {
        use axum::Json;
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::get;
        use std::sync::{Arc, Mutex};
        type Book = Arc<Mutex<(u128, Option<(String, u128)>)>>;
        fn owner(h: &HeaderMap) -> Result<(), StatusCode> {
            let ok =
                h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer tz-owner");
            if ok {
                Ok(())
            } else {
                Err(StatusCode::UNAUTHORIZED)
            }
        }
        async fn account(h: HeaderMap) -> Result<Json<serde_json::Value>, StatusCode> {
            owner(&h)?;
            Ok(Json(json!({"id": "acct-1"})))
        }
        async fn list(
            State(b): State<Book>,
            h: HeaderMap,
        ) -> Result<Json<serde_json::Value>, StatusCode> {
            owner(&h)?;
            let book = b.lock().unwrap();
            let data: Vec<_> = book
                .1
                .iter()
                .map(|(k, v)| json!({"provider_key": k, "bonded": v.to_string()}))
                .collect();
            Ok(Json(json!({ "data": data })))
        }
        async fn bond(
            State(b): State<Book>,
            h: HeaderMap,
            Json(body): Json<serde_json::Value>,
        ) -> (StatusCode, Json<serde_json::Value>) {
            if owner(&h).is_err() {
                return (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": {"message": "bad key"}})),
                );
            }
            let key =
                tenzro_attest::PublicKey::from_hex(body["provider_key"].as_str().unwrap()).unwrap();
            let sig = tenzro_attest::Signature::from_hex(body["owner_signature"].as_str().unwrap())
                .unwrap();
            if !tenzro_attest::bond::verify_owner(&key, "acct-1", &sig) {
                return (
                    StatusCode::FORBIDDEN,
                    Json(json!({"error": {"message": "bad consent"}})),
                );
            }
            let amount = whole_tokens(body["amount"].as_str().unwrap()).unwrap();
            let mut book = b.lock().unwrap();
            if book.0 < amount {
                let message = format!("balance {} is below {amount}", book.0);
                return (
                    StatusCode::PAYMENT_REQUIRED,
                    Json(json!({"error": {"message": message}})),
                );
            }
            book.0 -= amount;
            let bonded = book.1.as_ref().map_or(0, |b| b.1) + amount;
            book.1 = Some((key.to_hex(), bonded));
            (
                StatusCode::OK,
                Json(json!({"provider_key": key.to_hex(), "bonded": bonded.to_string()})),
            )
        }
        let book: Book = Arc::new(Mutex::new((balance, None)));
        let app = axum::Router::new()
            .route("/v1/account", get(account))
            .route("/v1/providers/bonds", get(list).post(bond))
            .with_state(book);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn the_bond_is_topped_up_to_the_target_once_and_a_short_balance_says_so() {
        let gw = fake_gateway(150 * BASE_UNITS).await;
        let client = crate::register::client().unwrap();
        let key = ProviderKey::from_seed(&[4; 32]);
        let first = ensure(&client, &gw, "tz-owner", &key, 100 * BASE_UNITS)
            .await
            .unwrap();
        assert_eq!(
            first,
            Bonded {
                owner: "acct-1".into(),
                bonded: 100 * BASE_UNITS,
                added: 100 * BASE_UNITS
            }
        );
        // A restart with the same target bonds nothing more.
        let again = ensure(&client, &gw, "tz-owner", &key, 100 * BASE_UNITS)
            .await
            .unwrap();
        assert_eq!((again.bonded, again.added), (100 * BASE_UNITS, 0));
        // A higher target adds the difference only: 120 of the 50 left is too much.
        let err = ensure(&client, &gw, "tz-owner", &key, 220 * BASE_UNITS)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BondError::InsufficientBalance { amount, .. } if amount == "120"),
            "{err}"
        );
        assert!(
            !err.retryable() && err.to_string().contains("balance 50"),
            "{err}"
        );
        let more = ensure(&client, &gw, "tz-owner", &key, 130 * BASE_UNITS)
            .await
            .unwrap();
        assert_eq!(
            (more.bonded, more.added),
            (130 * BASE_UNITS, 30 * BASE_UNITS)
        );
        // A refused owner key is not retried.
        let err = ensure(&client, &gw, "tz-other", &key, 0).await.unwrap_err();
        assert!(
            matches!(err, BondError::Refused { status: 401, .. }),
            "{err}"
        );
        // Nothing listens: retried.
        let err = ensure(&client, "http://127.0.0.1:9", "tz-owner", &key, 0)
            .await
            .unwrap_err();
        assert!(err.retryable(), "{err}");
    }
}
