#![expect(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::money::scope::DAY;

fn book() -> Book {
    Book::new(BookConfig::default())
}

fn charge(amount: u128) -> Charge<'static> {
    Charge {
        amount,
        provider: "prov",
        request_id: "req",
    }
}

#[test]
fn a_request_moves_money_into_the_channel_chunk_by_chunk() {
    let b = book();
    b.credit("a", Asset::Tnzo, 1000).unwrap();
    let r = b.reserve("a", Asset::Tnzo, 600, None, 0).unwrap();
    assert_eq!(b.funds("a", Asset::Tnzo).unwrap().available(), 400);
    assert!(matches!(
        b.reserve("a", Asset::Tnzo, 401, None, 0),
        Err(BookError::Insufficient {
            needed: 401,
            available: 400,
            ..
        })
    ));
    for cumulative in [10, 25, 25, 40] {
        b.progress(&r, cumulative, "prov", 0).unwrap();
        b.audit("a", Asset::Tnzo).unwrap();
    }
    let ch = b.channels_of("a");
    assert_eq!(ch.len(), 1);
    assert_eq!(
        (
            ch[0].channel.spent,
            ch[0].channel.nonce,
            ch[0].channel.deposit,
            ch[0].in_flight
        ),
        (40, 3, 40, 1)
    );
    let s = b.settle(r, charge(55), 1).unwrap();
    assert_eq!(
        s,
        Settled {
            charged: 55,
            refunded: 545,
            capped: false
        }
    );
    let f = b.funds("a", Asset::Tnzo).unwrap();
    assert_eq!((f.balance, f.held, f.funded), (945, 0, 1000));
    b.audit("a", Asset::Tnzo).unwrap();

    // A second request to the same provider reuses the channel; a charge above the
    // reservation is capped to it.
    let r = b.reserve("a", Asset::Tnzo, 100, None, 2).unwrap();
    let s = b.settle(r, charge(150), 3).unwrap();
    assert_eq!(
        s,
        Settled {
            charged: 100,
            refunded: 0,
            capped: true
        }
    );
    let ch = b.channels_of("a");
    assert_eq!(
        (ch.len(), ch[0].channel.spent, ch[0].channel.nonce),
        (1, 155, 5)
    );

    // Closing pays out exactly and refunds nothing (the deposit only grew as needed).
    let split = b.close(&ch[0].channel.id, 10).unwrap();
    assert_eq!(split.provider_net + split.commission, 155);
    assert_eq!(split.refund, 0);
    assert_eq!(b.earnings("prov")[&Asset::Tnzo], split.provider_net);
    b.audit("a", Asset::Tnzo).unwrap();
    // The next request opens a new channel.
    let r = b.reserve("a", Asset::Tnzo, 10, None, 11).unwrap();
    b.settle(r, charge(10), 11).unwrap();
    assert_eq!(b.channels_of("a").len(), 2);
    b.audit("a", Asset::Tnzo).unwrap();
}

#[test]
fn an_initial_float_is_refunded_at_close() {
    let b = Book::new(BookConfig {
        initial_deposit: 500,
        ..BookConfig::default()
    });
    b.credit("a", Asset::Usdc, 1000).unwrap();
    let r = b.reserve("a", Asset::Usdc, 100, None, 0).unwrap();
    b.progress(&r, 30, "prov", 0).unwrap();
    // The float paid: nothing was drawn from the hold.
    let f = b.funds("a", Asset::Usdc).unwrap();
    assert_eq!((f.balance, f.held), (500, 100));
    b.settle(r, charge(30), 0).unwrap();
    b.audit("a", Asset::Usdc).unwrap();
    let id = b.channels_of("a")[0].channel.id.clone();
    let split = b.close(&id, 1).unwrap();
    assert_eq!(split.refund, 470);
    assert_eq!(b.funds("a", Asset::Usdc).unwrap().balance, 970);
    b.audit("a", Asset::Usdc).unwrap();
}

#[test]
fn a_busy_channel_does_not_close_and_released_holds_cost_nothing() {
    let b = book();
    b.credit("a", Asset::Tnzo, 100).unwrap();
    let r = b.reserve("a", Asset::Tnzo, 50, None, 0).unwrap();
    b.progress(&r, 5, "prov", 0).unwrap();
    let id = b.channels_of("a")[0].channel.id.clone();
    assert!(matches!(
        b.close(&id, 1),
        Err(BookError::Channel(ChannelError::Busy(_, 1)))
    ));
    b.settle(r, charge(5), 1).unwrap();
    let r = b.reserve("a", Asset::Tnzo, 50, None, 0).unwrap();
    b.release(r);
    assert_eq!(b.funds("a", Asset::Tnzo).unwrap().available(), 95);
    b.close(&id, 2).unwrap();
    b.audit("a", Asset::Tnzo).unwrap();
}

