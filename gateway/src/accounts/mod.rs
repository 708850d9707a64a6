//! Accounts and API keys, kept in the SQL store (see [`crate::money::store`]).
//!
//! Keys are stored as SHA-256 hashes; the plaintext is shown once, when the key is
//! made. `tenzro-gateway keys create` writes a funded development account straight
//! into the store; a running gateway finds a key it does not know yet in the store
//! on first use. Balances live in the book ([`crate::money::book`]) and reach the
//! store by group commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::unix_now;
use crate::money::book::{ASSETS, Book};
use crate::money::decimal;
use crate::money::scope::{SpendLimits, TimeBound};
use crate::money::store::{Store, StoreError};
use crate::pricing::Asset;
use crate::ratelimit::{ChainLimiters, LimiterRegistry, Rates};
use crate::routing::Strategy;

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown account {0}")]
    UnknownAccount(String),
    #[error("{0}")]
    Invalid(String),
}

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

/// A key's scope does not allow an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this key's delegation scope does not allow the `{name}` operation (allowed_operations: {allowed:?})",
    name = .op.as_str()
)]
pub struct OperationRefused {
    pub op: Operation,
    pub allowed: Vec<&'static str>,
}

/// The one check of an operation against a key's scope (its stored scope is the
/// intersection of its delegation chain): `Ok` when the scope names no
/// `allowed_operations` or lists `op`. Handlers of `/v1/account`, `/v1/channels…`,
/// `/v1/identities…` call it; the error converts into a 403.
pub fn require_operation(key: &KeyEntry, op: Operation) -> Result<(), OperationRefused> {
    match &key.record.scope.allowed_operations {
        Some(ops) if !ops.contains(&op) => Err(OperationRefused {
            op,
            allowed: ops.iter().map(|o| o.as_str()).collect(),
        }),
        _ => Ok(()),
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

/// A new account record (not stored yet).
pub fn new_account(name: &str, asset: Asset, identity: Option<String>) -> AccountRecord {
    AccountRecord {
        id: format!("acct_{}", uuid::Uuid::new_v4().simple()),
        name: name.to_owned(),
        asset,
        identity,
        balances: BTreeMap::new(),
        created: unix_now(),
    }
}

/// A new key for `account`: the plaintext (shown once) and its stored record.
pub fn new_key(account: &str, name: &str, scope: KeyScope) -> (String, KeyRecord) {
    let key = generate_key();
    let record = KeyRecord {
        id: format!("key_{}", &hash_key(&key)[..16]),
        hash: hash_key(&key),
        account: account.to_owned(),
        name: name.to_owned(),
        scope,
        created: unix_now(),
        identity: None,
    };
    (key, record)
}

/// Makes a funded account with one key in the store (the `keys create` command and
/// the admin API); returns the key's plaintext.
pub async fn create_in_store(
    store: &Store,
    name: &str,
    asset: Asset,
    balance: u128,
    scope: KeyScope,
    identity: Option<String>,
) -> Result<(String, AccountRecord, KeyRecord), AccountsError> {
    let account = new_account(name, asset, identity);
    let (key, record) = new_key(&account.id, name, scope);
    store.put_account(&account, Some((asset, balance))).await?;
    store.put_key(&record).await?;
    Ok((key, account, record))
}

/// A key the gateway knows, with its rate limiters and spend limits.
#[derive(Debug)]
pub struct KeyEntry {
    pub record: KeyRecord,
    pub asset: Asset,
    pub identity: Option<String>,
    /// `identity` parsed once, for the per-request status check.
    pub did: Option<tenzro_identity::Did>,
    pub limits: SpendLimits,
    /// Requests and tokens per minute of this key and of every key above it: a
    /// request must pass them all ([`ChainLimiters::check`]).
    pub limiters: ChainLimiters,
}

/// Default per-key limits when a key's scope names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultLimits {
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
}

/// The accounts and keys a running gateway serves.
#[derive(Debug)]
pub struct Accounts {
    store: Store,
    book: Arc<Book>,
    defaults: DefaultLimits,
    /// The rate-limit buckets of every key, by key id, shared down each chain.
    limiters: LimiterRegistry,
    keys: RwLock<HashMap<String, Arc<KeyEntry>>>,
    accounts: RwLock<BTreeMap<String, AccountRecord>>,
}

fn poisoned<T>(_: T) -> AccountsError {
    AccountsError::Invalid("accounts lock poisoned".into())
}

impl Accounts {
    /// The accounts and keys loaded from the store (their funds go to the book).
    pub fn new(
        store: Store,
        book: Arc<Book>,
        defaults: DefaultLimits,
        accounts: Vec<AccountRecord>,
        keys: Vec<KeyRecord>,
    ) -> Self {
        let a = Accounts {
            store,
            book,
            defaults,
            limiters: LimiterRegistry::default(),
            keys: RwLock::new(HashMap::new()),
            accounts: RwLock::new(BTreeMap::new()),
        };
        if let Ok(mut map) = a.accounts.write() {
            for acct in accounts {
                map.insert(acct.id.clone(), acct);
            }
        }
        for k in keys {
            if let Err(e) = a.insert_key(k) {
                tracing::warn!(error = %e, "skipping a stored key");
            }
        }
        a
    }

    fn insert_key(&self, record: KeyRecord) -> Result<Arc<KeyEntry>, AccountsError> {
        let (asset, account_identity) = self
            .accounts
            .read()
            .map_err(poisoned)?
            .get(&record.account)
            .map(|a| (a.asset, a.identity.clone()))
            .ok_or_else(|| AccountsError::UnknownAccount(record.account.clone()))?;
        let own = Rates {
            requests_per_minute: record
                .scope
                .requests_per_minute
                .unwrap_or(self.defaults.requests_per_minute),
            tokens_per_minute: record
                .scope
                .tokens_per_minute
                .unwrap_or(self.defaults.tokens_per_minute),
        };
        // An ancestor whose own key is not loaded yet (made by another gateway
        // process) is assumed to allow what this key does: a key's scope is the
        // intersection of its chain, so never more than the ancestor's; loading the
        // ancestor's key sets its own limits.
        let up: Vec<(String, Rates)> = record
            .scope
            .ancestors
            .iter()
            .map(|a| (a.key_id.clone(), own))
            .collect();
        let limiters = self.limiters.chain(&record.id, own, &up);
        let identity = record.identity.clone().or(account_identity);
        let did = identity.as_deref().and_then(|d| d.parse().ok());
        self.book
            .set_ancestors(&record.id, record.scope.shared_windows());
        let entry = Arc::new(KeyEntry {
            limiters,
            asset,
            identity,
            did,
            limits: record.scope.spend_limits(),
            record,
        });
        self.keys
            .write()
            .map_err(poisoned)?
            .insert(entry.record.hash.clone(), entry.clone());
        Ok(entry)
    }

    /// The entry for a plaintext key; a key this gateway has not seen is looked up
    /// in the store (another process may have made it).
    pub async fn lookup(&self, key: &str) -> Option<Arc<KeyEntry>> {
        let hash = hash_key(key);
        if let Some(e) = self.keys.read().ok()?.get(&hash) {
            return Some(e.clone());
        }
        let found = match self.store.key_by_hash(&hash).await {
            Ok(f) => f?,
            Err(e) => {
                tracing::error!(error = %e, "looking up a key in the store");
                return None;
            }
        };
        // The account's money enters the book when its lease is taken.
        let (record, account, _funds) = found;
        self.accounts
            .write()
            .ok()?
            .entry(account.id.clone())
            .or_insert(account);
        self.insert_key(record).ok()
    }

    /// Creates a funded account and its first key (admin API).
    pub async fn create_account(
        &self,
        name: &str,
        asset: Asset,
        balance: u128,
        scope: KeyScope,
        identity: Option<String>,
    ) -> Result<(String, AccountRecord, KeyRecord), AccountsError> {
        let (key, acct, rec) =
            create_in_store(&self.store, name, asset, balance, scope, identity).await?;
        self.book
            .load_account(
                &acct.id,
                &[(
                    asset,
                    crate::money::book::Funds {
                        balance,
                        held: 0,
                        funded: balance,
                    },
                )],
            )
            .map_err(|e| AccountsError::Invalid(e.to_string()))?;
        self.accounts
            .write()
            .map_err(poisoned)?
            .insert(acct.id.clone(), acct.clone());
        self.insert_key(rec.clone())?;
        Ok((key, self.with_balances(acct), rec))
    }

    /// Creates another key for an existing account (admin API; an agent's key
    /// names the agent's identity).
    pub async fn create_key(
        &self,
        account: &str,
        name: &str,
        scope: KeyScope,
        identity: Option<String>,
    ) -> Result<(String, KeyRecord), AccountsError> {
        if !self
            .accounts
            .read()
            .map_err(poisoned)?
            .contains_key(account)
        {
            return Err(AccountsError::UnknownAccount(account.to_owned()));
        }
        let (key, mut rec) = new_key(account, name, scope);
        rec.identity = identity;
        self.store.put_key(&rec).await?;
        self.insert_key(rec.clone())?;
        Ok((key, rec))
    }

    /// Revokes a key by its public id, with every key it delegated to (directly or
    /// through other agents); true when one was revoked.
    pub async fn revoke(&self, key_id: &str) -> Result<bool, AccountsError> {
        let removed = {
            let mut keys = self.keys.write().map_err(poisoned)?;
            let mut gone = Vec::new();
            keys.retain(|_, e| {
                let keep = e.record.id != key_id
                    && !e.record.scope.ancestors.iter().any(|a| a.key_id == key_id);
                if !keep {
                    gone.push(e.record.id.clone());
                }
                keep
            });
            self.limiters.forget(&gone);
            !gone.is_empty()
        };
        let now = unix_now();
        let stored = self.store.revoke_key(key_id, now).await?;
        self.store.revoke_delegated_keys(key_id, now).await?;
        Ok(removed || stored)
    }

    pub fn credit(&self, account: &str, asset: Asset, amount: u128) -> Result<u128, AccountsError> {
        if !self
            .accounts
            .read()
            .map_err(poisoned)?
            .contains_key(account)
        {
            return Err(AccountsError::UnknownAccount(account.to_owned()));
        }
        self.book
            .credit(account, asset, amount)
            .map_err(|e| AccountsError::Invalid(e.to_string()))
    }

    pub fn account(&self, id: &str) -> Option<AccountRecord> {
        self.accounts
            .read()
            .ok()?
            .get(id)
            .cloned()
            .map(|a| self.with_balances(a))
    }

    pub fn list(&self) -> Vec<AccountRecord> {
        let accts: Vec<AccountRecord> = self
            .accounts
            .read()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default();
        accts.into_iter().map(|a| self.with_balances(a)).collect()
    }

    pub fn keys_of(&self, account: &str) -> Vec<KeyRecord> {
        self.keys
            .read()
            .map(|k| {
                k.values()
                    .filter(|e| e.record.account == account)
                    .map(|e| e.record.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Keys of accounts that belong to `identity`.
    pub fn keys_of_identity(&self, identity: &str) -> Vec<KeyRecord> {
        self.keys
            .read()
            .map(|k| {
                k.values()
                    .filter(|e| e.identity.as_deref() == Some(identity))
                    .map(|e| e.record.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Available balances (balance less what is held for requests in flight).
    fn with_balances(&self, mut a: AccountRecord) -> AccountRecord {
        for asset in ASSETS {
            if let Some(f) = self.book.funds(&a.id, asset)
                && (f.funded > 0 || asset == a.asset)
            {
                a.balances.insert(asset, f.available().to_string());
            }
        }
        a
    }
}
