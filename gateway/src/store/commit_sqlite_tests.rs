#![expect(clippy::unwrap_used, reason = "tests")]

use sqlx::Row;

use super::*;
use crate::money::book::{Funds, Pools, RequestRecord};
use crate::money::channel::{Channel, Party, State};
use crate::money::settlement::Split;
use crate::pricing::Asset;
use crate::store::{Claim, LeaseOwner, Store};

const OWNER: LeaseOwner<'static> = LeaseOwner {
    id: "replica-a",
    token: "token-a",
};

/// Every money table's rows as SQLite quotes them (type and value), in insertion
/// order; `requests.id` (random) left out.
async fn dump(store: &Store) -> Vec<String> {
    let tables = [
        ("balances", "account, asset, balance, funded"),
        (
            "channels",
            "id, payer, provider, asset, deposit, spent, nonce, opened, expires, state",
        ),
        (
            "requests",
            "request_id, key_id, account, asset, channel, charged, at",
        ),
        ("pools", "asset, treasury, burned, stakers"),
        ("earnings", "provider, asset, amount"),
        ("leases", "account, owner, until, token"),
    ];
    let mut out = Vec::new();
    for (table, columns) in tables {
        let quoted: Vec<String> = columns.split(", ").map(|c| format!("quote({c})")).collect();
        let sql = format!(
            "SELECT {} FROM {table} ORDER BY rowid",
            quoted.join(" || ',' || ")
        );
        for row in sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&store.pool)
            .await
            .unwrap()
        {
            out.push(format!("{table}: {}", row.get::<String, _>(0)));
        }
    }
    out
}

fn channels() -> (Channel, Channel) {
    let odd = "a\"b\\c\u{e9}\u{1F600}\n\t\u{1}'; --";
    let mut closed = Channel::new(
        format!("ch-{odd}"),
        "acct".into(),
        odd.into(),
        Asset::Usdc,
        7,
        9,
    );
    closed.deposit = u128::MAX;
    closed.spent = 12;
    closed.nonce = u64::MAX;
    closed.state = State::Closed {
        at: 11,
        split: Split {
            provider_net: 1,
            commission: 2,
            treasury: 3,
            burned: 4,
            stakers: 5,
            refund: u128::MAX - 1,
        },
    };
    let mut disputed = Channel::new("ch-2".into(), "other".into(), "p".into(), Asset::Tnzo, 1, 2);
    disputed.state = State::Disputed {
        deadline: 5,
        nonce: 6,
        spent: 7,
        by: Party::Provider,
    };
    (closed, disputed)
}

/// Batches with texts that need escaping, absent values, repeated keys in one
/// batch (the later row wins), more rows than one upsert carries, and a second
/// batch of upserts over the first's rows.
fn batches() -> Vec<Batch> {
    let odd = "a\"b\\c\u{e9}\u{1F600}\n\t\u{1}'; --";
    let (closed, disputed) = channels();
    let funds = |b: u128| Funds {
        balance: b,
        held: 3,
        funded: b + 1,
    };
    let pools = |t: u128| Pools {
        treasury: t,
        burned: t + 1,
        stakers: t + 2,
    };
    let first = Batch {
        accounts: vec![
            ("acct".into(), Asset::Tnzo, funds(10)),
            ("other".into(), Asset::Usdt, funds(u128::MAX - 1)),
            ("acct".into(), Asset::Tnzo, funds(12)),
        ],
        channels: vec![closed.clone(), disputed.clone()],
        requests: (0..45u64)
            .map(|i| RequestRecord {
                id: format!("req-{i}-{odd}"),
                key: (i % 3 != 1).then(|| format!("key-{i}")),
                account: "acct".into(),
                asset: Asset::Usdc,
                channel: (i % 3 != 2).then(|| closed.id.clone()),
                charged: u128::MAX - u128::from(i),
                at: u64::from(u32::MAX) * 1_000 + i,
            })
            .collect(),
        pools: vec![(Asset::Usdc, pools(1)), (Asset::Tnzo, pools(5))],
        earnings: vec![
            (odd.into(), Asset::Usdc, 5),
            ("p".into(), Asset::Tnzo, 6),
            (odd.into(), Asset::Usdc, 8),
        ],
        ..Batch::default()
    };
    let second = Batch {
        accounts: vec![("acct".into(), Asset::Tnzo, funds(4))],
        channels: vec![Channel {
            spent: 13,
            nonce: 1,
            state: State::Open,
            ..disputed
        }],
        pools: vec![(Asset::Usdc, pools(9))],
        earnings: vec![(odd.into(), Asset::Usdc, 9)],
        ..Batch::default()
    };
    vec![first, second]
}

async fn open(dir: &std::path::Path, name: &str) -> Store {
    let url = format!("sqlite://{}", dir.join(name).display());
    Store::open(&url).await.unwrap()
}

async fn lease(store: &Store) {
    for account in ["acct", "other"] {
        let claim = store.claim(account, OWNER, 100, 10).await.unwrap();
        assert_eq!(claim, Claim::Taken);
    }
}

