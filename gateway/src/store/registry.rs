//! The registry in the store (migration 0003): registered providers (the id–key
//! binding, endpoint, models, prices, TEE kind, the latest attestation verdict) and
//! bans. Slashes have their own table (money/store.rs).
//!
//! The registry marks providers whose row is out of date; [`save`] writes them (the
//! register and ban handlers call it before answering, [`persist_loop`] every
//! second for verdicts and heartbeats). [`restore`] loads bans, slashes and the
//! providers heard from within the stale time at start.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tenzro_models::api::RegisterRequest;
use tokio_util::sync::CancellationToken;

use crate::providers::registry::Registry;
use crate::providers::verdict::AttestationVerdict;
use crate::store::{Store, StoreError};

/// One stored registered provider.
#[derive(Debug, Clone)]
pub struct StoredProvider {
    pub registration: RegisterRequest,
    pub attestation: Option<AttestationVerdict>,
    /// Unix seconds.
    pub last_seen: u64,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn corrupt(table: &'static str, column: &'static str, e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        column,
        message: e.to_string(),
    }
}

impl Store {
    /// Inserts or replaces the row of registered provider `id`.
    pub async fn put_registered(&self, p: &StoredProvider) -> Result<(), StoreError> {
        let registration = serde_json::to_string(&p.registration)
            .map_err(|e| corrupt("registry_providers", "registration", e))?;
        let attestation = p
            .attestation
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| corrupt("registry_providers", "attestation", e))?;
        // `changed` on the store's clock: the other replicas' reconcile finds the
        // row whatever this replica's clock says (`Store::changed_since`).
        let sql = format!(
            "INSERT INTO registry_providers (id, public_key, registration, attestation, last_seen, changed) \
             VALUES ($1, $2, $3, $4, $5, {now}) ON CONFLICT (id) DO UPDATE SET \
             registration = excluded.registration, attestation = excluded.attestation, \
             last_seen = excluded.last_seen, changed = excluded.changed \
             WHERE registry_providers.public_key = excluded.public_key",
            now = self.now_sql()
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(p.registration.provider_id.as_str())
            .bind(p.registration.public_key.as_str())
            .bind(registration)
            .bind(attestation)
            .bind(i64_of(p.last_seen))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Registered providers heard from at or after `since` (Unix seconds).
    pub async fn registered_since(&self, since: u64) -> Result<Vec<StoredProvider>, StoreError> {
        let rows = sqlx::query(
            "SELECT registration, attestation, last_seen FROM registry_providers WHERE last_seen >= $1 ORDER BY id",
        )
        .bind(i64_of(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_provider).collect()
    }

    /// The public key bound to provider `id`, if it ever registered.
    pub async fn registered_key(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT public_key FROM registry_providers WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<String, _>(0)).transpose()?)
    }

