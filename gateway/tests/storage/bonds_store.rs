//! Bonds through the SQL store on both backends (SQLite always; PostgreSQL when
//! `TENZRO_TEST_POSTGRES_URL` names a server, required under CI): a bond, an
//! unbonding, a slash, earnings credited to the owner and the stakers' payout
//! survive a reload exactly, and a slash applied before the reload is not applied
//! again after it.
#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use tenzro_gateway::accounts::{KeyScope, create_in_store};
use tenzro_gateway::money::book::{Book, BookConfig, Charge};
use tenzro_gateway::pricing::Asset;
use tenzro_gateway::store::Store;
use tenzro_gateway::tasks::committer::commit_once;

use crate::common::backends;

/// A book restored the way the gateway does it: pools, earnings and bonds at
/// start, accounts' money as their leases are taken.
async fn restore(store: &Store, accounts: &[&str], now: u64) -> Book {
    let snap = store.load().await.unwrap();
    let book = Book::new(BookConfig::default());
    for a in accounts {
        let s = store.account_state(a, now).await.unwrap();
        book.replace_account(a, &s.funds, s.channels, &s.keys, now)
            .unwrap();
    }
    book.load_pools(&snap.pools, &snap.earnings).unwrap();
    book.load_bonds(
        store.bonds().await.unwrap(),
        store.applied_slashes().await.unwrap(),
    )
    .unwrap();
    book
}

#[tokio::test]
async fn bonds_survive_a_round_trip_through_each_store() {
    const DID: &str = "did:tenzro:machine:p";
    for (url, store, _dir) in backends().await {
        let (_, owner, _) = create_in_store(
            &store,
            "owner",
            Asset::Tnzo,
            10_000,
            KeyScope::default(),
            None,
        )
        .await
        .unwrap();
        let (_, payer, _) = create_in_store(
            &store,
            "payer",
            Asset::Tnzo,
            1_000_000,
            KeyScope::default(),
            None,
        )
        .await
        .unwrap();
        let (o, p) = (owner.id.as_str(), payer.id.as_str());
        let book = restore(&store, &[o, p], 1).await;
        book.bond(o, "key", DID, 4000, true).unwrap();
        book.unbond(o, "key", 1000, 10, 100).unwrap();
        book.apply_slash("s1", DID, 100_000, 11).unwrap();
        // A payer's channel with the provider closes: net to earnings, 0.5% to pools.
        let r = book.reserve(p, Asset::Tnzo, 200_000, None, 12).unwrap();
        let ch = book.bind(&r, DID, 12).unwrap();
        book.settle(
            r,
            Charge {
                amount: 200_000,
                provider: DID,
                request_id: "rq",
            },
            12,
        )
        .unwrap();
        book.close(&ch, 13).unwrap();
        book.bond_tick(14).unwrap();
        book.pay_stakers(|_| true).unwrap();
        book.bond_tick(15).unwrap();
        book.audit(o, Asset::Tnzo)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(commit_once(&book, &store).await.unwrap() > 0, "{url}");

        let again = restore(&store, &[o, p], 16).await;
        assert_eq!(again.bonds(), book.bonds(), "{url}");
        let b = again.bond_of("key").unwrap();
        // 10% of 4000 bonded first: 3000 - 400 bonded, 1000 unbonding until 110.
        assert_eq!(
            (b.bonded, b.unbonding, b.unbonding_until, b.slashed),
            (2600, 1000, 110, 400),
            "{url}"
        );
        assert_eq!(
            b.earned[&Asset::Tnzo].0,
            199_000 + 300,
            "{url}: net and the whole stakers' share"
        );
        assert_eq!(
            again.funds(o, Asset::Tnzo),
            book.funds(o, Asset::Tnzo),
            "{url}"
        );
        assert_eq!(again.pools(), book.pools(), "{url}");
        again
            .audit(o, Asset::Tnzo)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        again
            .audit(p, Asset::Tnzo)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(
            again.apply_slash("s1", DID, 100_000, 17).unwrap(),
            None,
            "{url}: once per record"
        );
        assert_eq!(again.bond_owner("key").as_deref(), Some(o), "{url}");

        // Unbonding returns after a restart too, and the store agrees.
        again.bond_tick(110).unwrap();
        commit_once(&again, &store).await.unwrap();
        let third = restore(&store, &[o, p], 111).await;
        assert_eq!(third.bond_of("key").unwrap().unbonding, 0, "{url}");
        assert_eq!(
            third.funds(o, Asset::Tnzo).unwrap().balance,
            10_000 - 4000 + 1000 + 199_300,
            "{url}"
        );
        third
            .audit(o, Asset::Tnzo)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        store.close().await;
    }
}
