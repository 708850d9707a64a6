//! The bonds' background work, once a second on the registry's clock: apply each
//! new slash record to its bond (once per record id; the registry queues the
//! records not applied yet, so a tick costs nothing when none is new), return matured unbonding and
//! providers' earnings to their owners (taking the owners' leases when needed),
//! pay the stakers' pool out every `payout_interval`, and keep the registry's
//! routing stake equal to the bonds.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::money::bonds::Bond;
use crate::money::book::Book;
use crate::providers::registry::Registry;
use crate::store::Store;
use crate::store::lease::Leases;

/// Tells routing a bond's stake and whether it is unbonding.
pub fn publish(registry: &Registry, b: &Bond) {
    registry.set_bond(&b.provider_id, b.bonded, b.unbonding > 0);
}

/// Everything the loop needs.
#[derive(Clone)]
pub struct BondsTask {
    pub book: Arc<Book>,
    pub store: Store,
    pub leases: Arc<Leases>,
    pub registry: Arc<Registry>,
    pub payout_interval_s: u64,
}

impl BondsTask {
    /// Applies the slash records the registry queued since the last call; returns
    /// how many moved money. Records that failed (the book's lock) go back.
    pub fn apply_slashes(&self) -> usize {
        let mut n = 0;
        let mut failed = Vec::new();
        for s in self.registry.take_unapplied_slashes() {
            match self
                .book
                .apply_slash(&s.id, &s.provider, s.reason.ppm(), s.at)
            {
                Ok(Some((Some(b), taken))) => {
                    tracing::warn!(provider = %b.provider_id, slash = %s.id, amount = %taken, bonded = %b.bonded, "slash moved from the bond to the treasury");
                    publish(&self.registry, &b);
                    n += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, slash = %s.id, "applying a slash to its bond");
                    failed.push(s);
                }
            }
        }
        if !failed.is_empty() {
            self.registry.requeue_unapplied_slashes(failed);
        }
        n
    }

    /// Returns matured unbonding and earnings to owners, taking the leases of
    /// owners not in this book first.
    pub async fn settle_owners(&self, now: u64) {
        let tick = match self.book.bond_tick(now) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "bond tick");
                return;
            }
        };
        for b in &tick.changed {
            publish(&self.registry, b);
        }
        if tick.owners_needed.is_empty() {
            return;
        }
        for owner in &tick.owners_needed {
            if let Err(e) = self
                .leases
                .ensure(&self.store, &self.book, owner, now)
                .await
            {
                tracing::debug!(%owner, error = %e, "bond owner served elsewhere for now");
            }
        }
        match self.book.bond_tick(now) {
            Ok(t) => {
                for b in &t.changed {
                    publish(&self.registry, b);
                }
            }
            Err(e) => tracing::error!(error = %e, "bond tick"),
        }
    }

    /// Pays the stakers' pools out (see [`Book::pay_stakers`]) to the bonds of
    /// providers that are registered (in memory), reached and not banned: a bond
    /// on a key that serves nobody earns nothing.
    pub fn pay_stakers(&self) {
        match self.book.pay_stakers(|id| self.registry.earns_staking(id)) {
            Ok(paid) => {
                for (provider, asset, amount) in paid {
                    tracing::info!(%provider, asset = asset.as_str(), %amount, "stakers' share paid");
                }
            }
            Err(e) => tracing::error!(error = %e, "paying the stakers' pool"),
        }
    }

    /// Runs until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        for b in self.book.bonds() {
            publish(&self.registry, &b);
        }
        let mut last_payout = self.registry.unix_now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = cancel.cancelled() => break,
            }
            let now = self.registry.unix_now();
            self.apply_slashes();
            self.settle_owners(now).await;
            if now.saturating_sub(last_payout) >= self.payout_interval_s.max(1) {
                self.pay_stakers();
                last_payout = now;
            }
        }
    }
}
