//! The SQL store against both backends: SQLite in a temporary directory, and the
//! PostgreSQL server named by `TENZRO_TEST_POSTGRES_URL` (`scripts/postgres` starts
//! one; `scripts/test` sets it). Each PostgreSQL test works in a fresh database.
#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::collections::BTreeMap;

use tenzro_attest::ProviderKey;
use tenzro_attest::voucher::VoucherBody;
use tenzro_gateway::accounts::{KeyScope, create_in_store, new_key};
use tenzro_gateway::money::book::{Book, BookConfig, Charge};
use tenzro_gateway::money::channel::State;
use tenzro_gateway::money::slashing::{Reason, slash};
use tenzro_gateway::pricing::Asset;
use tenzro_gateway::store::{Fence, Store};
use tenzro_gateway::tasks::committer::commit_once;

use crate::common::backends;

/// Restores a book from a store the way the gateway does: the pools at start,
/// each account's money when its lease is taken.
async fn restore(store: &Store, now: u64) -> Book {
    let snap = store.load().await.unwrap();
    let book = Book::new(BookConfig::default());
    for a in &snap.accounts {
        let s = store.account_state(&a.id, now).await.unwrap();
        book.replace_account(&a.id, &s.funds, s.channels, &s.keys, now)
            .unwrap();
    }
    book.load_pools(&snap.pools, &snap.earnings).unwrap();
    book
}

#[tokio::test]
async fn the_book_survives_a_round_trip_through_each_store() {
    for (url, store, _dir) in backends().await {
        let scope = KeyScope {
            max_daily_spend: Some(10_000),
            ..KeyScope::default()
        };
        let (_, acct, key) = create_in_store(
            &store,
            "dev",
            Asset::Usdc,
            50_000,
            scope.clone(),
            Some("did:tenzro:human:x".into()),
        )
        .await
        .unwrap();
        let book = restore(&store, 1000).await;
        let limits = scope.spend_limits();

        // Two requests to two providers, one channel closed.
        for (i, provider) in ["p1", "p2", "p1"].into_iter().enumerate() {
            let r = book
                .reserve(&acct.id, Asset::Usdc, 3000, Some((&key.id, &limits)), 1000)
                .unwrap();
            book.bind(&r, provider, 1000).unwrap();
            for c in [100u128, 700, 1500] {
                book.progress(&r, c, provider, 1000).unwrap();
            }
            book.settle(
                r,
                Charge {
                    amount: 1999,
                    provider,
                    request_id: &format!("req-{i}"),
                },
                1000 + i as u64,
            )
            .unwrap();
            commit_once(&book, &store).await.unwrap();
        }
        let p2 = book
            .channels_of(&acct.id)
            .into_iter()
            .find(|c| c.channel.provider == "p2")
            .unwrap()
            .channel
            .id;
        let split = book.close(&p2, 2000).unwrap();
        assert!(commit_once(&book, &store).await.unwrap() > 0);
        assert_eq!(
            commit_once(&book, &store).await.unwrap(),
            0,
            "{url}: nothing left to write"
        );

        let again = restore(&store, 2000).await;
        again
            .audit(&acct.id, Asset::Usdc)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(
            again.funds(&acct.id, Asset::Usdc),
            book.funds(&acct.id, Asset::Usdc),
            "{url}"
        );
        let before: BTreeMap<String, _> = book
            .channels_of(&acct.id)
            .into_iter()
            .map(|c| (c.channel.id.clone(), c.channel))
            .collect();
        let after: BTreeMap<String, _> = again
            .channels_of(&acct.id)
            .into_iter()
            .map(|c| (c.channel.id.clone(), c.channel))
            .collect();
        assert_eq!(before, after, "{url}");
        assert!(matches!(after[&p2].state, State::Closed { .. }));
        assert_eq!(
            again.spent_today(&key.id, 2000),
            3 * 1999,
            "{url}: the daily window comes back from the requests"
        );
        assert_eq!(again.pools()[&Asset::Usdc].treasury, split.treasury);
        assert_eq!(again.earnings("p2")[&Asset::Usdc], split.provider_net);
        let charged: u128 = store
            .charges_by_request()
            .await
            .unwrap()
            .iter()
            .map(|(_, c)| c)
            .sum();
        assert_eq!(charged, 3 * 1999, "{url}: each request recorded once");
        // The restored book keeps going on the same channel.
        let r = again
            .reserve(&acct.id, Asset::Usdc, 10, Some((&key.id, &limits)), 2001)
            .unwrap();
        let ch = again.bind(&r, "p1", 2001).unwrap();
        assert!(before.contains_key(&ch));
        again
            .settle(
                r,
                Charge {
                    amount: 10,
                    provider: "p1",
                    request_id: "req-4",
                },
                2001,
            )
            .unwrap();
        again.audit(&acct.id, Asset::Usdc).unwrap();
        store.close().await;
    }
}

