//! Keeping a replica's memory in step with the store other replicas write:
//! providers (registrations, verdicts, liveness), bans, key revocations and bond
//! stakes. A hint (`NOTIFY kind:id`) makes this replica re-read the one row it
//! names; the reconcile re-reads what changed since its last pass (and all bans
//! and bonds), so a hint that never came costs at most `reconcile_s`. A forged hint
//! changes nothing: only the stored row is applied, through the same checks as a
//! registration.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::accounts::Accounts;
use crate::cluster::Cluster;
use crate::providers::registry::{Applied, Registry};
use crate::store::cluster::ReplicaClaim;
use crate::store::lease::Leases;
use crate::store::{Store, StoreError};

/// Margin subtracted from "since the last pass" (clock steps, slow commits).
const OVERLAP_S: u64 = 5;
/// Most heartbeats waiting for the batched write (providers, not heartbeats).
const MAX_HEARD: usize = 100_000;

/// What the sync loop reads and writes.
#[derive(Clone)]
pub struct Shared {
    pub cluster: Arc<Cluster>,
    pub registry: Arc<Registry>,
    pub accounts: Arc<Accounts>,
    /// This replica's leases: their clock skew against the store is measured at
    /// each heartbeat.
    pub leases: Arc<Leases>,
    pub store: Store,
    /// Probes a provider another replica registered (it is routed to only once
    /// this replica reached it too).
    pub client: reqwest::Client,
    /// Heartbeats this replica got since the last batched write: provider ->
    /// Unix second.
    pub heard: Arc<Mutex<HashMap<String, u64>>>,
}

impl Shared {
    /// Records a heartbeat (or registration) this replica got, for the next
    /// batched liveness write.
    pub fn heard(&self, provider: &str, unix: u64) {
        let mut h = self.heard.lock();
        if h.len() < MAX_HEARD || h.contains_key(provider) {
            h.insert(provider.to_owned(), unix);
        }
    }

    /// Applies one hint: re-reads the row it names.
    pub async fn apply_hint(&self, payload: &str) -> Result<(), StoreError> {
        let Some((kind, id)) = payload.split_once(':') else {
            return Ok(());
        };
        match kind {
            "provider" => {
                let banned = self.store.is_banned_stored(id).await?;
                self.registry.sync_ban(id, banned);
                if let Some(p) = self.store.registered_one(id).await? {
                    self.apply_provider(p);
                }
            }
            "key" if self.store.key_revoked(id).await? => {
                self.accounts.drop_cached(id);
            }
            "bond" => self.sync_bonds().await?,
            _ => {}
        }
        Ok(())
    }

    /// A heartbeat came from provider `id`, unknown here: it may have registered
    /// with another replica a moment ago, so its row is read, unless the id is
    /// not a key's DID, was found missing recently, or too many were looked up
    /// this second (`misses`). True when it is known now.
    pub async fn look_up_unknown(&self, id: &str) -> Result<bool, StoreError> {
        if !self.cluster.misses.lock().may_look_up(id, Instant::now()) {
            return Ok(false);
        }
        self.apply_hint(&format!("provider:{id}")).await?;
        let known = self.registry.get(id).is_some();
        if !known {
            self.cluster.misses.lock().missed(id, Instant::now());
        }
        Ok(known)
    }

