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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

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
    #[error("the book's lock is poisoned")]
    Poisoned,
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
    bonds: bonds_book::BondBook,
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

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, BookError> {
        self.inner.lock().map_err(|_| BookError::Poisoned)
    }

    /// Adds an account with its stored funds (at start, or when a key made by
    /// another process first appears). Known accounts keep their state.
    pub fn load_account(&self, account: &str, funds: &[(Asset, Funds)]) -> Result<(), BookError> {
        let mut g = self.lock()?;
        if g.accounts.contains_key(account) {
            return Ok(());
        }
        let mut state = AccountState::default();
        for (asset, f) in funds {
            state.funds[slot(*asset)] = Funds { held: 0, ..*f };
        }
        g.accounts.insert(account.to_owned(), state);
        Ok(())
    }

    /// Replaces everything the book holds for `account` with the store's state
    /// (when this replica takes the account's lease): its funds, its channels, and
    /// the spend windows of `keys` rebuilt from their charges of the last 24 h.
    /// Refused while the account has requests in flight.
    pub fn replace_account(
        &self,
        account: &str,
        funds: &[(Asset, Funds)],
        channels: Vec<(Channel, Option<Voucher>)>,
        keys: &[(String, Vec<(u64, u128)>)],
        now: u64,
    ) -> Result<(), BookError> {
        let mut g = self.lock()?;
        if g.accounts.get(account).is_some_and(|a| a.holds > 0) {
            return Err(BookError::AccountBusy(account.to_owned()));
        }
        Self::forget(&mut g, account);
        let mut state = AccountState {
            touched: now,
            ..AccountState::default()
        };
        for (asset, f) in funds {
            state.funds[slot(*asset)] = Funds { held: 0, ..*f };
        }
        g.accounts.insert(account.to_owned(), state);
        for (ch, latest) in channels {
            let vouchered = latest.as_ref().map(|v| v.nonce).unwrap_or(0);
            if ch.is_open() {
                g.routes.insert(
                    (ch.payer.clone(), ch.provider.clone(), ch.asset),
                    ch.id.clone(),
                );
            }
            let durable = (ch.nonce, ch.spent);
            g.channels.insert(
                ch.id.clone(),
                ChannelEntry {
                    ch,
                    dirty: false,
                    holds: 0,
                    durable,
                    voucher_due: false,
                    vouchered,
                    latest,
                },
            );
        }
        // Each key's charges count in its delegating ancestors' windows too.
        let ancestors = &g.ancestors;
        let windows = crate::money::scope::rebuild_windows(keys, |k| {
            ancestors
                .get(k)
                .map(|up| up.iter().map(|a| a.0.clone()).collect())
                .unwrap_or_default()
        });
        g.windows.extend(windows);
        Ok(())
    }

    /// Records the delegating ancestors of `key` (their key ids and daily limits,
    /// nearest first): its requests count in their 24 h windows too.
    pub fn set_ancestors(&self, key: &str, ancestors: Vec<(String, u128)>) {
        let Ok(mut g) = self.lock() else { return };
        if ancestors.is_empty() {
            g.ancestors.remove(key);
        } else {
            g.ancestors.insert(key.to_owned(), ancestors);
        }
    }

    fn forget(g: &mut Inner, account: &str) {
        Self::forget_all(g, &HashSet::from([account]));
    }

    /// Drops accounts and their channels in one pass over the channels.
    fn forget_all(g: &mut Inner, accounts: &HashSet<&str>) {
        for a in accounts {
            g.accounts.remove(*a);
        }
        g.channels
            .retain(|_, e| !accounts.contains(e.ch.payer.as_str()));
        g.routes
            .retain(|(payer, _, _), _| !accounts.contains(payer.as_str()));
        g.dirty_accounts.retain(|a| !accounts.contains(a.as_str()));
        let channels = &g.channels;
        g.dirty_channels.retain(|c| channels.contains_key(c));
    }

    /// Drops accounts idle since `before` (no request in flight, nothing waiting to
    /// be committed) from the book, so their leases can be released; returns them.
    pub fn evict_idle(&self, before: u64) -> Vec<String> {
        let Ok(mut g) = self.lock() else {
            return Vec::new();
        };
        // Accounts with a channel or a request still to be written stay. A voucher
        // still due is sent by whichever replica takes the account next (its
        // checkpoint vouches for every durable state not yet vouched).
        // So do accounts with a disputed channel: the dispute settles here when its
        // window ends, whether or not the payer comes back.
        let mut busy: HashSet<&str> = g
            .channels
            .values()
            .filter(|e| e.dirty || e.holds > 0 || matches!(e.ch.state, State::Disputed { .. }))
            .map(|e| e.ch.payer.as_str())
            .collect();
        busy.extend(g.requests.iter().map(|r| r.account.as_str()));
        let idle: Vec<String> = g
            .accounts
            .iter()
            .filter(|(id, a)| {
                a.holds == 0 && !a.dirty && a.touched < before && !busy.contains(id.as_str())
            })
            .map(|(id, _)| id.clone())
            .collect();
        drop(busy);
        // Their keys' spend windows are rebuilt from the store when they come back.
        let set: HashSet<&str> = idle.iter().map(String::as_str).collect();
        Self::forget_all(&mut g, &set);
        idle
    }

    /// Drops an account whose lease was lost, with its uncommitted changes.
    pub fn drop_account(&self, account: &str) {
        if let Ok(mut g) = self.lock() {
            Self::forget(&mut g, account);
            g.requests.retain(|r| r.account != account);
            let holds: Vec<u64> = g
                .holds
                .iter()
                .filter(|(_, h)| h.account == account)
                .map(|(id, _)| *id)
                .collect();
            for id in holds {
                g.holds.remove(&id);
            }
        }
    }

    pub fn has_account(&self, account: &str) -> bool {
        self.lock()
            .map(|g| g.accounts.contains_key(account))
            .unwrap_or(false)
    }

    pub fn load_pools(
        &self,
        pools: &[(Asset, Pools)],
        earnings: &[(String, Asset, u128)],
    ) -> Result<(), BookError> {
        let mut g = self.lock()?;
        for (a, p) in pools {
            g.pools.insert(*a, *p);
        }
        for (p, a, v) in earnings {
            g.earnings.insert((p.clone(), *a), *v);
        }
        Ok(())
    }

    /// Adds funds (admin credit, faucet, a new funded account).
    pub fn credit(&self, account: &str, asset: Asset, amount: u128) -> Result<u128, BookError> {
        let mut g = self.lock()?;
        if !g.accounts.contains_key(account) {
            g.accounts
                .insert(account.to_owned(), AccountState::default());
        }
        let f = g.funds(account, asset)?;
        f.balance = f.balance.checked_add(amount).ok_or(BookError::Overflow)?;
        f.funded = f.funded.checked_add(amount).ok_or(BookError::Overflow)?;
        Ok(f.available())
    }

    /// Admission: checks the key's scope and the balance together and holds
    /// `amount`, or says which limit refused and by how much.
    pub fn reserve(
        &self,
        account: &str,
        asset: Asset,
        amount: u128,
        key: Option<(&str, &SpendLimits)>,
        now: u64,
    ) -> Result<Reservation, BookError> {
        let mut g = self.lock()?;
        let available = g
            .accounts
            .get(account)
            .map(|a| a.funds[slot(asset)].available())
            .ok_or_else(|| BookError::UnknownAccount(account.to_owned()))?;
        if let Some((key, limits)) = key {
            if !g.windows.contains_key(key) {
                g.windows.insert(key.to_owned(), SpendWindow::default());
            }
            if let Some(w) = g.windows.get_mut(key) {
                limits.admit(w, amount, now)?;
            }
            let g = &mut *g;
            if let Some(up) = g.ancestors.get(key) {
                crate::money::scope::admit_shared(&mut g.windows, up, amount, now)?;
            }
        }
        if available < amount {
            return Err(BookError::Insufficient {
                asset,
                needed: amount,
                available,
            });
        }
        g.funds(account, asset)?.held += amount;
        if let Some(a) = g.accounts.get_mut(account) {
            a.holds += 1;
            a.touched = now;
        }
        if let Some((key, _)) = key
            && let Some(w) = g.windows.get_mut(key)
        {
            w.pending += amount;
        }
        let shared: Vec<String> = key
            .and_then(|(k, _)| g.ancestors.get(k))
            .map(|up| up.iter().map(|a| a.0.clone()).collect())
            .unwrap_or_default();
        crate::money::scope::hold_shared(&mut g.windows, &shared, amount);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        g.holds.insert(
            id,
            Hold {
                account: account.to_owned(),
                asset,
                key: key.map(|k| k.0.to_owned()),
                shared,
                amount,
                charged: 0,
                drawn: 0,
                channel: None,
            },
        );
        Ok(Reservation {
            id,
            account: account.to_owned(),
            asset,
            amount,
        })
    }

    /// Binds a request to its channel with `provider` (opened on first use) before
    /// the provider is called, and returns the channel's id. A request that fails
    /// over before anything was charged may be bound again to the next provider.
    pub fn bind(&self, r: &Reservation, provider: &str, now: u64) -> Result<String, BookError> {
        let mut g = self.lock()?;
        let hold = g
            .holds
            .get(&r.id)
            .ok_or_else(|| BookError::UnknownChannel(format!("hold {}", r.id)))?;
        let (account, asset, old, charged) = (
            hold.account.clone(),
            hold.asset,
            hold.channel.clone(),
            hold.charged,
        );
        if let Some(old) = &old {
            let same = g
                .channels
                .get(old)
                .is_some_and(|e| e.ch.provider == provider && e.ch.is_open());
            if same || charged > 0 {
                return Ok(old.clone());
            }
            if let Some(e) = g.channels.get_mut(old) {
                e.holds = e.holds.saturating_sub(1);
            }
        }
        let id = g.channel_for(&self.config, &account, provider, asset, now)?;
        if let Some(e) = g.channels.get_mut(&id) {
            e.holds += 1;
        }
        if let Some(h) = g.holds.get_mut(&r.id) {
            h.channel = Some(id.clone());
        }
        Ok(id)
    }

    /// The cumulative cost metered so far on a request (called per streamed chunk).
    pub fn progress(
        &self,
        r: &Reservation,
        cumulative: u128,
        provider: &str,
        now: u64,
    ) -> Result<(), BookError> {
        let mut g = self.lock()?;
        g.advance(&self.config, r.id, cumulative, provider, now)
    }

    /// Charges the actual cost (capped at the reservation) and frees the rest.
    pub fn settle(
        &self,
        r: Reservation,
        charge: Charge<'_>,
        now: u64,
    ) -> Result<Settled, BookError> {
        let mut g = self.lock()?;
        let adv = g.advance(&self.config, r.id, charge.amount, charge.provider, now);
        let hold = g.holds.remove(&r.id);
        let Some(hold) = hold else {
            return adv.map(|()| Settled {
                charged: 0,
                refunded: r.amount,
                capped: false,
            });
        };
        let free = hold.amount - hold.drawn;
        g.funds(&hold.account, hold.asset)?.held -= free;
        if let Some(a) = g.accounts.get_mut(&hold.account) {
            a.holds = a.holds.saturating_sub(1);
        }
        if let Some(key) = &hold.key
            && let Some(w) = g.windows.get_mut(key)
        {
            w.pending -= hold.amount;
            w.record(now, hold.charged);
        }
        crate::money::scope::settle_shared(
            &mut g.windows,
            &hold.shared,
            hold.amount,
            hold.charged,
            now,
        );
        if let Some(c) = &hold.channel
            && let Some(e) = g.channels.get_mut(c)
        {
            e.holds = e.holds.saturating_sub(1);
            e.voucher_due = true;
        }
        if hold.charged > 0 {
            g.requests.push(RequestRecord {
                id: charge.request_id.to_owned(),
                key: hold.key.clone(),
                account: hold.account.clone(),
                asset: hold.asset,
                channel: hold.channel.clone(),
                charged: hold.charged,
                at: now,
            });
        }
        adv?;
        Ok(Settled {
            charged: hold.charged,
            refunded: hold.amount - hold.charged,
            capped: charge.amount > hold.amount,
        })
    }

    /// Frees a reservation that never reached a provider.
    pub fn release(&self, r: Reservation) {
        let Ok(mut g) = self.lock() else { return };
        let Some(hold) = g.holds.remove(&r.id) else {
            return;
        };
        if let Ok(f) = g.funds(&hold.account, hold.asset) {
            f.held -= hold.amount - hold.drawn;
        }
        if let Some(a) = g.accounts.get_mut(&hold.account) {
            a.holds = a.holds.saturating_sub(1);
        }
        if let Some(key) = &hold.key
            && let Some(w) = g.windows.get_mut(key)
        {
            w.pending -= hold.amount;
        }
        crate::money::scope::settle_shared(&mut g.windows, &hold.shared, hold.amount, 0, 0);
        if let Some(c) = &hold.channel
            && let Some(e) = g.channels.get_mut(c)
        {
            e.holds = e.holds.saturating_sub(1);
        }
    }

    pub fn funds(&self, account: &str, asset: Asset) -> Option<Funds> {
        self.lock()
            .ok()?
            .accounts
            .get(account)
            .map(|a| a.funds[slot(asset)])
    }

    /// Spent by a key in the last 24 h.
    pub fn spent_today(&self, key: &str, now: u64) -> u128 {
        self.lock()
            .ok()
            .and_then(|mut g| g.windows.get_mut(key).map(|w| w.spent(now)))
            .unwrap_or(0)
    }

    pub fn channels_of(&self, account: &str) -> Vec<ChannelView> {
        let Ok(g) = self.lock() else {
            return Vec::new();
        };
        let mut out: Vec<ChannelView> = g
            .channels
            .values()
            .filter(|e| e.ch.payer == account)
            .map(|e| ChannelView {
                channel: e.ch.clone(),
                in_flight: e.holds,
                latest_voucher: e.latest.clone(),
            })
            .collect();
        out.sort_by(|a, b| {
            (a.channel.opened, &a.channel.id).cmp(&(b.channel.opened, &b.channel.id))
        });
        out
    }

    /// Open channels with one provider.
    pub fn channels_of_provider(&self, provider: &str) -> Vec<Channel> {
        let Ok(g) = self.lock() else {
            return Vec::new();
        };
        g.channels
            .values()
            .filter(|e| e.ch.provider == provider && e.ch.is_open())
            .map(|e| e.ch.clone())
            .collect()
    }

    pub fn channel(&self, id: &str) -> Option<ChannelView> {
        let g = self.lock().ok()?;
        g.channels.get(id).map(|e| ChannelView {
            channel: e.ch.clone(),
            in_flight: e.holds,
            latest_voucher: e.latest.clone(),
        })
    }

    /// Closes a channel at its current state: the provider's net goes to its
    /// earnings, the commission to the pools, the refund to the payer's balance.
    pub fn close(&self, id: &str, now: u64) -> Result<Split, BookError> {
        let mut g = self.lock()?;
        let e = g
            .channels
            .get_mut(id)
            .ok_or_else(|| BookError::UnknownChannel(id.to_owned()))?;
        if e.holds > 0 {
            return Err(ChannelError::Busy(id.to_owned(), e.holds).into());
        }
        let split = e.ch.close(now)?;
        let ch = e.ch.clone();
        self.after_close(&mut g, &ch, split)?;
        Ok(split)
    }

    /// Submits a state to a dispute (opening one on an open channel) and answers it
    /// with the channel's latest state: `claim` is the submitted (nonce, spent), or
    /// `None` for the channel's own. A claim behind the channel is refused, whoever
    /// makes it, so a dispute never settles below the latest state the gateway
    /// signed. A claim above the book's (a voucher the gateway signed that the book
    /// has not caught up with, after a crash) is adopted first, drawing what the
    /// deposit lacks from the payer's available balance (refused when it cannot).
    pub fn dispute(
        &self,
        id: &str,
        by: Party,
        claim: Option<(u64, u128)>,
        now: u64,
    ) -> Result<Channel, BookError> {
        let mut g = self.lock()?;
        let e = g
            .channels
            .get(id)
            .ok_or_else(|| BookError::UnknownChannel(id.to_owned()))?;
        if e.holds > 0 && e.ch.is_open() {
            return Err(ChannelError::Busy(id.to_owned(), e.holds).into());
        }
        let (nonce, spent) = claim.unwrap_or((e.ch.nonce, e.ch.spent));
        let (payer, asset) = (e.ch.payer.clone(), e.ch.asset);
        if let State::Disputed { deadline, .. } = e.ch.state
            && now > deadline
        {
            return Err(ChannelError::WindowClosed(id.to_owned(), deadline).into());
        }
        if nonce > e.ch.nonce {
            let mut ahead = e.ch.clone();
            let draw = ahead.adopt(nonce, spent)?;
            let f = g.funds(&payer, asset)?;
            if f.available() < draw {
                return Err(BookError::Insufficient {
                    asset,
                    needed: draw,
                    available: f.available(),
                });
            }
            f.balance -= draw;
            if let Some(e) = g.channels.get_mut(id) {
                e.ch = ahead;
                e.vouchered = e.vouchered.max(nonce);
            }
        }
        let window = self.config.challenge_window;
        let e = g
            .channels
            .get_mut(id)
            .ok_or_else(|| BookError::UnknownChannel(id.to_owned()))?;
        e.ch.dispute(by, nonce, spent, now, window)?;
        let ch = e.ch.clone();
        g.routes
            .remove(&(ch.payer.clone(), ch.provider.clone(), ch.asset));
        g.touch_channel(id);
        Ok(ch)
    }

    /// Settles every dispute whose window has passed; returns the channels closed.
    pub fn finish_disputes(&self, now: u64) -> Result<Vec<(String, Split)>, BookError> {
        let mut g = self.lock()?;
        let due: Vec<String> = g
            .channels
            .values()
            .filter(|e| matches!(e.ch.state, State::Disputed { deadline, .. } if now > deadline))
            .map(|e| e.ch.id.clone())
            .collect();
        let mut out = Vec::new();
        for id in due {
            let Some(e) = g.channels.get_mut(&id) else {
                continue;
            };
            if let Some(split) = e.ch.finish_dispute(now) {
                let ch = e.ch.clone();
                self.after_close(&mut g, &ch, split)?;
                out.push((id, split));
            }
        }
        Ok(out)
    }

    /// Closes every expired open channel with no request in flight cooperatively
    /// at its latest state (those busy close on a later sweep); returns them.
    pub fn expire_channels(&self, now: u64) -> Result<Vec<(String, Split)>, BookError> {
        let mut g = self.lock()?;
        let due: Vec<String> = g
            .channels
            .values()
            .filter(|e| e.holds == 0 && e.ch.is_expired(now))
            .map(|e| e.ch.id.clone())
            .collect();
        let mut out = Vec::new();
        for id in due {
            let Some(e) = g.channels.get_mut(&id) else {
                continue;
            };
            let split = e.ch.close(now)?;
            let ch = e.ch.clone();
            self.after_close(&mut g, &ch, split)?;
            out.push((id, split));
        }
        Ok(out)
    }

    fn after_close(&self, g: &mut Inner, ch: &Channel, split: Split) -> Result<(), BookError> {
        g.routes
            .remove(&(ch.payer.clone(), ch.provider.clone(), ch.asset));
        g.touch_channel(&ch.id);
        let f = g.funds(&ch.payer, ch.asset)?;
        f.balance = f
            .balance
            .checked_add(split.refund)
            .ok_or(BookError::Overflow)?;
        let p = g.pools.entry(ch.asset).or_default();
        p.treasury += split.treasury;
        p.burned += split.burned;
        p.stakers += split.stakers;
        g.pools_dirty = true;
        let k = (ch.provider.clone(), ch.asset);
        let earned = g.earnings.entry(k.clone()).or_default();
        *earned = earned
            .checked_add(split.provider_net)
            .ok_or(BookError::Overflow)?;
        g.dirty_earnings.push(k);
        Ok(())
    }

    pub fn pools(&self) -> BTreeMap<Asset, Pools> {
        self.lock().map(|g| g.pools.clone()).unwrap_or_default()
    }

    pub fn earnings(&self, provider: &str) -> BTreeMap<Asset, u128> {
        let Ok(g) = self.lock() else {
            return BTreeMap::new();
        };
        g.earnings
            .iter()
            .filter(|((p, _), _)| p == provider)
            .map(|((_, a), v)| (*a, *v))
            .collect()
    }

    /// Checks conservation for one account and asset:
    /// `funded = balance + Σ deposit(not closed) + Σ spent(closed) + Σ bonds` (each
    /// bond's bonded + unbonding + slashed, see `money::bonds`) and `held <= balance`.
    pub fn audit(&self, account: &str, asset: Asset) -> Result<(), String> {
        let g = self.lock().map_err(|e| e.to_string())?;
        let f = g
            .accounts
            .get(account)
            .map(|a| a.funds[slot(asset)])
            .ok_or("unknown account")?;
        let mut in_channels = 0u128;
        for e in g
            .channels
            .values()
            .filter(|e| e.ch.payer == account && e.ch.asset == asset)
        {
            if e.ch.spent > e.ch.deposit {
                return Err(format!(
                    "channel {} spent {} > deposit {}",
                    e.ch.id, e.ch.spent, e.ch.deposit
                ));
            }
            in_channels += match e.ch.state {
                State::Closed { .. } => e.ch.spent,
                _ => e.ch.deposit,
            };
        }
        if f.held > f.balance {
            return Err(format!("held {} > balance {}", f.held, f.balance));
        }
        let bonds = g.bonds_held(account, asset);
        if f.funded != f.balance + in_channels + bonds {
            return Err(format!(
                "funded {} != balance {} + channels {} + bonds {}",
                f.funded, f.balance, in_channels, bonds
            ));
        }
        Ok(())
    }

    /// Takes every row changed since the last call, for one commit.
    pub fn take_dirty(&self) -> Batch {
        let Ok(mut g) = self.lock() else {
            return Batch::default();
        };
        let g = &mut *g;
        let mut b = Batch::default();
        for id in std::mem::take(&mut g.dirty_accounts) {
            if let Some(a) = g.accounts.get_mut(&id) {
                a.dirty = false;
                for asset in ASSETS {
                    let f = a.funds[slot(asset)];
                    if f != Funds::default() {
                        b.accounts.push((id.clone(), asset, f));
                    }
                }
            }
        }
        for id in std::mem::take(&mut g.dirty_channels) {
            if let Some(e) = g.channels.get_mut(&id) {
                e.dirty = false;
                b.channels.push(e.ch.clone());
            }
        }
        b.requests = std::mem::take(&mut g.requests);
        if std::mem::take(&mut g.pools_dirty) {
            b.pools = g.pools.iter().map(|(a, p)| (*a, *p)).collect();
        }
        for k in std::mem::take(&mut g.dirty_earnings) {
            if let Some(v) = g.earnings.get(&k) {
                b.earnings.push((k.0, k.1, *v));
            }
        }
        (b.bonds, b.applied_slashes) = g.bonds.take_dirty();
        b
    }

    /// Records that a batch is durable: its channel states may now be vouched for.
    pub fn committed(&self, batch: &Batch) {
        let Ok(mut g) = self.lock() else { return };
        for ch in &batch.channels {
            if let Some(e) = g.channels.get_mut(&ch.id) {
                e.durable = (ch.nonce, ch.spent);
            }
        }
    }

    /// Puts a batch that failed to commit back, so the next commit retries it.
    pub fn requeue(&self, batch: Batch) {
        let Ok(mut g) = self.lock() else { return };
        for (id, _, _) in batch.accounts {
            if let Some(a) = g.accounts.get_mut(&id)
                && !a.dirty
            {
                a.dirty = true;
                g.dirty_accounts.push(id);
            }
        }
        for ch in batch.channels {
            g.touch_channel(&ch.id);
        }
        let mut reqs = batch.requests;
        reqs.append(&mut g.requests);
        g.requests = reqs;
        if !batch.pools.is_empty() {
            g.pools_dirty = true;
        }
        for (p, a, _) in batch.earnings {
            g.dirty_earnings.push((p, a));
        }
        g.bonds.requeue(batch.bonds, batch.applied_slashes);
    }

    /// Durable channel states not yet vouched for, of channels where a request
    /// ended (or every changed one when `checkpoint`).
    pub fn due_vouchers(&self, checkpoint: bool) -> Vec<DueVoucher> {
        let Ok(g) = self.lock() else {
            return Vec::new();
        };
        g.channels
            .values()
            .filter(|e| (e.voucher_due || checkpoint) && e.durable.0 > e.vouchered)
            .map(|e| DueVoucher {
                channel: e.ch.id.clone(),
                provider: e.ch.provider.clone(),
                asset: e.ch.asset,
                nonce: e.durable.0,
                spent: e.durable.1,
            })
            .collect()
    }

    /// Records a voucher signed for `nonce` (and the countersigned one, when the
    /// provider answered).
    pub fn vouchered(&self, channel: &str, nonce: u64, countersigned: Option<Voucher>) {
        let Ok(mut g) = self.lock() else { return };
        if let Some(e) = g.channels.get_mut(channel) {
            e.vouchered = e.vouchered.max(nonce);
            if e.durable.0 <= e.vouchered && e.ch.nonce <= e.vouchered {
                e.voucher_due = false;
            }
            if let Some(v) = countersigned
                && e.latest.as_ref().is_none_or(|l| l.nonce < v.nonce)
            {
                e.latest = Some(v);
            }
        }
    }

    /// Reconciles a channel with the latest voucher its provider holds (after a
    /// restart): a higher nonce or spent than the book's is adopted, drawing the
    /// difference from the payer's balance, so what the payer signed is paid.
    pub fn reconcile(&self, channel: &str, v: &Voucher) -> Result<u128, BookError> {
        let mut g = self.lock()?;
        let e = g
            .channels
            .get_mut(channel)
            .ok_or_else(|| BookError::UnknownChannel(channel.to_owned()))?;
        if !e.ch.is_open() {
            return Ok(0);
        }
        let (payer, asset) = (e.ch.payer.clone(), e.ch.asset);
        let extra = v.cumulative_spent.saturating_sub(e.ch.spent);
        let draw = extra.saturating_sub(e.ch.free());
        e.ch.deposit += draw;
        e.ch.spent += extra;
        e.ch.nonce = e.ch.nonce.max(v.nonce);
        e.vouchered = e.vouchered.max(v.nonce);
        if e.latest.as_ref().is_none_or(|l| l.nonce < v.nonce) {
            e.latest = Some(v.clone());
        }
        g.touch_channel(channel);
        if draw > 0 {
            let f = g.funds(&payer, asset)?;
            // The payer signed for it; it is owed even if the balance runs short.
            f.balance = f.balance.saturating_sub(draw);
        }
        Ok(extra)
    }
}

#[path = "bonds_book.rs"]
mod bonds_book;
pub use bonds_book::{AppliedSlash, Tick};

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
