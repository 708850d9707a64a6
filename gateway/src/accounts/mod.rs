//! Accounts and API keys, kept in the SQL store (see [`crate::store`]).
//!
//! Keys are stored as SHA-256 hashes; the plaintext is shown once, when the key is
//! made. `tenzro-gateway keys create` writes a funded development account straight
//! into the store; a running gateway finds a key it does not know yet in the store
//! on first use. Balances live in the book ([`crate::money::book`]) and reach the
//! store by group commit.

pub mod delegation;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

pub use crate::store::records::{
    AccountRecord, Ancestor, DefaultLimits, KeyRecord, KeyScope, Operation, RoutingPrefs,
    generate_key, hash_key, new_account, new_key,
};

use crate::clock::{SharedClock, unix_now};
use crate::money::book::{ASSETS, Book};
use crate::money::scope::SpendLimits;
use crate::pricing::Asset;
use crate::ratelimit::{ChainLimiters, LimiterRegistry, Rates};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown account {0}")]
    UnknownAccount(String),
    #[error("{0}")]
    Invalid(String),
    /// A key was made under a key revoked meanwhile (it is revoked too).
    #[error("key {0}, which this key is delegated from, was revoked")]
    DelegatorRevoked(String),
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

/// Makes a funded account with one key in the store, stamped with the system's
/// time (the `keys create` command, before any gateway runs); returns the key's
/// plaintext.
pub async fn create_in_store(
    store: &Store,
    name: &str,
    asset: Asset,
    balance: u128,
    scope: KeyScope,
    identity: Option<String>,
) -> Result<(String, AccountRecord, KeyRecord), AccountsError> {
    create_in_store_at(store, name, asset, balance, scope, identity, unix_now()).await
}

/// [`create_in_store`] stamped `now` (Unix seconds of the gateway's clock).
async fn create_in_store_at(
    store: &Store,
    name: &str,
    asset: Asset,
    balance: u128,
    scope: KeyScope,
    identity: Option<String>,
    now: u64,
) -> Result<(String, AccountRecord, KeyRecord), AccountsError> {
    let account = new_account(name, asset, identity, now);
    let (key, record) = new_key(&account.id, name, scope, now);
    store.put_account(&account, Some((asset, balance))).await?;
    store.put_key(&record).await?;
    Ok((key, account, record))
}

/// How many times a key read from the store is read again when a revocation
/// came between the read and its caching (`Accounts::lookup`).
const LOOKUP_PASSES: usize = 4;

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
    /// The key's own requests and tokens per minute (its scope, else the
    /// defaults), for limits kept elsewhere (A2A task creation).
    pub rates: Rates,
    /// The buckets every A2A message of this key (and of the keys above it)
    /// takes one from, apart from the chat route's (`crate::a2a`). Made with the
    /// entry, so that a message racing a revocation uses the revoked entry's
    /// buckets and never makes new ones in the registry.
    pub a2a_sends: ChainLimiters,
}

/// The accounts and keys a running gateway serves.
#[derive(Debug)]
pub struct Accounts {
    store: Store,
    book: Arc<Book>,
    defaults: DefaultLimits,
    /// The gateway's clock: creation and revocation stamps, and the rate limits.
    clock: SharedClock,
    /// The rate-limit buckets of every key, by key id, shared down each chain.
    limiters: LimiterRegistry,
    /// The A2A send buckets of every key (`crate::a2a`), forgotten with the key.
    a2a_sends: LimiterRegistry,
    keys: RwLock<HashMap<String, Arc<KeyEntry>>>,
    /// Bumped, under `keys`' write lock, by every revocation (this replica's,
    /// after its store write, or another's it learnt of). A key read from the
    /// store is cached only when no revocation came between that read and the
    /// caching; otherwise it is read again. Without it, a key's first use racing
    /// its revocation could cache the key as it was before and serve it until
    /// restart.
    revocations: AtomicU64,
    accounts: RwLock<BTreeMap<String, AccountRecord>>,
}

