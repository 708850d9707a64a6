//! The money family's writes: one [`Batch`] per transaction (group commit),
//! fenced by the replica's leases, and the lease rows themselves (each names its
//! replica id and the claim token of the process holding it, [`LeaseOwner`]).

use super::commit_sqlite::Writer;
use super::{Store, StoreError, corrupt, i64_of};
use crate::money::book::{Batch, RequestRecord};
use crate::money::channel::Channel;

impl Store {
    /// Writes one batch in one transaction.
    pub async fn commit(&self, b: &Batch) -> Result<(), StoreError> {
        self.commit_fenced(b, None).await
    }

    /// Writes one batch in one transaction, first renewing the lease of every
    /// account it touches ([`Fence`]): if one was lost to another replica, nothing
    /// is written and the error names it.
    pub async fn commit_fenced(
        &self,
        b: &Batch,
        fence: Option<Fence<'_>>,
    ) -> Result<(), StoreError> {
        if b.is_empty() {
            return Ok(());
        }
        // SQLite's own writer; when its fence does not pass, the statements below
        // name the lost lease (or write the batch, if it was renewed in between).
        if let Some(writer) = self.writer.as_ref().filter(|_| Writer::takes(b))
            && writer.commit(b, fence).await?
        {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = fence {
            fence.renew(&mut tx, b).await?;
        }
        write_balances(&mut tx, b).await?;
        write_channels(&mut tx, b).await?;
        write_requests(&mut tx, b, self.is_sqlite()).await?;
        write_pools(&mut tx, b).await?;
        super::bonds::write(&mut tx, b).await?;
        tx.commit().await?;
        if !b.bonds.is_empty() {
            // Other replicas re-read the bonds' stakes (`crate::cluster`).
            self.notify("bond", "*").await;
        }
        Ok(())
    }

    /// Takes (or keeps) the lease of `account` for `owner` until `until`:
    /// [`Claim::Renewed`] when `owner`'s process held it already (nobody else took it
    /// in between: its book is current), [`Claim::Taken`] when it was free,
    /// expired at `now`, or its replica id's (see below), and
    /// [`Claim::HeldElsewhere`] otherwise. A lease of the same replica id held by
    /// another token (a previous process with this data directory) is taken at once
    /// unless another process holds that id's claim (`replicas.token`): a stalled
    /// process whose id was taken over cannot take its leases back.
    pub async fn claim(
        &self,
        account: &str,
        owner: LeaseOwner<'_>,
        until: u64,
        now: u64,
    ) -> Result<Claim, StoreError> {
        if self.renew(account, owner, until).await? {
            return Ok(Claim::Renewed);
        }
        let r = sqlx::query(
            "INSERT INTO leases (account, owner, until, token) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account) DO UPDATE SET owner = excluded.owner, until = excluded.until, \
             token = excluded.token \
             WHERE leases.until < $5 OR leases.token = $4 \
             OR (leases.owner = $2 AND NOT EXISTS \
             (SELECT 1 FROM replicas r WHERE r.id = $2 AND r.token <> $4))",
        )
        .bind(account)
        .bind(owner.id)
        .bind(i64_of(until))
        .bind(owner.token)
        .bind(i64_of(now))
        .execute(&self.pool)
        .await?;
        Ok(if r.rows_affected() > 0 {
            Claim::Taken
        } else {
            Claim::HeldElsewhere
        })
    }

    /// Extends the lease of `account` to `until` if `owner`'s process still holds
    /// it (false: taken or released since, so its book's copy may be stale).
    pub async fn renew(
        &self,
        account: &str,
        owner: LeaseOwner<'_>,
        until: u64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE leases SET until = $1 WHERE account = $2 AND owner = $3 AND token = $4",
        )
        .bind(i64_of(until))
        .bind(account)
        .bind(owner.id)
        .bind(owner.token)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Gives up leases `owner`'s process holds (idle accounts, shutdown); a lease
    /// another process took meanwhile is left alone.
    pub async fn release(
        &self,
        owner: LeaseOwner<'_>,
        accounts: &[String],
    ) -> Result<(), StoreError> {
        for a in accounts {
            sqlx::query("DELETE FROM leases WHERE account = $1 AND owner = $2 AND token = $3")
                .bind(a.as_str())
                .bind(owner.id)
                .bind(owner.token)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}

/// Who holds a lease: a replica id (`DATA_DIR/replica-id`) and the token of the
/// process that claimed it (`cluster::identity`). Only that process passes the
/// fence: one that lost its id to a new process with the same id does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseOwner<'a> {
    pub id: &'a str,
    pub token: &'a str,
}

/// What [`Store::claim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Held by this process already, renewed: its copy of the account is current.
    Renewed,
    /// Taken (free, expired, or a previous process's of this replica id): the
    /// account's money must be read from the store.
    Taken,
    /// Another replica (or another live process of this id) holds it.
    HeldElsewhere,
}

type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

/// The lease renewal a fenced commit makes first: `owner` (the replica id and its
/// process's token) keeps every account the batch touches until `until`, provided
/// its process still held it at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence<'a> {
    pub owner: LeaseOwner<'a>,
    pub until: u64,
    pub now: u64,
}

