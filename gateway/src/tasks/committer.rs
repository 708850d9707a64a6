//! Group commit: the book's dirty rows reach the store in one transaction per
//! interval, never one write per chunk. A failed commit is put back and retried.
//! The same loop settles disputes whose challenge window has passed and closes
//! expired channels, for the accounts this replica holds; [`sweep`] takes the
//! leases of accounts whose channels are due but that no replica holds (idle,
//! or their replica died), so they settle too.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::money::book::Book;
use crate::providers::registry::Registry;
use crate::store::lease::Leases;
use crate::store::{Fence, Store, StoreError};

/// Commits whatever changed; returns the number of rows written.
pub async fn commit_once(book: &Book, store: &Store) -> Result<usize, StoreError> {
    let batch = book.take_dirty();
    if batch.is_empty() {
        return Ok(0);
    }
    let rows = batch.accounts.len()
        + batch.channels.len()
        + batch.requests.len()
        + batch.pools.len()
        + batch.earnings.len();
    match store.commit(&batch).await {
        Ok(()) => {
            book.committed(&batch);
            Ok(rows)
        }
        Err(e) => {
            book.requeue(batch);
            Err(e)
        }
    }
}

/// The once-a-second part of a commit: renewing leases that are due (a commit
/// renews those it writes anyway) and, when set, releasing accounts idle that long.
#[derive(Debug, Clone, Copy)]
pub struct Housekeeping {
    pub release_idle: Option<u64>,
}

/// One commit under leases: renews the leases due, writes the batch fenced by
/// this replica's leases (an account whose lease was lost is dropped from the book
/// with its unwritten changes, and the rest retried), and every `idle_s` releases
/// accounts nobody used since.
pub async fn commit_leased(
    book: &Book,
    store: &Store,
    leases: &Leases,
    now: u64,
    housekeeping: Option<Housekeeping>,
) -> Result<usize, StoreError> {
    let until = leases.renewal(now);
    // Lease ends are compared on the store's clock (`store::lease`).
    let lease_now = leases.store_now(now);
    let due = if housekeeping.is_some() {
        leases.due(now)
    } else {
        Vec::new()
    };
    for account in due {
        // A renewal, never a fresh take: if another process took the lease in
        // between (even if it gave it back), this book's copy is stale.
        match store.renew(&account, leases.lease_owner(), until).await {
            Ok(true) => leases.renewed(std::slice::from_ref(&account), until),
            Ok(false) => {
                tracing::error!(%account, "lease lost to another replica; dropping the account from this book");
                book.drop_account(&account);
                leases.forget(&[account]);
            }
            Err(e) => return Err(e),
        }
    }
    let batch = book.take_dirty();
    let mut rows = 0;
    if !batch.is_empty() {
        rows = batch.accounts.len()
            + batch.channels.len()
            + batch.requests.len()
            + batch.pools.len()
            + batch.earnings.len();
        let mut touched: Vec<String> = batch
            .accounts
            .iter()
            .map(|a| a.0.clone())
            .chain(batch.channels.iter().map(|c| c.payer.clone()))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        match store
            .commit_fenced(
                &batch,
                Some(Fence {
                    owner: leases.lease_owner(),
                    until,
                    now: lease_now,
                }),
            )
            .await
        {
            Ok(()) => {
                book.committed(&batch);
                leases.renewed(&touched, until);
            }
            Err(StoreError::LeaseLost(account)) => {
                tracing::error!(%account, "lease lost to another replica; its unwritten changes are dropped");
                book.requeue(batch);
                book.drop_account(&account);
                leases.forget(&[account]);
                return Ok(0);
            }
            Err(e) => {
                book.requeue(batch);
                return Err(e);
            }
        }
    }
    if let Some(Housekeeping {
        release_idle: Some(idle),
    }) = housekeeping
    {
        leases
            .release_idle(store, book, now.saturating_sub(idle))
            .await?;
    }
    Ok(rows)
}

