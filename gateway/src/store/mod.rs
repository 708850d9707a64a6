//! The SQL store: one code path for SQLite (embedded, the default, in the data
//! directory) and PostgreSQL (several replicas), through sqlx's `Any` driver and one
//! set of migrations.
//!
//! The hot path never waits on it: the book changes in memory and the committer
//! hands this store one [`Batch`] per interval, written in one transaction (group
//! commit). Amounts are decimal TEXT; a row that does not parse refuses to load.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, Row, SqlSafeStr};
use tenzro_attest::voucher::Voucher;

use crate::accounts::{AccountRecord, KeyRecord, KeyScope};
use crate::money::book::{Batch, Funds, Pools};
use crate::money::channel::{Channel, State};
use crate::money::decimal;
use crate::money::slashing::Slash;
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

fn corrupt(table: &'static str, column: &'static str, message: impl ToString) -> StoreError {
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
];

/// One account's money as stored: funds, channels with their latest vouchers, and
/// each key's charges of the last 24 h.
#[derive(Debug, Default)]
pub struct AccountState {
    pub funds: Vec<(Asset, Funds)>,
    pub channels: Vec<(Channel, Option<Voucher>)>,
    pub keys: Vec<(String, Vec<(u64, u128)>)>,
}

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

/// What the gateway loads at start. An account's money (funds, channels, spend
/// windows) is not here: it is read by [`Store::account_state`] when a replica
/// takes the account's lease.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub accounts: Vec<AccountRecord>,
    pub keys: Vec<KeyRecord>,
    pub pools: Vec<(Asset, Pools)>,
    pub earnings: Vec<(String, Asset, u128)>,
    pub slashes: Vec<Slash>,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    sqlite: bool,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
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
        Ok(Store { pool, sqlite })
    }

    pub fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Writes one batch in one transaction.
    pub async fn commit(&self, b: &Batch) -> Result<(), StoreError> {
        self.commit_fenced(b, None).await
    }

    /// Writes one batch in one transaction, first renewing (`owner`, `until`, `now`)
    /// the lease of every account it touches: if one was lost to another replica,
    /// nothing is written and the error names it.
    pub async fn commit_fenced(
        &self,
        b: &Batch,
        fence: Option<(&str, u64, u64)>,
    ) -> Result<(), StoreError> {
        if b.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        if let Some((owner, until, now)) = fence {
            let mut accounts: Vec<&str> = b
                .accounts
                .iter()
                .map(|a| a.0.as_str())
                .chain(b.channels.iter().map(|c| c.payer.as_str()))
                .collect();
            accounts.sort_unstable();
            accounts.dedup();
            for account in accounts {
                let r = sqlx::query("UPDATE leases SET until = $1 WHERE account = $2 AND owner = $3 AND until >= $4")
                    .bind(i64_of(until))
                    .bind(account)
                    .bind(owner)
                    .bind(i64_of(now))
                    .execute(&mut *tx)
                    .await?;
                if r.rows_affected() == 0 {
                    return Err(StoreError::LeaseLost(account.to_owned()));
                }
            }
        }
        for (account, asset, f) in &b.accounts {
            sqlx::query(
                "INSERT INTO balances (account, asset, balance, funded) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (account, asset) DO UPDATE SET balance = excluded.balance, funded = excluded.funded",
            )
            .bind(account.as_str())
            .bind(asset.as_str())
            .bind(f.balance.to_string())
            .bind(f.funded.to_string())
            .execute(&mut *tx)
            .await?;
        }
        for c in &b.channels {
            let state =
                serde_json::to_string(&c.state).map_err(|e| corrupt("channels", "state", e))?;
            sqlx::query(
                "INSERT INTO channels (id, payer, provider, asset, deposit, spent, nonce, opened, expires, state) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (id) DO UPDATE SET deposit = excluded.deposit, spent = excluded.spent, \
                 nonce = excluded.nonce, state = excluded.state",
            )
            .bind(c.id.as_str())
            .bind(c.payer.as_str())
            .bind(c.provider.as_str())
            .bind(c.asset.as_str())
            .bind(c.deposit.to_string())
            .bind(c.spent.to_string())
            .bind(i64_of(c.nonce))
            .bind(i64_of(c.opened))
            .bind(i64_of(c.expires))
            .bind(state)
            .execute(&mut *tx)
            .await?;
        }
        for r in &b.requests {
            sqlx::query(
                "INSERT INTO requests (id, request_id, key_id, account, asset, channel, charged, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(format!("rq_{}", uuid::Uuid::new_v4().simple()))
            .bind(r.id.as_str())
            .bind(r.key.clone())
            .bind(r.account.as_str())
            .bind(r.asset.as_str())
            .bind(r.channel.clone())
            .bind(r.charged.to_string())
            .bind(i64_of(r.at))
            .execute(&mut *tx)
            .await?;
        }
        for (asset, p) in &b.pools {
            sqlx::query(
                "INSERT INTO pools (asset, treasury, burned, stakers) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (asset) DO UPDATE SET treasury = excluded.treasury, burned = excluded.burned, stakers = excluded.stakers",
            )
            .bind(asset.as_str())
            .bind(p.treasury.to_string())
            .bind(p.burned.to_string())
            .bind(p.stakers.to_string())
            .execute(&mut *tx)
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
            .execute(&mut *tx)
            .await?;
        }
        crate::money::bonds_store::write(&mut tx, b).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes (or renews) the lease of `account` for `owner` until `until`; false
    /// when another replica holds it past `now`.
    pub async fn claim(
        &self,
        account: &str,
        owner: &str,
        until: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO leases (account, owner, until) VALUES ($1, $2, $3) \
             ON CONFLICT (account) DO UPDATE SET owner = excluded.owner, until = excluded.until \
             WHERE leases.owner = excluded.owner OR leases.until < $4",
        )
        .bind(account)
        .bind(owner)
        .bind(i64_of(until))
        .bind(i64_of(now))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Gives up leases (idle accounts, shutdown).
    pub async fn release(&self, owner: &str, accounts: &[String]) -> Result<(), StoreError> {
        for a in accounts {
            sqlx::query("DELETE FROM leases WHERE account = $1 AND owner = $2")
                .bind(a.as_str())
                .bind(owner)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The paying account of a channel.
    pub async fn channel_payer(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT payer FROM channels WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<String, _>(0))
            .transpose()
            .map_err(StoreError::from)
    }

    /// Accounts with an open or disputed channel (claimed and reconciled at start).
    pub async fn accounts_with_channels(&self) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT payer FROM channels WHERE state NOT LIKE '%closed%'")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }

    /// One account's money as stored (read after taking its lease).
    pub async fn account_state(&self, account: &str, now: u64) -> Result<AccountState, StoreError> {
        let funds = self.balances_of(account).await?;
        let mut channels = Vec::new();
        for row in sqlx::query("SELECT id, payer, provider, asset, deposit, spent, nonce, opened, expires, state FROM channels WHERE payer = $1")
            .bind(account)
            .fetch_all(&self.pool)
            .await?
        {
            let c = channel_row(&row)?;
            let v = sqlx::query("SELECT voucher FROM vouchers WHERE channel = $1").bind(c.id.as_str()).fetch_optional(&self.pool).await?;
            let v = match v {
                Some(r) => Some(serde_json::from_str::<Voucher>(&r.try_get::<String, _>(0)?).map_err(|e| corrupt("vouchers", "voucher", e))?),
                None => None,
            };
            channels.push((c, v));
        }
        let since = i64_of(now.saturating_sub(crate::money::scope::DAY));
        let mut keys: std::collections::BTreeMap<String, Vec<(u64, u128)>> =
            std::collections::BTreeMap::new();
        for row in sqlx::query("SELECT id FROM api_keys WHERE account = $1")
            .bind(account)
            .fetch_all(&self.pool)
            .await?
        {
            keys.insert(row.try_get(0)?, Vec::new());
        }
        for row in sqlx::query("SELECT key_id, at, charged FROM requests WHERE account = $1 AND key_id IS NOT NULL AND at > $2 ORDER BY at")
            .bind(account)
            .bind(since)
            .fetch_all(&self.pool)
            .await?
        {
            let key: String = row.try_get(0)?;
            let amount = amount_of(&row.try_get::<String, _>(2)?, "requests", "charged")?;
            keys.entry(key).or_default().push((u64_of(row.try_get(1)?), amount));
        }
        Ok(AccountState {
            funds,
            channels,
            keys: keys.into_iter().collect(),
        })
    }

    /// Adds an account with a starting balance (its `funded` too).
    pub async fn put_account(
        &self,
        a: &AccountRecord,
        funding: Option<(Asset, u128)>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO accounts (id, name, asset, identity, created) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(a.id.as_str())
        .bind(a.name.as_str())
        .bind(a.asset.as_str())
        .bind(a.identity.clone())
        .bind(i64_of(a.created))
        .execute(&mut *tx)
        .await?;
        if let Some((asset, amount)) = funding {
            sqlx::query(
                "INSERT INTO balances (account, asset, balance, funded) VALUES ($1, $2, $3, $4)",
            )
            .bind(a.id.as_str())
            .bind(asset.as_str())
            .bind(amount.to_string())
            .bind(amount.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn put_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        let scope = serde_json::to_string(&k.scope).map_err(|e| corrupt("api_keys", "scope", e))?;
        sqlx::query("INSERT INTO api_keys (id, hash, account, name, scope, created, identity) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(k.id.as_str())
            .bind(k.hash.as_str())
            .bind(k.account.as_str())
            .bind(k.name.as_str())
            .bind(scope)
            .bind(i64_of(k.created))
            .bind(k.identity.clone())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// True when a key was revoked by this call.
    pub async fn revoke_key(&self, id: &str, at: u64) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE api_keys SET revoked = $1 WHERE id = $2 AND revoked IS NULL")
            .bind(i64_of(at))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn put_voucher(&self, v: &Voucher) -> Result<(), StoreError> {
        let body = serde_json::to_string(v).map_err(|e| corrupt("vouchers", "voucher", e))?;
        sqlx::query(
            "INSERT INTO vouchers (channel, nonce, voucher) VALUES ($1, $2, $3) \
             ON CONFLICT (channel) DO UPDATE SET nonce = excluded.nonce, voucher = excluded.voucher \
             WHERE vouchers.nonce < excluded.nonce",
        )
        .bind(v.channel_id.as_str())
        .bind(i64_of(v.nonce))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn put_slash(&self, s: &Slash) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO slashes (id, provider, reason, detail, stake_before, amount, stake_after, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(s.id.as_str())
        .bind(s.provider.as_str())
        .bind(s.reason.as_str())
        .bind(s.detail.as_str())
        .bind(s.stake_before.to_string())
        .bind(s.amount.to_string())
        .bind(s.stake_after.to_string())
        .bind(i64_of(s.at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn put_document(&self, kind: &str, id: &str, body: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO documents (kind, id, body) VALUES ($1, $2, $3) ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body")
            .bind(kind)
            .bind(id)
            .bind(body)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn documents(&self, kind: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT id, body FROM documents WHERE kind = $1")
            .bind(kind)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
            .collect()
    }

    /// One key by its hash, with its account and balances (for a key made by
    /// another process after this one loaded).
    pub async fn key_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<(KeyRecord, AccountRecord, Vec<(Asset, Funds)>)>, StoreError> {
        let Some(row) = sqlx::query("SELECT id, hash, account, name, scope, created, identity FROM api_keys WHERE hash = $1 AND revoked IS NULL")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let key = key_row(&row)?;
        let Some(acct) =
            sqlx::query("SELECT id, name, asset, identity, created FROM accounts WHERE id = $1")
                .bind(key.account.as_str())
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let acct = account_row(&acct)?;
        let funds = self.balances_of(&acct.id).await?;
        Ok(Some((key, acct, funds)))
    }

    async fn balances_of(&self, account: &str) -> Result<Vec<(Asset, Funds)>, StoreError> {
        let rows = sqlx::query("SELECT asset, balance, funded FROM balances WHERE account = $1")
            .bind(account)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(funds_row)
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.into_iter().map(|(_, a, f)| (a, f)).collect())
    }

    /// Accounts, keys, pools, earnings and slashes (see [`Snapshot`]).
    pub async fn load(&self) -> Result<Snapshot, StoreError> {
        let mut s = Snapshot::default();
        for row in sqlx::query("SELECT id, name, asset, identity, created FROM accounts")
            .fetch_all(&self.pool)
            .await?
        {
            s.accounts.push(account_row(&row)?);
        }
        for row in sqlx::query("SELECT id, hash, account, name, scope, created, identity FROM api_keys WHERE revoked IS NULL").fetch_all(&self.pool).await? {
            s.keys.push(key_row(&row)?);
        }
        for row in sqlx::query("SELECT asset, treasury, burned, stakers FROM pools")
            .fetch_all(&self.pool)
            .await?
        {
            s.pools.push((
                asset_of(&row.try_get::<String, _>(0)?, "pools")?,
                Pools {
                    treasury: amount_of(&row.try_get::<String, _>(1)?, "pools", "treasury")?,
                    burned: amount_of(&row.try_get::<String, _>(2)?, "pools", "burned")?,
                    stakers: amount_of(&row.try_get::<String, _>(3)?, "pools", "stakers")?,
                },
            ));
        }
        for row in sqlx::query("SELECT provider, asset, amount FROM earnings")
            .fetch_all(&self.pool)
            .await?
        {
            s.earnings.push((
                row.try_get(0)?,
                asset_of(&row.try_get::<String, _>(1)?, "earnings")?,
                amount_of(&row.try_get::<String, _>(2)?, "earnings", "amount")?,
            ));
        }
        for row in sqlx::query("SELECT id, provider, reason, detail, stake_before, amount, stake_after, at FROM slashes ORDER BY at")
            .fetch_all(&self.pool)
            .await?
        {
            let reason: String = row.try_get(2)?;
            s.slashes.push(Slash {
                id: row.try_get(0)?,
                provider: row.try_get(1)?,
                reason: serde_json::from_value(serde_json::Value::String(reason)).map_err(|e| corrupt("slashes", "reason", e))?,
                detail: row.try_get(3)?,
                stake_before: amount_of(&row.try_get::<String, _>(4)?, "slashes", "stake_before")?,
                amount: amount_of(&row.try_get::<String, _>(5)?, "slashes", "amount")?,
                stake_after: amount_of(&row.try_get::<String, _>(6)?, "slashes", "stake_after")?,
                at: u64_of(row.try_get(7)?),
            });
        }
        Ok(s)
    }

    /// Every recorded request's id and charge, oldest first (for tests and audits).
    pub async fn charges_by_request(&self) -> Result<Vec<(String, u128)>, StoreError> {
        let rows = sqlx::query("SELECT request_id, charged FROM requests ORDER BY at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>(0)?,
                    amount_of(&r.try_get::<String, _>(1)?, "requests", "charged")?,
                ))
            })
            .collect()
    }
}

fn asset_of(text: &str, table: &'static str) -> Result<Asset, StoreError> {
    Asset::from_str(text).map_err(|_| corrupt(table, "asset", format!("unknown asset {text:?}")))
}

fn amount_of(text: &str, table: &'static str, column: &'static str) -> Result<u128, StoreError> {
    decimal::parse(text).map_err(|e| corrupt(table, column, e))
}

fn channel_row(row: &sqlx::any::AnyRow) -> Result<Channel, StoreError> {
    let state: String = row.try_get(9)?;
    Ok(Channel {
        id: row.try_get(0)?,
        payer: row.try_get(1)?,
        provider: row.try_get(2)?,
        asset: asset_of(&row.try_get::<String, _>(3)?, "channels")?,
        deposit: amount_of(&row.try_get::<String, _>(4)?, "channels", "deposit")?,
        spent: amount_of(&row.try_get::<String, _>(5)?, "channels", "spent")?,
        nonce: u64_of(row.try_get(6)?),
        opened: u64_of(row.try_get(7)?),
        expires: u64_of(row.try_get(8)?),
        state: serde_json::from_str::<State>(&state)
            .map_err(|e| corrupt("channels", "state", e))?,
    })
}

fn account_row(row: &sqlx::any::AnyRow) -> Result<AccountRecord, StoreError> {
    Ok(AccountRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        asset: asset_of(&row.try_get::<String, _>(2)?, "accounts")?,
        identity: row.try_get(3)?,
        balances: Default::default(),
        created: u64_of(row.try_get(4)?),
    })
}

fn key_row(row: &sqlx::any::AnyRow) -> Result<KeyRecord, StoreError> {
    let scope: String = row.try_get(4)?;
    Ok(KeyRecord {
        id: row.try_get(0)?,
        hash: row.try_get(1)?,
        account: row.try_get(2)?,
        name: row.try_get(3)?,
        scope: serde_json::from_str::<KeyScope>(&scope)
            .map_err(|e| corrupt("api_keys", "scope", e))?,
        created: u64_of(row.try_get(5)?),
        identity: row.try_get(6)?,
    })
}

fn funds_row(row: &sqlx::any::AnyRow) -> Result<(String, Asset, Funds), StoreError> {
    funds_row_at(row, 0)
}

fn funds_row_at(row: &sqlx::any::AnyRow, at: usize) -> Result<(String, Asset, Funds), StoreError> {
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
