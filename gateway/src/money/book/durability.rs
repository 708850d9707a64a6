//! Durability: the dirty set the committer writes by group commit, and the
//! vouchers due to providers.

use super::*;

impl Book {
    /// Takes every row changed since the last call, for one commit.
    pub fn take_dirty(&self) -> Batch {
        let mut g = self.lock();
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
        let mut g = self.lock();
        for ch in &batch.channels {
            if let Some(e) = g.channels.get_mut(&ch.id) {
                e.durable = (ch.nonce, ch.spent);
            }
        }
    }

    /// Puts a batch that failed to commit back, so the next commit retries it.
    pub fn requeue(&self, batch: Batch) {
        let mut g = self.lock();
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
        let g = self.lock();
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
        let mut g = self.lock();
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
        let mut g = self.lock();
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
