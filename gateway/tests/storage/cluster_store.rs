//! What replicas share through the store (issue 17, `store::cluster`): published
//! addresses and the lease holder, one process per replica id (a token claims it;
//! a dead holder's id is taken over), the store's clock, batched liveness that
//! never goes back, revoked
//! keys since a time, and NOTIFY hints reaching a listener (PostgreSQL).

#![expect(clippy::unwrap_used, reason = "tests")]

use tenzro_gateway::accounts::{KeyScope, create_in_store};
use tenzro_gateway::pricing::Asset;
use tenzro_gateway::store::cluster::ReplicaClaim;
use tenzro_gateway::store::registry::StoredProvider;
use tenzro_models::api::RegisterRequest;

use crate::common::backends;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Makes replica `id`'s heartbeat `by` seconds older, as if it had died then.
async fn age_replica(url: &str, id: &str, by: i64) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::query("UPDATE replicas SET seen = seen - $1 WHERE id = $2")
        .bind(by)
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

fn provider_seen(id: &str, last_seen: u64) -> StoredProvider {
    StoredProvider {
        last_seen,
        ..provider(id)
    }
}

fn provider(id: &str) -> StoredProvider {
    StoredProvider {
        registration: RegisterRequest {
            provider_id: id.into(),
            endpoint: "http://p:1".into(),
            public_key: format!("key-{id}"),
            models: vec![],
            stake: "0".into(),
            tee: "none".into(),
            max_concurrency: None,
            heartbeat_interval_s: None,
            timestamp: 0,
        },
        attestation: None,
        last_seen: 100,
    }
}

#[tokio::test]
async fn replicas_find_the_lease_holder_and_share_liveness_and_revocations() {
    for (url, store, _dir) in backends().await {
        let (_, acct, key) =
            create_in_store(&store, "dev", Asset::Tnzo, 100, KeyScope::default(), None)
                .await
                .unwrap();
        assert_eq!(store.lease_holder(&acct.id).await.unwrap(), None, "{url}");
        assert!(store.claim(&acct.id, "r1", 130, 100).await.unwrap());
        // Held by a replica that published no address: nowhere to forward.
        let h = store.lease_holder(&acct.id).await.unwrap().unwrap();
        assert_eq!((h.owner.as_str(), h.until, h.address), ("r1", 130, None));
        assert_eq!(
            store
                .claim_replica("r1", "t1", "http://10.0.0.1:8080", 6)
                .await
                .unwrap(),
            ReplicaClaim::Claimed
        );
        assert_eq!(
            store
                .claim_replica("r1", "t1", "http://10.0.0.1:8081", 6)
                .await
                .unwrap(),
            ReplicaClaim::Claimed,
            "{url}: its own token renews"
        );
        let h = store.lease_holder(&acct.id).await.unwrap().unwrap();
        assert_eq!(
            (h.owner.as_str(), h.until, h.address.as_deref()),
            ("r1", 130, Some("http://10.0.0.1:8081"))
        );
        assert!(h.seen_age <= 1, "{url}: on the store's clock: {h:?}");
        // A second process with the same id while the first beats: refused.
        let other = store
            .claim_replica("r1", "t2", "http://10.0.0.2:8080", 6)
            .await
            .unwrap();
        assert!(
            matches!(other, ReplicaClaim::InUse { age } if age <= 1),
            "{url}: {other:?}"
        );
        // The first one dies: its heartbeat ages past the window, the id is taken.
        age_replica(&url, "r1", 60).await;
        let aged = store.lease_holder(&acct.id).await.unwrap().unwrap();
        assert!(aged.seen_age >= 60, "{url}: {aged:?}");
        assert_eq!(
            store
                .claim_replica("r1", "t2", "http://10.0.0.2:8080", 6)
                .await
                .unwrap(),
            ReplicaClaim::Claimed,
            "{url}"
        );
        assert!(matches!(
            store
                .claim_replica("r1", "t1", "http://10.0.0.1:8081", 6)
                .await
                .unwrap(),
            ReplicaClaim::InUse { .. }
        ));
        // A shutdown removes only its own claim.
        store.drop_replica("r1", "t1").await.unwrap();
        assert!(
            store
                .lease_holder(&acct.id)
                .await
                .unwrap()
                .unwrap()
                .address
                .is_some()
        );
        store.drop_replica("r1", "t2").await.unwrap();
        assert_eq!(
            store.lease_holder(&acct.id).await.unwrap().unwrap().address,
            None
        );
        // A replica that does not forward publishes an empty address: nowhere to
        // forward either.
        store.claim_replica("r1", "t3", "", 6).await.unwrap();
        assert_eq!(
            store.lease_holder(&acct.id).await.unwrap().unwrap().address,
            None
        );
        let skew = store.db_now().await.unwrap().abs_diff(unix_now());
        assert!(skew <= 2, "{url}: the store's clock is this machine's here");

        // Liveness in one batch: raised, never lowered; more ids than one chunk.
        for id in ["a", "b"] {
            store.put_registered(&provider(id)).await.unwrap();
        }
        // Stamped with the store's clock (what every replica's reconcile compares
        // with), not the heard times of this replica's clock.
        let mut seen: Vec<(String, u64)> = (0..1200).map(|i| (format!("x{i}"), 500)).collect();
        seen.push(("a".into(), 200));
        seen.push(("b".into(), 50));
        let before = store.db_now().await.unwrap();
        store.flush_seen(&seen).await.unwrap();
        let rows = store.registered_since(before).await.unwrap();
        let mut ids: Vec<&str> = rows
            .iter()
            .map(|p| p.registration.provider_id.as_str())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "b"], "{url}: both chunks");
        store
            .put_registered(&provider_seen("c", u64::from(u32::MAX)))
            .await
            .unwrap();
        store.flush_seen(&[("c".into(), 300)]).await.unwrap();
        assert_eq!(
            store.registered_one("c").await.unwrap().unwrap().last_seen,
            u64::from(u32::MAX),
            "{url}: never lowered"
        );
        assert!(store.registered_one("nobody").await.unwrap().is_none());

        // Revocations since a time.
        assert!(!store.key_revoked(&key.id).await.unwrap());
        assert!(store.revoke_key(&key.id, 1000).await.unwrap());
        assert!(store.key_revoked(&key.id).await.unwrap());
        assert_eq!(
            store.revoked_since(1000).await.unwrap(),
            vec![key.id.clone()]
        );
        assert!(store.revoked_since(1001).await.unwrap().is_empty());

        // Bans by id.
        assert!(!store.is_banned_stored("a").await.unwrap());
        store.put_ban("a", "key-a", 10).await.unwrap();
        assert!(store.is_banned_stored("a").await.unwrap());

        // A hint reaches a listener on PostgreSQL; on SQLite it is a no-op.
        if !store.is_sqlite() {
            let mut l = sqlx::postgres::PgListener::connect(&url).await.unwrap();
            l.listen(tenzro_gateway::store::cluster::CHANNEL)
                .await
                .unwrap();
            store.notify("provider", "did:tenzro:x").await;
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), l.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n.payload(), "provider:did:tenzro:x");
        } else {
            store.notify("provider", "x").await;
        }
    }
}
