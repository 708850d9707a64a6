//! What gateway replicas share beyond money (migration 0010): each replica's
//! internal address (`replicas`), where an account's lease holder is, the change
//! hints sent with PostgreSQL `NOTIFY`, and the rows a hint or the periodic
//! reconcile re-reads (a hint is never believed: the row is).

use sqlx::Row;

use super::registry::StoredProvider;
use super::{Store, StoreError, i64_of, u64_of};

/// The `NOTIFY` channel every replica listens on.
pub const CHANNEL: &str = "tenzro_cluster";

/// The longest id a hint carries (DIDs and key ids are far shorter); a longer
/// payload is not sent.
pub const MAX_HINT_ID: usize = 512;

/// The replica holding an account's lease, and where it can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    /// Lease end, Unix seconds.
    pub until: u64,
    /// Its published internal address; `None` when it published none.
    pub address: Option<String>,
    /// When it last said it was alive (Unix seconds; 0 when unknown).
    pub seen: u64,
}

/// Most ids bound in one statement (PostgreSQL's limit is 65,535 parameters).
const CHUNK: usize = 500;

impl Store {
    /// Publishes (or refreshes) replica `id`'s internal address.
    pub async fn put_replica(&self, id: &str, address: &str, now: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO replicas (id, address, seen) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET address = excluded.address, seen = excluded.seen",
        )
        .bind(id)
        .bind(address)
        .bind(i64_of(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes replica `id` (a clean shutdown).
    pub async fn drop_replica(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Who holds `account`'s lease (expired or not), with its published address.
    pub async fn lease_holder(&self, account: &str) -> Result<Option<Holder>, StoreError> {
        let row = sqlx::query(
            "SELECT l.owner, l.until, r.address, r.seen FROM leases l \
             LEFT JOIN replicas r ON r.id = l.owner WHERE l.account = $1",
        )
        .bind(account)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Holder {
                owner: r.try_get(0)?,
                until: u64_of(r.try_get(1)?),
                address: r.try_get(2)?,
                seen: r
                    .try_get::<Option<i64>, _>(3)?
                    .map(u64_of)
                    .unwrap_or_default(),
            })
        })
        .transpose()
    }

    /// Sends the hint `kind:id` to every replica listening (PostgreSQL only; a
    /// no-op on SQLite). A lost hint costs only time: the reconcile finds the
    /// change too. Failures are logged, never returned: the change is stored.
    pub async fn notify(&self, kind: &str, id: &str) {
        if self.sqlite || id.len() > MAX_HINT_ID {
            return;
        }
        let r = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("{kind}:{id}"))
            .execute(&self.pool)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, kind, "sending a cluster hint failed; the reconcile will carry the change");
        }
    }

    /// The stored row of registered provider `id`.
    pub async fn registered_one(&self, id: &str) -> Result<Option<StoredProvider>, StoreError> {
        let row = sqlx::query(
            "SELECT registration, attestation, last_seen FROM registry_providers WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(super::registry::stored_provider)
            .transpose()
    }

    /// Whether provider `id` is banned in the store.
    pub async fn is_banned_stored(&self, id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT id FROM registry_bans WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Ids of keys revoked at or after `since` (Unix seconds).
    pub async fn revoked_since(&self, since: u64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM api_keys WHERE revoked >= $1")
            .bind(i64_of(since))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }

    /// Whether key `id` is revoked in the store.
    pub async fn key_revoked(&self, id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT id FROM api_keys WHERE id = $1 AND revoked IS NOT NULL")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Liveness heard by this replica, batched: raises `last_seen` of each
    /// provider to the given Unix second (never lowers it), one statement per
    /// [`CHUNK`] providers however many heartbeats came in.
    pub async fn flush_seen(&self, seen: &[(String, u64)]) -> Result<(), StoreError> {
        for chunk in seen.chunks(CHUNK) {
            let Some(newest) = chunk.iter().map(|(_, s)| *s).max() else {
                continue;
            };
            // One timestamp per chunk (the newest is at most a flush interval ahead
            // of the oldest): the ids in one `IN` list.
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "UPDATE registry_providers SET last_seen = $1 WHERE last_seen < $1 AND id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(i64_of(newest));
            for (id, _) in chunk {
                q = q.bind(id.as_str());
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }
}
