//! The records of accounts and keys as stored and served: what a key may do
//! ([`KeyScope`], [`Operation`]), and new accounts and keys (not stored yet).
//! They live with the store so that the store never imports the accounts service
//! (which uses the store); `crate::accounts` re-exports them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::money::decimal;
use crate::money::scope::{SpendLimits, TimeBound};
use crate::pricing::Asset;
use crate::providers::routing::Strategy;

/// What an API call may do with a key: the names a scope's `allowed_operations`
/// lists. A scope without `allowed_operations` allows them all.
///
/// | name | allows |
/// |---|---|
/// | `chat`, `completions`, `embeddings` | the inference endpoints |
/// | `models` | `GET /v1/models` |
/// | `account` | `GET /v1/account`: the account's balances, holds and spend |
/// | `channels` | reading, closing and disputing the account's payment channels |
/// | `identities` | the identities this key controls: their personal fields and lifecycle |
/// | `agents:create` | `POST /v1/identities/agents`: delegating to a new agent |
///
/// Handlers check the non-inference ones with [`require_operation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Chat,
    Completions,
    Embeddings,
    Models,
    Account,
    Channels,
    Identities,
    #[serde(rename = "agents:create")]
    AgentsCreate,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Models => "models",
            Operation::Account => "account",
            Operation::Channels => "channels",
            Operation::Identities => "identities",
            Operation::AgentsCreate => "agents:create",
        }
    }
}

/// A delegating key above an agent's key, recorded by the gateway when the agent is
/// created (never taken from a request): the agent's charges count in its window too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ancestor {
    pub key_id: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "decimal::option"
    )]
    pub max_daily_spend: Option<u128>,
}

/// Per-key routing preferences.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingPrefs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// `[price, latency, reputation]` weights of the weighted strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<[f64; 3]>,
}

/// What a key may do; `None` means no restriction beyond the gateway's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyScope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_operations: Option<Vec<Operation>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingPrefs>,
    /// Delegation scope (whitepaper §10.5): most a single request may cost, in base
    /// units of the account's asset (decimal string).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "decimal::option"
    )]
    pub max_transaction_value: Option<u128>,
    /// Most this key may spend in any rolling 24 hours (decimal string).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "decimal::option"
    )]
    pub max_daily_spend: Option<u128>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_payment_protocols: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_chains: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_bound: Option<TimeBound>,
    /// The keys that delegated to this one, nearest first (set by the gateway when
    /// an agent is created; a request naming it is refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Ancestor>,
}

impl KeyScope {
    /// The ancestors whose daily limit this key's spending counts against.
    pub fn shared_windows(&self) -> Vec<(String, u128)> {
        self.ancestors
            .iter()
            .filter_map(|a| a.max_daily_spend.map(|l| (a.key_id.clone(), l)))
            .collect()
    }

    /// The spending part of the scope, checked at admission.
    pub fn spend_limits(&self) -> SpendLimits {
        SpendLimits {
            max_transaction_value: self.max_transaction_value,
            max_daily_spend: self.max_daily_spend,
            allowed_payment_protocols: self.allowed_payment_protocols.clone(),
            allowed_chains: self.allowed_chains.clone(),
            time_bound: self.time_bound,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// The asset this account pays in.
    pub asset: Asset,
    /// The identity (DID) the account belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Balances in base units, decimal strings.
    #[serde(default)]
    pub balances: BTreeMap<Asset, String>,
    pub created: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// A short public id (`key_…`) for listing and revoking.
    pub id: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    pub account: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub scope: KeyScope,
    pub created: u64,
    /// The agent identity (DID) this key acts for; `None`: the account's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// A new API key: `tz-` and 64 hex characters (244 random bits from two UUIDv4s).
pub fn generate_key() -> String {
    format!(
        "tz-{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new account record (not stored yet), made at `created` (Unix seconds).
pub fn new_account(
    name: &str,
    asset: Asset,
    identity: Option<String>,
    created: u64,
) -> AccountRecord {
    AccountRecord {
        id: format!("acct_{}", uuid::Uuid::new_v4().simple()),
        name: name.to_owned(),
        asset,
        identity,
        balances: BTreeMap::new(),
        created,
    }
}

/// A new key for `account` made at `created` (Unix seconds): the plaintext (shown
/// once) and its stored record.
pub fn new_key(account: &str, name: &str, scope: KeyScope, created: u64) -> (String, KeyRecord) {
    let key = generate_key();
    let record = KeyRecord {
        id: format!("key_{}", &hash_key(&key)[..16]),
        hash: hash_key(&key),
        account: account.to_owned(),
        name: name.to_owned(),
        scope,
        created,
        identity: None,
    };
    (key, record)
}

/// Default per-key limits when a key's scope names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultLimits {
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_amounts_read_and_write_as_decimal_strings() {
        let s: KeyScope = serde_json::from_str(
            r#"{"max_daily_spend":"340282366920938463463374607431768211455","max_transaction_value":"7"}"#,
        )
        .unwrap_or_default();
        assert_eq!(s.max_daily_spend, Some(u128::MAX));
        assert_eq!(s.spend_limits().max_daily_spend, Some(u128::MAX));
        assert_eq!(s.spend_limits().max_transaction_value, Some(7));
        let text = serde_json::to_string(&s).unwrap_or_default();
        assert!(
            text.contains(r#""340282366920938463463374607431768211455""#),
            "{text}"
        );
        assert!(serde_json::from_str::<KeyScope>(r#"{"max_daily_spend":"-1"}"#).is_err());
        assert!(serde_json::from_str::<KeyScope>(r#"{"max_daily_spnd":"1"}"#).is_err());
    }
}
