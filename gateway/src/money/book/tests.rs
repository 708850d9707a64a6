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
    assert!(
        b.evict_idle(10).is_empty(),
        "nothing is idle before its last use"
    );
    let mut gone = b.evict_idle(100);
    gone.sort();
    assert_eq!(gone, vec!["idle".to_owned()]);
    assert!(b.funds("idle", Asset::Tnzo).is_none() && b.channels_of("idle").is_empty());
    assert!(b.funds("busy", Asset::Tnzo).is_some() && b.funds("dirty", Asset::Tnzo).is_some());
    b.release(held);
}

/// What a dispute sequence does, for the property below.
#[derive(Debug, Clone)]
enum DOp {
    /// A whole request of `cost` to provider `p`, metered in three chunks.
    Request(u8, u128),
    /// The committer writes the dirty rows.
    Commit,
    /// The courier signs every durable state not vouched for; the provider countersigns.
    Sign,
    /// A dispute by the payer or the provider on provider `p`'s latest channel, with
    /// any past signed state of it (`Some(i)`) or the channel's own (`None`).
    Dispute(bool, u8, Option<usize>),
    /// The payer closes provider `p`'s open channel.
    Close(u8),
    /// Time passes; disputes past their window settle, expired channels close.
    Time(u64),
    /// Commit, evict the idle account (kept while a channel is disputed), and load
    /// it back from the store, as when it is used again.
    Evict,
    /// The replica dies before committing: the account is dropped and loaded from
    /// the store.
    Crash,
}

fn dop() -> impl Strategy<Value = DOp> {
    prop_oneof![
        4 => (0u8..2, 1u128..300).prop_map(|(p, c)| DOp::Request(p, c)),
        2 => Just(DOp::Commit),
        2 => Just(DOp::Sign),
        3 => (any::<bool>(), 0u8..2, proptest::option::of(0usize..16))
            .prop_map(|(payer, p, i)| DOp::Dispute(payer, p, i)),
        1 => (0u8..2).prop_map(DOp::Close),
        2 => (0u64..40).prop_map(DOp::Time),
        1 => Just(DOp::Evict),
        1 => Just(DOp::Crash),
    ]
}

/// The store as the committer and courier leave it.
#[derive(Default)]
struct Durable {
    funds: Vec<(Asset, Funds)>,
    channels: HashMap<String, Channel>,
    vouchers: HashMap<String, Voucher>,
}

impl Durable {
    fn commit(&mut self, b: &Book) {
        let batch = b.take_dirty();
        for (_, asset, f) in &batch.accounts {
            self.funds.retain(|(a, _)| a != asset);
            self.funds.push((*asset, *f));
        }
        for c in &batch.channels {
            self.channels.insert(c.id.clone(), c.clone());
        }
        b.committed(&batch);
    }

