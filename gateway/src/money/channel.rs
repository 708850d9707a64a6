//! One payment channel: (payer, provider, asset, deposit, cumulative spent, nonce,
//! expiry, state).
//!
//! The deposit is drawn from the payer's balance as requests on the channel need it
//! (plus an optional standing float at opening), so money is never stranded in a
//! channel the payer no longer uses; it only grows while the channel is open, and
//! `spent <= deposit` always. Each metered chunk raises `spent` by its cost and the
//! nonce by one. Closing splits the deposit (see [`crate::money::settlement`]).
//!
//! Dispute (whitepaper §12.1): either side submits a state (nonce, spent). A channel
//! never settles below the latest state the gateway has signed, and the gateway's
//! book is always at or above it (it signs only durable states): so a state behind
//! the channel's nonce is refused whoever submits it, a state at the channel's nonce
//! must be the channel's own, and the dispute records the channel's latest state at
//! once (the gateway's answer). A signed state above the book's (a voucher the book
//! has not caught up with after a crash) is adopted first ([`Channel::adopt`]).
//! After the challenge window the recorded state settles.
//!
//! Expiry: an open channel past `expires` is closed cooperatively at its latest
//! state by the book's sweep ([`Channel::is_expired`]).

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
    #[error(
        "stale state: nonce {nonce} is below the disputed nonce {best}; the dispute settles at the latest state"
    )]
    Stale { nonce: u64, best: u64 },
    #[error(
        "stale state: nonce {nonce} is below the channel's latest signed nonce {current}; a channel never settles below its latest state"
    )]
    BehindChannel { nonce: u64, current: u64 },
    #[error(
        "conflicting state: nonce {nonce} with spent {spent}, but the channel's state at that nonce has spent {own}"
    )]
    Conflicting { nonce: u64, spent: u128, own: u128 },
    #[error(
        "state nonce {nonce} is above the channel's nonce {current}; it must be adopted before a dispute"
    )]
    Ahead { nonce: u64, current: u64 },
    #[error("state nonce {nonce} is above the channel's but its spent {spent} is below {own}")]
    NotMonotone { nonce: u64, spent: u128, own: u128 },
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

    /// True when the channel is open and its lifetime has passed.
    pub fn is_expired(&self, now: u64) -> bool {
        self.is_open() && now >= self.expires
    }

    /// Adopts a signed state above the channel's (`nonce` > the channel's nonce):
    /// `spent` rises to it, drawing into the deposit what it lacks; returns that
    /// draw (the caller takes it from the payer's balance). A state at or below the
    /// channel's nonce changes nothing and returns 0. Open or disputed channels only.
    pub fn adopt(&mut self, nonce: u64, spent: u128) -> Result<u128, ChannelError> {
        if matches!(self.state, State::Closed { .. }) {
            return Err(ChannelError::NotOpen(self.id.clone(), "closed"));
        }
        if nonce <= self.nonce {
            return Ok(0);
        }
        if spent < self.spent {
            return Err(ChannelError::NotMonotone {
                nonce,
                spent,
                own: self.spent,
            });
        }
        let draw = spent.saturating_sub(self.deposit);
        self.deposit += draw;
        self.spent = spent;
        self.nonce = nonce;
        if let State::Disputed {
            nonce: n, spent: s, ..
        } = &mut self.state
        {
            (*n, *s) = (nonce, spent);
        }
        Ok(draw)
    }

    /// Submits a state to a dispute (opening one if the channel is open). The
    /// state must be the channel's own latest (a lower nonce is refused, the same
    /// nonce must carry the same spent, a higher one must be [`adopt`]ed first);
    /// resubmitting the disputed state changes nothing. The dispute records the
    /// channel's latest state.
    ///
    /// [`adopt`]: Channel::adopt
    pub fn dispute(
        &mut self,
        by: Party,
        nonce: u64,
        spent: u128,
        now: u64,
        window: u64,
    ) -> Result<(), ChannelError> {
        match self.state {
            State::Open => {}
            State::Disputed {
                deadline,
                nonce: best,
                ..
            } => {
                if now > deadline {
                    return Err(ChannelError::WindowClosed(self.id.clone(), deadline));
                }
                if nonce < best {
                    return Err(ChannelError::Stale { nonce, best });
                }
            }
            State::Closed { .. } => return Err(ChannelError::NotOpen(self.id.clone(), "closed")),
        }
        if nonce < self.nonce {
            return Err(ChannelError::BehindChannel {
                nonce,
                current: self.nonce,
            });
        }
        if nonce > self.nonce {
            return Err(ChannelError::Ahead {
                nonce,
                current: self.nonce,
            });
        }
        if spent != self.spent {
            return Err(ChannelError::Conflicting {
                nonce,
                spent,
                own: self.spent,
            });
        }
        if self.spent > self.deposit {
            return Err(ChannelError::OverDepositState {
                spent: self.spent,
                deposit: self.deposit,
            });
        }
        if self.state == State::Open {
            self.state = State::Disputed {
                deadline: now.saturating_add(window),
                nonce: self.nonce,
                spent: self.spent,
                by,
            };
        }
        Ok(())
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
        // The recorded state is the channel's own; should they ever differ, the
        // higher nonce settles.
        let spent = if self.nonce >= nonce {
            self.spent
        } else {
            spent
        };
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

    /// A stale state is refused whoever submits it; the dispute records the
    /// channel's latest state at once and settles there after the window.
    #[test]
    fn disputes_never_settle_below_the_latest_state() {
        let mut c = open();
        for _ in 0..5 {
            c.charge(100).unwrap();
        }
        for by in [Party::Payer, Party::Provider] {
            assert_eq!(
                c.dispute(by, 3, 300, 1000, 86_400),
                Err(ChannelError::BehindChannel {
                    nonce: 3,
                    current: 5
                })
            );
        }
        assert!(c.is_open(), "a refused dispute changes nothing");
        // The same nonce with another spent is not the channel's state.
        assert!(matches!(
            c.dispute(Party::Provider, 5, 999, 1000, 86_400),
            Err(ChannelError::Conflicting { .. })
        ));
        // A state ahead of the book must be adopted first.
        assert!(matches!(
            c.dispute(Party::Provider, 6, 600, 1000, 86_400),
            Err(ChannelError::Ahead { .. })
        ));
        c.dispute(Party::Provider, 5, 500, 1000, 86_400).unwrap();
        // Resubmitting the same state is harmless; an older one is refused.
        c.dispute(Party::Payer, 5, 500, 1000 + 3600, 86_400)
            .unwrap();
        assert_eq!(
            c.dispute(Party::Payer, 3, 300, 1000 + 7200, 86_400),
            Err(ChannelError::Stale { nonce: 3, best: 5 })
        );
        assert!(matches!(
            c.state,
            State::Disputed {
                nonce: 5,
                spent: 500,
                by: Party::Provider,
                ..
            }
        ));
        // A signed state above the book's is adopted, also during the dispute.
        assert_eq!(c.adopt(4, 400).unwrap(), 0, "a lower state is not adopted");
        assert!(matches!(
            c.adopt(7, 450),
            Err(ChannelError::NotMonotone { .. })
        ));
        assert_eq!(
            c.adopt(7, 1200).unwrap(),
            200,
            "the deposit grows by what it lacks"
        );
        c.dispute(Party::Provider, 7, 1200, 1000 + 7200, 86_400)
            .unwrap();
        // Nothing settles inside the window; after it, the latest state does.
        assert_eq!(c.finish_dispute(1000 + 86_400), None);
        let split = c.finish_dispute(1000 + 86_401).unwrap();
        assert_eq!((c.spent, c.nonce), (1200, 7));
        assert_eq!(split.refund, 0);
        assert_eq!(split.provider_net + split.commission, 1200);
        assert!(matches!(
            c.dispute(Party::Provider, 9, 600, 1000 + 86_402, 86_400),
            Err(ChannelError::NotOpen(..))
        ));
        assert!(c.adopt(9, 1300).is_err(), "a closed channel adopts nothing");
    }

    #[test]
    fn late_disputes_are_refused_and_channels_expire() {
        let mut c = open();
        c.dispute(Party::Provider, 0, 0, 0, 10).unwrap();
        assert!(matches!(
            c.dispute(Party::Payer, 0, 0, 11, 10),
            Err(ChannelError::WindowClosed(_, 10))
        ));
        let c = open();
        assert!(!c.is_expired(100 + 30 * 86_400 - 1));
        assert!(c.is_expired(100 + 30 * 86_400));
    }
}
