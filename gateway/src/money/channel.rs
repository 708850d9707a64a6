//! One payment channel: (payer, provider, asset, deposit, cumulative spent, nonce,
//! expiry, state).
//!
//! The deposit is drawn from the payer's balance as requests on the channel need it
//! (plus an optional standing float at opening), so money is never stranded in a
//! channel the payer no longer uses; it only grows while the channel is open, and
//! `spent <= deposit` always. Each metered chunk raises `spent` by its cost and the
//! nonce by one. Closing splits the deposit (see [`crate::money::settlement`]).
//!
//! Dispute: either side submits a state (nonce, spent); within the challenge window
//! a state with a higher nonce replaces it; after the window the highest nonce
//! settles.

use serde::{Deserialize, Serialize};

use crate::money::decimal;
use crate::money::settlement::{self, Split};
use crate::pricing::Asset;

/// Who submitted a disputed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    Payer,
    Provider,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Open,
    /// A dispute is running: `nonce`/`spent` is the best state submitted so far.
    Disputed {
        deadline: u64,
        nonce: u64,
        #[serde(with = "decimal")]
        spent: u128,
        by: Party,
    },
    Closed {
        at: u64,
        split: Split,
    },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Open => "open",
            State::Disputed { .. } => "disputed",
            State::Closed { .. } => "closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel {0} is {1}, not open")]
    NotOpen(String, &'static str),
    #[error(
        "channel {id}: a charge of {delta} would bring spent to more than the deposit {deposit}"
    )]
    OverDeposit {
        id: String,
        delta: u128,
        deposit: u128,
    },
    #[error("stale state: nonce {nonce} is not above the disputed nonce {best}")]
    Stale { nonce: u64, best: u64 },
    #[error("stale state: nonce {nonce} is below the channel's nonce {current}")]
    BehindChannel { nonce: u64, current: u64 },
    #[error("the challenge window of channel {0} closed at {1}")]
    WindowClosed(String, u64),
    #[error("the state's spent {spent} exceeds the deposit {deposit}")]
    OverDepositState { spent: u128, deposit: u128 },
    #[error("channel {0} has {1} request(s) in flight; close it when they finish")]
    Busy(String, u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub id: String,
    /// The paying account.
    pub payer: String,
    /// The provider's registry id.
    pub provider: String,
    pub asset: Asset,
    #[serde(with = "decimal")]
    pub deposit: u128,
    #[serde(with = "decimal")]
    pub spent: u128,
    pub nonce: u64,
    pub opened: u64,
    pub expires: u64,
    #[serde(flatten)]
    pub state: State,
}

