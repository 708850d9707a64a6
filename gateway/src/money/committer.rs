//! Group commit: the book's dirty rows reach the store in one transaction per
//! interval, never one write per chunk. A failed commit is put back and retried.
//! The same loop settles disputes whose challenge window has passed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::unix_now;
use crate::money::book::Book;
use crate::money::store::{Store, StoreError};
use crate::registry::Registry;

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

/// Runs until `cancel`, then commits one last time.
pub async fn run(
    book: Arc<Book>,
    store: Store,
    registry: Arc<Registry>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut ticks = 0u64;
    loop {
        let stop = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            () = cancel.cancelled() => true,
        };
        ticks += 1;
        if ticks.is_multiple_of(50) || stop {
            match book.finish_disputes(unix_now()) {
                Ok(closed) => {
                    for (id, split) in closed {
                        tracing::info!(channel = %id, provider_net = %split.provider_net, refund = %split.refund, "dispute settled");
                    }
                }
                Err(e) => tracing::error!(error = %e, "settling disputes"),
            }
        }
        if let Err(e) = save_slashes(&registry, &store).await {
            tracing::error!(error = %e, "saving slashes failed; retrying next interval");
        }
        if let Err(e) = commit_once(&book, &store).await {
            tracing::error!(error = %e, "group commit failed; retrying next interval");
        }
        if stop {
            break;
        }
    }
}
