#![expect(clippy::unwrap_used, reason = "tests")]

use proptest::prelude::*;

use super::*;
use crate::money::book::{Book, BookConfig, Charge};

const OWNER: &str = "owner";
const PAYER: &str = "payer";
const KEY: &str = "k1";
const DID: &str = "did:tenzro:machine:p1";
const WEEK: u64 = DEFAULT_UNBONDING_S;

fn book_with(owner_funds: u128) -> Book {
    let b = Book::new(BookConfig::default());
    b.credit(OWNER, Asset::Tnzo, owner_funds).unwrap();
    b
}

/// Money anywhere in the book (TNZO): balances, open deposits, bonds (bonded and
/// unbonding), the pools and the providers' earnings not yet credited. Closed
/// channels' spent moved into earnings and pools, slashes into the treasury.
fn network_total(b: &Book, accounts: &[&str], providers: &[&str]) -> u128 {
    let mut t = 0;
    for a in accounts {
        t += b.funds(a, Asset::Tnzo).map(|f| f.balance).unwrap_or(0);
        for c in b.channels_of(a) {
            if c.channel.is_open() {
                t += c.channel.deposit;
            }
        }
    }
    for bond in b.bonds() {
        t += bond.bonded + bond.unbonding;
    }
    let p = b.pools().get(&Asset::Tnzo).copied().unwrap_or_default();
    t += p.treasury + p.burned + p.stakers;
    for p in providers {
        t += b.earnings(p).get(&Asset::Tnzo).copied().unwrap_or(0);
    }
    t
}

/// A payer spends `amount` with provider `did` and closes the channel: the net
/// goes to the provider's earnings, the commission to the pools.
fn settle_with(b: &Book, did: &str, amount: u128, now: u64) {
    let r = b.reserve(PAYER, Asset::Tnzo, amount, None, now).unwrap();
    let ch = b.bind(&r, did, now).unwrap();
    b.settle(
        r,
        Charge {
            amount,
            provider: did,
            request_id: "rq",
        },
        now,
    )
    .unwrap();
    b.close(&ch, now).unwrap();
}

#[test]
fn mul_div_is_exact_past_128_bits() {
    assert_eq!(mul_div(u128::MAX, u128::MAX, u128::MAX), u128::MAX);
    assert_eq!(mul_div(u128::MAX, 1, 2), u128::MAX / 2);
    assert_eq!(mul_div(u128::MAX, 3, 4), u128::MAX / 4 * 3 + 2);
    assert_eq!(mul_div(10, 3, 7), 4);
    assert_eq!(mul_div(5, 0, 7), 0);
    assert_eq!(mul_div(5, 1, 0), 0);
}

#[test]
fn a_bond_slashes_bonded_first_then_unbonding() {
    let mut b = Bond::new(KEY, DID, OWNER);
    b.add(1000).unwrap();
    b.unbond(400, 10, 100).unwrap();
    assert_eq!((b.bonded, b.unbonding, b.unbonding_until), (600, 400, 110));
    // 25% of 1000 = 250, all from bonded.
    assert_eq!(b.slash(250_000), 250);
    assert_eq!((b.bonded, b.unbonding, b.slashed), (350, 400, 250));
    // 50% of 750 = 375: 350 bonded, then 25 unbonding.
    assert_eq!(b.slash(500_000), 375);
    assert_eq!((b.bonded, b.unbonding, b.slashed), (0, 375, 625));
    assert_eq!(b.mature(109), 0);
    assert_eq!(b.mature(110), 375);
    assert_eq!((b.unbonding, b.unbonding_until), (0, 0));
    assert_eq!(
        b.unbond(1, 0, 1),
        Err(BondError::ExceedsBonded {
            amount: 1,
            bonded: 0
        })
    );
    let mut ban = Bond::new(KEY, DID, OWNER);
    ban.add(777).unwrap();
    ban.unbond(7, 0, 1).unwrap();
    assert_eq!(ban.slash(ALL_PPM), 777);
    assert_eq!(ban.held(), 777);
    assert_eq!((ban.bonded, ban.unbonding, ban.unbonding_until), (0, 0, 0));
}

