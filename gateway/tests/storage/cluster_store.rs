//! What replicas share through the store (issue 17, `store::cluster`): published
//! addresses and the lease holder, batched liveness that never goes back, revoked
//! keys since a time, and NOTIFY hints reaching a listener (PostgreSQL).

#![expect(clippy::unwrap_used, reason = "tests")]

use tenzro_gateway::accounts::{KeyScope, create_in_store};
use tenzro_gateway::pricing::Asset;
use tenzro_gateway::store::cluster::Holder;
use tenzro_gateway::store::registry::StoredProvider;
use tenzro_models::api::RegisterRequest;

use crate::common::backends;

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
        store
            .put_replica("r1", "http://10.0.0.1:8080", 105)
            .await
            .unwrap();
        store
            .put_replica("r1", "http://10.0.0.1:8081", 110)
            .await
            .unwrap();
        assert_eq!(
            store.lease_holder(&acct.id).await.unwrap(),
            Some(Holder {
                owner: "r1".into(),
                until: 130,
                address: Some("http://10.0.0.1:8081".into()),
                seen: 110,
            }),
            "{url}"
        );
        store.drop_replica("r1").await.unwrap();
        assert_eq!(
            store.lease_holder(&acct.id).await.unwrap().unwrap().address,
            None
        );

        // Liveness in one batch: raised, never lowered; more ids than one chunk.
        for id in ["a", "b"] {
            store.put_registered(&provider(id)).await.unwrap();
        }
        let mut seen: Vec<(String, u64)> = (0..1200).map(|i| (format!("x{i}"), 500)).collect();
        seen.push(("a".into(), 200));
        seen.push(("b".into(), 50));
        store.flush_seen(&seen).await.unwrap();
        let rows = store.registered_since(0).await.unwrap();
        let last: Vec<(String, u64)> = rows
            .iter()
            .map(|p| (p.registration.provider_id.clone(), p.last_seen))
            .collect();
        assert!(last.contains(&("a".into(), 500)), "{url}: {last:?}");
        assert!(
            last.contains(&("b".into(), 500)),
            "{url}: one timestamp per chunk"
        );
        store.flush_seen(&[("a".into(), 300)]).await.unwrap();
        assert_eq!(
            store.registered_one("a").await.unwrap().unwrap().last_seen,
            500
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