impl Fence<'_> {
    async fn renew(&self, tx: &mut Tx<'_>, b: &Batch) -> Result<(), StoreError> {
        for account in fence_accounts(b) {
            let r = sqlx::query(
                "UPDATE leases SET until = $1 \
                 WHERE account = $2 AND owner = $3 AND token = $4 AND until >= $5",
            )
            .bind(i64_of(self.until))
            .bind(account)
            .bind(self.owner.id)
            .bind(self.owner.token)
            .bind(i64_of(self.now))
            .execute(&mut **tx)
            .await?;
            if r.rows_affected() == 0 {
                return Err(StoreError::LeaseLost(account.to_owned()));
            }
        }
        Ok(())
    }
}

/// The accounts a batch touches (its balances' and its channels' payers), sorted,
/// each once: the leases a fence renews.
pub(super) fn fence_accounts(b: &Batch) -> Vec<&str> {
    let mut accounts: Vec<&str> = b
        .accounts
        .iter()
        .map(|a| a.0.as_str())
        .chain(b.channels.iter().map(|c| c.payer.as_str()))
        .collect();
    accounts.sort_unstable();
    accounts.dedup();
    accounts
}

async fn write_balances(tx: &mut Tx<'_>, b: &Batch) -> Result<(), StoreError> {
    for (account, asset, f) in &b.accounts {
        sqlx::query(
            "INSERT INTO balances (account, asset, balance, funded) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account, asset) DO UPDATE SET balance = excluded.balance, funded = excluded.funded",
        )
        .bind(account.as_str())
        .bind(asset.as_str())
        .bind(f.balance.to_string())
        .bind(f.funded.to_string())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn write_channels(tx: &mut Tx<'_>, b: &Batch) -> Result<(), StoreError> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let marks: Vec<String> = (1..=CHANNEL_COLUMNS.split(',').count())
            .map(|c| format!("${c}"))
            .collect();
        format!(
            "INSERT INTO channels ({CHANNEL_COLUMNS}) VALUES ({}){CHANNEL_CONFLICT}",
            marks.join(", ")
        )
    });
    for c in &b.channels {
        let q = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()));
        bind_channel(q, c)?.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The `channels` columns both writers (these statements and
/// [`super::commit_sqlite`]'s upsert) write, in the order [`bind_channel`] binds them.
pub(super) const CHANNEL_COLUMNS: &str =
    "id, payer, provider, asset, deposit, spent, nonce, opened, expires, state";

/// What a channel row already stored takes from the new one.
pub(super) const CHANNEL_CONFLICT: &str = " ON CONFLICT (id) DO UPDATE SET deposit = excluded.deposit, \
     spent = excluded.spent, nonce = excluded.nonce, state = excluded.state";

/// Binds `c`'s row, [`CHANNEL_COLUMNS`] in order, to `q` (the pool's `Any`
/// statements and SQLite's writer alike).
pub(super) fn bind_channel<'q, DB>(
    q: sqlx::query::Query<'q, DB, DB::Arguments>,
    c: &Channel,
) -> Result<sqlx::query::Query<'q, DB, DB::Arguments>, StoreError>
where
    DB: sqlx::Database,
    for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let state = serde_json::to_string(&c.state).map_err(|e| corrupt("channels", "state", e))?;
    Ok(q.bind(c.id.as_str())
        .bind(c.payer.as_str())
        .bind(c.provider.as_str())
        .bind(c.asset.as_str())
        .bind(c.deposit.to_string())
        .bind(c.spent.to_string())
        .bind(i64_of(c.nonce))
        .bind(i64_of(c.opened))
        .bind(i64_of(c.expires))
        .bind(state))
}

