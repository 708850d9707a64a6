//! The book: every balance, hold, spend window and channel of this gateway, in
//! memory behind one lock.
//!
//! Money flows like this. Admission ([`Book::reserve`]) checks the key's delegation
//! scope and the payer's available balance together, under the lock, and holds the
//! request's worst case. Each metered chunk ([`Book::progress`]) moves the increase
//! in cost into the payer's channel with the provider that serves it (opening the
//! channel on first use): the channel's free deposit pays first, the rest is drawn
//! from the hold into the deposit; `spent` and the nonce rise. The end of the request
//! ([`Book::settle`]) records it and frees what was held but not charged.
//!
//! Conservation, for every (account, asset), at every instant:
//! `funded = balance + Σ deposit(open channels) + Σ spent(closed channels)`,
//! and `held <= balance`. Every change marks its rows dirty; the committer writes
//! them in one transaction per interval (group commit), so no chunk writes to disk.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tenzro_attest::voucher::Voucher;

use crate::money::channel::{Channel, ChannelError, Party, State};
use crate::money::decimal;
use crate::money::scope::{ScopeRefusal, SpendLimits, SpendWindow};
use crate::money::settlement::Split;
use crate::pricing::Asset;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    #[error("unknown account {0}")]
    UnknownAccount(String),
    #[error("insufficient balance: need {needed} {asset} base units, {available} available")]
    Insufficient {
        asset: Asset,
        needed: u128,
        available: u128,
    },
    #[error("delegation scope refuses this request: {0}")]
    Scope(#[from] ScopeRefusal),
    #[error("amount overflows 128 bits")]
    Overflow,
    #[error("no channel {0}")]
    UnknownChannel(String),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("account {0} has requests in flight")]
    AccountBusy(String),
}

/// How channels open and dispute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookConfig {
    /// A standing float moved into a new channel from the payer's balance (0: the
    /// deposit grows only as requests need it).
    pub initial_deposit: u128,
    /// Channel lifetime in seconds (30 days).
    pub channel_ttl: u64,
    /// Dispute challenge window in seconds (24 h).
    pub challenge_window: u64,
}

impl Default for BookConfig {
    fn default() -> Self {
        BookConfig {
            initial_deposit: 0,
            channel_ttl: 30 * 86_400,
            challenge_window: 86_400,
        }
    }
}

/// One account's money in one asset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Funds {
    /// Owned and not in any channel (includes what is held).
    #[serde(with = "decimal")]
    pub balance: u128,
    /// Held for requests in flight.
    #[serde(with = "decimal")]
    pub held: u128,
    /// Everything ever credited.
    #[serde(with = "decimal")]
    pub funded: u128,
}

impl Funds {
    pub fn available(&self) -> u128 {
        self.balance - self.held
    }
}

fn slot(asset: Asset) -> usize {
    match asset {
        Asset::Tnzo => 0,
        Asset::Usdc => 1,
        Asset::Usdt => 2,
    }
}

pub const ASSETS: [Asset; 3] = [Asset::Tnzo, Asset::Usdc, Asset::Usdt];

#[derive(Debug, Default)]
struct AccountState {
    funds: [Funds; 3],
    dirty: bool,
    /// Requests in flight.
    holds: u32,
    /// Unix seconds of the last admission or credit.
    touched: u64,
}

#[derive(Debug)]
struct ChannelEntry {
    ch: Channel,
    dirty: bool,
    /// Requests in flight bound to this channel.
    holds: u32,
    /// The (nonce, spent) last written to the store.
    durable: (u64, u128),
    /// A request ended since the last voucher.
    voucher_due: bool,
    /// Nonce of the last voucher signed.
    vouchered: u64,
    /// The latest voucher, countersigned once the provider answered.
    latest: Option<Voucher>,
}

/// Money held for one request. Not `Clone`: it is settled or released exactly once.
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    pub id: u64,
    pub account: String,
    pub asset: Asset,
    pub amount: u128,
}

#[derive(Debug)]
struct Hold {
    account: String,
    asset: Asset,
    key: Option<String>,
    /// The key's delegating ancestors whose daily windows count this request too.
    shared: Vec<String>,
    amount: u128,
    /// Cost metered so far (at most `amount`).
    charged: u128,
    /// The part of `charged` drawn from the payer's balance into the channel.
    drawn: u128,
    channel: Option<String>,
}

/// What a finished (or cut) request actually costs, and who served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge<'a> {
    pub amount: u128,
    pub provider: &'a str,
    pub request_id: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub charged: u128,
    pub refunded: u128,
    /// True when the actual cost exceeded the reservation and was capped to it.
    pub capped: bool,
}

/// A request that ended having cost something, for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub id: String,
    pub key: Option<String>,
    pub account: String,
    pub asset: Asset,
    pub channel: Option<String>,
    pub charged: u128,
    pub at: u64,
}

/// Where closed channels' commissions went, per asset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pools {
    #[serde(with = "decimal")]
    pub treasury: u128,
    #[serde(with = "decimal")]
    pub burned: u128,
    #[serde(with = "decimal")]
    pub stakers: u128,
}

/// Rows changed since the last commit.
#[derive(Debug, Default)]
pub struct Batch {
    pub accounts: Vec<(String, Asset, Funds)>,
    pub channels: Vec<Channel>,
    pub requests: Vec<RequestRecord>,
    pub pools: Vec<(Asset, Pools)>,
    pub earnings: Vec<(String, Asset, u128)>,
    /// Bonds changed since the last commit, and slashes newly applied to them.
    pub bonds: Vec<crate::money::bonds::Bond>,
    pub applied_slashes: Vec<AppliedSlash>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.channels.is_empty()
            && self.requests.is_empty()
            && self.pools.is_empty()
            && self.earnings.is_empty()
            && self.bonds.is_empty()
            && self.applied_slashes.is_empty()
    }
}

