//! Admission money: reserve the worst case, settle the actual, release the rest.
//!
//! [`Ledger`] is the interface the payment-channel work (issue 5) plugs into: its
//! SQL-backed channels implement the same trait. The methods are synchronous on
//! purpose: per-chunk state lives in memory and reaches disk by group commit in the
//! background, never on the request's path.
//!
//! Invariants the in-memory ledger keeps (and tests): for every (account, asset),
//! `funded = available + reserved + spent` to the unit; a settlement never charges
//! more than its reservation; nothing goes negative.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pricing::Asset;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("unknown account {0}")]
    UnknownAccount(String),
    #[error("insufficient balance: need {needed} {asset} base units, {available} available")]
    Insufficient { asset: Asset, needed: u128, available: u128 },
    #[error("amount overflows 128 bits")]
    Overflow,
    #[error("ledger state is unavailable")]
    Poisoned,
}

/// Money held for one request. Not `Clone`: it is settled or released exactly once.
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    pub id: u64,
    pub account: String,
    pub asset: Asset,
    pub amount: u128,
}

/// What a finished (or cut) request actually costs, and who served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge<'a> {
    pub amount: u128,
    pub provider: &'a str,
    pub model: &'a str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub charged: u128,
    pub refunded: u128,
    /// True when the actual cost exceeded the reservation and was capped to it.
    pub capped: bool,
}

pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// Holds `amount` of `asset` from `account`, or says why not.
    fn reserve(&self, account: &str, asset: Asset, amount: u128) -> Result<Reservation, LedgerError>;

    /// Reports the cumulative cost metered so far within a reservation (called per
    /// streamed chunk). The in-memory ledger has nothing to do; a channel ledger bumps
    /// its in-memory channel state here.
    fn progress(&self, _reservation: &Reservation, _cumulative: u128, _provider: &str) {}

    /// Charges the actual cost (capped at the reservation) and frees the rest.
    fn settle(&self, reservation: Reservation, charge: Charge<'_>) -> Result<Settled, LedgerError>;

    /// Frees a reservation without charging (the request never reached a provider).
    fn release(&self, reservation: Reservation);

    /// Available (unreserved) balance, `None` for an unknown account.
    fn balance(&self, account: &str, asset: Asset) -> Option<u128>;

    /// Adds funds (development faucet, admin API, loading the accounts file).
    fn credit(&self, account: &str, asset: Asset, amount: u128) -> Result<u128, LedgerError>;
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    pub available: u128,
    pub reserved: u128,
    pub spent: u128,
    pub funded: u128,
}

/// Per-account balances in memory (lost on restart unless saved by the caller; see
/// [`crate::accounts`]).
#[derive(Debug, Default)]
pub struct InMemoryLedger {
    balances: Mutex<HashMap<(String, Asset), Balance>>,
    next_id: AtomicU64,
}

impl InMemoryLedger {
    pub fn new() -> Self {
        InMemoryLedger::default()
    }

    pub fn get(&self, account: &str, asset: Asset) -> Option<Balance> {
        let map = self.balances.lock().ok()?;
        map.get(&(account.to_owned(), asset)).copied()
    }

    /// Available balances by account and asset (for saving).
    pub fn snapshot(&self) -> BTreeMap<String, BTreeMap<Asset, u128>> {
        let mut out: BTreeMap<String, BTreeMap<Asset, u128>> = BTreeMap::new();
        if let Ok(map) = self.balances.lock() {
            for ((acct, asset), b) in map.iter() {
                // Reserved money belongs to requests in flight; count it as available
                // so a save during traffic never loses it.
                out.entry(acct.clone()).or_default().insert(*asset, b.available + b.reserved);
            }
        }
        out
    }
}