/// Binds `r`'s row (a fresh row id first, then its fields in the `requests`
/// table's column order) to `q`: the pool's statements and SQLite's writer alike.
pub(super) fn bind_request<'q, DB>(
    q: sqlx::query::Query<'q, DB, DB::Arguments>,
    r: &RequestRecord,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: sqlx::Database,
    for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> Option<String>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    q.bind(request_row_id())
        .bind(r.id.as_str())
        .bind(r.key.clone())
        .bind(r.account.as_str())
        .bind(r.asset.as_str())
        .bind(r.channel.clone())
        .bind(r.charged.to_string())
        .bind(i64_of(r.at))
}

/// Most rows one INSERT of [`write_requests`] carries (8 parameters each).
const REQUEST_ROWS: usize = 32;

/// The charged requests, [`REQUEST_ROWS`] per statement: one round trip to the
/// store (SQLite's worker thread, PostgreSQL's socket) per statement instead of
/// per request. At 2,000 req/s the per-row INSERTs were ~4 thread hand-offs per
/// request (benches/gateway/README.md, "session 8").
async fn write_requests(tx: &mut Tx<'_>, b: &Batch, sqlite: bool) -> Result<(), StoreError> {
    let mut rest = b.requests.as_slice();
    while !rest.is_empty() {
        // Powers of two: at most six statement texts in each statement cache.
        let m = rest.len().min(REQUEST_ROWS);
        let n = if m.is_power_of_two() {
            m
        } else {
            m.next_power_of_two() / 2
        };
        let (rows, more) = rest.split_at(n);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_requests_sql(n, sqlite)));
        for r in rows {
            q = bind_request(q, r);
        }
        q.execute(&mut **tx).await?;
        rest = more;
    }
    Ok(())
}

/// `INSERT INTO requests ... VALUES` with `rows` rows of placeholders (a power of
/// two up to [`REQUEST_ROWS`]), built once. SQLite gets anonymous `?` marks:
/// sqlx asks SQLite each parameter's name, and for `$N` names SQLite scans the
/// statement's list of names, so a 256-parameter INSERT cost ~33,000 comparisons
/// per execution (~0.6 % of the gateway's CPU at 2,000 req/s).
fn insert_requests_sql(rows: usize, sqlite: bool) -> &'static str {
    static TEXTS: std::sync::LazyLock<[Vec<String>; 2]> = std::sync::LazyLock::new(|| {
        let texts = |sqlite: bool| {
            (0..=REQUEST_ROWS.trailing_zeros())
                .map(|p| build_insert_requests_sql(1 << p, sqlite))
                .collect()
        };
        [texts(false), texts(true)]
    });
    let built = &TEXTS[usize::from(sqlite)];
    match built.get(rows.trailing_zeros() as usize) {
        Some(text) if rows.is_power_of_two() => text,
        _ => "INSERT INTO requests: not a power of two",
    }
}

fn build_insert_requests_sql(rows: usize, sqlite: bool) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let marks: Vec<String> = (1..=8)
                .map(|c| {
                    if sqlite {
                        "?".to_owned()
                    } else {
                        format!("${}", r * 8 + c)
                    }
                })
                .collect();
            format!("({})", marks.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO requests (id, request_id, key_id, account, asset, channel, charged, at) VALUES {}",
        values.join(", ")
    )
}

/// A `requests` row id (internal: clients see `request_id`): the time in
/// nanoseconds then 64 random bits, so new rows land at the end of the primary
/// key's index instead of on random pages (a random id dirtied a page of the
/// index per row, each a 4 KiB WAL frame at the next commit).
pub(super) fn request_row_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    format!("rq_{nanos:016x}{:016x}", rand::random::<u64>())
}

