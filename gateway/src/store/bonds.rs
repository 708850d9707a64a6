//! The store's side of bonds (`migrations/0004_bonds.sql`): bond rows and applied
//! slash ids, written inside the group commit's transaction so a bond and the
//! balance or pool it moved money from change together.

use std::collections::BTreeMap;
use std::str::FromStr;

use sqlx::Row;

use crate::money::bonds::{Bond, EarnedAmount};
use crate::money::book::Batch;
use crate::money::decimal;
use crate::pricing::Asset;
use crate::store::{Store, StoreError};

fn corrupt(column: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table: "bonds",
        column,
        message: message.to_string(),
    }
}

fn amount(text: &str, column: &'static str) -> Result<u128, StoreError> {
    decimal::parse(text).map_err(|e| corrupt(column, e))
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Writes a batch's bonds and applied slashes in the commit's transaction.
pub(crate) async fn write(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    b: &Batch,
) -> Result<(), StoreError> {
    for bond in &b.bonds {
        let earned = serde_json::to_string(&bond.earned).map_err(|e| corrupt("earned", e))?;
        sqlx::query(
            "INSERT INTO bonds (provider_key, provider_id, owner, asset, bonded, unbonding, unbonding_until, slashed, earned) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (provider_key) DO UPDATE SET bonded = excluded.bonded, unbonding = excluded.unbonding, \
             unbonding_until = excluded.unbonding_until, slashed = excluded.slashed, earned = excluded.earned",
        )
        .bind(bond.provider_key.as_str())
        .bind(bond.provider_id.as_str())
        .bind(bond.owner.as_str())
        .bind(bond.asset.as_str())
        .bind(bond.bonded.to_string())
        .bind(bond.unbonding.to_string())
        .bind(i64_of(bond.unbonding_until))
        .bind(bond.slashed.to_string())
        .bind(earned)
        .execute(&mut **tx)
        .await?;
    }
    for s in &b.applied_slashes {
        sqlx::query(
            "INSERT INTO bond_slashes (slash_id, provider_key, amount, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (slash_id) DO NOTHING",
        )
        .bind(s.slash_id.as_str())
        .bind(s.provider_key.as_str())
        .bind(s.amount.to_string())
        .bind(i64_of(s.at))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    /// Every bond, by provider key.
    pub async fn bonds(&self) -> Result<Vec<Bond>, StoreError> {
        let rows = sqlx::query(
            "SELECT provider_key, provider_id, owner, asset, bonded, unbonding, unbonding_until, slashed, earned \
             FROM bonds ORDER BY provider_key",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let asset: String = r.try_get(3)?;
                let earned: String = r.try_get(8)?;
                let until: i64 = r.try_get(6)?;
                Ok(Bond {
                    provider_key: r.try_get(0)?,
                    provider_id: r.try_get(1)?,
                    owner: r.try_get(2)?,
                    asset: Asset::from_str(&asset)
                        .map_err(|_| corrupt("asset", format!("unknown asset {asset:?}")))?,
                    bonded: amount(&r.try_get::<String, _>(4)?, "bonded")?,
                    unbonding: amount(&r.try_get::<String, _>(5)?, "unbonding")?,
                    unbonding_until: u64::try_from(until).unwrap_or(0),
                    slashed: amount(&r.try_get::<String, _>(7)?, "slashed")?,
                    earned: serde_json::from_str::<BTreeMap<Asset, EarnedAmount>>(&earned)
                        .map_err(|e| corrupt("earned", e))?,
                })
            })
            .collect()
    }

    /// Ids of the slash records already applied to bonds.
    pub async fn applied_slashes(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT slash_id FROM bond_slashes")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }
}
