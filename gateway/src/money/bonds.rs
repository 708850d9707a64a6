//! Bonded stake (whitepaper §3.2): money an owner account moves from its balance
//! into a bond for one provider key. The rules, all in integer base units:
//!
//! - A bond is in TNZO. Its key's owner is fixed by the first bond (the provider's
//!   signed consent, `tenzro_attest::bond`); only that account bonds or unbonds it.
//! - `unbond(x)` moves `x` from `bonded` to `unbonding` and (re)starts the waiting
//!   period for the whole unbonding amount: `unbonding_until = now + period`. At
//!   `now >= unbonding_until` the amount returns to the owner's balance.
//! - A slash of `ppm` takes `floor((bonded + unbonding) × ppm / 10^6)`, from
//!   `bonded` first, then from `unbonding`, and adds it to `slashed` (the money that
//!   left the owner for the treasury). A ban (10^6 ppm) takes everything.
//! - The stakers' pool is paid out pro rata to `bonded` (unbonding earns nothing):
//!   `share_i = floor(pool × bonded_i / Σ bonded)`; the remainder units stay in the
//!   pool for the next payout.
//!
//! Conservation for an owner account: `funded = balance + Σ deposits(open) +
//! Σ spent(closed) + Σ (bonded + unbonding + slashed)` over its bonds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::money::decimal;
use crate::pricing::Asset;

/// Seven days, the default waiting period of unbonding.
pub const DEFAULT_UNBONDING_S: u64 = 7 * 86_400;
/// A slash share of everything (a ban).
pub const ALL_PPM: u128 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BondError {
    #[error("provider key {key} is owned by another account")]
    NotOwner { key: String },
    #[error(
        "the first bond on provider key {key} needs the provider's `owner_signature` \
         naming this account (tenzro_attest::bond::sign_owner)"
    )]
    ConsentMissing { key: String },
    #[error("no bond on provider key {0}")]
    NoBond(String),
    #[error("cannot unbond {amount}: only {bonded} is bonded")]
    ExceedsBonded { amount: u128, bonded: u128 },
    #[error(
        "insufficient balance: the account has {available} {asset} base units available, the bond needs {needed}"
    )]
    Insufficient {
        asset: Asset,
        needed: u128,
        available: u128,
    },
    #[error("bonds are in TNZO, not {0}")]
    Asset(Asset),
    #[error("amount overflows 128 bits")]
    Overflow,
    #[error("unknown account {0}")]
    UnknownAccount(String),
    #[error("the book's lock is poisoned")]
    Poisoned,
}

/// One provider key's bond.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bond {
    /// Hex Ed25519 public key of the provider.
    pub provider_key: String,
    /// The DID derived from the key (the registry's provider id).
    pub provider_id: String,
    /// The owner account.
    pub owner: String,
    pub asset: Asset,
    #[serde(with = "decimal")]
    pub bonded: u128,
    #[serde(with = "decimal")]
    pub unbonding: u128,
    /// Unix seconds when `unbonding` returns to the owner (0 when nothing unbonds).
    pub unbonding_until: u64,
    /// Everything slashed from this bond, ever.
    #[serde(with = "decimal")]
    pub slashed: u128,
    /// Earnings and stakers' payouts credited to the owner's balance, per asset.
    pub earned: BTreeMap<Asset, EarnedAmount>,
}

/// A `u128` amount that serializes as a decimal string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarnedAmount(#[serde(with = "decimal")] pub u128);

impl Bond {
    pub fn new(provider_key: &str, provider_id: &str, owner: &str) -> Bond {
        Bond {
            provider_key: provider_key.to_owned(),
            provider_id: provider_id.to_owned(),
            owner: owner.to_owned(),
            asset: Asset::Tnzo,
            bonded: 0,
            unbonding: 0,
            unbonding_until: 0,
            slashed: 0,
            earned: BTreeMap::new(),
        }
    }

    /// What the bond holds of the owner's money (for conservation).
    pub fn held(&self) -> u128 {
        self.bonded
            .saturating_add(self.unbonding)
            .saturating_add(self.slashed)
    }