#[tokio::test]
async fn keys_vouchers_and_slashes() {
    for (url, store, _dir) in backends().await {
        let (plain, acct, key) =
            create_in_store(&store, "dev", Asset::Tnzo, 7, KeyScope::default(), None)
                .await
                .unwrap();
        let (_, second) = new_key(
            &acct.id,
            "second",
            KeyScope {
                max_transaction_value: Some(5),
                ..KeyScope::default()
            },
            1_700_000_000,
        );
        store.put_key(&second).await.unwrap();
        let (k, a, funds) = store
            .key_by_hash(&tenzro_gateway::accounts::hash_key(&plain))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (k.id.as_str(), a.id.as_str()),
            (key.id.as_str(), acct.id.as_str()),
            "{url}"
        );
        assert_eq!(funds[0].1.balance, 7);
        assert!(store.key_by_hash("nope").await.unwrap().is_none());
        assert!(store.revoke_key(&key.id, 5).await.unwrap());
        assert!(
            !store.revoke_key(&key.id, 6).await.unwrap(),
            "{url}: revoked once"
        );
        assert!(store.key_by_hash(&key.hash).await.unwrap().is_none());
        let snap = store.load().await.unwrap();
        assert_eq!(snap.keys.len(), 1);
        assert_eq!(snap.keys[0].scope.max_transaction_value, Some(5));

        // Only a higher nonce replaces the stored voucher.
        let payer = ProviderKey::from_seed(&[1; 32]);
        let provider = ProviderKey::from_seed(&[2; 32]);
        let mut v5 = VoucherBody {
            channel_id: "ch_1".into(),
            nonce: 5,
            cumulative_spent: 50,
            asset: "TNZO".into(),
        }
        .sign(&payer);
        v5.countersign(&provider).unwrap();
        let v3 = VoucherBody {
            channel_id: "ch_1".into(),
            nonce: 3,
            cumulative_spent: 30,
            asset: "TNZO".into(),
        }
        .sign(&payer);
        store.put_voucher(&v5).await.unwrap();
        store.put_voucher(&v3).await.unwrap();
        let ch = tenzro_gateway::money::channel::Channel::new(
            "ch_1".into(),
            acct.id.clone(),
            "p".into(),
            Asset::Tnzo,
            0,
            100,
        );
        let b = tenzro_gateway::money::book::Batch {
            channels: vec![ch],
            ..Default::default()
        };
        store.commit(&b).await.unwrap();
        let state = store.account_state(&acct.id, 0).await.unwrap();
        assert_eq!(
            state.channels[0].1.as_ref().map(|v| v.nonce),
            Some(5),
            "{url}"
        );

        let s = slash(
            "p",
            100_000,
            Reason::ModelHashMismatch,
            "served weights differ",
            9,
        );
        store.put_slash(&s).await.unwrap();
        let snap = store.load().await.unwrap();
        assert_eq!(snap.slashes, vec![s]);

        store
            .put_document("identities", "registry", "{\"a\":1}")
            .await
            .unwrap();
        store
            .put_document("identities", "registry", "{\"a\":2}")
            .await
            .unwrap();
        assert_eq!(
            store.documents("identities").await.unwrap(),
            vec![("registry".to_owned(), "{\"a\":2}".to_owned())]
        );
        store.close().await;
    }
}