#[test]
fn dirty_rows_commit_once_and_vouchers_follow_durable_state() {
    let b = book();
    b.credit("a", Asset::Tnzo, 100).unwrap();
    let r = b.reserve("a", Asset::Tnzo, 50, None, 0).unwrap();
    b.progress(&r, 5, "prov", 0).unwrap();
    b.progress(&r, 7, "prov", 0).unwrap();
    assert!(b.due_vouchers(false).is_empty(), "no request ended yet");
    let batch = b.take_dirty();
    assert_eq!(batch.accounts.len(), 1);
    assert_eq!(batch.channels.len(), 1);
    assert!(b.take_dirty().is_empty(), "taken once");
    b.settle(
        r,
        Charge {
            amount: 9,
            provider: "prov",
            request_id: "r1",
        },
        1,
    )
    .unwrap();
    // The request ended, but its final state is not durable yet: the voucher may
    // cover only what was committed.
    b.committed(&batch);
    let due = b.due_vouchers(false);
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].nonce, due[0].spent), (2, 7));
    let batch = b.take_dirty();
    assert_eq!(batch.requests.len(), 1);
    assert_eq!(batch.requests[0].charged, 9);
    b.committed(&batch);
    let due = b.due_vouchers(false);
    assert_eq!((due[0].nonce, due[0].spent), (3, 9));
    b.vouchered(&due[0].channel, 3, None);
    assert!(b.due_vouchers(false).is_empty());
    assert!(b.due_vouchers(true).is_empty());

    // A failed commit is retried whole.
    let r = b.reserve("a", Asset::Tnzo, 5, None, 2).unwrap();
    b.settle(
        r,
        Charge {
            amount: 1,
            provider: "prov",
            request_id: "r2",
        },
        2,
    )
    .unwrap();
    let batch = b.take_dirty();
    b.requeue(batch);
    let again = b.take_dirty();
    assert_eq!(
        (
            again.accounts.len(),
            again.channels.len(),
            again.requests.len()
        ),
        (1, 1, 1)
    );
}

#[test]
fn scope_refusals_name_the_limit() {
    let b = book();
    b.credit("a", Asset::Tnzo, 10_000).unwrap();
    let limits = SpendLimits {
        max_transaction_value: Some(500),
        max_daily_spend: Some(1000),
        ..Default::default()
    };
    let err = b
        .reserve("a", Asset::Tnzo, 600, Some(("k", &limits)), 0)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "delegation scope refuses this request: max_transaction_value: this request may cost up to 600 base units, over the scope's limit of 500 by 100"
    );
    let r1 = b
        .reserve("a", Asset::Tnzo, 500, Some(("k", &limits)), 0)
        .unwrap();
    let r2 = b
        .reserve("a", Asset::Tnzo, 500, Some(("k", &limits)), 0)
        .unwrap();
    assert!(matches!(
        b.reserve("a", Asset::Tnzo, 1, Some(("k", &limits)), 0),
        Err(BookError::Scope(ScopeRefusal::Daily { over: 1, .. }))
    ));
    b.settle(r1, charge(100), 10).unwrap();
    b.release(r2);
    assert_eq!(b.spent_today("k", 10), 100);
    let r = b
        .reserve("a", Asset::Tnzo, 500, Some(("k", &limits)), 10)
        .unwrap();
    b.settle(r, charge(500), 20).unwrap();
    assert!(
        b.reserve("a", Asset::Tnzo, 401, Some(("k", &limits)), 30)
            .is_err()
    );
    // A day after the first charge it rolls out of the window.
    b.reserve("a", Asset::Tnzo, 401, Some(("k", &limits)), 10 + DAY)
        .unwrap();
}

/// 100 simultaneous requests against one scope and one balance never spend past
/// either: admission checks both under one lock.
#[test]
fn a_hundred_concurrent_requests_never_overspend() {
    let b = Arc::new(book());
    b.credit("agent", Asset::Usdc, 5_000).unwrap();
    let limits = Arc::new(SpendLimits {
        max_daily_spend: Some(3_000),
        max_transaction_value: Some(100),
        ..Default::default()
    });
    let barrier = Arc::new(std::sync::Barrier::new(100));
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let (b, limits, barrier) = (b.clone(), limits.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let r = b.reserve("agent", Asset::Usdc, 90, Some(("agent-key", &*limits)), 1)?;
                for c in 1..=9 {
                    b.progress(&r, c * 10, &format!("prov{}", i % 3), 1)?;
                }
                b.settle(
                    r,
                    Charge {
                        amount: 90,
                        provider: "x",
                        request_id: "r",
                    },
                    1,
                )
                .map(|s| s.charged)
            })
        })
        .collect();
    let results: Vec<Result<u128, BookError>> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    let spent: u128 = results.iter().filter_map(|r| r.as_ref().ok()).sum();
    assert_eq!(admitted, 33, "3000 / 90 = 33 requests fit the daily limit");
    assert_eq!(spent, 33 * 90);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, BookError::Scope(ScopeRefusal::Daily { .. })))
    );
    assert_eq!(b.spent_today("agent-key", 1), 2970);
    let f = b.funds("agent", Asset::Usdc).unwrap();
    assert_eq!((f.balance, f.held), (5_000 - 2970, 0));
    b.audit("agent", Asset::Usdc).unwrap();
    let in_channels: u128 = b.channels_of("agent").iter().map(|c| c.channel.spent).sum();
    assert_eq!(in_channels, 2970);
}