#[test]
fn payout_splits_exactly_and_keeps_the_remainder() {
    assert_eq!(payout(10, &[1, 1, 1]), Some((vec![3, 3, 3], 1)));
    assert_eq!(payout(10, &[0, 0]), Some((vec![0, 0], 10)));
    assert_eq!(payout(10, &[]), Some((vec![], 10)));
    assert_eq!(payout(100, &[1, 3]), Some((vec![25, 75], 0)));
    assert_eq!(payout(1, &[u128::MAX, 1]), None);
    let (shares, rest) = payout(u128::MAX, &[u128::MAX / 2, u128::MAX / 2]).unwrap();
    assert_eq!(shares[0] + shares[1] + rest, u128::MAX);
}

#[test]
fn bonding_moves_the_balance_and_needs_the_keys_consent_once() {
    let b = book_with(1000);
    assert_eq!(
        b.bond(OWNER, KEY, DID, 10, false),
        Err(BondError::ConsentMissing { key: KEY.into() })
    );
    let bond = b.bond(OWNER, KEY, DID, 600, true).unwrap();
    assert_eq!(bond.bonded, 600);
    assert_eq!(b.funds(OWNER, Asset::Tnzo).unwrap().balance, 400);
    b.audit(OWNER, Asset::Tnzo).unwrap();
    // Later bonds by the owner need no consent; too much is refused with numbers.
    assert_eq!(b.bond(OWNER, KEY, DID, 100, false).unwrap().bonded, 700);
    assert_eq!(
        b.bond(OWNER, KEY, DID, 301, false),
        Err(BondError::Insufficient {
            asset: Asset::Tnzo,
            needed: 301,
            available: 300
        })
    );
    // Another account cannot bond or unbond the key, consent or not.
    b.credit("other", Asset::Tnzo, 50).unwrap();
    assert_eq!(
        b.bond("other", KEY, DID, 1, true),
        Err(BondError::NotOwner { key: KEY.into() })
    );
    assert_eq!(
        b.unbond("other", KEY, 1, 0, WEEK),
        Err(BondError::NotOwner { key: KEY.into() })
    );
    assert_eq!(b.bond_owner(KEY).as_deref(), Some(OWNER));
    // Zero claims ownership without stake.
    let zero = b.bond(OWNER, "k2", "did:2", 0, true).unwrap();
    assert_eq!(zero.bonded, 0);
    b.audit(OWNER, Asset::Tnzo).unwrap();
    b.audit("other", Asset::Tnzo).unwrap();
}

#[test]
fn a_held_amount_cannot_be_bonded() {
    let b = book_with(1000);
    let r = b.reserve(OWNER, Asset::Tnzo, 900, None, 0).unwrap();
    assert!(matches!(
        b.bond(OWNER, KEY, DID, 101, true),
        Err(BondError::Insufficient { available: 100, .. })
    ));
    b.release(r);
    b.bond(OWNER, KEY, DID, 1000, true).unwrap();
    b.audit(OWNER, Asset::Tnzo).unwrap();
}

#[test]
fn unbonding_returns_after_the_period_on_the_injected_clock() {
    let b = book_with(1000);
    b.bond(OWNER, KEY, DID, 1000, true).unwrap();
    let u = b.unbond(OWNER, KEY, 300, 100, WEEK).unwrap();
    assert_eq!(
        (u.bonded, u.unbonding, u.unbonding_until),
        (700, 300, 100 + WEEK)
    );
    let t = b.bond_tick(100 + WEEK - 1).unwrap();
    assert!(t.changed.is_empty());
    assert_eq!(b.funds(OWNER, Asset::Tnzo).unwrap().balance, 0);
    let t = b.bond_tick(100 + WEEK).unwrap();
    assert_eq!(t.changed.len(), 1);
    assert_eq!(b.funds(OWNER, Asset::Tnzo).unwrap().balance, 300);
    assert_eq!(b.bond_of(KEY).unwrap().unbonding, 0);
    b.audit(OWNER, Asset::Tnzo).unwrap();
    // The batch carries the bond and the balance together.
    let batch = b.take_dirty();
    assert_eq!(batch.bonds.len(), 1);
    assert!(batch.accounts.iter().any(|(a, _, _)| a == OWNER));
}