/// The network-wide pools and the providers' earnings.
async fn write_pools(tx: &mut Tx<'_>, b: &Batch) -> Result<(), StoreError> {
    for (asset, p) in &b.pools {
        sqlx::query(
            "INSERT INTO pools (asset, treasury, burned, stakers) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (asset) DO UPDATE SET treasury = excluded.treasury, burned = excluded.burned, stakers = excluded.stakers",
        )
        .bind(asset.as_str())
        .bind(p.treasury.to_string())
        .bind(p.burned.to_string())
        .bind(p.stakers.to_string())
        .execute(&mut **tx)
        .await?;
    }
    for (provider, asset, amount) in &b.earnings {
        sqlx::query(
            "INSERT INTO earnings (provider, asset, amount) VALUES ($1, $2, $3) \
             ON CONFLICT (provider, asset) DO UPDATE SET amount = excluded.amount",
        )
        .bind(provider.as_str())
        .bind(asset.as_str())
        .bind(amount.to_string())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod requests_tests {
    use sqlx::Row;

    use super::*;
    use crate::money::book::RequestRecord;
    use crate::pricing::Asset;

    /// 45 rows go in as 32 + 8 + 4 + 1 (every statement size is used), each with
    /// its own fields and a distinct, time-ordered row id.
    #[tokio::test]
    async fn charged_requests_are_written_in_multi_row_statements() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let store = Store::open(&url).await.unwrap();
        let requests: Vec<RequestRecord> = (0..45u64)
            .map(|i| RequestRecord {
                id: format!("req-{i}"),
                key: i.is_multiple_of(2).then(|| format!("key-{i}")),
                account: "acct".into(),
                asset: Asset::Tnzo,
                channel: Some("ch".into()),
                charged: u128::from(i) + 1,
                at: 1_000 + i,
            })
            .collect();
        let batch = Batch {
            requests,
            ..Batch::default()
        };
        store.commit(&batch).await.unwrap();
        let rows =
            sqlx::query("SELECT id, request_id, key_id, charged, at FROM requests ORDER BY id")
                .fetch_all(&store.pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), 45);
        let mut seen = std::collections::HashSet::new();
        for row in &rows {
            let id: String = row.get("id");
            assert!(id.starts_with("rq_") && id.len() == 35, "{id}");
            assert!(seen.insert(id));
            let rid: String = row.get("request_id");
            let i: u64 = rid.trim_start_matches("req-").parse().unwrap();
            let key: Option<String> = row.get("key_id");
            assert_eq!(key, i.is_multiple_of(2).then(|| format!("key-{i}")));
            let charged: String = row.get("charged");
            assert_eq!(charged, (i + 1).to_string());
            let at: i64 = row.get("at");
            assert_eq!(at, 1_000 + i64::try_from(i).unwrap());
        }
        assert_eq!(insert_requests_sql(2, false).matches('$').count(), 16);
        assert_eq!(insert_requests_sql(2, true).matches('?').count(), 16);
        assert_eq!(insert_requests_sql(32, true).matches('?').count(), 256);
        assert!(!insert_requests_sql(32, false).contains('?'));
        // Later rows sort after earlier ones (the index grows at its end).
        let first = request_row_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(first < request_row_id());
    }

    /// One channel binds one value per column of [`CHANNEL_COLUMNS`], on both
    /// writers' databases.
    #[test]
    fn a_channel_binds_one_value_per_column() {
        use sqlx::{Arguments, Execute};
        let c = Channel::new(
            "ch".into(),
            "payer".into(),
            "prov".into(),
            Asset::Tnzo,
            10,
            100,
        );
        let columns = CHANNEL_COLUMNS.split(',').count();
        let mut any = bind_channel(sqlx::query::<sqlx::Any>("x"), &c).unwrap();
        assert_eq!(any.take_arguments().unwrap().unwrap().len(), columns);
        let mut lite = bind_channel(sqlx::query::<sqlx::Sqlite>("x"), &c).unwrap();
        assert_eq!(lite.take_arguments().unwrap().unwrap().len(), columns);
    }
}
