//! Payment channels: views, close, dispute, the end of dispute windows and expiry.

use super::*;

impl Book {
    pub fn channels_of(&self, account: &str) -> Vec<ChannelView> {
        let g = self.lock();
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
        let g = self.lock();
        g.channels
            .values()
            .filter(|e| e.ch.provider == provider && e.ch.is_open())
            .map(|e| e.ch.clone())
            .collect()
    }

    pub fn channel(&self, id: &str) -> Option<ChannelView> {
        let g = self.lock();
        g.channels.get(id).map(|e| ChannelView {
            channel: e.ch.clone(),
            in_flight: e.holds,
            latest_voucher: e.latest.clone(),
        })
    }

    /// Closes a channel at its current state: the provider's net goes to its
    /// earnings, the commission to the pools, the refund to the payer's balance.
    pub fn close(&self, id: &str, now: u64) -> Result<Split, BookError> {
        let mut g = self.lock();
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
        let mut g = self.lock();
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
        let mut g = self.lock();
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
        let mut g = self.lock();
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

    pub(super) fn after_close(
        &self,
        g: &mut Inner,
        ch: &Channel,
        split: Split,
    ) -> Result<(), BookError> {
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
}
