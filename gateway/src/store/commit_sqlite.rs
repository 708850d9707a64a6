//! SQLite's group commit, on a connection of its own and in two round trips.
//!
//! Through the pool, one commit was ~9 round trips to sqlx's SQLite worker thread
//! (BEGIN and COMMIT each acknowledged both ways, the fence, then one statement per
//! balance, channel, pool, earning and group of requests), each a wake-up of that
//! thread and of a tokio worker; and the pool handed each commit another of its
//! connections, whose page cache WAL mode had dropped since that connection's last
//! transaction. Here one connection writes every batch (its cache stays valid: no
//! other connection writes money), and a commit is two statement texts:
//! `BEGIN` with the lease fence (one `UPDATE … WHERE account IN (…) RETURNING`), then every
//! table's rows as multi-row upserts with `?` marks and `COMMIT`. Without a fence
//! it is one text. The transaction, WAL, `synchronous = FULL` and the rows stored
//! are those of [`Store::commit_fenced`]'s per-table statements (PostgreSQL keeps
//! those); a fence that does not pass rolls back and leaves the batch to them, which
//! name the lost lease.
//!
//! A commit that fails, or whose future is dropped half-way, closes the connection
//! (SQLite rolls back what it left open) and the next one opens a new one.

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnection};
use sqlx::{Connection, Executor};

use super::commit::{
    CHANNEL_COLUMNS, CHANNEL_CONFLICT, Fence, bind_channel, bind_request, fence_accounts,
};
use super::{StoreError, i64_of};
use crate::money::book::Batch;

type Query = sqlx::query::Query<'static, Sqlite, SqliteArguments>;

/// The connection money is written on (`None` until the first commit, and after
/// a failed one).
pub(super) struct Writer {
    url: String,
    conn: tokio::sync::Mutex<Option<SqliteConnection>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("url", &self.url).finish()
    }
}

/// Most rows one upsert carries; a table's rows go in power-of-two groups up to
/// it, so the statement texts repeat and stay in the connection's cache.
const ROWS: usize = 32;

/// The pool's connections' settings (`Store::open`).
const PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL;";

impl Writer {
    pub(super) fn new(url: String) -> Writer {
        Writer {
            url,
            conn: tokio::sync::Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    /// Whether this writer takes `b`: bonds and slashes (rare) go through the
    /// pool's per-table statements.
    pub(super) fn takes(b: &Batch) -> bool {
        b.bonds.is_empty() && b.applied_slashes.is_empty()
    }

    /// Writes `b` (one [`Writer::takes`]) in one transaction: `Ok(true)` when
    /// written, `Ok(false)` when `fence` did not pass (nothing written).
    pub(super) async fn commit(
        &self,
        b: &Batch,
        fence: Option<Fence<'_>>,
    ) -> Result<bool, StoreError> {
        let mut slot = self.conn.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(sqlx::Error::PoolClosed.into());
        }
        // Out of the slot while in use: dropped half-way, it closes.
        let mut conn = match slot.take() {
            Some(c) => c,
            None => {
                let mut c = SqliteConnection::connect(&self.url).await?;
                c.execute(PRAGMAS).await?;
                c
            }
        };
        match write(&mut conn, b, fence).await {
            Ok(written) => {
                *slot = Some(conn);
                Ok(written)
            }
            Err(e) => {
                let _ = conn.close().await;
                Err(e)
            }
        }
    }

    pub(super) async fn close(&self) {
        let mut slot = self.conn.lock().await;
        self.closed.store(true, Ordering::Release);
        if let Some(c) = slot.take() {
            let _ = c.close().await;
        }
    }
}

async fn write(
    conn: &mut SqliteConnection,
    b: &Batch,
    fence: Option<Fence<'_>>,
) -> Result<bool, StoreError> {
    let mut sql = String::with_capacity(4096);
    sql.push_str("BEGIN;\n");
    if let Some(fence) = fence {
        let accounts = fence_accounts(b);
        push_fence(&mut sql, accounts.len());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(std::mem::take(&mut sql)))
            .bind(i64_of(fence.until))
            .bind(fence.owner.id.to_owned())
            .bind(fence.owner.token.to_owned())
            .bind(i64_of(fence.now));
        for a in &accounts {
            q = q.bind((*a).to_owned());
        }
        // Counted from the rows it returns: sqlx's rows affected for a text adds
        // SQLite's `changes()` after each statement, and after `BEGIN` that is
        // still the previous commit's last count.
        let renewed = conn.fetch_all(q).await?.len();
        if renewed != accounts.len() {
            conn.execute("ROLLBACK").await?;
            return Ok(false);
        }
    }
    push_writes(&mut sql, b);
    sql.push_str("COMMIT;");
    let q = bind_writes(sqlx::query(sqlx::AssertSqlSafe(sql)), b)?;
    conn.execute(q).await?;
    Ok(true)
}

