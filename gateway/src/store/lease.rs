//! Account leases: several gateway replicas share one PostgreSQL database, and each
//! account (its balance, holds and channels) is served by one replica at a time.
//!
//! A replica takes an account's lease on first use and loads the account's money
//! from the store into its book; every commit renews the leases of the accounts it
//! writes and fails if one was lost (the fence); accounts idle for
//! `store.lease_idle_s` are committed, dropped from the book and released, so
//! another replica can take them. A replica that dies loses its leases when they
//! expire (`store.lease_ttl_s`). A request for an account another replica holds is
//! forwarded to it when `[cluster] advertise` is set (`proxy::forward`), else
//! answered 503 with Retry-After: route keys to replicas with affinity.
//! A single gateway on SQLite runs the same code and always gets its leases.
//!
//! A lease row names the replica id and the claim token of the process holding it
//! (`store::LeaseOwner`): the fence, renewals and releases match both, so a stalled
//! process whose id a new process took over (the same data directory, once its
//! heartbeat expired) cannot write or drop the new process's accounts. A renewal
//! is never a fresh take: once another process held an account, this one's copy is
//! stale and is read again from the store ([`Claim::Taken`]).
//!
//! Lease ends are compared across replicas (a claim takes an expired lease), so
//! they are on the store's clock: callers pass their own clock's `now` and the
//! lease methods add the skew the cluster loop measured against the database
//! (`set_skew`; zero on SQLite, whose one replica compares only with itself).

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::money::book::{Book, BookError};
use crate::store::{Claim, LeaseOwner, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "account {0} is being served by another gateway replica; retry shortly or send this key to that replica"
    )]
    HeldElsewhere(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Book(#[from] BookError),
}

#[derive(Debug)]
pub struct Leases {
    /// This replica's id, kept in its data directory so that a restarted replica
    /// takes its own leases back at once.
    pub owner: String,
    /// This process's claim token on `owner` (`cluster::identity`), written on
    /// every lease it takes: only this process passes their fence.
    token: String,
    pub ttl: u64,
    /// The store's clock minus this replica's, in seconds.
    skew: AtomicI64,
    /// Account -> lease end (Unix seconds, the store's clock) as last written.
    held: RwLock<HashMap<String, u64>>,
    /// One claim at a time, so an account is never loaded twice at once.
    claiming: tokio::sync::Mutex<()>,
}

impl Leases {
    /// Leases of replica `owner` for this process, under a fresh token (see
    /// [`Leases::with_token`]).
    pub fn new(owner: String, ttl: u64) -> Self {
        Leases {
            owner,
            token: uuid::Uuid::new_v4().simple().to_string(),
            ttl: ttl.max(3),
            skew: AtomicI64::new(0),
            held: RwLock::new(HashMap::new()),
            claiming: tokio::sync::Mutex::new(()),
        }
    }

    /// The same, under `token`: the one this process claimed its replica id
    /// with in the store (`cluster::Cluster::token`), so that it takes back at once
    /// the leases a previous process of this id left.
    pub fn with_token(mut self, token: &str) -> Self {
        token.clone_into(&mut self.token);
        self
    }

    /// Who this process's leases name: the replica id and its token.
    pub fn lease_owner(&self) -> LeaseOwner<'_> {
        LeaseOwner {
            id: &self.owner,
            token: &self.token,
        }
    }

    /// The replica id stored in `dir/replica-id`, made on first use.
    pub fn replica_id(dir: &std::path::Path) -> std::io::Result<String> {
        let path = dir.join("replica-id");
        match std::fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
            Ok(_) => Err(std::io::Error::other(format!(
                "{} is empty",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                let id = format!("replica_{}", uuid::Uuid::new_v4().simple());
                let tmp = dir.join("replica-id.tmp");
                std::fs::write(&tmp, &id)?;
                std::fs::rename(&tmp, &path)?;
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }

    /// Sets the store's clock minus this replica's (seconds), as measured.
    pub fn set_skew(&self, skew: i64) {
        self.skew.store(skew, Ordering::Relaxed);
    }

    /// This replica's Unix second `local` on the store's clock: what lease ends
    /// are compared with.
    pub fn store_now(&self, local: u64) -> u64 {
        local.saturating_add_signed(self.skew.load(Ordering::Relaxed))
    }

    /// Whether this replica holds `account`'s lease at `now` (this replica's
    /// clock; no store access).
    pub fn holds(&self, account: &str, now: u64) -> bool {
        self.valid(account, now)
    }

    fn valid(&self, account: &str, now: u64) -> bool {
        let now = self.store_now(now);
        self.held
            .read()
            .get(account)
            .is_some_and(|until| *until > now + 1)
    }

    /// Makes sure this replica holds `account`'s lease, taking it (and loading the
    /// account's money into the book) if needed. Cheap when already held.
    pub async fn ensure(
        &self,
        store: &Store,
        book: &Book,
        account: &str,
        now: u64,
    ) -> Result<(), LeaseError> {
        if self.valid(account, now) {
            return Ok(());
        }
        let _one = self.claiming.lock().await;
        if self.valid(account, now) {
            return Ok(());
        }
        let lease_now = self.store_now(now);
        let until = lease_now + self.ttl;
        let claim = store
            .claim(account, self.lease_owner(), until, lease_now)
            .await?;
        let known = self.held.read().contains_key(account);
        let load = match claim {
            Claim::HeldElsewhere => return Err(LeaseError::HeldElsewhere(account.to_owned())),
            Claim::Renewed => !known || !book.has_account(account),
            // Someone else may have held it in between: the book's copy is stale.
            Claim::Taken => true,
        };
        if load {
            let s = store.account_state(account, now).await?;
            book.replace_account(account, &s.funds, s.channels, &s.keys, now)?;
        }
        {
            let mut h = self.held.write();
            h.insert(account.to_owned(), until);
        }
        Ok(())
    }

    /// Drops the accounts idle since before `before` from the book and gives up
    /// their leases, as one step against claims: a request that comes back for one
    /// of them meanwhile waits and then claims it afresh. (Released outside the
    /// claim lock, a claim could renew the still-stored row just before its DELETE
    /// ran: the replica would then serve an account with no lease row, and its next
    /// commit would fail the fence and drop that account's changes.)
    pub async fn release_idle(
        &self,
        store: &Store,
        book: &Book,
        before: u64,
    ) -> Result<Vec<String>, StoreError> {
        let _one = self.claiming.lock().await;
        let gone = {
            // No lease check in between: `valid` waits on this lock.
            let mut held = self.held.write();
            let gone = book.evict_idle(before);
            for a in &gone {
                held.remove(a);
            }
            gone
        };
        if !gone.is_empty() {
            store.release(self.lease_owner(), &gone).await?;
        }
        Ok(gone)
    }

    /// The lease end (the store's clock) a commit at `now` (this replica's
    /// clock) should renew to.
    pub fn renewal(&self, now: u64) -> u64 {
        self.store_now(now) + self.ttl
    }

    /// Records renewed leases (after a fenced commit).
    pub fn renewed(&self, accounts: &[String], until: u64) {
        {
            let mut h = self.held.write();
            for a in accounts {
                if let Some(u) = h.get_mut(a) {
                    *u = until;
                }
            }
        }
    }

    /// Accounts whose lease ends within half its length: the committer renews them.
    pub fn due(&self, now: u64) -> Vec<String> {
        let now = self.store_now(now);
        self.held
            .read()
            .iter()
            .filter(|(_, u)| **u <= now + self.ttl / 2)
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Forgets accounts (released or lost).
    pub fn forget(&self, accounts: &[String]) {
        {
            let mut h = self.held.write();
            for a in accounts {
                h.remove(a);
            }
        }
    }

    pub fn held(&self) -> Vec<String> {
        self.held.read().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica whose clock runs an hour behind the store's renews its leases to
    /// the store's hour, so another replica compares like with like.
    #[test]
    fn lease_ends_are_on_the_stores_clock() {
        let l = Leases::new("r1".into(), 30);
        assert_eq!(l.store_now(1_000), 1_000, "no skew measured: its own clock");
        assert_eq!(l.renewal(1_000), 1_030);
        l.set_skew(3_600);
        assert_eq!(l.store_now(1_000), 4_600);
        assert_eq!(l.renewal(1_000), 4_630);
        l.set_skew(-5_000);
        assert_eq!(l.store_now(1_000), 0, "never below zero");
        l.held.write().insert("a".into(), 4_630);
        l.set_skew(3_600);
        assert!(l.holds("a", 1_000));
        assert!(
            l.due(1_020).contains(&"a".to_owned()),
            "within half its length"
        );
        assert!(!l.holds("a", 1_029));
    }
}