    pub fn add(&mut self, amount: u128) -> Result<(), BondError> {
        self.bonded = self.bonded.checked_add(amount).ok_or(BondError::Overflow)?;
        Ok(())
    }

    /// Starts unbonding `amount`; the whole unbonding amount waits `period` from now.
    pub fn unbond(&mut self, amount: u128, now: u64, period: u64) -> Result<(), BondError> {
        if amount > self.bonded {
            return Err(BondError::ExceedsBonded {
                amount,
                bonded: self.bonded,
            });
        }
        let unbonding = self
            .unbonding
            .checked_add(amount)
            .ok_or(BondError::Overflow)?;
        self.bonded -= amount;
        self.unbonding = unbonding;
        if self.unbonding > 0 {
            self.unbonding_until = now.saturating_add(period);
        }
        Ok(())
    }

    /// Takes a slash of `ppm` (bonded first, then unbonding); returns the amount.
    pub fn slash(&mut self, ppm: u128) -> u128 {
        let total = self.bonded.saturating_add(self.unbonding);
        let take = mul_div(total, ppm.min(ALL_PPM), ALL_PPM);
        let from_bonded = take.min(self.bonded);
        self.bonded -= from_bonded;
        let from_unbonding = (take - from_bonded).min(self.unbonding);
        self.unbonding -= from_unbonding;
        if self.unbonding == 0 {
            self.unbonding_until = 0;
        }
        let taken = from_bonded + from_unbonding;
        self.slashed = self.slashed.saturating_add(taken);
        taken
    }

    /// Ends a finished unbonding: returns the amount due back to the owner.
    pub fn mature(&mut self, now: u64) -> u128 {
        if self.unbonding == 0 || now < self.unbonding_until {
            return 0;
        }
        self.unbonding_until = 0;
        std::mem::take(&mut self.unbonding)
    }

    /// Records `amount` of `asset` credited to the owner.
    pub fn earn(&mut self, asset: Asset, amount: u128) {
        let e = self.earned.entry(asset).or_default();
        e.0 = e.0.saturating_add(amount);
    }
}

/// Splits `pool` pro rata to `stakes`: `floor(pool × stake / Σ stakes)` each (zero
/// stakes get nothing); returns the shares in the same order and the remainder,
/// which stays in the pool. `None` when the stakes sum past 128 bits.
pub fn payout(pool: u128, stakes: &[u128]) -> Option<(Vec<u128>, u128)> {
    let total = stakes
        .iter()
        .try_fold(0u128, |acc, s| acc.checked_add(*s))?;
    if total == 0 {
        return Some((vec![0; stakes.len()], pool));
    }
    let shares: Vec<u128> = stakes.iter().map(|s| mul_div(pool, *s, total)).collect();
    let paid: u128 = shares.iter().sum();
    Some((shares, pool - paid))
}

/// `floor(a × b / c)` for `b <= c` (`c > 0`), exact through a 256-bit product.
pub fn mul_div(a: u128, b: u128, c: u128) -> u128 {
    if c == 0 {
        return 0;
    }
    let (hi, lo) = widening_mul(a, b);
    if hi == 0 {
        return lo / c;
    }
    // Long division of (hi, lo) by c; hi < c because b <= c, so the quotient fits.
    let mut rem = hi;
    let mut q = 0u128;
    for i in (0..128).rev() {
        let carry = rem >> 127;
        rem = (rem << 1) | ((lo >> i) & 1);
        q <<= 1;
        if carry == 1 || rem >= c {
            rem = rem.wrapping_sub(c);
            q |= 1;
        }
    }
    q
}

/// The 256-bit product of two `u128`, as (high, low) halves.
fn widening_mul(a: u128, b: u128) -> (u128, u128) {
    const MASK: u128 = u64::MAX as u128;
    let (a1, a0) = (a >> 64, a & MASK);
    let (b1, b0) = (b >> 64, b & MASK);
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 64) + (p01 & MASK) + (p10 & MASK);
    let lo = (p00 & MASK) | (mid << 64);
    let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    (hi, lo)
}

#[cfg(test)]
#[path = "bonds_tests.rs"]
mod tests;