    fn apply_provider(&self, p: crate::store::registry::StoredProvider) {
        let id = p.registration.provider_id.clone();
        match self
            .registry
            .apply_stored(p.registration, p.attestation, p.last_seen)
        {
            Ok(Applied::Added | Applied::Replaced) => {
                tracing::info!(provider = %id, "provider registered with another replica");
                self.probe(id);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(provider = %id, error = %e, "stored provider not applied"),
        }
    }

    /// Reaches a provider another replica registered, off the loop.
    fn probe(&self, id: String) {
        let (registry, client) = (self.registry.clone(), self.client.clone());
        tokio::spawn(async move {
            let Some(entry) = registry.get(&id) else {
                return;
            };
            if crate::providers::attestation::probe_health(&client, &entry.info.endpoint).await {
                registry.mark_reached(&entry);
            }
        });
    }

    async fn sync_bonds(&self) -> Result<(), StoreError> {
        for b in self.store.bonds().await? {
            crate::tasks::bonds::publish(&self.registry, &b);
        }
        Ok(())
    }

    /// One reconcile pass over what changed at or after `since` (Unix seconds).
    pub async fn reconcile(&self, since: u64) -> Result<(), StoreError> {
        let since = since.saturating_sub(OVERLAP_S);
        for p in self.store.changed_since(since).await? {
            self.apply_provider(p);
        }
        let bans: BTreeSet<String> = self.store.bans().await?.into_iter().collect();
        for id in self.registry.sync_bans(&bans) {
            tracing::info!(provider = %id, banned = self.registry.is_banned(&id), "ban state from another replica");
        }
        for key in self.store.revoked_since(since).await? {
            self.accounts.drop_cached(&key);
        }
        self.sync_slashes().await?;
        self.sync_bonds().await
    }

    /// Takes the slash records other replicas made, so that every replica shows
    /// every slash (`/admin/slashes`, the providers' view) and counts it in the
    /// provider's stake: one count per pass, the rows only when it changed.
    pub async fn sync_slashes(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let count = self.store.slash_count().await?;
        if self.cluster.slash_rows.load(Ordering::Relaxed) == count {
            return Ok(());
        }
        let learnt = self.registry.learn_slashes(self.store.all_slashes().await?);
        if learnt > 0 {
            tracing::info!(slashes = learnt, "slash records from another replica");
        }
        self.cluster.slash_rows.store(count, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the heartbeats heard since the last call in one batch.
    pub async fn flush_heard(&self) -> Result<(), StoreError> {
        let heard: Vec<(String, u64)> = std::mem::take(&mut *self.heard.lock())
            .into_iter()
            .collect();
        if let Err(e) = self.store.flush_seen(&heard).await {
            let mut h = self.heard.lock();
            for (id, at) in heard {
                h.entry(id).or_insert(at);
            }
            return Err(e);
        }
        Ok(())
    }

    /// The store's clock now: the reconcile's marks are on it, as are the
    /// stamps it compares them with (`changed`, `revoked`), so a replica whose
    /// clock is off misses no change another replica stamped.
    async fn store_now(&self) -> Result<u64, StoreError> {
        self.store.db_now().await
    }

    /// Publishes this replica's address every `heartbeat_s`, applies hints as
    /// they come (PostgreSQL) and reconciles every `reconcile_s`, until `cancel`;
    /// then removes this replica's address. A replica whose id another process
    /// took over (it was silent past the liveness window) cancels `cancel`: it
    /// stops rather than share a lease owner with that process.
    pub async fn run(self, store_url: String, cancel: CancellationToken) {
        let cfg = self.cluster.section.clone();
        let mut beat = tokio::time::interval(Duration::from_secs(cfg.heartbeat_s.max(1)));
        // The first pass one period from now: at start `since` is now, so an
        // immediate pass would find nothing the start-up load did not.
        let period = Duration::from_secs(cfg.reconcile_s.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut listener = if self.store.is_sqlite() {
            None
        } else {
            listen(&store_url).await
        };
        let mut since = self.registry.unix_now();
        match self.store_now().await {
            Ok(now) => since = now,
            Err(e) => tracing::warn!(error = %e, "reading the store's clock"),
        }
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = beat.tick() => {
                    if !self.beat().await {
                        cancel.cancel();
                        break;
                    }
                }
                _ = tick.tick() => {
                    let Ok(now) = self.store_now().await else {
                        tracing::warn!("reading the store's clock failed; reconciling at the next tick");
                        continue;
                    };
                    if let Err(e) = self.flush_heard().await {
                        tracing::warn!(error = %e, "writing heartbeats failed; retrying");
                    }
                    match self.reconcile(since).await {
                        Ok(()) => since = now,
                        Err(e) => tracing::warn!(error = %e, "cluster reconcile failed; retrying"),
                    }
                    if listener.is_none() && !self.store.is_sqlite() {
                        listener = listen(&store_url).await;
                    }
                }
                hint = recv(&mut listener) => match hint {
                    Ok(Some(payload)) => {
                        if let Err(e) = self.apply_hint(&payload).await {
                            tracing::warn!(error = %e, "applying a cluster hint failed; the reconcile will");
                        }
                    }
                    // The connection dropped and came back: hints may be lost.
                    Ok(None) => tick.reset_immediately(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster listener failed; reconnecting at the next reconcile");
                        listener = None;
                    }
                },
            }
        }
        if !self.store.is_sqlite()
            && let Err(e) = self
                .store
                .drop_replica(&self.cluster.replica, self.cluster.token())
                .await
        {
            tracing::warn!(error = %e, "removing this replica's address");
        }
    }

    /// Says this replica is alive (PostgreSQL), publishing its address, and
    /// measures its clock against the store's. False when another process holds
    /// this replica's id now.
    async fn beat(&self) -> bool {
        if self.store.is_sqlite() {
            return true;
        }
        let c = &self.cluster;
        let r = self
            .store
            .claim_replica(
                &c.replica,
                c.token(),
                &c.section.advertise,
                c.liveness_window_s(),
            )
            .await;
        match r {
            Ok(ReplicaClaim::Claimed) => {}
            Ok(ReplicaClaim::InUse { age }) => {
                tracing::error!(
                    replica = %c.replica,
                    age_s = age,
                    "another gateway process took over this replica's id (this one was silent too long); stopping"
                );
                return false;
            }
            Err(e) => tracing::warn!(error = %e, "publishing this replica's heartbeat failed"),
        }
        match measure_skew(&self.store, || self.registry.unix_now()).await {
            Ok(skew) => self.leases.set_skew(skew),
            Err(e) => tracing::warn!(error = %e, "reading the store's clock failed"),
        }
        true
    }
}

/// The store's clock minus this replica's (seconds), read once.
pub async fn measure_skew(store: &Store, local: impl Fn() -> u64) -> Result<i64, StoreError> {
    let before = local();
    let db = store.db_now().await?;
    let after = local();
    // The middle of the round trip, in whole seconds.
    let mid = before / 2 + after / 2 + (before % 2 + after % 2) / 2;
    Ok(i64::try_from(db).unwrap_or(i64::MAX) - i64::try_from(mid).unwrap_or(i64::MAX))
}

async fn listen(url: &str) -> Option<sqlx::postgres::PgListener> {
    let r = async {
        let mut l = sqlx::postgres::PgListener::connect(url).await?;
        l.listen(crate::store::cluster::CHANNEL).await?;
        Ok::<_, sqlx::Error>(l)
    }
    .await;
    match r {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "cluster listener not connected; relying on the reconcile");
            None
        }
    }
}

/// The next hint's payload; `Ok(None)` after a reconnection. Pends forever
/// without a listener.
async fn recv(
    listener: &mut Option<sqlx::postgres::PgListener>,
) -> Result<Option<String>, sqlx::Error> {
    match listener {
        Some(l) => Ok(l.try_recv().await?.map(|n| n.payload().to_owned())),
        None => std::future::pending().await,
    }
}