#[test]
fn an_owner_not_in_the_book_is_asked_for() {
    let b = book_with(1000);
    b.bond(OWNER, KEY, DID, 1000, true).unwrap();
    b.unbond(OWNER, KEY, 1000, 0, 1).unwrap();
    b.drop_account(OWNER);
    let t = b.bond_tick(5).unwrap();
    assert_eq!(t.owners_needed, vec![OWNER.to_owned()]);
    assert_eq!(
        b.bond_of(KEY).unwrap().unbonding,
        1000,
        "kept until the owner is here"
    );
}

#[test]
fn a_slash_moves_its_share_to_the_treasury_once_per_record() {
    let b = book_with(1000);
    b.bond(OWNER, KEY, DID, 1000, true).unwrap();
    let (bond, taken) = b.apply_slash("s1", DID, 100_000, 5).unwrap().unwrap();
    assert_eq!((taken, bond.unwrap().bonded), (100, 900));
    assert_eq!(b.apply_slash("s1", DID, 100_000, 5).unwrap(), None);
    assert_eq!(b.pools()[&Asset::Tnzo].treasury, 100);
    b.audit(OWNER, Asset::Tnzo).unwrap();
    // An unbonded provider's slash is recorded with nothing to take.
    assert_eq!(
        b.apply_slash("s2", "did:none", 100_000, 5).unwrap(),
        Some((None, 0))
    );
    // The applied ids travel with the batch, and survive a reload.
    let batch = b.take_dirty();
    assert_eq!(batch.applied_slashes.len(), 2);
    let again = Book::new(BookConfig::default());
    again
        .load_bonds(b.bonds(), vec!["s1".into(), "s2".into()])
        .unwrap();
    assert_eq!(again.apply_slash("s1", DID, 100_000, 5).unwrap(), None);
    // A ban takes everything left.
    let (bond, taken) = b.apply_slash("ban", DID, ALL_PPM, 6).unwrap().unwrap();
    assert_eq!((taken, bond.unwrap().bonded), (900, 0));
    b.audit(OWNER, Asset::Tnzo).unwrap();
}

#[test]
fn only_eligible_bonds_share_the_stakers_pool() {
    let b = book_with(4000);
    b.credit(PAYER, Asset::Tnzo, 1_000_000).unwrap();
    b.bond(OWNER, KEY, DID, 1000, true).unwrap();
    // A bond on a key that serves nobody (never registered or reached, or banned).
    b.bond(OWNER, "k2", "did:idle", 3000, true).unwrap();
    settle_with(&b, DID, 200_000, 1);
    let pool = b.pools()[&Asset::Tnzo].stakers;
    assert!(pool > 0);
    let paid = b.pay_stakers(|id| id == DID).unwrap();
    assert_eq!(paid, vec![(DID.to_owned(), Asset::Tnzo, pool)]);
    assert_eq!(b.pools()[&Asset::Tnzo].stakers, 0);
    assert!(b.pending_earnings("did:idle").is_empty());
    // Nobody eligible: the pool stays.
    settle_with(&b, DID, 200_000, 2);
    let pool = b.pools()[&Asset::Tnzo].stakers;
    assert!(b.pay_stakers(|_| false).unwrap().is_empty());
    assert_eq!(b.pools()[&Asset::Tnzo].stakers, pool);
    b.audit(OWNER, Asset::Tnzo).unwrap();
}

