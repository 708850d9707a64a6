//! The SQL store: one code path for SQLite (embedded, the default, in the data
//! directory) and PostgreSQL (several replicas), through sqlx's `Any` driver and one
//! set of migrations.
//!
//! The hot path never waits on it: the book changes in memory and the committer
//! hands this store one [`Batch`] per interval, written in one transaction (group
//! commit). Amounts are decimal TEXT; a row that does not parse refuses to load.
//!
//! One file per table family: this one (connection, migrations, the money batch),
//! [`records`] (what is stored of accounts and keys, and a key's scope),
//! [`bonds`], [`disputes`], [`identity`] (identity documents), [`registry`]
//! (providers, bans, slashes), [`lease`] (which replica serves an account) and
//! [`cluster`] (replicas' addresses, change hints, what the reconcile re-reads).

pub mod a2a;
mod accounts;
pub mod bonds;
mod channels;
pub mod cluster;
mod commit;
mod commit_sqlite;
pub mod disputes;
pub mod identity;
pub mod lease;
mod load;
pub mod records;
pub mod registry;

pub use channels::AccountState;
pub use commit::{Claim, Fence, LeaseOwner};
pub use load::Snapshot;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, Row, SqlSafeStr};

use crate::money::book::Funds;
use crate::money::decimal;
use crate::pricing::Asset;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("this replica no longer holds the lease of account {0}")]
    LeaseLost(String),
    #[error("database row {table}.{column}: {message}")]
    Corrupt {
        table: &'static str,
        column: &'static str,
        message: String,
    },
}

pub(super) fn corrupt(
    table: &'static str,
    column: &'static str,
    message: impl ToString,
) -> StoreError {
    StoreError::Corrupt {
        table,
        column,
        message: message.to_string(),
    }
}

/// The schema, embedded so the binary needs no files beside it.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "money", include_str!("../../migrations/0001_money.sql")),
    (
        2,
        "leases",
        include_str!("../../migrations/0002_leases.sql"),
    ),
    (
        3,
        "registry",
        include_str!("../../migrations/0003_registry.sql"),
    ),
    (4, "bonds", include_str!("../../migrations/0004_bonds.sql")),
    (
        6,
        "identities",
        include_str!("../../migrations/0006_identities.sql"),
    ),
    (
        9,
        "a2a_tasks",
        include_str!("../../migrations/0009_a2a_tasks.sql"),
    ),
    (
        10,
        "replicas",
        include_str!("../../migrations/0010_replicas.sql"),
    ),
    (
        11,
        "replica_tokens",
        include_str!("../../migrations/0011_replica_tokens.sql"),
    ),
    (
        12,
        "lease_tokens",
        include_str!("../../migrations/0012_lease_tokens.sql"),
    ),
    (
        13,
        "change_stamps",
        include_str!("../../migrations/0013_change_stamps.sql"),
    ),
];

fn migrator() -> Migrator {
    let migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|(v, d, sql)| {
            Migration::new(
                *v,
                (*d).into(),
                MigrationType::Simple,
                sqlx::AssertSqlSafe(*sql).into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: migrations.into(),
        ..Migrator::DEFAULT
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    sqlite: bool,
    /// SQLite's money writer (a file's; `None` on PostgreSQL and in memory).
    writer: Option<std::sync::Arc<commit_sqlite::Writer>>,
}

pub(super) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Connects (`sqlite://PATH` or `postgres://…`), creating a SQLite file if
    /// needed, and runs the migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite && !url.contains('?') && !url.contains(":memory:") {
            format!("{url}?mode=rwc")
        } else {
            url.to_owned()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL;").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        migrator().run(&pool).await?;
        let writer = (sqlite && !url.contains(":memory:") && !url.contains("mode=memory"))
            .then(|| std::sync::Arc::new(commit_sqlite::Writer::new(url)));
        Ok(Store {
            pool,
            sqlite,
            writer,
        })
    }

    pub fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    pub async fn close(&self) {
        if let Some(w) = &self.writer {
            w.close().await;
        }
        self.pool.close().await;
    }

    pub(super) async fn balances_of(
        &self,
        account: &str,
    ) -> Result<Vec<(Asset, Funds)>, StoreError> {
        let rows = sqlx::query("SELECT asset, balance, funded FROM balances WHERE account = $1")
            .bind(account)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(funds_row)
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.into_iter().map(|(_, a, f)| (a, f)).collect())
    }
}

pub(super) fn asset_of(text: &str, table: &'static str) -> Result<Asset, StoreError> {
    Asset::from_str(text).map_err(|_| corrupt(table, "asset", format!("unknown asset {text:?}")))
}

pub(super) fn amount_of(
    text: &str,
    table: &'static str,
    column: &'static str,
) -> Result<u128, StoreError> {
    decimal::parse(text).map_err(|e| corrupt(table, column, e))
}

pub(super) fn funds_row(row: &sqlx::any::AnyRow) -> Result<(String, Asset, Funds), StoreError> {
    funds_row_at(row, 0)
}

pub(super) fn funds_row_at(
    row: &sqlx::any::AnyRow,
    at: usize,
) -> Result<(String, Asset, Funds), StoreError> {
    let asset = asset_of(&row.try_get::<String, _>(at)?, "balances")?;
    let balance = amount_of(&row.try_get::<String, _>(at + 1)?, "balances", "balance")?;
    let funded = amount_of(&row.try_get::<String, _>(at + 2)?, "balances", "funded")?;
    Ok((
        String::new(),
        asset,
        Funds {
            balance,
            held: 0,
            funded,
        },
    ))
}
