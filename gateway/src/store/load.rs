//! What the gateway loads at start, and the request and slash records.

use sqlx::Row;

use super::accounts::{account_row, key_row};
use super::{Store, StoreError, amount_of, asset_of, corrupt, i64_of, u64_of};
use crate::money::book::Pools;
use crate::money::slashing::Slash;
use crate::pricing::Asset;
use crate::store::records::{AccountRecord, KeyRecord};

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

impl Store {
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
            s.slashes.push(slash_of(&row)?);
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

/// One row of `SELECT id, provider, reason, detail, stake_before, amount,
/// stake_after, at FROM slashes` (also read by the cluster's reconcile).
pub(super) fn slash_of(row: &sqlx::any::AnyRow) -> Result<Slash, StoreError> {
    let reason: String = row.try_get(2)?;
    Ok(Slash {
        id: row.try_get(0)?,
        provider: row.try_get(1)?,
        reason: serde_json::from_value(serde_json::Value::String(reason))
            .map_err(|e| corrupt("slashes", "reason", e))?,
        detail: row.try_get(3)?,
        stake_before: amount_of(&row.try_get::<String, _>(4)?, "slashes", "stake_before")?,
        amount: amount_of(&row.try_get::<String, _>(5)?, "slashes", "amount")?,
        stake_after: amount_of(&row.try_get::<String, _>(6)?, "slashes", "stake_after")?,
        at: u64_of(row.try_get(7)?),
    })
}
