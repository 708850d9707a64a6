//! What the settle sweep reads from the SQL store, on both backends (SQLite always;
//! PostgreSQL when `TENZRO_TEST_POSTGRES_URL` names a server, required under CI):
//! a channel's parties, and the accounts whose disputes' windows ended or whose
//! open channels expired, until they are settled.
#![expect(clippy::unwrap_used, reason = "tests")]

use tenzro_gateway::accounts::{KeyScope, create_in_store};
use tenzro_gateway::money::book::{Book, BookConfig, Charge};
use tenzro_gateway::money::channel::Party;
use tenzro_gateway::pricing::Asset;
use tenzro_gateway::tasks::committer::commit_once;

use crate::common::backends;

#[tokio::test]
async fn due_disputes_and_expired_channels_are_found_until_settled() {
    for (url, store, _dir) in backends().await {
        let (_, account, _) =
            create_in_store(&store, "a", Asset::Tnzo, 1000, KeyScope::default(), None)
                .await
                .unwrap();
        let a = account.id.as_str();
        let b = Book::new(BookConfig {
            initial_deposit: 0,
            channel_ttl: 1000,
            challenge_window: 10,
        });
        let s = store.account_state(a, 0).await.unwrap();
        b.replace_account(a, &s.funds, s.channels, &s.keys, 0)
            .unwrap();
        for (p, at) in [("p0", 0), ("p1", 500)] {
            let r = b.reserve(a, Asset::Tnzo, 50, None, at).unwrap();
            b.settle(
                r,
                Charge {
                    amount: 20,
                    provider: p,
                    request_id: p,
                },
                at,
            )
            .unwrap();
        }
        let chs = b.channels_of(a);
        let first = chs
            .iter()
            .find(|c| c.channel.provider == "p0")
            .unwrap()
            .channel
            .id
            .clone();
        b.dispute(&first, Party::Provider, None, 100).unwrap();
        commit_once(&b, &store).await.unwrap();

        assert_eq!(
            store.channel_parties(&first).await.unwrap(),
            Some((a.to_owned(), "p0".to_owned())),
            "{url}"
        );
        assert_eq!(store.channel_parties("ch_none").await.unwrap(), None);
        // Nothing is due inside the window; the dispute is once it ended.
        assert!(
            store.accounts_to_settle(110).await.unwrap().is_empty(),
            "{url}"
        );
        assert_eq!(
            store.accounts_to_settle(111).await.unwrap(),
            vec![a.to_owned()]
        );
        b.finish_disputes(111).unwrap();
        commit_once(&b, &store).await.unwrap();
        assert!(
            store.accounts_to_settle(111).await.unwrap().is_empty(),
            "{url}"
        );
        // The other channel (opened at 500) is due when it expires.
        assert!(
            store.accounts_to_settle(1499).await.unwrap().is_empty(),
            "{url}"
        );
        assert_eq!(
            store.accounts_to_settle(1500).await.unwrap(),
            vec![a.to_owned()]
        );
        assert_eq!(b.expire_channels(1500).unwrap().len(), 1);
        commit_once(&b, &store).await.unwrap();
        assert!(
            store.accounts_to_settle(5000).await.unwrap().is_empty(),
            "{url}"
        );
        b.audit(a, Asset::Tnzo).unwrap();
    }
}