/// A channel as an account sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelView {
    #[serde(flatten)]
    pub channel: Channel,
    pub in_flight: u32,
    pub latest_voucher: Option<Voucher>,
}

/// A voucher the committer may sign: a durable state newer than the last voucher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueVoucher {
    pub channel: String,
    pub provider: String,
    pub asset: Asset,
    pub nonce: u64,
    pub spent: u128,
}

#[derive(Debug, Default)]
struct Inner {
    accounts: HashMap<String, AccountState>,
    dirty_accounts: Vec<String>,
    channels: HashMap<String, ChannelEntry>,
    dirty_channels: Vec<String>,
    /// (payer, provider, asset) -> the open channel.
    routes: HashMap<(String, String, Asset), String>,
    holds: HashMap<u64, Hold>,
    windows: HashMap<String, SpendWindow>,
    /// Key -> its delegating ancestors' windows and daily limits (see `money::scope`).
    ancestors: HashMap<String, Vec<(String, u128)>>,
    requests: Vec<RequestRecord>,
    pools: BTreeMap<Asset, Pools>,
    pools_dirty: bool,
    earnings: HashMap<(String, Asset), u128>,
    dirty_earnings: Vec<(String, Asset)>,
    bonds: bonds::BondBook,
}

impl Inner {
    fn funds(&mut self, account: &str, asset: Asset) -> Result<&mut Funds, BookError> {
        let a = self
            .accounts
            .get_mut(account)
            .ok_or_else(|| BookError::UnknownAccount(account.to_owned()))?;
        if !a.dirty {
            a.dirty = true;
            self.dirty_accounts.push(account.to_owned());
        }
        Ok(&mut a.funds[slot(asset)])
    }

    fn touch_channel(&mut self, id: &str) {
        if let Some(c) = self.channels.get_mut(id)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty_channels.push(id.to_owned());
        }
    }

    /// The open channel of (payer, provider, asset), opened if there is none.
    fn channel_for(
        &mut self,
        cfg: &BookConfig,
        payer: &str,
        provider: &str,
        asset: Asset,
        now: u64,
    ) -> Result<String, BookError> {
        let route = (payer.to_owned(), provider.to_owned(), asset);
        if let Some(id) = self.routes.get(&route) {
            // An expired channel takes no new request; the expiry sweep closes it.
            if !self.channels.get(id).is_some_and(|e| e.ch.is_expired(now)) {
                return Ok(id.clone());
            }
            self.routes.remove(&route);
        }
        let id = format!("ch_{}", uuid::Uuid::new_v4().simple());
        let mut ch = Channel::new(
            id.clone(),
            payer.to_owned(),
            provider.to_owned(),
            asset,
            now,
            cfg.channel_ttl,
        );
        let funds = self.funds(payer, asset)?;
        let float = cfg.initial_deposit.min(funds.available());
        funds.balance -= float;
        ch.top_up(float)?;
        self.channels.insert(
            id.clone(),
            ChannelEntry {
                ch,
                dirty: false,
                holds: 0,
                durable: (0, 0),
                voucher_due: false,
                vouchered: 0,
                latest: None,
            },
        );
        self.touch_channel(&id);
        self.routes.insert(route, id.clone());
        Ok(id)
    }

    /// Moves the hold's cost up to `cumulative` into its channel.
    fn advance(
        &mut self,
        cfg: &BookConfig,
        id: u64,
        cumulative: u128,
        provider: &str,
        now: u64,
    ) -> Result<(), BookError> {
        let Some(hold) = self.holds.get(&id) else {
            return Ok(());
        };
        let target = cumulative.min(hold.amount);
        if target <= hold.charged {
            return Ok(());
        }
        let delta = target - hold.charged;
        let (account, asset) = (hold.account.clone(), hold.asset);
        let channel = match &hold.channel {
            Some(c) => c.clone(),
            None => {
                let c = self.channel_for(cfg, &account, provider, asset, now)?;
                if let Some(e) = self.channels.get_mut(&c) {
                    e.holds += 1;
                }
                if let Some(h) = self.holds.get_mut(&id) {
                    h.channel = Some(c.clone());
                }
                c
            }
        };
        let entry = self
            .channels
            .get_mut(&channel)
            .ok_or_else(|| BookError::UnknownChannel(channel.clone()))?;
        let draw = delta.saturating_sub(entry.ch.free());
        entry.ch.top_up(draw)?;
        if let Err(e) = entry.ch.charge(delta) {
            // Cannot happen after the top-up; undo it so the sums still hold.
            entry.ch.deposit -= draw;
            return Err(e.into());
        }
        self.touch_channel(&channel);
        let funds = self.funds(&account, asset)?;
        funds.balance -= draw;
        funds.held -= draw;
        if let Some(h) = self.holds.get_mut(&id) {
            h.charged = target;
            h.drawn += draw;
        }
        Ok(())
    }
}

/// All the gateway's money state.
#[derive(Debug)]
pub struct Book {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    pub config: BookConfig,
}

impl Book {
    pub fn new(config: BookConfig) -> Self {
        Book {
            inner: Mutex::new(Inner::default()),
            next_id: AtomicU64::new(1),
            config,
        }
    }

    /// The book's one lock. Not poisoned by a panic (`parking_lot`): the gateway
    /// decides this once, for every lock in both binaries.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }
}

mod accounts;
mod admission;
mod bonds;
mod channels;
mod durability;
mod views;
pub use bonds::{AppliedSlash, Tick};

#[cfg(test)]
mod tests;