impl Channel {
    pub fn new(
        id: String,
        payer: String,
        provider: String,
        asset: Asset,
        now: u64,
        ttl: u64,
    ) -> Self {
        Channel {
            id,
            payer,
            provider,
            asset,
            deposit: 0,
            spent: 0,
            nonce: 0,
            opened: now,
            expires: now.saturating_add(ttl),
            state: State::Open,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Deposit not yet spent.
    pub fn free(&self) -> u128 {
        self.deposit - self.spent
    }

    /// Adds to the deposit (the caller took it from the payer's balance).
    pub fn top_up(&mut self, amount: u128) -> Result<(), ChannelError> {
        if !self.is_open() {
            return Err(ChannelError::NotOpen(self.id.clone(), self.state.name()));
        }
        self.deposit = self
            .deposit
            .checked_add(amount)
            .ok_or(ChannelError::OverDeposit {
                id: self.id.clone(),
                delta: amount,
                deposit: self.deposit,
            })?;
        Ok(())
    }

    /// One metered chunk: spent rises by `delta`, the nonce by one.
    pub fn charge(&mut self, delta: u128) -> Result<(), ChannelError> {
        if !self.is_open() {
            return Err(ChannelError::NotOpen(self.id.clone(), self.state.name()));
        }
        if delta > self.free() {
            return Err(ChannelError::OverDeposit {
                id: self.id.clone(),
                delta,
                deposit: self.deposit,
            });
        }
        self.spent += delta;
        self.nonce += 1;
        Ok(())
    }

    /// Closes at the current state; the split's refund goes back to the payer.
    pub fn close(&mut self, now: u64) -> Result<Split, ChannelError> {
        if !self.is_open() {
            return Err(ChannelError::NotOpen(self.id.clone(), self.state.name()));
        }
        self.settle_at(self.spent, now)
    }

    fn settle_at(&mut self, spent: u128, now: u64) -> Result<Split, ChannelError> {
        let split =
            settlement::split(self.deposit, spent).map_err(|_| ChannelError::OverDepositState {
                spent,
                deposit: self.deposit,
            })?;
        self.spent = spent;
        self.state = State::Closed { at: now, split };
        Ok(split)
    }

    /// Submits a state to a dispute (opening one if the channel is open).
    pub fn dispute(
        &mut self,
        by: Party,
        nonce: u64,
        spent: u128,
        now: u64,
        window: u64,
    ) -> Result<(), ChannelError> {
        if spent > self.deposit {
            return Err(ChannelError::OverDepositState {
                spent,
                deposit: self.deposit,
            });
        }
        match self.state {
            State::Open => {
                if by == Party::Payer && nonce < self.nonce {
                    return Err(ChannelError::BehindChannel {
                        nonce,
                        current: self.nonce,
                    });
                }
                self.state = State::Disputed {
                    deadline: now.saturating_add(window),
                    nonce,
                    spent,
                    by,
                };
                Ok(())
            }
            State::Disputed {
                deadline,
                nonce: best,
                ..
            } => {
                if now > deadline {
                    return Err(ChannelError::WindowClosed(self.id.clone(), deadline));
                }
                if nonce <= best {
                    return Err(ChannelError::Stale { nonce, best });
                }
                self.state = State::Disputed {
                    deadline,
                    nonce,
                    spent,
                    by,
                };
                Ok(())
            }
            State::Closed { .. } => Err(ChannelError::NotOpen(self.id.clone(), "closed")),
        }
    }

    /// Settles a dispute whose window has passed: the highest nonce wins.
    pub fn finish_dispute(&mut self, now: u64) -> Option<Split> {
        let State::Disputed {
            deadline,
            nonce,
            spent,
            ..
        } = self.state
        else {
            return None;
        };
        if now <= deadline {
            return None;
        }
        self.nonce = self.nonce.max(nonce);
        self.settle_at(spent, now).ok()
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn open() -> Channel {
        let mut c = Channel::new(
            "ch".into(),
            "acct".into(),
            "p".into(),
            Asset::Tnzo,
            100,
            30 * 86_400,
        );
        c.top_up(1000).unwrap();
        c
    }

    #[test]
    fn charges_raise_spent_and_nonce_within_the_deposit() {
        let mut c = open();
        c.charge(300).unwrap();
        c.charge(0).unwrap();
        assert_eq!((c.spent, c.nonce, c.free()), (300, 2, 700));
        assert!(matches!(
            c.charge(701),
            Err(ChannelError::OverDeposit { .. })
        ));
        assert_eq!(
            (c.spent, c.nonce),
            (300, 2),
            "a refused charge changes nothing"
        );
        let split = c.close(200).unwrap();
        assert_eq!(split.refund, 700);
        assert_eq!(split.provider_net + split.commission + split.refund, 1000);
        assert!(c.charge(1).is_err() && c.top_up(1).is_err() && c.close(201).is_err());
    }

    /// A stale state submitted in the challenge window loses to the higher nonce.
    #[test]
    fn dispute_highest_nonce_wins() {
        let mut c = open();
        for _ in 0..5 {
            c.charge(100).unwrap();
        }
        // The payer submits an old state (nonce 3, 300): refused, it is behind its own channel.
        assert!(matches!(
            c.dispute(Party::Payer, 3, 300, 1000, 86_400),
            Err(ChannelError::BehindChannel { .. })
        ));
        // The provider opens with a stale voucher (nonce 3, 300) ...
        c.dispute(Party::Provider, 3, 300, 1000, 86_400).unwrap();
        // ... the payer answers within the window with the latest (nonce 5, 500).
        c.dispute(Party::Payer, 5, 500, 1000 + 3600, 86_400)
            .unwrap();
        // Resubmitting the stale one, or an equal nonce, loses.
        assert_eq!(
            c.dispute(Party::Provider, 3, 300, 1000 + 7200, 86_400),
            Err(ChannelError::Stale { nonce: 3, best: 5 })
        );
        assert_eq!(
            c.dispute(Party::Provider, 5, 999, 1000 + 7200, 86_400),
            Err(ChannelError::Stale { nonce: 5, best: 5 })
        );
        // Nothing settles inside the window; after it, the highest nonce does.
        assert_eq!(c.finish_dispute(1000 + 86_400), None);
        let split = c.finish_dispute(1000 + 86_401).unwrap();
        assert_eq!(c.spent, 500);
        assert_eq!(split.refund, 500);
        assert_eq!(split.provider_net + split.commission, 500);
        assert!(matches!(
            c.dispute(Party::Provider, 9, 600, 1000 + 86_402, 86_400),
            Err(ChannelError::NotOpen(..))
        ));
    }

    #[test]
    fn late_or_oversized_states_are_refused() {
        let mut c = open();
        assert!(matches!(
            c.dispute(Party::Provider, 1, 1001, 0, 10),
            Err(ChannelError::OverDepositState { .. })
        ));
        c.dispute(Party::Provider, 1, 10, 0, 10).unwrap();
        assert!(matches!(
            c.dispute(Party::Payer, 2, 20, 11, 10),
            Err(ChannelError::WindowClosed(_, 10))
        ));
    }
}
