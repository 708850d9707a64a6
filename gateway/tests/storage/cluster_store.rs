//! What replicas share through the store (issue 17, `store::cluster`): published
//! addresses and the lease holder, one process per replica id (a token claims it;
//! a dead holder's id is taken over), the store's clock, batched liveness that
//! never goes back, revoked
//! keys since a time, and NOTIFY hints reaching a listener (PostgreSQL).

#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

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
        let r1 = tenzro_gateway::store::LeaseOwner {
            id: "r1",
            token: "t0",
        };
        assert_eq!(
            store.claim(&acct.id, r1, 130, 100).await.unwrap(),
            tenzro_gateway::store::Claim::Taken
        );
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

        // Revocations since a time (on the store's clock: never dated before it,
        // even when the writer's clock says 1000).
        assert!(!store.key_revoked(&key.id).await.unwrap());
        let before = store.db_now().await.unwrap();
        assert!(store.revoke_key(&key.id, 1000).await.unwrap());
        assert!(store.key_revoked(&key.id).await.unwrap());
        assert_eq!(
            store.revoked_since(before).await.unwrap(),
            vec![key.id.clone()]
        );
        assert!(store.revoked_since(before + 60).await.unwrap().is_empty());

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

/// A writer whose clock is an hour behind the store's, and whose hint is lost:
/// the reconcile of the other replicas (what changed since its last pass, on the
/// store's clock) still finds its registration and its revocations, delegated
/// keys included; a writer's later clock is kept; liveness stays as written.
#[tokio::test]
async fn a_slow_writers_rows_are_found_by_the_reconcile() {
    use tenzro_gateway::accounts::new_key;
    for (url, store, _dir) in backends().await {
        let (_, acct, key) =
            create_in_store(&store, "dev", Asset::Tnzo, 100, KeyScope::default(), None)
                .await
                .unwrap();
        let since = store.db_now().await.unwrap();
        let slow = since - 3600;
        store
            .put_registered(&provider_seen("late", slow))
            .await
            .unwrap();
        let found = store.changed_since(since).await.unwrap();
        assert_eq!(found.len(), 1, "{url}");
        assert_eq!(found[0].registration.provider_id, "late");
        assert_eq!(
            found[0].last_seen, slow,
            "{url}: liveness as the writer said"
        );
        assert!(
            store.registered_since(since).await.unwrap().is_empty(),
            "{url}: by the writer's clock it would have been missed"
        );
        // Batched liveness counts as a change too.
        store
            .put_registered(&provider_seen("beat", slow))
            .await
            .unwrap();
        store.flush_seen(&[("beat".into(), slow)]).await.unwrap();
        assert!(
            store
                .changed_since(since)
                .await
                .unwrap()
                .iter()
                .any(|p| p.registration.provider_id == "beat"),
            "{url}"
        );

        // A key and one it delegated to, revoked at the slow writer's time.
        let scope = KeyScope {
            ancestors: vec![tenzro_gateway::accounts::Ancestor {
                key_id: key.id.clone(),
                max_daily_spend: None,
            }],
            ..KeyScope::default()
        };
        let (_, child) = new_key(&acct.id, "child", scope, slow);
        store.put_key(&child).await.unwrap();
        assert!(store.revoke_key(&key.id, slow).await.unwrap());
        assert_eq!(store.revoke_delegated_keys(&key.id, slow).await.unwrap(), 1);
        let mut revoked = store.revoked_since(since).await.unwrap();
        revoked.sort_unstable();
        let mut want = vec![key.id.clone(), child.id.clone()];
        want.sort_unstable();
        assert_eq!(revoked, want, "{url}");
        // A writer's clock ahead of the store's is kept (found until then).
        let (_, _, ahead) =
            create_in_store(&store, "ahead", Asset::Tnzo, 1, KeyScope::default(), None)
                .await
                .unwrap();
        assert!(store.revoke_key(&ahead.id, since + 3600).await.unwrap());
        assert_eq!(
            store.revoked_since(since + 3000).await.unwrap(),
            vec![ahead.id.clone()],
            "{url}"
        );
    }
}