impl Accounts {
    /// The accounts and keys loaded from the store (their funds go to the book).
    pub fn new(
        store: Store,
        book: Arc<Book>,
        defaults: DefaultLimits,
        loaded: (Vec<AccountRecord>, Vec<KeyRecord>),
        clock: SharedClock,
    ) -> Self {
        let (accounts, keys) = loaded;
        let a = Accounts {
            store,
            book,
            defaults,
            limiters: LimiterRegistry::new(clock.clone()),
            a2a_sends: LimiterRegistry::new(clock.clone()),
            clock,
            keys: RwLock::new(HashMap::new()),
            revocations: AtomicU64::new(0),
            accounts: RwLock::new(BTreeMap::new()),
        };
        a.accounts
            .write()
            .extend(accounts.into_iter().map(|acct| (acct.id.clone(), acct)));
        for k in keys {
            if let Err(e) = a.insert_key(k) {
                tracing::warn!(error = %e, "skipping a stored key");
            }
        }
        a
    }

    /// Caches a key the gateway made or loaded at start (no revocation can race
    /// it: nobody has it yet, or nothing runs yet).
    fn insert_key(&self, record: KeyRecord) -> Result<Arc<KeyEntry>, AccountsError> {
        // Without a `seen` count the insert always caches.
        self.insert_key_if(record, None)?
            .ok_or_else(|| AccountsError::Invalid("key not cached".into()))
    }

    /// Caches `record` with its rate-limit buckets, unless `seen` (the
    /// revocation count read before the record was read from the store) is no
    /// longer current: then `None`, and the caller reads the store again.
    fn insert_key_if(
        &self,
        record: KeyRecord,
        seen: Option<u64>,
    ) -> Result<Option<Arc<KeyEntry>>, AccountsError> {
        let (asset, account_identity) = self
            .accounts
            .read()
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
        let identity = record.identity.clone().or(account_identity);
        let did = identity.as_deref().and_then(|d| d.parse().ok());
        self.book
            .set_ancestors(&record.id, record.scope.shared_windows());
        let mut keys = self.keys.write();
        if seen.is_some_and(|s| s != self.revocations.load(Ordering::Acquire)) {
            return Ok(None);
        }
        // The buckets are made under the lock, so that a revocation (which
        // forgets them under it) never races their making.
        let entry = Arc::new(KeyEntry {
            limiters: self.limiters.chain(&record.id, own, &up),
            a2a_sends: self.a2a_sends.chain(&record.id, own, &up),
            rates: own,
            asset,
            identity,
            did,
            limits: record.scope.spend_limits(),
            record,
        });
        keys.insert(entry.record.hash.clone(), entry.clone());
        Ok(Some(entry))
    }

    /// The entry for a plaintext key; a key this gateway has not seen is looked up
    /// in the store (another process may have made it).
    pub async fn lookup(&self, key: &str) -> Result<Option<Arc<KeyEntry>>, AccountsError> {
        let hash = hash_key(key);
        // A pass that loses to a revocation reads the store again. Revocations
        // are admin actions, so losing several in a row means a burst of them:
        // the request fails (a 500 to retry) rather than waiting it out.
        for _ in 0..LOOKUP_PASSES {
            if let Some(e) = self.keys.read().get(&hash) {
                return Ok(Some(e.clone()));
            }
            let Some((seen, record)) = self.read_for_cache(&hash).await? else {
                return Ok(None);
            };
            if let Some(entry) = self.insert_key_if(record, Some(seen))? {
                return Ok(Some(entry));
            }
        }
        Err(AccountsError::Invalid(
            "the key lookup lost to concurrent key revocations; retry".into(),
        ))
    }

