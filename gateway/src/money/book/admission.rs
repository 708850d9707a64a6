//! Admission and settlement: hold a request's worst case (balance and scope
//! together, under the one lock), bind it to a provider's channel, settle or release it.

use super::*;

impl Book {
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
        let mut g = self.lock();
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
        let mut g = self.lock();
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
        let mut g = self.lock();
        g.advance(&self.config, r.id, cumulative, provider, now)
    }

    /// Charges the actual cost (capped at the reservation) and frees the rest.
    pub fn settle(
        &self,
        r: Reservation,
        charge: Charge<'_>,
        now: u64,
    ) -> Result<Settled, BookError> {
        let mut g = self.lock();
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
        let mut g = self.lock();
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
            .accounts
            .get(account)
            .map(|a| a.funds[slot(asset)])
    }

    /// Spent by a key in the last 24 h.
    pub fn spent_today(&self, key: &str, now: u64) -> u128 {
        self.lock().windows.get_mut(key).map_or(0, |w| w.spent(now))
    }
}