#[test]
fn earnings_and_the_stakers_share_reach_the_owner() {
    let b = book_with(2000);
    b.credit(PAYER, Asset::Tnzo, 1_000_000).unwrap();
    b.bond(OWNER, KEY, DID, 1000, true).unwrap();
    b.bond(OWNER, "k2", "did:2", 3000 - 2000, true).unwrap();
    // 200_000 spent: commission 1000 (treasury 400, burned 300, stakers 300).
    settle_with(&b, DID, 200_000, 1);
    assert_eq!(b.pending_earnings(DID)[&Asset::Tnzo], 199_000);
    b.bond_tick(1).unwrap();
    let f = b.funds(OWNER, Asset::Tnzo).unwrap();
    assert_eq!(f.balance, 199_000);
    assert!(b.pending_earnings(DID).is_empty());
    assert_eq!(b.bond_of(KEY).unwrap().earned[&Asset::Tnzo].0, 199_000);
    // The stakers' 300, pro rata to 1000 : 1000.
    let paid = b.pay_stakers(|_| true).unwrap();
    assert_eq!(paid.iter().map(|p| p.2).sum::<u128>(), 300);
    assert_eq!(b.pools()[&Asset::Tnzo].stakers, 0);
    b.bond_tick(2).unwrap();
    assert_eq!(b.funds(OWNER, Asset::Tnzo).unwrap().balance, 199_300);
    b.audit(OWNER, Asset::Tnzo).unwrap();
    b.audit(PAYER, Asset::Tnzo).unwrap();
}

#[test]
fn earnings_of_an_unowned_provider_wait_for_its_owner() {
    let b = book_with(10);
    b.credit(PAYER, Asset::Tnzo, 1_000_000).unwrap();
    settle_with(&b, DID, 200_000, 1);
    b.bond_tick(1).unwrap();
    assert_eq!(b.pending_earnings(DID)[&Asset::Tnzo], 199_000);
    b.bond(OWNER, KEY, DID, 0, true).unwrap();
    b.bond_tick(2).unwrap();
    assert_eq!(b.funds(OWNER, Asset::Tnzo).unwrap().balance, 10 + 199_000);
    b.audit(OWNER, Asset::Tnzo).unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Bond(usize, u128),
    Unbond(usize, u128),
    Slash(usize, u128),
    /// Applies an earlier slash record again.
    Reslash(usize),
    Spend(usize, u128),
    /// Which providers (bit i: `did:i`) may be paid.
    Payout(u8),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..5_000u128).prop_map(|(k, a)| Op::Bond(k, a)),
        (0..3usize, 0..5_000u128).prop_map(|(k, a)| Op::Unbond(k, a)),
        (
            0..3usize,
            prop_oneof![Just(1_000u128), Just(10_000), Just(250_000), Just(ALL_PPM)]
        )
            .prop_map(|(k, p)| Op::Slash(k, p)),
        (0..20usize).prop_map(Op::Reslash),
        (0..3usize, 1..500_000u128).prop_map(|(k, a)| Op::Spend(k, a)),
        (0..8u8).prop_map(Op::Payout),
        (0..(2 * WEEK)).prop_map(Op::Advance),
    ]
}