#[derive(Debug, Clone)]
enum Op {
    Reserve(u128),
    Progress(usize, u128, u8),
    Settle(usize, u128),
    Release(usize),
    Credit(u128),
    Close(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u128..500).prop_map(Op::Reserve),
        (0usize..8, 0u128..600, 0u8..3).prop_map(|(i, a, p)| Op::Progress(i, a, p)),
        (0usize..8, 0u128..600).prop_map(|(i, a)| Op::Settle(i, a)),
        (0usize..8).prop_map(Op::Release),
        (0u128..300).prop_map(Op::Credit),
        (0u8..3).prop_map(Op::Close),
    ]
}

proptest! {
    /// Conservation and boundedness after any sequence of operations: funded =
    /// balance + channels, held <= balance, spent <= deposit, charge <= reservation.
    #[test]
    fn conservation(ops in proptest::collection::vec(op(), 0..80), float in 0u128..200) {
        let b = Book::new(BookConfig { initial_deposit: float, ..BookConfig::default() });
        b.credit("a", Asset::Tnzo, 1000).unwrap();
        let mut open: Vec<Reservation> = Vec::new();
        let mut nonces: HashMap<String, (u64, u128)> = HashMap::new();
        for (t, o) in ops.into_iter().enumerate() {
            let now = t as u64;
            match o {
                Op::Reserve(n) => if let Ok(r) = b.reserve("a", Asset::Tnzo, n, None, now) { open.push(r) },
                Op::Progress(i, c, p) if i < open.len() => { let _ = b.progress(&open[i], c, &format!("p{p}"), now); }
                Op::Settle(i, c) if i < open.len() => {
                    let r = open.remove(i);
                    let amount = r.amount;
                    if let Ok(s) = b.settle(r, Charge { amount: c, provider: "p0", request_id: "r" }, now) {
                        prop_assert!(s.charged <= amount);
                        prop_assert_eq!(s.charged + s.refunded, amount);
                    }
                }
                Op::Release(i) if i < open.len() => b.release(open.remove(i)),
                Op::Credit(n) => { b.credit("a", Asset::Tnzo, n).unwrap(); }
                Op::Close(p) => {
                    if let Some(c) = b.channels_of("a").into_iter().find(|c| c.channel.provider == format!("p{p}") && c.channel.is_open()) {
                        let _ = b.close(&c.channel.id, now);
                    }
                }
                _ => {}
            }
            prop_assert_eq!(b.audit("a", Asset::Tnzo), Ok(()));
            for c in b.channels_of("a") {
                let prev = nonces.insert(c.channel.id.clone(), (c.channel.nonce, c.channel.spent)).unwrap_or((0, 0));
                prop_assert!(c.channel.nonce >= prev.0 && c.channel.spent >= prev.1, "monotonic");
            }
        }
    }
}

#[test]
fn only_idle_accounts_with_nothing_to_write_are_evicted() {
    let b = book();
    for a in ["idle", "busy", "dirty"] {
        b.credit(a, Asset::Tnzo, 100).unwrap();
    }
    let _ = b.take_dirty();
    // "idle" and "busy" were last used at 10; "busy" still has a request in flight.
    let r = b.reserve("idle", Asset::Tnzo, 10, None, 10).unwrap();
    b.settle(r, charge(5), 10).unwrap();
    let held = b.reserve("busy", Asset::Tnzo, 10, None, 10).unwrap();
    let _ = b.take_dirty();
    // "dirty" changed after the last commit.
    b.credit("dirty", Asset::Tnzo, 1).unwrap();
    assert!(b.evict_idle(10).is_empty(), "nothing is idle before its last use");
    let mut gone = b.evict_idle(100);
    gone.sort();
    assert_eq!(gone, vec!["idle".to_owned()]);
    assert!(b.funds("idle", Asset::Tnzo).is_none() && b.channels_of("idle").is_empty());
    assert!(b.funds("busy", Asset::Tnzo).is_some() && b.funds("dirty", Asset::Tnzo).is_some());
    b.release(held);
}
