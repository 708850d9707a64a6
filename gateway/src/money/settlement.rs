//! Settlement arithmetic: what a closing channel pays the provider, the network and
//! back to the payer.
//!
//! Rules (all integer base units, no floats):
//! - `commission = floor(spent × 5 / 1000)` (0.5%, rounded down: the remainder unit
//!   stays with the provider);
//! - `treasury = floor(commission × 40 / 100)`, `burned = floor(commission × 30 / 100)`,
//!   `stakers = commission − treasury − burned` (the stakers take the remainder units);
//! - `provider_net = spent − commission`, `refund = deposit − spent`.
//!
//! So `deposit = provider_net + commission + refund` and
//! `commission = treasury + burned + stakers`, both to the unit.

use serde::{Deserialize, Serialize};

/// Commission in parts per million of what was spent (0.5%).
pub const COMMISSION_PPM: u128 = 5_000;
/// Shares of the commission, in percent; the stakers' share takes the remainder.
pub const TREASURY_PERCENT: u128 = 40;
pub const BURNED_PERCENT: u128 = 30;
pub const STAKERS_PERCENT: u128 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    #[error("spent {spent} exceeds the deposit {deposit}")]
    Overspent { spent: u128, deposit: u128 },
}

/// Where a channel's deposit goes when it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    #[serde(with = "crate::money::decimal")]
    pub provider_net: u128,
    #[serde(with = "crate::money::decimal")]
    pub commission: u128,
    #[serde(with = "crate::money::decimal")]
    pub treasury: u128,
    #[serde(with = "crate::money::decimal")]
    pub burned: u128,
    #[serde(with = "crate::money::decimal")]
    pub stakers: u128,
    #[serde(with = "crate::money::decimal")]
    pub refund: u128,
}

/// Splits a closing channel. Never overflows: every product is of a value at most
/// `u128::MAX / 1_000_000`-scaled by dividing first where needed.
pub fn split(deposit: u128, spent: u128) -> Result<Split, SettleError> {
    if spent > deposit {
        return Err(SettleError::Overspent { spent, deposit });
    }
    let commission = mul_div(spent, COMMISSION_PPM, 1_000_000);
    let treasury = mul_div(commission, TREASURY_PERCENT, 100);
    let burned = mul_div(commission, BURNED_PERCENT, 100);
    let stakers = commission - treasury - burned;
    Ok(Split {
        provider_net: spent - commission,
        commission,
        treasury,
        burned,
        stakers,
        refund: deposit - spent,
    })
}

/// `floor(a × n / d)` without overflow for `n < d` (exact: splits `a` by `d`).
fn mul_div(a: u128, n: u128, d: u128) -> u128 {
    (a / d) * n + (a % d) * n / d
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn worked_example() {
        // 1 TNZO spent of a 3 TNZO deposit.
        let one = 10u128.pow(18);
        let s = split(3 * one, one).unwrap();
        assert_eq!(s.commission, 5 * 10u128.pow(15));
        assert_eq!(s.treasury, 2 * 10u128.pow(15));
        assert_eq!(s.burned, 15 * 10u128.pow(14));
        assert_eq!(s.stakers, 15 * 10u128.pow(14));
        assert_eq!(s.provider_net, one - 5 * 10u128.pow(15));
        assert_eq!(s.refund, 2 * one);
    }

    #[test]
    fn remainders_have_a_home() {
        // 199 spent: commission floor(0.995) = 0, all to the provider.
        assert_eq!(split(199, 199).unwrap().commission, 0);
        // 1999 spent: commission 9; 40% = 3.6 -> 3, 30% = 2.7 -> 2, stakers 4.
        let s = split(2000, 1999).unwrap();
        assert_eq!(
            (s.commission, s.treasury, s.burned, s.stakers),
            (9, 3, 2, 4)
        );
        assert_eq!(s.provider_net, 1990);
        assert_eq!(s.refund, 1);
        assert_eq!(
            split(5, 6),
            Err(SettleError::Overspent {
                spent: 6,
                deposit: 5
            })
        );
    }

    proptest! {
        /// Conservation to the unit and an exact split, over the whole u128 range.
        #[test]
        fn conservation(deposit in any::<u128>(), frac in 0u128..=1_000_000) {
            let spent = mul_div(deposit, frac, 1_000_000);
            let s = split(deposit, spent).unwrap();
            prop_assert_eq!(s.provider_net + s.commission + s.refund, deposit);
            prop_assert_eq!(s.treasury + s.burned + s.stakers, s.commission);
            prop_assert!(s.commission <= spent / 200 + 1);
            // The shares are within one unit of their exact percentages.
            prop_assert!(s.treasury * 100 <= s.commission * TREASURY_PERCENT);
            prop_assert!(s.burned * 100 <= s.commission * BURNED_PERCENT);
            prop_assert!(s.stakers * 100 + 200 >= s.commission * STAKERS_PERCENT);
        }

        #[test]
        fn small_amounts(deposit in 0u128..10_000_000, spent in 0u128..10_000_000) {
            match split(deposit, spent) {
                Ok(s) => {
                    prop_assert!(spent <= deposit);
                    prop_assert_eq!(s.commission, spent * 5 / 1000);
                    prop_assert_eq!(s.provider_net + s.commission + s.refund, deposit);
                }
                Err(_) => prop_assert!(spent > deposit),
            }
        }
    }
}