proptest! {
    /// `mul_div` against plain arithmetic where the product fits, and the
    /// identity `a × c / c = a` where it does not.
    #[test]
    fn mul_div_matches_plain_arithmetic(a in any::<u64>(), b in any::<u64>(), c in 1..=u64::MAX, big in any::<u128>(), d in 1..=u128::MAX) {
        let (a, b, c) = (u128::from(a), u128::from(b), u128::from(c));
        let (b, c) = (b.min(c), b.max(c));
        prop_assert_eq!(mul_div(a, b, c), a * b / c);
        prop_assert_eq!(mul_div(big, d, d), big);
        prop_assert!(mul_div(big, d / 2, d) <= big / 2 + 1);
    }

    /// Random bonds, unbonds, slashes (some applied twice), spending, payouts and
    /// time: every account's conservation holds, the network's total never changes,
    /// a slash record moves money once, and payouts are exact.
    #[test]
    fn bonds_conserve_money(ops in prop::collection::vec(op(), 1..60)) {
        let keys = ["k0", "k1", "k2"];
        let dids = ["did:0", "did:1", "did:2"];
        let b = book_with(20_000);
        b.credit(PAYER, Asset::Tnzo, 10_000_000).unwrap();
        let total = network_total(&b, &[OWNER, PAYER], &dids);
        let mut now = 1u64;
        let mut slashes: Vec<(String, usize, u128)> = Vec::new();
        for o in ops {
            match o {
                Op::Bond(k, a) => {
                    let before = b.funds(OWNER, Asset::Tnzo).unwrap().available();
                    match b.bond(OWNER, keys[k], dids[k], a, true) {
                        Ok(_) => prop_assert!(a <= before),
                        Err(BondError::Insufficient { needed, available, .. }) => {
                            prop_assert_eq!((needed, available), (a, before));
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Unbond(k, a) => {
                    let bonded = b.bond_of(keys[k]).map(|x| x.bonded);
                    let r = b.unbond(OWNER, keys[k], a, now, WEEK);
                    prop_assert_eq!(r.is_ok(), bonded.is_some_and(|x| a <= x));
                }
                Op::Slash(k, ppm) => {
                    let id = format!("s{}", slashes.len());
                    let before = b.bond_of(keys[k]);
                    let treasury = b.pools().get(&Asset::Tnzo).map(|p| p.treasury).unwrap_or(0);
                    let (_, taken) = b.apply_slash(&id, dids[k], ppm, now).unwrap().unwrap();
                    let held = before.map(|x| x.bonded + x.unbonding).unwrap_or(0);
                    prop_assert_eq!(taken, mul_div(held, ppm, ALL_PPM));
                    prop_assert_eq!(b.pools().get(&Asset::Tnzo).map(|p| p.treasury).unwrap_or(0), treasury + taken);
                    slashes.push((id, k, ppm));
                }
                Op::Reslash(i) => {
                    if let Some((id, k, ppm)) = slashes.get(i) {
                        let before = b.bond_of(keys[*k]);
                        prop_assert_eq!(b.apply_slash(id, dids[*k], *ppm, now).unwrap(), None);
                        prop_assert_eq!(b.bond_of(keys[*k]), before);
                    }
                }
                Op::Spend(k, a) => {
                    if b.funds(PAYER, Asset::Tnzo).unwrap().available() >= a {
                        settle_with(&b, dids[k], a, now);
                    }
                }
                Op::Payout(mask) => {
                    let eligible = |id: &str| dids.iter().position(|d| *d == id).is_some_and(|i| mask & (1 << i) != 0);
                    let pool = b.pools().get(&Asset::Tnzo).map(|p| p.stakers).unwrap_or(0);
                    let paid = b.pay_stakers(eligible).unwrap();
                    prop_assert!(paid.iter().all(|p| eligible(&p.0)), "paid an ineligible bond: {paid:?}");
                    let paid: u128 = paid.iter().map(|p| p.2).sum();
                    let after = b.pools().get(&Asset::Tnzo).map(|p| p.stakers).unwrap_or(0);
                    prop_assert_eq!(pool, paid + after);
                    let stakers = b.bonds().iter().filter(|x| x.bonded > 0 && eligible(&x.provider_id)).count() as u128;
                    if stakers > 0 {
                        prop_assert!(after < stakers, "remainder {after} with {stakers} stakers");
                    } else {
                        prop_assert_eq!(after, pool);
                    }
                }
                Op::Advance(s) => {
                    now += s;
                    b.bond_tick(now).unwrap();
                }
            }
            prop_assert_eq!(b.audit(OWNER, Asset::Tnzo), Ok(()));
            prop_assert_eq!(b.audit(PAYER, Asset::Tnzo), Ok(()));
            prop_assert_eq!(network_total(&b, &[OWNER, PAYER], &dids), total);
        }
    }
}