    /// A key by its hash from the store (its account into the accounts), with the
    /// revocation count read before the store was: the `seen` that
    /// [`Accounts::insert_key_if`] caches it under.
    async fn read_for_cache(&self, hash: &str) -> Result<Option<(u64, KeyRecord)>, AccountsError> {
        let seen = self.revocations.load(Ordering::Acquire);
        // A store error is the gateway's failure (a 500), not an unknown key.
        let Some((record, account, _funds)) = self.store.key_by_hash(hash).await? else {
            return Ok(None);
        };
        // The account's money enters the book when its lease is taken.
        self.accounts
            .write()
            .entry(account.id.clone())
            .or_insert(account);
        Ok(Some((seen, record)))
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
        let now = self.clock.unix();
        let (key, acct, rec) =
            create_in_store_at(&self.store, name, asset, balance, scope, identity, now).await?;
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
        self.accounts.write().insert(acct.id.clone(), acct.clone());
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
        if !self.accounts.read().contains_key(account) {
            return Err(AccountsError::UnknownAccount(account.to_owned()));
        }
        let (key, mut rec) = new_key(account, name, scope, self.clock.unix());
        rec.identity = identity;
        let mut seen = self.revocations.load(Ordering::Acquire);
        self.store.put_key(&rec).await?;
        // A key delegated from one revoked meanwhile: the revocation's sweep of
        // the delegated keys ran before this key was stored, or it sees it. Read
        // after the write, one of the two always holds. The key is cached only
        // when no revocation came between that read and the caching (as in
        // `lookup`); after a few lost passes it is left to its first use.
        for _ in 0..LOOKUP_PASSES {
            for a in &rec.scope.ancestors {
                if self.store.key_revoked(&a.key_id).await? {
                    self.store.revoke_key(&rec.id, self.clock.unix()).await?;
                    return Err(AccountsError::DelegatorRevoked(a.key_id.clone()));
                }
            }
            if self.insert_key_if(rec.clone(), Some(seen))?.is_some() {
                break;
            }
            seen = self.revocations.load(Ordering::Acquire);
        }
        Ok((key, rec))
    }

    /// Revokes a key by its public id, with every key it delegated to (directly or
    /// through other agents); true when one was revoked.
    pub async fn revoke(&self, key_id: &str) -> Result<bool, AccountsError> {
        // Out of the cache at once, and again after the store write: a first use
        // of the key that read the store before that write finds the revocation
        // count moved and reads it again (`lookup`).
        let removed = self.drop_cached(key_id);
        let now = self.clock.unix();
        let (stored, _) = self.store.revoke_key_and_delegated(key_id, now).await?;
        self.drop_cached(key_id);
        // Other replicas drop it from their caches (`crate::cluster`).
        self.store.notify("key", key_id).await;
        Ok(removed || stored)
    }

    /// Drops a revoked key (and the keys it delegated to) from this replica's
    /// cache, with their buckets; true when one was cached. The store stays as
    /// it is (another replica revoked it there, or [`Accounts::revoke`] does).
    pub fn drop_cached(&self, key_id: &str) -> bool {
        let mut keys = self.keys.write();
        self.revocations.fetch_add(1, Ordering::AcqRel);
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
        self.a2a_sends.forget(&gone);
        !gone.is_empty()
    }

    pub fn credit(&self, account: &str, asset: Asset, amount: u128) -> Result<u128, AccountsError> {
        if !self.accounts.read().contains_key(account) {
            return Err(AccountsError::UnknownAccount(account.to_owned()));
        }
        self.book
            .credit(account, asset, amount)
            .map_err(|e| AccountsError::Invalid(e.to_string()))
    }

    pub fn account(&self, id: &str) -> Option<AccountRecord> {
        self.accounts
            .read()
            .get(id)
            .cloned()
            .map(|a| self.with_balances(a))
    }

    pub fn list(&self) -> Vec<AccountRecord> {
        let accts: Vec<AccountRecord> = self.accounts.read().values().cloned().collect::<Vec<_>>();
        accts.into_iter().map(|a| self.with_balances(a)).collect()
    }

    pub fn keys_of(&self, account: &str) -> Vec<KeyRecord> {
        self.keys
            .read()
            .values()
            .filter(|e| e.record.account == account)
            .map(|e| e.record.clone())
            .collect()
    }