/// The writer's upserts store exactly what the pool's per-table statements do,
/// unfenced and fenced (the leases renewed alike), column for column.
#[tokio::test]
async fn the_writer_stores_what_the_per_table_statements_do() {
    let dir = tempfile::tempdir().unwrap();
    for fenced in [false, true] {
        let tag = if fenced { "fenced" } else { "plain" };
        let writer = open(dir.path(), &format!("writer-{tag}.db")).await;
        let mut per_table = open(dir.path(), &format!("per-table-{tag}.db")).await;
        per_table.writer = None;
        assert!(writer.writer.is_some());
        for store in [&writer, &per_table] {
            if fenced {
                lease(store).await;
            }
            for (i, b) in batches().iter().enumerate() {
                let fence = fenced.then_some(Fence {
                    owner: OWNER,
                    until: 200 + u64::try_from(i).unwrap(),
                    now: 20,
                });
                match &store.writer {
                    Some(w) => assert!(w.commit(b, fence).await.unwrap(), "the fence passes"),
                    None => store.commit_fenced(b, fence).await.unwrap(),
                }
            }
        }
        let (got, want) = (dump(&writer).await, dump(&per_table).await);
        let leases = if fenced { 2 } else { 0 };
        assert_eq!(got.len(), 2 + 2 + 45 + 2 + 2 + leases, "{got:#?}");
        assert_eq!(got, want);
        assert!(
            got.iter().any(|r| r == "balances: 'acct','TNZO','4','5'"),
            "{got:#?}"
        );
        assert!(got.iter().any(|r| r.ends_with(",'USDC','9'")), "{got:#?}");
        if fenced {
            assert!(got.contains(&"leases: 'acct','replica-a',201,'token-a'".to_owned()));
        }
    }
}

/// A fence that does not pass writes nothing through the writer and leaves the
/// batch to the per-table statements, which name the lost lease; the writer's
/// connection is used again after it.
#[tokio::test]
async fn a_lost_lease_rolls_the_writer_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "g.db").await;
    lease(&store).await;
    let thief = LeaseOwner {
        id: "replica-b",
        token: "token-b",
    };
    // Expired (until 100) at 150: another replica takes "other".
    assert_eq!(
        store.claim("other", thief, 300, 150).await.unwrap(),
        Claim::Taken
    );
    let before = dump(&store).await;
    let fence = Fence {
        owner: OWNER,
        until: 90,
        now: 50,
    };
    let b = &batches()[0];
    let w = store.writer.as_ref().unwrap();
    assert!(!w.commit(b, Some(fence)).await.unwrap());
    assert_eq!(dump(&store).await, before);
    let lost = store.commit_fenced(b, Some(fence)).await;
    assert!(
        matches!(&lost, Err(StoreError::LeaseLost(a)) if a == "other"),
        "{lost:?}"
    );
    assert_eq!(dump(&store).await, before);
    // The connection survived the rollback: a batch of "acct" alone passes.
    let only_acct = Batch {
        accounts: vec![("acct".into(), Asset::Tnzo, Funds::default())],
        ..Batch::default()
    };
    store.commit_fenced(&only_acct, Some(fence)).await.unwrap();
    let after = dump(&store).await;
    assert!(
        after.contains(&"balances: 'acct','TNZO','0','0'".to_owned()),
        "{after:#?}"
    );
    assert!(after.contains(&"leases: 'acct','replica-a',90,'token-a'".to_owned()));
}

/// A statement that fails closes the connection with its transaction (nothing of
/// the batch is kept); the next commit opens another; after `close` none is.
#[tokio::test]
async fn a_failed_commit_keeps_nothing_and_the_next_one_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "g.db").await;
    let mut b = batches().remove(0);
    // The pools' upsert fails after the other tables' rows went in.
    sqlx::query(
        "CREATE TRIGGER no_pools BEFORE INSERT ON pools BEGIN SELECT RAISE(ABORT, 'no pools'); END",
    )
    .execute(&store.pool)
    .await
    .unwrap();
    let e = store.commit(&b).await.unwrap_err();
    assert!(e.to_string().contains("no pools"), "{e}");
    assert!(dump(&store).await.is_empty());
    sqlx::query("DROP TRIGGER no_pools")
        .execute(&store.pool)
        .await
        .unwrap();
    b.requests.truncate(3);
    store.commit(&b).await.unwrap();
    assert_eq!(dump(&store).await.len(), 2 + 2 + 3 + 2 + 2);
    store.close().await;
    assert!(store.commit(&b).await.is_err());
}

#[test]
fn groups_are_powers_of_two_up_to_the_limit() {
    let mut sql = String::new();
    REQUESTS.push(&mut sql, 45);
    let rows: Vec<usize> = sql.lines().map(|l| l.matches("), (").count() + 1).collect();
    assert_eq!(rows, [32, 8, 4, 1]);
    assert_eq!(sql.matches('?').count(), 45 * 8);
    let mut fence = String::new();
    push_fence(&mut fence, 3);
    assert!(
        fence.ends_with("account IN (?, ?, ?) RETURNING account;\n"),
        "{fence}"
    );
}

/// A fenced batch that touches no account (pools and earnings only) renews no
/// lease and is written.
#[tokio::test]
async fn a_fence_over_no_account_passes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "g.db").await;
    let b = Batch {
        earnings: vec![("p".into(), Asset::Tnzo, 6)],
        ..Batch::default()
    };
    let fence = Fence {
        owner: OWNER,
        until: 90,
        now: 50,
    };
    let w = store.writer.as_ref().unwrap();
    assert!(w.commit(&b, Some(fence)).await.unwrap());
    assert_eq!(dump(&store).await, ["earnings: 'p','TNZO','6'"]);
}