    fn reload(&self, b: &Book, now: u64) {
        let channels = self
            .channels
            .values()
            .map(|c| (c.clone(), self.vouchers.get(&c.id).cloned()))
            .collect();
        b.replace_account("a", &self.funds, channels, &[], now)
            .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    /// Whatever anyone submits (any past signed state, by the payer or the
    /// provider), whenever the window ends, the channel expires or the account
    /// leaves memory: every channel settles at its latest state, never below the
    /// highest state the gateway signed, stale states are refused, and `funded`
    /// is conserved.
    #[test]
    fn disputes_settle_at_the_highest_signed_state(ops in proptest::collection::vec(dop(), 0..60)) {
        use tenzro_attest::ProviderKey;
        use tenzro_attest::voucher::VoucherBody;
        const FUNDED: u128 = 1_000_000;
        let b = Book::new(BookConfig { initial_deposit: 0, channel_ttl: 100, challenge_window: 10 });
        let payer = ProviderKey::from_seed(&[1; 32]);
        let providers = [ProviderKey::from_seed(&[2; 32]), ProviderKey::from_seed(&[3; 32])];
        b.credit("a", Asset::Tnzo, FUNDED).unwrap();
        let mut store = Durable::default();
        store.commit(&b);
        // Per channel: every voucher signed, and the latest state it was seen at.
        let mut signed: HashMap<String, Vec<Voucher>> = HashMap::new();
        let mut latest: HashMap<String, (u64, u128)> = HashMap::new();
        let mut now = 0u64;
        for (t, o) in ops.into_iter().enumerate() {
            match o {
                DOp::Request(p, cost) => {
                    let prov = format!("p{p}");
                    if let Ok(r) = b.reserve("a", Asset::Tnzo, cost, None, now) {
                        for part in [cost / 3, cost / 2, cost] {
                            b.progress(&r, part, &prov, now).unwrap();
                        }
                        let id = format!("r{t}");
                        b.settle(r, Charge { amount: cost, provider: &prov, request_id: &id }, now).unwrap();
                    }
                }
                DOp::Commit => store.commit(&b),
                DOp::Sign => {
                    for d in b.due_vouchers(true) {
                        let mut v = VoucherBody {
                            channel_id: d.channel.clone(),
                            nonce: d.nonce,
                            cumulative_spent: d.spent,
                            asset: d.asset.as_str().to_owned(),
                        }
                        .sign(&payer);
                        let p = if d.provider == "p0" { &providers[0] } else { &providers[1] };
                        v.countersign(p).unwrap();
                        store.vouchers.insert(d.channel.clone(), v.clone());
                        signed.entry(d.channel.clone()).or_default().push(v.clone());
                        b.vouchered(&d.channel, d.nonce, Some(v));
                    }
                }
                DOp::Dispute(by_payer, p, pick) => {
                    let prov = format!("p{p}");
                    let Some(c) = b.channels_of("a").into_iter().rfind(|c| c.channel.provider == prov) else { continue };
                    let id = c.channel.id.clone();
                    let claim = pick.and_then(|i| {
                        let past = signed.get(&id)?;
                        past.get(i % past.len()).map(|v| (v.nonce, v.cumulative_spent))
                    });
                    let by = if by_payer { Party::Payer } else { Party::Provider };
                    let result = b.dispute(&id, by, claim, now);
                    if let Some((nonce, _)) = claim && nonce < c.channel.nonce {
                        prop_assert!(result.is_err(), "a stale state ({nonce} < {}) was accepted", c.channel.nonce);
                    }
                    if !c.channel.is_open() && !matches!(c.channel.state, State::Disputed { .. }) {
                        prop_assert!(result.is_err(), "a closed channel was disputed");
                    }
                    if let Ok(ch) = result {
                        prop_assert!(matches!(ch.state, State::Disputed { nonce, spent, .. } if nonce == ch.nonce && spent == ch.spent),
                            "the dispute records the channel's latest state: {ch:?}");
                    }
                }
                DOp::Close(p) => {
                    let prov = format!("p{p}");
                    if let Some(c) = b.channels_of("a").into_iter().find(|c| c.channel.provider == prov && c.channel.is_open()) {
                        b.close(&c.channel.id, now).unwrap();
                    }
                }
                DOp::Time(dt) => {
                    now += dt;
                    b.finish_disputes(now).unwrap();
                    b.expire_channels(now).unwrap();
                    for c in b.channels_of("a") {
                        prop_assert!(!c.channel.is_expired(now), "an expired channel stayed open");
                        if let State::Disputed { deadline, .. } = c.channel.state {
                            prop_assert!(now <= deadline, "a dispute outlived its window");
                        }
                    }
                }
                DOp::Evict => {
                    store.commit(&b);
                    let disputed = b.channels_of("a").iter().any(|c| matches!(c.channel.state, State::Disputed { .. }));
                    let gone = b.evict_idle(now + 1_000);
                    prop_assert_eq!(gone.is_empty(), disputed, "evicted exactly when no channel is disputed");
                    if !gone.is_empty() {
                        store.reload(&b, now);
                    }
                }
                DOp::Crash => {
                    b.drop_account("a");
                    store.reload(&b, now);
                    // What was not committed is gone; the store is at or above every
                    // signed state, so nothing signed is lost.
                    latest.clear();
                }
            }
            prop_assert_eq!(b.audit("a", Asset::Tnzo), Ok(()));
            prop_assert_eq!(b.funds("a", Asset::Tnzo).unwrap().funded, FUNDED);
            for c in b.channels_of("a") {
                let ch = &c.channel;
                let top = signed.get(&ch.id).and_then(|v| v.iter().map(|v| (v.nonce, v.cumulative_spent)).max());
                if let Some((n, s)) = top {
                    prop_assert!(ch.nonce >= n && ch.spent >= s, "{} is below its highest signed state ({n}, {s}): {ch:?}", ch.id);
                }
                let before = latest.insert(ch.id.clone(), (ch.nonce, ch.spent));
                if let State::Closed { split, .. } = ch.state {
                    prop_assert_eq!(split.provider_net + split.commission + split.refund, ch.deposit);
                    prop_assert_eq!(split.provider_net + split.commission, ch.spent, "settles at the latest state");
                    if let Some(before) = before {
                        prop_assert_eq!(before, (ch.nonce, ch.spent), "closing changed the state");
                    }
                }
            }
        }
    }
}

#[test]
fn a_stale_voucher_cannot_claw_back_a_payment() {
    let b = book();
    b.credit("a", Asset::Tnzo, 1000).unwrap();
    let r = b.reserve("a", Asset::Tnzo, 10, None, 0).unwrap();
    b.settle(r, charge(10), 0).unwrap();
    let id = b.channels_of("a")[0].channel.id.clone();
    let old = (b.channel(&id).unwrap().channel.nonce, 10);
    let r = b.reserve("a", Asset::Tnzo, 900, None, 1).unwrap();
    b.progress(&r, 500, "prov", 1).unwrap();
    b.settle(r, charge(900), 1).unwrap();
    let ch = b.channel(&id).unwrap().channel;
    assert_eq!(ch.spent, 910);
    for by in [Party::Payer, Party::Provider] {
        let err = b.dispute(&id, by, Some(old), 2).unwrap_err();
        assert!(
            err.to_string()
                .contains("below the channel's latest signed nonce"),
            "{err}"
        );
    }
    let disputed = b.dispute(&id, Party::Provider, None, 2).unwrap();
    assert!(matches!(disputed.state, State::Disputed { spent: 910, .. }));
    assert!(b.dispute(&id, Party::Payer, Some(old), 3).is_err());
    assert!(b.finish_disputes(2 + 86_400).unwrap().is_empty());
    let done = b.finish_disputes(2 + 86_401).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1.refund, 0);
    assert_eq!(b.funds("a", Asset::Tnzo).unwrap().balance, 90);
    b.audit("a", Asset::Tnzo).unwrap();
}

