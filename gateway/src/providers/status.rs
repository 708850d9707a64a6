//! Provider status (whitepaper §8.2), as a pure function of a provider's recent
//! outcomes and heartbeat age.
//!
//! - Active: failure rate < 10% and heartbeat < 5 min.
//! - Degraded: failure rate 10–20% or heartbeat 5–60 min (routable, penalised).
//! - Inactive: failure rate > 20% or heartbeat > 60 min (excluded until recovered).
//! - Banned: by an admin, excluded for good.
//!
//! The failure rate is taken over a sliding window of recent outcomes (ten one-minute
//! buckets by default) and counts only once the window holds `min_samples`; so an
//! Inactive provider recovers when its bad minutes age out of the window, and the
//! circuit breaker guards the minutes in between.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Status {
    Active,
    Degraded,
    Inactive,
    Banned,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "Active",
            Status::Degraded => "Degraded",
            Status::Inactive => "Inactive",
            Status::Banned => "Banned",
        }
    }

    pub fn routable(self) -> bool {
        matches!(self, Status::Active | Status::Degraded)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusConfig {
    /// Below this failure rate (ppm) a provider can be Active.
    pub degraded_failure_ppm: u64,
    /// Above this failure rate (ppm) a provider is Inactive.
    pub inactive_failure_ppm: u64,
    pub degraded_heartbeat: Duration,
    pub inactive_heartbeat: Duration,
    pub min_samples: u64,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            degraded_failure_ppm: 100_000,
            inactive_failure_ppm: 200_000,
            degraded_heartbeat: Duration::from_secs(5 * 60),
            inactive_heartbeat: Duration::from_secs(60 * 60),
            min_samples: 10,
        }
    }
}

/// The status from the window's counts and the heartbeat's age (`None` for
/// providers from the config file, which do not heartbeat).
pub fn status(
    cfg: &StatusConfig,
    banned: bool,
    ok: u64,
    failed: u64,
    heartbeat_age: Option<Duration>,
) -> Status {
    if banned {
        return Status::Banned;
    }
    let total = ok + failed;
    let rate = if total >= cfg.min_samples.max(1) {
        failed * 1_000_000 / total
    } else {
        0
    };
    let age = heartbeat_age.unwrap_or_default();
    if rate > cfg.inactive_failure_ppm || age > cfg.inactive_heartbeat {
        Status::Inactive
    } else if rate >= cfg.degraded_failure_ppm || age >= cfg.degraded_heartbeat {
        Status::Degraded
    } else {
        Status::Active
    }
}

/// Outcomes counted in one-minute buckets over the last `BUCKETS` minutes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeWindow {
    buckets: [(u64, u64, u64); BUCKETS],
}

const BUCKETS: usize = 10;
const BUCKET_SECS: u64 = 60;

impl OutcomeWindow {
    fn slot(&mut self, now: Duration) -> &mut (u64, u64, u64) {
        let minute = now.as_secs() / BUCKET_SECS + 1; // 0 marks an unused bucket.
        let idx = usize::try_from(minute % BUCKETS as u64).unwrap_or(0);
        let b = &mut self.buckets[idx];
        if b.0 != minute {
            *b = (minute, 0, 0);
        }
        b
    }

    pub fn record(&mut self, now: Duration, ok: bool) {
        let b = self.slot(now);
        if ok {
            b.1 += 1;
        } else {
            b.2 += 1;
        }
    }

    /// (successes, failures) within the window at `now`.
    pub fn counts(&self, now: Duration) -> (u64, u64) {
        let minute = now.as_secs() / BUCKET_SECS + 1;
        self.buckets
            .iter()
            .filter(|b| b.0 != 0 && b.0 + (BUCKETS as u64) > minute && b.0 <= minute)
            .fold((0, 0), |(o, f), b| (o + b.1, f + b.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: fn(u64) -> Duration = |m| Duration::from_secs(m * 60);

    fn check(ok: u64, failed: u64, age_min: Option<u64>, banned: bool, expect: Status) {
        let got = status(
            &StatusConfig::default(),
            banned,
            ok,
            failed,
            age_min.map(MIN),
        );
        assert_eq!(
            got, expect,
            "ok={ok} failed={failed} age={age_min:?} banned={banned}"
        );
    }

    #[test]
    fn thresholds_from_the_whitepaper() {
        check(100, 0, Some(0), false, Status::Active);
        check(91, 9, Some(4), false, Status::Active);
        check(90, 10, Some(0), false, Status::Degraded);
        check(80, 20, Some(0), false, Status::Degraded);
        check(79, 21, Some(0), false, Status::Inactive);
        check(100, 0, Some(5), false, Status::Degraded);
        check(100, 0, Some(60), false, Status::Degraded);
        check(100, 0, Some(61), false, Status::Inactive);
        check(100, 0, None, false, Status::Active);
        check(100, 0, Some(0), true, Status::Banned);
        // Too few samples: the rate does not count yet.
        check(0, 9, Some(0), false, Status::Active);
        check(0, 10, Some(0), false, Status::Inactive);
    }

    #[test]
    fn the_window_forgets_old_minutes() {
        let mut w = OutcomeWindow::default();
        for _ in 0..20 {
            w.record(MIN(0), false);
        }
        w.record(MIN(5), true);
        assert_eq!(w.counts(MIN(5)), (1, 20));
        assert_eq!(w.counts(MIN(9)), (1, 20));
        assert_eq!(w.counts(MIN(10)), (1, 0));
        assert_eq!(w.counts(MIN(15)), (0, 0));
        w.record(MIN(30), true);
        assert_eq!(w.counts(MIN(30)), (1, 0));
    }

    proptest! {
        #[test]
        fn status_is_monotonic_in_failures_and_age(
            ok in 0u64..1000, failed in 0u64..1000, extra in 0u64..100, age in 0u64..200, more in 0u64..100,
        ) {
            let cfg = StatusConfig::default();
            let a = status(&cfg, false, ok, failed, Some(MIN(age)));
            let b = status(&cfg, false, ok, failed + extra, Some(MIN(age)));
            let c = status(&cfg, false, ok, failed, Some(MIN(age + more)));
            prop_assert!(b >= a || ok + failed < cfg.min_samples);
            prop_assert!(c >= a);
            prop_assert!(a != Status::Banned);
        }

        #[test]
        fn window_counts_match_a_model(events in proptest::collection::vec((0u64..1800, any::<bool>()), 0..200)) {
            let mut events = events;
            events.sort_by_key(|e| e.0);
            let mut w = OutcomeWindow::default();
            for (t, ok) in &events {
                w.record(Duration::from_secs(*t), *ok);
            }
            let now = events.last().map(|e| e.0).unwrap_or(0);
            let cur = now / 60;
            let (mut o, mut f) = (0, 0);
            for (t, ok) in &events {
                if t / 60 + 10 > cur {
                    if *ok { o += 1 } else { f += 1 }
                }
            }
            prop_assert_eq!(w.counts(Duration::from_secs(now)), (o, f));
        }
    }
}