/// The fence's renewal: every account's lease, held by this process and not
/// expired at the fence's `now`, now ends at its `until` (binds: until, owner id,
/// token, now, then the accounts); it returns the accounts renewed.
fn push_fence(sql: &mut String, accounts: usize) {
    sql.push_str(
        "UPDATE leases SET until = ? WHERE owner = ? AND token = ? AND until >= ? AND account IN (",
    );
    push_marks(sql, accounts);
    sql.push_str(") RETURNING account;\n");
}

fn push_marks(sql: &mut String, n: usize) {
    for i in 0..n {
        sql.push_str(if i == 0 { "?" } else { ", ?" });
    }
}

/// One table's upsert: its rows in power-of-two groups of at most [`ROWS`].
struct Upsert {
    table: &'static str,
    /// Comma-separated, in the order the rows are bound.
    columns: &'static str,
    tail: &'static str,
}

const BALANCES: Upsert = Upsert {
    table: "balances",
    columns: "account, asset, balance, funded",
    tail: " ON CONFLICT (account, asset) DO UPDATE SET balance = excluded.balance, \
           funded = excluded.funded",
};
const CHANNELS: Upsert = Upsert {
    table: "channels",
    columns: CHANNEL_COLUMNS,
    tail: CHANNEL_CONFLICT,
};
const REQUESTS: Upsert = Upsert {
    table: "requests",
    columns: "id, request_id, key_id, account, asset, channel, charged, at",
    tail: "",
};
const POOLS: Upsert = Upsert {
    table: "pools",
    columns: "asset, treasury, burned, stakers",
    tail: " ON CONFLICT (asset) DO UPDATE SET treasury = excluded.treasury, \
           burned = excluded.burned, stakers = excluded.stakers",
};
const EARNINGS: Upsert = Upsert {
    table: "earnings",
    columns: "provider, asset, amount",
    tail: " ON CONFLICT (provider, asset) DO UPDATE SET amount = excluded.amount",
};

impl Upsert {
    fn push(&self, sql: &mut String, mut rows: usize) {
        let width = self.columns.split(',').count();
        while rows > 0 {
            let n = group(rows);
            sql.push_str("INSERT INTO ");
            sql.push_str(self.table);
            sql.push_str(" (");
            sql.push_str(self.columns);
            sql.push_str(") VALUES ");
            for r in 0..n {
                sql.push_str(if r == 0 { "(" } else { ", (" });
                push_marks(sql, width);
                sql.push(')');
            }
            sql.push_str(self.tail);
            sql.push_str(";\n");
            rows -= n;
        }
    }
}

/// The next group's size out of `rows` left: the largest power of two up to [`ROWS`].
fn group(rows: usize) -> usize {
    let m = rows.min(ROWS);
    if m.is_power_of_two() {
        m
    } else {
        m.next_power_of_two() / 2
    }
}

/// Appends the batch's upserts, in the per-table statements' order (balances,
/// channels, requests, pools, earnings; within one upsert a repeated key's later
/// row wins, as the later statement did there).
fn push_writes(sql: &mut String, b: &Batch) {
    BALANCES.push(sql, b.accounts.len());
    CHANNELS.push(sql, b.channels.len());
    REQUESTS.push(sql, b.requests.len());
    POOLS.push(sql, b.pools.len());
    EARNINGS.push(sql, b.earnings.len());
}

/// Binds every row of [`push_writes`]' statements, in their order.
fn bind_writes(mut q: Query, b: &Batch) -> Result<Query, StoreError> {
    for (account, asset, f) in &b.accounts {
        q = q
            .bind(account.clone())
            .bind(asset.as_str())
            .bind(f.balance.to_string())
            .bind(f.funded.to_string());
    }
    for c in &b.channels {
        q = bind_channel(q, c)?;
    }
    for r in &b.requests {
        q = bind_request(q, r);
    }
    for (asset, p) in &b.pools {
        q = q
            .bind(asset.as_str())
            .bind(p.treasury.to_string())
            .bind(p.burned.to_string())
            .bind(p.stakers.to_string());
    }
    for (provider, asset, amount) in &b.earnings {
        q = q
            .bind(provider.clone())
            .bind(asset.as_str())
            .bind(amount.to_string());
    }
    Ok(q)
}

#[cfg(test)]
#[path = "commit_sqlite_tests.rs"]
mod tests;
