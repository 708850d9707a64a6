//! Accounts and API keys, kept in one JSON file in the gateway's data directory.
//!
//! Keys are stored as SHA-256 hashes; the plaintext is shown once, when the key is
//! made. The file is written atomically (temporary file, then rename), so
//! `tenzro-gateway keys create` can add a funded development account that a gateway
//! started afterwards, or already running, picks up: a running gateway re-reads the
//! file when it sees an unknown key and the file changed. Balances are written back
//! on clean shutdown. Issue 5 replaces this file with the durable SQL store.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::unix_now;
use crate::ledger::Ledger;
use crate::pricing::{self, Asset};
use crate::ratelimit::Limiters;
use crate::routing::Strategy;

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("accounts file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("accounts file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("unknown account {0}")]
    UnknownAccount(String),
    #[error("{0}")]
    Invalid(String),
}

/// What an API call may do with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Chat,
    Completions,
    Embeddings,
    Models,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Models => "models",
        }
    }
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// The asset this account pays in.
    pub asset: Asset,
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
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountsFile {
    #[serde(default)]
    pub accounts: Vec<AccountRecord>,
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
}

impl AccountsFile {
    pub fn load(path: &Path) -> Result<Self, AccountsError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| AccountsError::Parse { path: path.to_owned(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AccountsFile::default()),
            Err(source) => Err(AccountsError::Io { path: path.to_owned(), source }),
        }
    }

    /// Writes the file atomically: a temporary file in the same folder, then rename.
    pub fn save(&self, path: &Path) -> Result<(), AccountsError> {
        let io = |source| AccountsError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|source| AccountsError::Parse { path: path.to_owned(), source })?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// A new API key: `tz-` and 64 hex characters (244 random bits from two UUIDv4s).
