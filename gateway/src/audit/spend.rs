//! What peer auditors are paid per hour (`[audit] max_spend_per_hour`): a hold
//! counts against the hour it was taken in from the moment it is taken (so
//! concurrent audits cannot overshoot), and is replaced by what was settled.
//! The window is the clock hour (unix seconds / 3600); a new hour starts at 0.

use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Spend {
    /// (hour, TNZO base units committed in it).
    inner: Mutex<(u64, u128)>,
}

impl Spend {
    /// Commits `amount` at `now` if the hour's total stays within `limit` (`None`:
    /// no limit); false: over the limit, nothing committed.
    pub fn try_commit(&self, amount: u128, limit: Option<u128>, now: u64) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        let hour = now / 3600;
        if g.0 != hour {
            *g = (hour, 0);
        }
        let next = g.1.saturating_add(amount);
        if limit.is_some_and(|l| next > l) {
            return false;
        }
        g.1 = next;
        true
    }

    /// A hold of `held` committed at `then` settled for `paid`: the hour it was
    /// committed in (if still current) counts `paid` instead.
    pub fn settle(&self, held: u128, paid: u128, then: u64) {
        if let Ok(mut g) = self.inner.lock()
            && g.0 == then / 3600
        {
            g.1 = g.1.saturating_sub(held).saturating_add(paid);
        }
    }

    /// Committed this hour (as of the last commit's hour).
    pub fn spent(&self) -> u128 {
        self.inner.lock().map(|g| g.1).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hourly_limit_counts_holds_and_settlements_and_resets_each_hour() {
        let s = Spend::default();
        let t = 7200;
        assert!(s.try_commit(60, Some(100), t));
        assert!(!s.try_commit(50, Some(100), t + 10), "over the limit");
        s.settle(60, 20, t);
        assert_eq!(s.spent(), 20);
        assert!(s.try_commit(50, Some(100), t + 20));
        assert!(!s.try_commit(31, Some(100), t + 30));
        // The next hour starts at 0; a late settlement of the old hour is ignored.
        assert!(s.try_commit(100, Some(100), t + 3600));
        s.settle(50, 0, t);
        assert_eq!(s.spent(), 100);
        assert!(s.try_commit(u128::MAX, None, t + 3600), "no limit");
    }
}
