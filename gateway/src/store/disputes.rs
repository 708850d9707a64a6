//! What the store knows about channels that must settle without their payer: the
//! parties of a channel (to check a provider's dispute signature before loading the
//! account), and the accounts with a dispute whose window has ended or an open
//! channel past its expiry. The sweep ([`crate::tasks::committer::sweep`]) takes
//! those accounts' leases, so they settle on the replica that holds them, even
//! after the replica that held them died.

use sqlx::Row;

use crate::money::channel::State;
use crate::store::{Store, StoreError};

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// The (payer, provider) of a channel.
    pub async fn channel_parties(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query("SELECT payer, provider FROM channels WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?))),
            None => Ok(None),
        }
    }

    /// Accounts with a disputed channel whose challenge window ended before `now`,
    /// or an open channel that expired by `now`.
    pub async fn accounts_to_settle(&self, now: u64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT payer, state FROM channels \
             WHERE (state LIKE '%\"open\"%' AND expires <= $1) OR state LIKE '%\"disputed\"%'",
        )
        .bind(i64_of(now))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for row in rows {
            let payer: String = row.try_get(0)?;
            let state: String = row.try_get(1)?;
            let due = match serde_json::from_str::<State>(&state) {
                Ok(State::Disputed { deadline, .. }) => now > deadline,
                Ok(State::Open) => true,
                Ok(State::Closed { .. }) => false,
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        table: "channels",
                        column: "state",
                        message: e.to_string(),
                    });
                }
            };
            if due {
                out.push(payer);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}