pub fn generate_key() -> String {
    format!("tz-{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Adds a funded account and a key for it to `file`; returns the plaintext key.
pub fn add_account(
    file: &mut AccountsFile,
    name: &str,
    asset: Asset,
    balance: u128,
    scope: KeyScope,
) -> (String, AccountRecord, KeyRecord) {
    let now = unix_now();
    let account = AccountRecord {
        id: format!("acct_{}", uuid::Uuid::new_v4().simple()),
        name: name.to_owned(),
        asset,
        balances: BTreeMap::from([(asset, balance.to_string())]),
        created: now,
    };
    let (key, record) = new_key(&account.id, name, scope);
    file.accounts.push(account.clone());
    file.keys.push(record.clone());
    (key, account, record)
}

fn new_key(account: &str, name: &str, scope: KeyScope) -> (String, KeyRecord) {
    let key = generate_key();
    let record = KeyRecord {
        id: format!("key_{}", &hash_key(&key)[..16]),
        hash: hash_key(&key),
        account: account.to_owned(),
        name: name.to_owned(),
        scope,
        created: unix_now(),
    };
    (key, record)
}

/// A key the gateway knows, with its rate limiters.
#[derive(Debug)]
pub struct KeyEntry {
    pub record: KeyRecord,
    pub asset: Asset,
    pub limiters: Limiters,
}

/// Default per-key limits when a key's scope names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultLimits {
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
}

/// The accounts and keys a running gateway serves, backed by the file.
#[derive(Debug)]
pub struct Accounts {
    path: PathBuf,
    keys: RwLock<HashMap<String, Arc<KeyEntry>>>,
    accounts: RwLock<BTreeMap<String, AccountRecord>>,
    ledger: Arc<dyn Ledger>,
    defaults: DefaultLimits,
    seen_mtime: Mutex<Option<SystemTime>>,
    /// Serialises writers of the file within this process.
    write_lock: Mutex<()>,
}

impl Accounts {
    pub fn open(path: PathBuf, ledger: Arc<dyn Ledger>, defaults: DefaultLimits) -> Result<Self, AccountsError> {
        let a = Accounts {
            path,
            keys: RwLock::new(HashMap::new()),
            accounts: RwLock::new(BTreeMap::new()),
            ledger,
            defaults,
            seen_mtime: Mutex::new(None),
            write_lock: Mutex::new(()),
        };
        a.reload()?;
        Ok(a)
    }

    fn mtime(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path).and_then(|m| m.modified()).ok()
    }

    /// Adds accounts and keys from the file that this gateway does not know yet
    /// (balances of known accounts are this gateway's, not the file's).
    pub fn reload(&self) -> Result<usize, AccountsError> {
        let mtime = self.mtime();
        let file = AccountsFile::load(&self.path)?;
        let mut added = 0;
        {
            let mut accounts = self.accounts.write().map_err(|_| AccountsError::Invalid("lock".into()))?;
            for acct in file.accounts {
                if accounts.contains_key(&acct.id) {
                    continue;
                }
                for (asset, amount) in &acct.balances {
                    let units = pricing::parse_units(amount).map_err(|e| AccountsError::Invalid(e.to_string()))?;
                    self.ledger.credit(&acct.id, *asset, units).map_err(|e| AccountsError::Invalid(e.to_string()))?;
                }
                // Make sure the paying asset exists in the ledger, even at zero.
                self.ledger.credit(&acct.id, acct.asset, 0).map_err(|e| AccountsError::Invalid(e.to_string()))?;
                accounts.insert(acct.id.clone(), acct);
                added += 1;
            }
        }
        for key in file.keys {
            self.insert_key(key)?;
        }
        if let Ok(mut m) = self.seen_mtime.lock() {
            *m = mtime;
        }
        Ok(added)
    }

    fn insert_key(&self, record: KeyRecord) -> Result<(), AccountsError> {
        let asset = self
            .accounts
            .read()
            .ok()
            .and_then(|a| a.get(&record.account).map(|a| a.asset))
            .ok_or_else(|| AccountsError::UnknownAccount(record.account.clone()))?;
        let mut keys = self.keys.write().map_err(|_| AccountsError::Invalid("lock".into()))?;
        if !keys.contains_key(&record.hash) {
            let rpm = record.scope.requests_per_minute.unwrap_or(self.defaults.requests_per_minute);
            let tpm = record.scope.tokens_per_minute.unwrap_or(self.defaults.tokens_per_minute);
            let entry = KeyEntry { limiters: Limiters::new(rpm, tpm), asset, record };
            keys.insert(entry.record.hash.clone(), Arc::new(entry));
        }
        Ok(())
    }

    /// The entry for a plaintext key; re-reads the file once if it changed since.
    pub fn lookup(&self, key: &str) -> Option<Arc<KeyEntry>> {
        let hash = hash_key(key);
        if let Some(e) = self.keys.read().ok()?.get(&hash) {
            return Some(e.clone());
        }
        let changed = self.seen_mtime.lock().ok().is_some_and(|seen| *seen != self.mtime());
        if changed && let Err(e) = self.reload() {
            tracing::warn!(error = %e, "re-reading the accounts file failed");
        }
        self.keys.read().ok()?.get(&hash).cloned()
    }

    /// Creates an account (admin API); returns it and a first key's plaintext.
    pub fn create_account(&self, name: &str, asset: Asset, balance: u128, scope: KeyScope) -> Result<(String, AccountRecord, KeyRecord), AccountsError> {
        let (key, acct, rec) = add_account(&mut AccountsFile::default(), name, asset, balance, scope);
        self.ledger.credit(&acct.id, asset, balance).map_err(|e| AccountsError::Invalid(e.to_string()))?;
        self.accounts.write().map_err(|_| AccountsError::Invalid("lock".into()))?.insert(acct.id.clone(), acct.clone());
        self.insert_key(rec.clone())?;
        self.save()?;
        Ok((key, acct, rec))
    }

    /// Creates another key for an existing account (admin API).
    pub fn create_key(&self, account: &str, name: &str, scope: KeyScope) -> Result<(String, KeyRecord), AccountsError> {
        if !self.accounts.read().map(|a| a.contains_key(account)).unwrap_or(false) {
            return Err(AccountsError::UnknownAccount(account.to_owned()));
        }
        let (key, rec) = new_key(account, name, scope);
        self.insert_key(rec.clone())?;
        self.save()?;
        Ok((key, rec))
    }

    /// Revokes a key by its public id; true when one was removed.
    pub fn revoke(&self, key_id: &str) -> Result<bool, AccountsError> {
        let removed = {
            let mut keys = self.keys.write().map_err(|_| AccountsError::Invalid("lock".into()))?;
            let before = keys.len();
            keys.retain(|_, e| e.record.id != key_id);
            before != keys.len()
        };
        if removed {
            self.save_filtered(Some(key_id))?;
        }
        Ok(removed)
    }

    pub fn credit(&self, account: &str, asset: Asset, amount: u128) -> Result<u128, AccountsError> {
        if !self.accounts.read().map(|a| a.contains_key(account)).unwrap_or(false) {
            return Err(AccountsError::UnknownAccount(account.to_owned()));
        }
        self.ledger.credit(account, asset, amount).map_err(|e| AccountsError::Invalid(e.to_string()))
    }

    pub fn account(&self, id: &str) -> Option<AccountRecord> {
        self.accounts.read().ok()?.get(id).cloned().map(|a| self.with_balances(a))
    }

    pub fn list(&self) -> Vec<AccountRecord> {
        let accts: Vec<AccountRecord> = self.accounts.read().map(|a| a.values().cloned().collect()).unwrap_or_default();
        accts.into_iter().map(|a| self.with_balances(a)).collect()
    }

    pub fn keys_of(&self, account: &str) -> Vec<KeyRecord> {
        self.keys
            .read()
            .map(|k| k.values().filter(|e| e.record.account == account).map(|e| e.record.clone()).collect())
            .unwrap_or_default()
    }

    fn with_balances(&self, mut a: AccountRecord) -> AccountRecord {
        for asset in [Asset::Tnzo, Asset::Usdc, Asset::Usdt] {
            if let Some(b) = self.ledger.balance(&a.id, asset) {
                a.balances.insert(asset, b.to_string());
            }
        }
        a
    }

    /// Writes accounts (with the ledger's balances) and keys back to the file,
    /// keeping any accounts and keys another process added meanwhile.
    pub fn save(&self) -> Result<(), AccountsError> {
        self.save_filtered(None)
    }

    fn save_filtered(&self, revoked: Option<&str>) -> Result<(), AccountsError> {
        let _guard = self.write_lock.lock().map_err(|_| AccountsError::Invalid("lock".into()))?;
        let on_disk = AccountsFile::load(&self.path)?;
        let mut out = AccountsFile { accounts: self.list(), keys: Vec::new() };
        let known: std::collections::HashSet<String> = out.accounts.iter().map(|a| a.id.clone()).collect();
        out.accounts.extend(on_disk.accounts.into_iter().filter(|a| !known.contains(&a.id)));
        let mut hashes = std::collections::HashSet::new();
        if let Ok(keys) = self.keys.read() {
            for e in keys.values() {
                hashes.insert(e.record.hash.clone());
                out.keys.push(e.record.clone());
            }
        }
        out.keys.extend(
            on_disk.keys.into_iter().filter(|k| !hashes.contains(&k.hash) && Some(k.id.as_str()) != revoked),
        );
        out.keys.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        out.save(&self.path)?;
        if let Ok(mut m) = self.seen_mtime.lock() {
            *m = self.mtime();
        }
        Ok(())
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::ledger::InMemoryLedger;

    const LIMITS: DefaultLimits = DefaultLimits { requests_per_minute: 60, tokens_per_minute: 100_000 };

    #[test]
    fn a_key_made_offline_works_in_a_gateway_started_later_and_one_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/accounts.json");
        let mut file = AccountsFile::load(&path).unwrap();
        let (key, acct, _) = add_account(&mut file, "dev", Asset::Tnzo, 5 * pricing::ONE, KeyScope::default());
        file.save(&path).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&key), "only the hash is stored");

        let ledger = Arc::new(InMemoryLedger::new());
        let accounts = Accounts::open(path.clone(), ledger.clone(), LIMITS).unwrap();
        let e = accounts.lookup(&key).unwrap();
        assert_eq!(e.record.account, acct.id);
        assert_eq!(ledger.balance(&acct.id, Asset::Tnzo), Some(5 * pricing::ONE));
        assert!(accounts.lookup("tz-wrong").is_none());

        // Another process adds a key while this one runs.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut file = AccountsFile::load(&path).unwrap();
        let (key2, _, _) = add_account(&mut file, "dev2", Asset::Usdc, 7, KeyScope::default());
        file.save(&path).unwrap();
        assert_eq!(accounts.lookup(&key2).unwrap().asset, Asset::Usdc);

        // Spend, save, and a fresh gateway sees the new balance and both keys.
        let r = ledger.reserve(&acct.id, Asset::Tnzo, pricing::ONE).unwrap();
        ledger
            .settle(r, crate::ledger::Charge { amount: 10, provider: "p", model: "m", prompt_tokens: 0, completion_tokens: 0 })
            .unwrap();
        accounts.save().unwrap();
        let ledger2 = Arc::new(InMemoryLedger::new());
        let again = Accounts::open(path, ledger2.clone(), LIMITS).unwrap();
        assert!(again.lookup(&key).is_some() && again.lookup(&key2).is_some());
        assert_eq!(ledger2.balance(&acct.id, Asset::Tnzo), Some(5 * pricing::ONE - 10));
    }

    #[test]
    fn admin_operations() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(InMemoryLedger::new());
        let accounts = Accounts::open(dir.path().join("a.json"), ledger, LIMITS).unwrap();
        let (key, acct, rec) = accounts.create_account("x", Asset::Usdt, 100, KeyScope::default()).unwrap();
        assert!(accounts.lookup(&key).is_some());
        let (key2, _) = accounts.create_key(&acct.id, "second", KeyScope::default()).unwrap();
        assert_eq!(accounts.keys_of(&acct.id).len(), 2);
        assert!(accounts.create_key("acct_nope", "", KeyScope::default()).is_err());
        assert_eq!(accounts.credit(&acct.id, Asset::Usdt, 5).unwrap(), 105);
        assert_eq!(accounts.account(&acct.id).unwrap().balances[&Asset::Usdt], "105");
        assert!(accounts.revoke(&rec.id).unwrap());
        assert!(accounts.lookup(&key).is_none());
        assert!(accounts.lookup(&key2).is_some());
        let file = AccountsFile::load(&dir.path().join("a.json")).unwrap();
        assert_eq!(file.keys.len(), 1);
    }
}