    pub async fn put_ban(&self, id: &str, public_key: &str, at: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO registry_bans (id, public_key, at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(public_key)
        .bind(i64_of(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_ban(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM registry_bans WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every banned id.
    pub async fn bans(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM registry_bans ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }
}

/// One row of `SELECT registration, attestation, last_seen FROM registry_providers`.
pub(super) fn stored_provider(r: &sqlx::any::AnyRow) -> Result<StoredProvider, StoreError> {
    let registration = serde_json::from_str(&r.try_get::<String, _>(0)?)
        .map_err(|e| corrupt("registry_providers", "registration", e))?;
    let attestation = r
        .try_get::<Option<String>, _>(1)?
        .map(|a| serde_json::from_str(&a))
        .transpose()
        .map_err(|e| corrupt("registry_providers", "attestation", e))?;
    Ok(StoredProvider {
        registration,
        attestation,
        last_seen: u64::try_from(r.try_get::<i64, _>(2)?).unwrap_or(0),
    })
}

/// Writes the rows the registry marked out of date (providers and their ban
/// state); returns how many. On an error the rest stay marked.
pub async fn save(registry: &Registry, store: &Store) -> Result<usize, StoreError> {
    let ids = registry.take_dirty();
    let n = ids.len();
    for (i, id) in ids.iter().enumerate() {
        if let Err(e) = save_one(registry, store, id).await {
            registry.requeue_dirty(ids[i..].to_vec());
            return Err(e);
        }
    }
    Ok(n)
}

async fn save_one(registry: &Registry, store: &Store, id: &str) -> Result<(), StoreError> {
    let stored = registry.stored(id);
    let key = match &stored {
        Some((r, _, _)) => Some(r.public_key.clone()),
        None => store.registered_key(id).await?,
    };
    if let Some((registration, attestation, last_seen)) = stored {
        store
            .put_registered(&StoredProvider {
                registration,
                attestation,
                last_seen,
            })
            .await?;
    }
    // Only a ban or unban made here is written: a row saved for another reason
    // (a heartbeat, a verdict) must not undo another replica's ban.
    if registry.take_ban_change(id) {
        let written = if registry.is_banned(id) {
            store
                .put_ban(id, key.as_deref().unwrap_or(""), registry.unix_now())
                .await
        } else {
            store.delete_ban(id).await
        };
        if let Err(e) = written {
            registry.requeue_ban_change(id);
            return Err(e);
        }
    }
    // Other replicas re-read the row (`crate::cluster`).
    store.notify("provider", id).await;
    Ok(())
}

/// Loads bans, slashes and the registered providers heard from within the stale
/// time (rows that no longer pass the registration checks are skipped, logged).
pub async fn restore(
    registry: &Registry,
    store: &Store,
    slashes: Vec<crate::money::slashing::Slash>,
) -> Result<usize, StoreError> {
    registry.restore_bans(store.bans().await?);
    registry.restore_slashes(slashes);
    let since = registry
        .unix_now()
        .saturating_sub(registry.config.stale_after.as_secs());
    let mut n = 0;
    for p in store.registered_since(since).await? {
        let id = p.registration.provider_id.clone();
        match registry.restore(p.registration, p.attestation) {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!(provider = %id, error = %e, "stored provider not loaded"),
        }
    }
    Ok(n)
}

/// Saves marked rows every `every` until `cancel`, then once more.
pub async fn persist_loop(
    registry: Arc<Registry>,
    store: Store,
    every: Duration,
    cancel: CancellationToken,
) {
    loop {
        let stop = tokio::select! {
            () = cancel.cancelled() => true,
            () = tokio::time::sleep(every) => false,
        };
        if let Err(e) = save(&registry, &store).await {
            tracing::error!(error = %e, "saving the registry failed; retrying");
        }
        if stop {
            break;
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
pub(crate) mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::money::slashing::Reason;
    use crate::providers::registry::RegistryConfig;
    use tenzro_attest::ProviderKey;
    use tenzro_models::api::{ModelCategory, ModelInfo, REGISTER_DOMAIN, Signed};

    /// A signed registration of `key` at `endpoint` serving model `m`, dated `now`
    /// (also the registry's shared-state tests' registration).
    pub(crate) fn signed_at(key: &ProviderKey, endpoint: &str, now: u64) -> Signed {
        let req = RegisterRequest {
            provider_id: key.did(),
            endpoint: endpoint.into(),
            public_key: key.public_key_hex(),
            models: vec![ModelInfo {
                id: "m".into(),
                name: None,
                version: None,
                category: ModelCategory::Llm,
                modality: None,
                price_per_token: "1000".into(),
                max_context: Some(1024),
                parameters: None,
                formats: vec![],
                tee_required: false,
                weight_sha256: None,
            }],
            stake: "0".into(),
            tee: "none".into(),
            max_concurrency: Some(2),
            heartbeat_interval_s: None,
            timestamp: now,
        };
        let payload = serde_json::to_string(&req).unwrap();
        let signature = key
            .sign(&Signed::signed_bytes(REGISTER_DOMAIN, &payload))
            .to_hex();
        Signed { payload, signature }
    }

    fn signed(key: &ProviderKey, endpoint: &str) -> Signed {
        signed_at(key, endpoint, crate::clock::unix_now())
    }

    async fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let mut v = vec![(Store::open(&url).await.unwrap(), Some(dir))];
        if let Ok(admin) = std::env::var("TENZRO_TEST_POSTGRES_URL") {
            use sqlx::Executor;
            let name = format!("t_{}", uuid::Uuid::new_v4().simple());
            let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
            pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .unwrap();
            pool.close().await;
            let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
            v.push((Store::open(&url).await.unwrap(), None));
        }
        v
    }

    /// Providers, their verdicts, bans and slashes survive a restart; the id stays
    /// bound to its key; stale rows stay out of memory; a ban outlives its provider.
    #[tokio::test]
    async fn the_registry_survives_a_restart() {
        for (store, _dir) in stores().await {
            let r = Registry::new(RegistryConfig::default(), ManualClock::new());
            let honest = ProviderKey::generate().unwrap();
            let banned = ProviderKey::generate().unwrap();
            r.register(&signed(&honest, "http://h:1"), crate::clock::unix_now())
                .unwrap();
            r.register(&signed(&banned, "http://b:1"), crate::clock::unix_now())
                .unwrap();
            r.set_bond(&banned.did(), 1000, false);
            let slash = r.ban(&banned.did(), "fraud").unwrap().unwrap();
            assert_eq!((slash.reason, slash.amount), (Reason::Ban, 1000));
            assert_eq!(r.bond(&banned.did()).0, 0);
            assert_eq!(save(&r, &store).await.unwrap(), 2);
            for s in r.take_unsaved_slashes() {
                store.put_slash(&s).await.unwrap();
            }

            let again = Registry::new(RegistryConfig::default(), ManualClock::new());
            let snap = store.load().await.unwrap();
            assert_eq!(restore(&again, &store, snap.slashes).await.unwrap(), 2);
            let e = again.get(&honest.did()).unwrap();
            assert_eq!(
                (e.info.endpoint.as_str(), e.info.public_key),
                ("http://h:1", Some(honest.public_key()))
            );
            assert!(
                !again.is_reached(&honest.did()),
                "reached again only once probed"
            );
            assert!(again.is_banned(&banned.did()));
            assert_eq!(again.slashed(&banned.did()), 1000);
            let err = again
                .register(&signed(&banned, "http://b:2"), crate::clock::unix_now())
                .unwrap_err();
            assert!(
                matches!(err, crate::providers::registry::RegistryError::Banned(_)),
                "{err}"
            );
            // Un-banning restores nothing slashed.
            again.unban(&banned.did()).unwrap();
            save(&again, &store).await.unwrap();
            assert!(store.bans().await.unwrap().is_empty());
            assert_eq!(again.slashed(&banned.did()), 1000);

            // A provider silent past the stale time is not loaded.
            assert_eq!(
                store
                    .registered_since(again.unix_now() - 5)
                    .await
                    .unwrap()
                    .len(),
                2
            );
            assert!(
                store
                    .registered_since(again.unix_now() + 20)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
