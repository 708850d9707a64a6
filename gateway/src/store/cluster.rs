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
    /// Lease end, Unix seconds on the store's clock.
    pub until: u64,
    /// Its published internal address; `None` when it published none (or an
    /// empty one: a replica that does not forward).
    pub address: Option<String>,
    /// Seconds since it last said it was alive, on the store's clock (so no two
    /// replicas' clocks are compared); `u64::MAX` when unknown.
    pub seen_age: u64,
}

/// What claiming a replica id at start (or at a heartbeat) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaClaim {
    /// The id is this process's (new, its own token, or taken over from a process
    /// silent for longer than the window).
    Claimed,
    /// Another process holds the id and said it was alive `age` seconds ago.
    InUse { age: u64 },
}

/// Most ids bound in one statement (PostgreSQL's limit is 65,535 parameters).
const CHUNK: usize = 500;

impl Store {
    /// The store's clock as SQL (Unix seconds): what replicas compare across
    /// machines is stamped and read with it, never with their own clocks.
    pub(super) fn now_sql(&self) -> &'static str {
        if self.sqlite {
            "CAST(strftime('%s', 'now') AS BIGINT)"
        } else {
            "CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)"
        }
    }

    /// SQL for the later of `param` (Unix seconds) and the store's clock: a stamp
    /// that other replicas compare with the store's clock is never dated before it.
    pub(super) fn not_before_now(&self, param: &str) -> String {
        let now = self.now_sql();
        format!("CASE WHEN {param} > {now} THEN {param} ELSE {now} END")
    }

    /// The store's clock, Unix seconds.
    pub async fn db_now(&self) -> Result<u64, StoreError> {
        let sql = format!("SELECT {}", self.now_sql());
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?;
        Ok(u64_of(row.try_get(0)?))
    }

    /// Claims (or keeps) replica `id` for the process holding `token`, publishing
    /// `address` (empty: it does not forward) and its heartbeat on the store's
    /// clock. Another token's row is taken over only when its heartbeat is older
    /// than `stale_s`; otherwise the answer is [`ReplicaClaim::InUse`].
    pub async fn claim_replica(
        &self,
        id: &str,
        token: &str,
        address: &str,
        stale_s: u64,
    ) -> Result<ReplicaClaim, StoreError> {
        let now = self.now_sql();
        let sql = format!(
            "INSERT INTO replicas (id, address, seen, token) VALUES ($1, $2, {now}, $3) \
             ON CONFLICT (id) DO UPDATE SET address = excluded.address, seen = excluded.seen, \
             token = excluded.token \
             WHERE replicas.token = excluded.token OR replicas.seen < excluded.seen - $4"
        );
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(address)
            .bind(token)
            .bind(i64_of(stale_s))
            .execute(&self.pool)
            .await?;
        if r.rows_affected() > 0 {
            return Ok(ReplicaClaim::Claimed);
        }
        let sql = format!("SELECT {now} - seen FROM replicas WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => ReplicaClaim::InUse {
                age: u64_of(r.try_get(0)?),
            },
            // Removed in between (a clean shutdown): free now.
            None => ReplicaClaim::InUse { age: u64::MAX },
        })
    }

    /// Removes replica `id` if `token` still holds it (a clean shutdown).
    pub async fn drop_replica(&self, id: &str, token: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replicas WHERE id = $1 AND token = $2")
            .bind(id)
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Who holds `account`'s lease (expired or not), with its published address
    /// and how long ago it said it was alive.
    pub async fn lease_holder(&self, account: &str) -> Result<Option<Holder>, StoreError> {
        let sql = format!(
            "SELECT l.owner, l.until, r.address, {} - r.seen FROM leases l \
             LEFT JOIN replicas r ON r.id = l.owner WHERE l.account = $1",
            self.now_sql()
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Holder {
                owner: r.try_get(0)?,
                until: u64_of(r.try_get(1)?),
                address: r.try_get::<Option<String>, _>(2)?.filter(|a| !a.is_empty()),
                seen_age: r.try_get::<Option<i64>, _>(3)?.map_or(u64::MAX, u64_of),
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

    /// Registered providers whose row changed (a registration, a verdict,
    /// batched liveness) at or after `since`, on the store's clock (`changed`,
    /// migration 0013): what the reconcile re-reads. Unlike `last_seen`, which
    /// a registration writes on the writer's clock, this never misses a row a
    /// replica with a slow clock wrote.
    pub async fn changed_since(&self, since: u64) -> Result<Vec<StoredProvider>, StoreError> {
        let rows = sqlx::query(
            "SELECT registration, attestation, last_seen FROM registry_providers \
             WHERE changed >= $1 ORDER BY id",
        )
        .bind(i64_of(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(super::registry::stored_provider).collect()
    }

    /// Ids of keys revoked at or after `since` (Unix seconds; a revocation is
    /// stamped no earlier than the store's clock, `revoke_key`).
    pub async fn revoked_since(&self, since: u64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM api_keys WHERE revoked >= $1")
            .bind(i64_of(since))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }

    /// How many slash records the store holds (they are never deleted, so a
    /// change means a new one).
    pub async fn slash_count(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM slashes")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64_of(row.try_get(0)?))
    }

    /// Every slash record, oldest first (whichever replica made it).
    pub async fn all_slashes(&self) -> Result<Vec<crate::money::slashing::Slash>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, provider, reason, detail, stake_before, amount, stake_after, at \
             FROM slashes ORDER BY at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(super::load::slash_of).collect()
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
    /// provider heard since the last flush to the store's clock now (never lowers
    /// it; at most a flush interval later than the heartbeat), so the reconcile of
    /// every replica compares it with the store's clock too (the heard times, on
    /// this replica's clock, are not written). One statement per [`CHUNK`]
    /// providers however many heartbeats came in.
    pub async fn flush_seen(&self, seen: &[(String, u64)]) -> Result<(), StoreError> {
        let now = self.now_sql();
        for chunk in seen.chunks(CHUNK) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 1)).collect();
            let sql = format!(
                "UPDATE registry_providers SET last_seen = {now}, changed = {now} \
                 WHERE last_seen < {now} AND id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, _) in chunk {
                q = q.bind(id.as_str());
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }
}