/// Writes slashes recorded since the last call.
pub async fn save_slashes(registry: &Registry, store: &Store) -> Result<(), StoreError> {
    let new = registry.take_unsaved_slashes();
    for (i, s) in new.iter().enumerate() {
        if let Err(e) = store.put_slash(s).await {
            registry.requeue_slashes(new[i..].to_vec());
            return Err(e);
        }
    }
    Ok(())
}

/// Settles the disputes whose window has passed and closes the expired channels
/// of the accounts in the book (their next commit writes them).
pub fn settle_due(book: &Book, now: u64) {
    match book.finish_disputes(now) {
        Ok(closed) => {
            for (id, split) in closed {
                tracing::info!(channel = %id, provider_net = %split.provider_net, refund = %split.refund, "dispute settled");
            }
        }
        Err(e) => tracing::error!(error = %e, "settling disputes"),
    }
    match book.expire_channels(now) {
        Ok(closed) => {
            for (id, split) in closed {
                tracing::info!(channel = %id, provider_net = %split.provider_net, refund = %split.refund, "expired channel closed at its latest state");
            }
        }
        Err(e) => tracing::error!(error = %e, "closing expired channels"),
    }
}

/// Takes the leases of accounts whose channels are due (a dispute past its window,
/// an open channel past its expiry) and that are not in this book, loading them so
/// that the committer loop settles them. An account another replica holds is left
/// to it. Returns the accounts taken.
pub async fn sweep_once(
    book: &Book,
    store: &Store,
    leases: &Leases,
    now: u64,
) -> Result<Vec<String>, StoreError> {
    let mut taken = Vec::new();
    for account in store.accounts_to_settle(now).await? {
        if book.has_account(&account) {
            continue;
        }
        match leases.ensure(store, book, &account, now).await {
            Ok(()) => taken.push(account),
            Err(e) => {
                tracing::debug!(%account, error = %e, "a due channel's account is not settled here")
            }
        }
    }
    Ok(taken)
}

/// Runs [`sweep_once`] every `interval` until `cancel`.
pub async fn sweep(
    book: Arc<Book>,
    store: Store,
    leases: Arc<Leases>,
    clock: SharedClock,
    interval: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = cancel.cancelled() => break,
        }
        match sweep_once(&book, &store, &leases, clock.unix()).await {
            Ok(taken) if !taken.is_empty() => tracing::info!(
                accounts = taken.len(),
                "took accounts with channels due to settle"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "looking for channels due to settle"),
        }
    }
}

/// Runs until `cancel`, then commits one last time and releases every lease.
pub async fn run(
    book: Arc<Book>,
    store: Store,
    registry: Arc<Registry>,
    leases: Arc<Leases>,
    interval: Duration,
    idle_s: u64,
    cancel: CancellationToken,
) {
    let mut ticks = 0u64;
    let every_second = (1000 / interval.as_millis().max(1)).max(1) as u64;
    loop {
        let stop = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            () = cancel.cancelled() => true,
        };
        ticks += 1;
        if ticks.is_multiple_of(every_second) || stop {
            settle_due(&book, registry.unix_now());
        }
        if let Err(e) = save_slashes(&registry, &store).await {
            tracing::error!(error = %e, "saving slashes failed; retrying next interval");
        }
        let housekeeping = (ticks.is_multiple_of(every_second) || stop).then_some(Housekeeping {
            release_idle: (idle_s > 0).then_some(idle_s),
        });
        if let Err(e) =
            commit_leased(&book, &store, &leases, registry.unix_now(), housekeeping).await
        {
            tracing::error!(error = %e, "group commit failed; retrying next interval");
        }
        if stop {
            let held = leases.held();
            if let Err(e) = store.release(leases.lease_owner(), &held).await {
                tracing::warn!(error = %e, "releasing leases at shutdown; they expire by themselves");
            }
            break;
        }
    }
}
