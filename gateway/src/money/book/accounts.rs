//! Loading, evicting and crediting accounts, and the network-wide pools.

use super::*;

impl Book {
    /// Adds an account with its stored funds (at start, or when a key made by
    /// another process first appears). Known accounts keep their state.
    pub fn load_account(&self, account: &str, funds: &[(Asset, Funds)]) -> Result<(), BookError> {
        let mut g = self.lock();
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
        let mut g = self.lock();
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
        let mut g = self.lock();
        if ancestors.is_empty() {
            g.ancestors.remove(key);
        } else {
            g.ancestors.insert(key.to_owned(), ancestors);
        }
    }

    pub(super) fn forget(g: &mut Inner, account: &str) {
        Self::forget_all(g, &HashSet::from([account]));
    }

    /// Drops accounts and their channels in one pass over the channels.
    pub(super) fn forget_all(g: &mut Inner, accounts: &HashSet<&str>) {
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
        let mut g = self.lock();
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
        let mut g = self.lock();
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

    pub fn has_account(&self, account: &str) -> bool {
        self.lock().accounts.contains_key(account)
    }

    pub fn load_pools(
        &self,
        pools: &[(Asset, Pools)],
        earnings: &[(String, Asset, u128)],
    ) -> Result<(), BookError> {
        let mut g = self.lock();
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
        let mut g = self.lock();
        if !g.accounts.contains_key(account) {
            g.accounts
                .insert(account.to_owned(), AccountState::default());
        }
        let f = g.funds(account, asset)?;
        f.balance = f.balance.checked_add(amount).ok_or(BookError::Overflow)?;
        f.funded = f.funded.checked_add(amount).ok_or(BookError::Overflow)?;
        Ok(f.available())
    }
}
