//! Accounts, their API keys and balances.

use sqlx::Row;

use super::{Store, StoreError, asset_of, corrupt, i64_of, u64_of};
use crate::money::book::Funds;
use crate::pricing::Asset;
use crate::store::records::{AccountRecord, KeyRecord, KeyScope};

impl Store {
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

    /// True when a key was revoked by this call. Stamped `at` (the writer's
    /// clock) or the store's clock, whichever is later, so that the reconcile of
    /// every replica (`revoked_since`, on the store's clock) finds it even when
    /// the writer's clock is slow and its hint was lost.
    pub async fn revoke_key(&self, id: &str, at: u64) -> Result<bool, StoreError> {
        let r = sqlx::query(sqlx::AssertSqlSafe(self.revoke_key_sql()))
            .bind(i64_of(at))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// `revoke_key`'s statement: `$1` the stamp, `$2` the key id.
    pub(super) fn revoke_key_sql(&self) -> String {
        format!(
            "UPDATE api_keys SET revoked = {} WHERE id = $2 AND revoked IS NULL",
            self.not_before_now("$1")
        )
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
}

pub(super) fn account_row(row: &sqlx::any::AnyRow) -> Result<AccountRecord, StoreError> {
    Ok(AccountRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        asset: asset_of(&row.try_get::<String, _>(2)?, "accounts")?,
        identity: row.try_get(3)?,
        balances: Default::default(),
        created: u64_of(row.try_get(4)?),
    })
}

pub(super) fn key_row(row: &sqlx::any::AnyRow) -> Result<KeyRecord, StoreError> {
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
