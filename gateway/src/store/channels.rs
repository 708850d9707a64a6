//! Channels and their vouchers, and one account's money as stored.

use sqlx::Row;
use tenzro_attest::voucher::Voucher;

use super::{Store, StoreError, amount_of, asset_of, corrupt, i64_of, u64_of};
use crate::money::book::Funds;
use crate::money::channel::{Channel, State};
use crate::pricing::Asset;

/// One account's money as stored: funds, channels with their latest vouchers, and
/// each key's charges of the last 24 h.
#[derive(Debug, Default)]
pub struct AccountState {
    pub funds: Vec<(Asset, Funds)>,
    pub channels: Vec<(Channel, Option<Voucher>)>,
    pub keys: Vec<(String, Vec<(u64, u128)>)>,
}

impl Store {
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
}

pub(super) fn channel_row(row: &sqlx::any::AnyRow) -> Result<Channel, StoreError> {
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
