//! Identities in the store, one row each (`migrations/0006_identities.sql`):
//! registering or changing an identity writes only the rows it changed. The
//! registry that older gateways kept as one document is moved into rows on start.

use sqlx::Row;
use tenzro_attest::PublicKey;
use tenzro_identity::{Did, Identities, Identity};

use crate::clock::unix_now;
use crate::store::{Store, StoreError};

/// The kind and id of the whole-registry document older gateways wrote.
pub const LEGACY_DOCUMENT: (&str, &str) = ("identities", "registry");

fn corrupt(column: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table: "identities",
        column,
        message: message.to_string(),
    }
}

/// One identity as its row: DID, controller, JSON body.
pub fn row_of(identity: &Identity) -> Result<(String, Option<String>, String), StoreError> {
    let body = serde_json::to_string(identity).map_err(|e| corrupt("body", e))?;
    Ok((
        identity.did().to_string(),
        identity.controller().map(ToString::to_string),
        body,
    ))
}

impl Store {
    /// Writes identity rows (inserted or replaced) in one transaction, `updated` at
    /// `now` (Unix seconds, from the caller's clock).
    pub async fn put_identities(
        &self,
        rows: &[(String, Option<String>, String)],
        now: u64,
    ) -> Result<(), StoreError> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        for (did, controller, body) in rows {
            sqlx::query(
                "INSERT INTO identities (did, controller, body, updated) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (did) DO UPDATE SET controller = excluded.controller, body = excluded.body, updated = excluded.updated",
            )
            .bind(did.as_str())
            .bind(controller.clone())
            .bind(body.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Revokes every key whose scope names `key_id` among its ancestors (the keys
    /// it delegated to, at any depth); returns how many.
    pub async fn revoke_delegated_keys(&self, key_id: &str, at: u64) -> Result<u64, StoreError> {
        let Some(pattern) = delegated_pattern(key_id) else {
            return Ok(0);
        };
        let r = sqlx::query(sqlx::AssertSqlSafe(self.revoke_delegated_sql()))
            .bind(i64::try_from(at).unwrap_or(i64::MAX))
            .bind(pattern)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Revokes key `key_id` and every key delegated from it in one transaction,
    /// so that a failure half-way never leaves the key revoked and its delegates
    /// live (a retry would find nothing left to revoke). True when `key_id`
    /// itself was revoked by this call; with how many delegates were.
    pub async fn revoke_key_and_delegated(
        &self,
        key_id: &str,
        at: u64,
    ) -> Result<(bool, u64), StoreError> {
        let at = i64::try_from(at).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        let own = sqlx::query(sqlx::AssertSqlSafe(self.revoke_key_sql()))
            .bind(at)
            .bind(key_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let mut delegated = 0;
        if let Some(pattern) = delegated_pattern(key_id) {
            delegated = sqlx::query(sqlx::AssertSqlSafe(self.revoke_delegated_sql()))
                .bind(at)
                .bind(pattern)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok((own > 0, delegated))
    }

    /// `revoke_delegated_keys`' statement: `$1` the stamp (no earlier than the
    /// store's clock, as `revoke_key`), `$2` the [`delegated_pattern`].
    fn revoke_delegated_sql(&self) -> String {
        format!(
            "UPDATE api_keys SET revoked = {} WHERE revoked IS NULL AND scope LIKE $2",
            self.not_before_now("$1")
        )
    }

    /// Trusts (or updates) a credential issuer.
    pub async fn put_issuer(&self, did: &Did, key: &PublicKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO identity_issuers (did, public_key) VALUES ($1, $2) \
             ON CONFLICT (did) DO UPDATE SET public_key = excluded.public_key",
        )
        .bind(did.to_string())
        .bind(key.to_hex())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The registry from its rows; when there are none, from the whole-registry
    /// document of older gateways (then written as rows).
    pub async fn load_identities(&self) -> Result<Identities, StoreError> {
        let rows = sqlx::query("SELECT body FROM identities")
            .fetch_all(&self.pool)
            .await?;
        let issuers = sqlx::query("SELECT did, public_key FROM identity_issuers")
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() && issuers.is_empty() {
            return self.migrate_legacy_identities().await;
        }
        let mut identities = Vec::with_capacity(rows.len());
        for r in &rows {
            let body: String = r.try_get(0)?;
            identities
                .push(serde_json::from_str::<Identity>(&body).map_err(|e| corrupt("body", e))?);
        }
        let mut trusted = Vec::with_capacity(issuers.len());
        for r in &issuers {
            let did: String = r.try_get(0)?;
            let key: String = r.try_get(1)?;
            let did = did.parse::<Did>().map_err(|e| StoreError::Corrupt {
                table: "identity_issuers",
                column: "did",
                message: e.to_string(),
            })?;
            let key = PublicKey::from_hex(&key).map_err(|e| StoreError::Corrupt {
                table: "identity_issuers",
                column: "public_key",
                message: e.to_string(),
            })?;
            trusted.push((did, key));
        }
        Identities::from_rows(identities, trusted).map_err(|e| corrupt("body", e))
    }

    async fn migrate_legacy_identities(&self) -> Result<Identities, StoreError> {
        let Some((_, body)) = self
            .documents(LEGACY_DOCUMENT.0)
            .await?
            .into_iter()
            .find(|(id, _)| id == LEGACY_DOCUMENT.1)
        else {
            return Ok(Identities::new());
        };
        let reg: Identities = serde_json::from_str(&body).map_err(|e| corrupt("body", e))?;
        let rows: Vec<_> = reg.iter().map(row_of).collect::<Result<_, _>>()?;
        // A one-off at start, before any clock is shared: the system's time.
        self.put_identities(&rows, unix_now()).await?;
        for (did, key) in reg.trusted_issuers() {
            self.put_issuer(did, key).await?;
        }
        tracing::info!(
            identities = rows.len(),
            "moved the identity registry document into rows"
        );
        Ok(reg)
    }
}

/// Documents: JSON bodies by kind and id (the identities' legacy rows).
impl Store {
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
}

/// The `LIKE` pattern that finds the keys delegated from `key_id` in their stored
/// scope; `None` for an id that is not a key id (key ids are `key_` and hex: no
/// `%`, and `_` also matches itself).
fn delegated_pattern(key_id: &str) -> Option<String> {
    key_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        .then(|| format!("%\"key_id\":\"{key_id}\"%"))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use tenzro_attest::ProviderKey;
    use tenzro_identity::{Authority, KycTier};

    use super::*;

    fn key(seed: u8) -> PublicKey {
        ProviderKey::from_seed(&[seed; 32]).public_key()
    }

    async fn round_trip(store: Store) {
        // Nothing stored: an empty registry.
        assert!(store.load_identities().await.unwrap().is_empty());
        let mut reg = Identities::new();
        let h = reg
            .register_human("Ada", KycTier::new(2).unwrap(), key(1), 10)
            .unwrap();
        let a = reg
            .register_agent(Some(&h), vec!["chat".into()], key(2), 11)
            .unwrap();
        reg.activate(&a, 12).unwrap();
        let b = reg
            .register_agent(Some(&a), Vec::new(), key(3), 13)
            .unwrap();
        reg.activate(&b, 14).unwrap();
        let issuer: Did = "did:tenzro:machine:5f0c1d2e-3b4a-4c5d-8e6f-708192a3b4c5"
            .parse()
            .unwrap();
        reg.trust_issuer(issuer.clone(), key(9));
        let rows: Vec<_> = reg.iter().map(row_of).collect::<Result<_, _>>().unwrap();
        store.put_identities(&rows, unix_now()).await.unwrap();
        store.put_issuer(&issuer, &key(9)).await.unwrap();
        assert_eq!(store.load_identities().await.unwrap(), reg);

        // A change writes only the rows it changed.
        let changed = reg.suspend_as(&a, Authority::Admin, 20).unwrap();
        let rows: Vec<_> = changed
            .iter()
            .map(|d| row_of(reg.resolve(d).unwrap()).unwrap())
            .collect();
        assert_eq!(rows.len(), 2, "a and b (by cascade)");
        store.put_identities(&rows, unix_now()).await.unwrap();
        let back = store.load_identities().await.unwrap();
        assert_eq!(back, reg);
        assert!(back.resolve(&a).unwrap().status().suspended_by_admin());
        assert_eq!(back.live_agents_of(&h), 2);
    }

    #[tokio::test]
    async fn rows_round_trip_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        round_trip(Store::open(&url).await.unwrap()).await;
    }

    /// On a fresh database of `TENZRO_TEST_POSTGRES_URL` (`scripts/postgres`).
    #[tokio::test]
    async fn rows_round_trip_on_postgres() {
        use sqlx::Executor;
        let Ok(admin) = std::env::var("TENZRO_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must set TENZRO_TEST_POSTGRES_URL"
            );
            eprintln!("TENZRO_TEST_POSTGRES_URL unset: skipped");
            return;
        };
        sqlx::any::install_default_drivers();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
        pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        pool.close().await;
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        round_trip(Store::open(&url).await.unwrap()).await;
    }

    #[tokio::test]
    async fn the_legacy_document_moves_into_rows() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let store = Store::open(&url).await.unwrap();
        let mut reg = Identities::new();
        reg.register_human("Ada", KycTier::new(0).unwrap(), key(1), 10)
            .unwrap();
        store
            .put_document(
                LEGACY_DOCUMENT.0,
                LEGACY_DOCUMENT.1,
                &serde_json::to_string(&reg).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(store.load_identities().await.unwrap(), reg);
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM identities")
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            store.load_identities().await.unwrap(),
            reg,
            "read from rows now"
        );
    }
}