/// The lease fence: a replica whose lease expired and was taken over cannot write
/// the account any more, on either backend.
#[tokio::test]
async fn a_lost_lease_fences_the_commit() {
    use tenzro_gateway::store::StoreError;
    use tenzro_gateway::store::{Claim, LeaseOwner};
    let owner = |id| LeaseOwner { id, token: id };
    let (a, b, c) = (owner("A"), owner("B"), owner("C"));
    for (url, store, _dir) in backends().await {
        let (_, acct, _) =
            create_in_store(&store, "dev", Asset::Tnzo, 100, KeyScope::default(), None)
                .await
                .unwrap();
        assert_eq!(
            store.claim(&acct.id, a, 130, 100).await.unwrap(),
            Claim::Taken,
            "{url}"
        );
        assert_eq!(
            store.claim(&acct.id, a, 140, 110).await.unwrap(),
            Claim::Renewed,
            "the owner renews"
        );
        assert_eq!(
            store.claim(&acct.id, b, 150, 120).await.unwrap(),
            Claim::HeldElsewhere,
            "{url}: held by A until 140"
        );
        let book = restore(&store, 100).await;
        book.credit(&acct.id, Asset::Tnzo, 5).unwrap();
        let batch = book.take_dirty();
        store
            .commit_fenced(
                &batch,
                Some(Fence {
                    owner: a,
                    until: 150,
                    now: 120,
                }),
            )
            .await
            .unwrap();
        // A stalls past its lease; B takes the account over.
        assert_eq!(
            store.claim(&acct.id, b, 300, 200).await.unwrap(),
            Claim::Taken,
            "{url}"
        );
        book.credit(&acct.id, Asset::Tnzo, 7).unwrap();
        let batch = book.take_dirty();
        match store
            .commit_fenced(
                &batch,
                Some(Fence {
                    owner: a,
                    until: 320,
                    now: 210,
                }),
            )
            .await
        {
            Err(StoreError::LeaseLost(a)) => assert_eq!(a, acct.id),
            other => panic!("{url}: {other:?}"),
        }
        let s = store.account_state(&acct.id, 210).await.unwrap();
        assert_eq!(
            s.funds[0].1.balance, 105,
            "{url}: A's write after losing the lease did not land"
        );
        // A's late release (its shutdown) leaves B's lease alone.
        store
            .release(a, std::slice::from_ref(&acct.id))
            .await
            .unwrap();
        assert!(!store.renew(&acct.id, a, 330).await.unwrap(), "{url}");
        assert!(store.renew(&acct.id, b, 310).await.unwrap(), "{url}");
        store
            .release(b, std::slice::from_ref(&acct.id))
            .await
            .unwrap();
        assert_eq!(
            store.claim(&acct.id, c, 400, 210).await.unwrap(),
            Claim::Taken,
            "{url}: released"
        );
        // A lease given back and taken again is not a renewal for its first
        // holder: B's renewal fails, so B would reload the account.
        assert!(!store.renew(&acct.id, b, 420).await.unwrap(), "{url}");
        store.close().await;
    }
}

/// The fence over several accounts at once: when one of them was lost, the error
/// names it and nothing of the batch lands, not even the accounts still held.
#[tokio::test]
async fn a_fence_over_several_accounts_names_the_lost_one() {
    use tenzro_gateway::store::StoreError;
    use tenzro_gateway::store::{Claim, LeaseOwner};
    let owner = |id| LeaseOwner { id, token: id };
    let (a, b) = (owner("A"), owner("B"));
    for (url, store, _dir) in backends().await {
        let mut accounts = Vec::new();
        for _ in 0..3 {
            let (_, acct, _) =
                create_in_store(&store, "dev", Asset::Tnzo, 100, KeyScope::default(), None)
                    .await
                    .unwrap();
            assert_eq!(
                store.claim(&acct.id, a, 130, 100).await.unwrap(),
                Claim::Taken,
                "{url}"
            );
            accounts.push(acct.id);
        }
        accounts.sort();
        let book = restore(&store, 100).await;
        for id in &accounts {
            book.credit(id, Asset::Tnzo, 5).unwrap();
        }
        store
            .commit_fenced(
                &book.take_dirty(),
                Some(Fence {
                    owner: a,
                    until: 150,
                    now: 120,
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        // B takes the middle account over once A's lease on it ran out.
        assert_eq!(
            store.claim(&accounts[1], b, 300, 200).await.unwrap(),
            Claim::Taken,
            "{url}"
        );
        for id in &accounts {
            book.credit(id, Asset::Tnzo, 7).unwrap();
        }
        match store
            .commit_fenced(
                &book.take_dirty(),
                Some(Fence {
                    owner: a,
                    until: 160,
                    now: 140,
                }),
            )
            .await
        {
            Err(StoreError::LeaseLost(lost)) => assert_eq!(lost, accounts[1], "{url}"),
            other => panic!("{url}: {other:?}"),
        }
        for id in &accounts {
            let s = store.account_state(id, 210).await.unwrap();
            assert_eq!(
                s.funds[0].1.balance, 105,
                "{url}: the fenced batch did not land"
            );
        }
        store.close().await;
    }
}