/// A stalled process whose replica id was taken over by a new process (the same
/// data directory, started after its heartbeat expired) is fenced out by its
/// token: its late commit (say, its shutdown commit) is refused and changes
/// nothing, and it can neither renew, take back nor release the new process's
/// lease; the new process takes the id's leases at once and commits.
#[tokio::test]
async fn a_process_whose_replica_id_was_taken_over_cannot_commit() {
    use tenzro_gateway::money::book::{Book, BookConfig};
    use tenzro_gateway::store::{Claim, Fence, LeaseOwner, StoreError};
    let old = LeaseOwner {
        id: "r1",
        token: "t1",
    };
    let new = LeaseOwner {
        id: "r1",
        token: "t2",
    };
    for (url, store, _dir) in backends().await {
        let (_, acct, _) =
            create_in_store(&store, "dev", Asset::Tnzo, 100, KeyScope::default(), None)
                .await
                .unwrap();
        let now = unix_now();
        let fence = |owner| Fence {
            owner,
            until: now + 30,
            now,
        };
        assert_eq!(
            store.claim_replica("r1", "t1", "", 6).await.unwrap(),
            ReplicaClaim::Claimed
        );
        assert_eq!(
            store.claim(&acct.id, old, now + 30, now).await.unwrap(),
            Claim::Taken
        );
        let book = Book::new(BookConfig::default());
        let s = store.account_state(&acct.id, now).await.unwrap();
        book.replace_account(&acct.id, &s.funds, s.channels, &s.keys, now)
            .unwrap();
        book.credit(&acct.id, Asset::Tnzo, 5).unwrap();
        store
            .commit_fenced(&book.take_dirty(), Some(fence(old)))
            .await
            .unwrap();

        // The old process stalls; its heartbeat ages; a new one claims the id and
        // takes the account's lease at once (the same id, not expired yet).
        age_replica(&url, "r1", 60).await;
        assert_eq!(
            store.claim_replica("r1", "t2", "", 6).await.unwrap(),
            ReplicaClaim::Claimed
        );
        assert_eq!(
            store.claim(&acct.id, new, now + 30, now).await.unwrap(),
            Claim::Taken,
            "{url}"
        );

        // The old process wakes up with a change in its book.
        book.credit(&acct.id, Asset::Tnzo, 7).unwrap();
        match store
            .commit_fenced(&book.take_dirty(), Some(fence(old)))
            .await
        {
            Err(StoreError::LeaseLost(a)) => assert_eq!(a, acct.id),
            other => panic!("{url}: a stale token passed the fence: {other:?}"),
        }
        let balance = |s: tenzro_gateway::store::AccountState| s.funds[0].1.balance;
        assert_eq!(
            balance(store.account_state(&acct.id, now).await.unwrap()),
            105,
            "{url}: the late commit wrote nothing"
        );
        assert!(
            !store.renew(&acct.id, old, now + 40).await.unwrap(),
            "{url}"
        );
        assert_eq!(
            store.claim(&acct.id, old, now + 40, now).await.unwrap(),
            Claim::HeldElsewhere,
            "{url}: the id's live process holds it"
        );
        store
            .release(old, std::slice::from_ref(&acct.id))
            .await
            .unwrap();
        let h = store.lease_holder(&acct.id).await.unwrap().unwrap();
        assert_eq!((h.owner.as_str(), h.until), ("r1", now + 30), "{url}");

        // The new process commits.
        let fresh = Book::new(BookConfig::default());
        let s = store.account_state(&acct.id, now).await.unwrap();
        fresh
            .replace_account(&acct.id, &s.funds, s.channels, &s.keys, now)
            .unwrap();
        fresh.credit(&acct.id, Asset::Tnzo, 11).unwrap();
        store
            .commit_fenced(&fresh.take_dirty(), Some(fence(new)))
            .await
            .unwrap();
        assert_eq!(
            balance(store.account_state(&acct.id, now).await.unwrap()),
            116,
            "{url}"
        );
    }
}