impl Ledger for InMemoryLedger {
    fn reserve(&self, account: &str, asset: Asset, amount: u128) -> Result<Reservation, LedgerError> {
        let mut map = self.balances.lock().map_err(|_| LedgerError::Poisoned)?;
        let b = map
            .get_mut(&(account.to_owned(), asset))
            .ok_or_else(|| LedgerError::UnknownAccount(account.to_owned()))?;
        if b.available < amount {
            return Err(LedgerError::Insufficient { asset, needed: amount, available: b.available });
        }
        b.available -= amount;
        b.reserved += amount;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Reservation { id, account: account.to_owned(), asset, amount })
    }

    fn settle(&self, r: Reservation, charge: Charge<'_>) -> Result<Settled, LedgerError> {
        let mut map = self.balances.lock().map_err(|_| LedgerError::Poisoned)?;
        let b = map
            .get_mut(&(r.account.clone(), r.asset))
            .ok_or_else(|| LedgerError::UnknownAccount(r.account.clone()))?;
        let charged = charge.amount.min(r.amount);
        let refunded = r.amount - charged;
        b.reserved -= r.amount;
        b.available += refunded;
        b.spent += charged;
        Ok(Settled { charged, refunded, capped: charge.amount > r.amount })
    }

    fn release(&self, r: Reservation) {
        if let Ok(mut map) = self.balances.lock()
            && let Some(b) = map.get_mut(&(r.account.clone(), r.asset))
        {
            b.reserved -= r.amount;
            b.available += r.amount;
        }
    }

    fn balance(&self, account: &str, asset: Asset) -> Option<u128> {
        self.get(account, asset).map(|b| b.available)
    }

    fn credit(&self, account: &str, asset: Asset, amount: u128) -> Result<u128, LedgerError> {
        let mut map = self.balances.lock().map_err(|_| LedgerError::Poisoned)?;
        let b = map.entry((account.to_owned(), asset)).or_default();
        b.available = b.available.checked_add(amount).ok_or(LedgerError::Overflow)?;
        b.funded = b.funded.checked_add(amount).ok_or(LedgerError::Overflow)?;
        Ok(b.available)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn charge(amount: u128) -> Charge<'static> {
        Charge { amount, provider: "p", model: "m", prompt_tokens: 1, completion_tokens: 1 }
    }

    #[test]
    fn reserve_settle_release() {
        let l = InMemoryLedger::new();
        assert!(matches!(l.reserve("a", Asset::Tnzo, 1), Err(LedgerError::UnknownAccount(_))));
        l.credit("a", Asset::Tnzo, 100).unwrap();
        let r = l.reserve("a", Asset::Tnzo, 60).unwrap();
        assert_eq!(l.balance("a", Asset::Tnzo), Some(40));
        assert_eq!(
            l.reserve("a", Asset::Tnzo, 41),
            Err(LedgerError::Insufficient { asset: Asset::Tnzo, needed: 41, available: 40 })
        );
        let s = l.settle(r, charge(25)).unwrap();
        assert_eq!(s, Settled { charged: 25, refunded: 35, capped: false });
        assert_eq!(l.balance("a", Asset::Tnzo), Some(75));
        let r = l.reserve("a", Asset::Tnzo, 10).unwrap();
        l.release(r);
        assert_eq!(l.balance("a", Asset::Tnzo), Some(75));
        let r = l.reserve("a", Asset::Tnzo, 10).unwrap();
        assert_eq!(l.settle(r, charge(11)).unwrap(), Settled { charged: 10, refunded: 0, capped: true });
        assert_eq!(l.get("a", Asset::Tnzo).unwrap(), Balance { available: 65, reserved: 0, spent: 35, funded: 100 });
        assert_eq!(l.balance("a", Asset::Usdc), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(u128),
        Settle(usize, u128),
        Release(usize),
        Credit(u128),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u128..500).prop_map(Op::Reserve),
            (0usize..8, 0u128..600).prop_map(|(i, a)| Op::Settle(i, a)),
            (0usize..8).prop_map(Op::Release),
            (0u128..300).prop_map(Op::Credit),
        ]
    }

    proptest! {
        /// Conservation: funded = available + reserved + spent after any sequence, and
        /// no charge exceeds its reservation.
        #[test]
        fn conservation(ops in proptest::collection::vec(op(), 0..100)) {
            let l = InMemoryLedger::new();
            l.credit("a", Asset::Usdc, 1000).unwrap();
            let mut open: Vec<Reservation> = Vec::new();
            for o in ops {
                match o {
                    Op::Reserve(n) => if let Ok(r) = l.reserve("a", Asset::Usdc, n) { open.push(r) },
                    Op::Settle(i, amt) if i < open.len() => {
                        let r = open.remove(i);
                        let reserved = r.amount;
                        let s = l.settle(r, charge(amt)).unwrap();
                        prop_assert!(s.charged <= reserved);
                        prop_assert_eq!(s.charged + s.refunded, reserved);
                    }
                    Op::Release(i) if i < open.len() => l.release(open.remove(i)),
                    Op::Credit(n) => { l.credit("a", Asset::Usdc, n).unwrap(); }
                    _ => {}
                }
                let b = l.get("a", Asset::Usdc).unwrap();
                prop_assert_eq!(b.funded, b.available + b.reserved + b.spent);
                prop_assert_eq!(b.reserved, open.iter().map(|r| r.amount).sum::<u128>());
            }
        }
    }
}
