//! A replica's id belongs to one process at a time. The id lives in
//! `DATA_DIR/replica-id` and owns the replica's leases, so two processes started
//! with the same one (a copied data directory) would both pass every lease fence
//! and write one account's money twice. At start a process claims the id in the
//! `replicas` table with a token of its own; a row held by another token whose
//! heartbeat is fresh (on the store's clock) is another live process: this one
//! watches it for one liveness window and refuses to start if it keeps beating,
//! naming the id and the data directory. A dead process's row (`kill -9`, then a
//! restart with the same data directory) goes stale within that window and is
//! taken over. SQLite needs none of this: one process per file (`lock`).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::store::cluster::ReplicaClaim;
use crate::store::{Store, StoreError};

/// How often the claim is retried while another process holds the id.
const POLL: Duration = Duration::from_millis(500);

/// Why the id could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "replica id {id} (in {data_dir}/replica-id) is used by another live gateway process on this store \
         (its heartbeat {age} s ago): a copied data directory? give each replica its own --data-dir, \
         or delete replica-id in this one to make a new id"
    )]
    InUse {
        id: String,
        data_dir: String,
        age: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who claims, and what it publishes.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    pub id: &'a str,
    pub token: &'a str,
    /// Its internal address (empty: it does not forward).
    pub address: &'a str,
    /// Silence after which a process counts as dead (seconds).
    pub window_s: u64,
    pub data_dir: &'a Path,
}

/// Claims the id for this process, waiting at most one liveness window (plus a
/// second for the clocks' rounding) for a silent holder to go stale.
pub async fn claim(store: &Store, c: Claimant<'_>) -> Result<(), ClaimError> {
    let deadline = Instant::now() + Duration::from_secs(c.window_s + 2);
    loop {
        match store
            .claim_replica(c.id, c.token, c.address, c.window_s)
            .await?
        {
            ReplicaClaim::Claimed => return Ok(()),
            ReplicaClaim::InUse { age } if Instant::now() >= deadline => {
                return Err(ClaimError::InUse {
                    id: c.id.to_owned(),
                    data_dir: c.data_dir.display().to_string(),
                    age,
                });
            }
            ReplicaClaim::InUse { age } => {
                tracing::info!(
                    replica = c.id,
                    age_s = age,
                    "replica id held by another process; waiting to see whether it is alive"
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
}