#[test]
fn expired_channels_close_at_their_latest_state_and_are_not_reused() {
    let b = Book::new(BookConfig {
        channel_ttl: 100,
        ..BookConfig::default()
    });
    b.credit("a", Asset::Tnzo, 1000).unwrap();
    let r = b.reserve("a", Asset::Tnzo, 50, None, 0).unwrap();
    b.settle(r, charge(40), 0).unwrap();
    let first = b.channels_of("a")[0].channel.id.clone();
    // In flight at expiry: it closes once the request ends.
    let r = b.reserve("a", Asset::Tnzo, 50, None, 99).unwrap();
    b.progress(&r, 5, "prov", 99).unwrap();
    assert!(b.expire_channels(100).unwrap().is_empty());
    b.settle(r, charge(5), 100).unwrap();
    // A new request goes to a new channel.
    let r = b.reserve("a", Asset::Tnzo, 50, None, 101).unwrap();
    b.settle(r, charge(7), 101).unwrap();
    let closed = b.expire_channels(101).unwrap();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].0, first);
    assert_eq!(closed[0].1.provider_net + closed[0].1.commission, 45);
    let chs = b.channels_of("a");
    assert_eq!(chs.len(), 2);
    assert!(
        chs.iter()
            .any(|c| c.channel.id != first && c.channel.is_open() && c.channel.spent == 7)
    );
    b.audit("a", Asset::Tnzo).unwrap();
}