    /// Keys of accounts that belong to `identity`.
    pub fn keys_of_identity(&self, identity: &str) -> Vec<KeyRecord> {
        self.keys
            .read()
            .values()
            .filter(|e| e.identity.as_deref() == Some(identity))
            .map(|e| e.record.clone())
            .collect()
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

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use super::*;
    use crate::money::book::BookConfig;

    async fn accounts(dir: &std::path::Path) -> (Store, Accounts) {
        let url = format!("sqlite://{}", dir.join("gateway.db").display());
        let store = Store::open(&url).await.unwrap();
        let book = Arc::new(Book::new(BookConfig::default()));
        let limits = DefaultLimits {
            requests_per_minute: 60,
            tokens_per_minute: 1000,
        };
        let clock = crate::clock::SystemClock::shared();
        let a = Accounts::new(store.clone(), book, limits, (Vec::new(), Vec::new()), clock);
        (store, a)
    }

    /// A funded account's first key, in the store only: the delegator.
    async fn parent_key(store: &Store) -> (String, AccountRecord, KeyRecord) {
        create_in_store(store, "p", Asset::Tnzo, 5, KeyScope::default(), None)
            .await
            .unwrap()
    }

    /// The scope of a key delegated from `parent` with nothing narrowed.
    fn delegated_from(parent: &str) -> KeyScope {
        KeyScope {
            ancestors: vec![Ancestor {
                key_id: parent.to_owned(),
                max_daily_spend: None,
            }],
            ..KeyScope::default()
        }
    }

    #[tokio::test]
    async fn an_unknown_key_is_none_and_a_store_failure_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = accounts(dir.path()).await;
        assert!(a.lookup("tz-nobody").await.unwrap().is_none());
        let (key, _, _) = create_in_store(&store, "n", Asset::Tnzo, 5, KeyScope::default(), None)
            .await
            .unwrap();
        assert!(
            a.lookup(&key).await.unwrap().is_some(),
            "found in the store"
        );
        store.close().await;
        match a.lookup("tz-other").await {
            Err(AccountsError::Store(_)) => {}
            other => panic!("a closed store must be an error, not an unknown key: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_revoked_keys_a2a_send_buckets_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = accounts(dir.path()).await;
        let (key, _, _) = create_in_store(&store, "r", Asset::Tnzo, 5, KeyScope::default(), None)
            .await
            .unwrap();
        let entry = a.lookup(&key).await.unwrap().unwrap();
        let id = entry.record.id.clone();
        entry.a2a_sends.check(0).unwrap();
        assert_eq!(a.a2a_sends.len(), 1);
        assert!(a.revoke(&id).await.unwrap());
        assert_eq!(
            a.a2a_sends.len(),
            0,
            "a revoked key's buckets must not stay"
        );
    }

    #[tokio::test]
    async fn a_first_use_racing_a_revocation_does_not_cache_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = accounts(dir.path()).await;
        let (key, _, rec) = create_in_store(&store, "r", Asset::Tnzo, 5, KeyScope::default(), None)
            .await
            .unwrap();
        // `lookup`'s two steps, with the revocation between its store read and
        // its caching.
        let (seen, record) = a.read_for_cache(&hash_key(&key)).await.unwrap().unwrap();
        assert!(a.revoke(&rec.id).await.unwrap());
        assert!(
            a.insert_key_if(record, Some(seen)).unwrap().is_none(),
            "a key read before its revocation must not be cached after it"
        );
        assert!(
            a.lookup(&key).await.unwrap().is_none(),
            "the revoked key is refused"
        );
    }

    #[tokio::test]
    async fn a_key_made_under_a_revoked_key_is_refused_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = accounts(dir.path()).await;
        let (key, acct, parent) = parent_key(&store).await;
        assert!(a.lookup(&key).await.unwrap().is_some());
        // The parent's revocation (and its sweep of delegated keys) lands in the
        // store while the child is being made.
        assert!(store.revoke_key(&parent.id, 1).await.unwrap());
        let scope = delegated_from(&parent.id);
        match a.create_key(&acct.id, "child", scope, None).await {
            Err(AccountsError::DelegatorRevoked(id)) => assert_eq!(id, parent.id),
            other => panic!("a key under a revoked key must be refused: {other:?}"),
        }
        assert!(
            a.keys.read().values().all(|e| e.record.name != "child"),
            "the refused key is not cached"
        );
        let live = store.load().await.unwrap().keys;
        assert!(
            live.iter().all(|k| k.name != "child"),
            "the refused key is revoked in the store: {live:?}"
        );
    }

    #[tokio::test]
    async fn revoking_a_key_revokes_its_delegates_in_the_store_and_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = accounts(dir.path()).await;
        let (_, acct, parent) = parent_key(&store).await;
        a.accounts.write().insert(acct.id.clone(), acct.clone());
        let scope = delegated_from(&parent.id);
        let (child, _) = a.create_key(&acct.id, "child", scope, None).await.unwrap();
        assert!(a.lookup(&child).await.unwrap().is_some());
        assert!(a.revoke(&parent.id).await.unwrap());
        assert!(
            a.lookup(&child).await.unwrap().is_none(),
            "the delegate is revoked"
        );
        assert!(store.load().await.unwrap().keys.is_empty());
    }
}
