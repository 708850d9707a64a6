//! Per-provider circuit breaker (whitepaper §5).
//!
//! Closed → Open after `failure_threshold` consecutive failures; Open → Half-Open once
//! `open_for` has passed; Half-Open lets one trial through: its success closes the
//! breaker, its failure reopens it. A trial that never reports (its caller went away)
//! is presumed failed after another `open_for`, so the breaker cannot stick.
//!
//! Time comes in as an argument (a [`crate::clock::Clock`] reading), so the tests
//! drive it by hand.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(60),
        }
    }
}

/// What a breaker reports, for routing filters and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The gauge value exported on `/metrics`: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Inner {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        since: Duration,
    },
    /// `trial_since` is set while the one trial request is out.
    HalfOpen {
        trial_since: Option<Duration>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Inner,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            inner: Inner::Closed {
                consecutive_failures: 0,
            },
        }
    }

    /// The state at `now`, without changing anything. An Open breaker whose time is
    /// up reads as Half-Open.
    pub fn state(&self, now: Duration) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { since } if now.saturating_sub(since) >= self.config.open_for => {
                BreakerState::HalfOpen
            }
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a request could be let through at `now` (the routing filter).
    pub fn admits(&self, now: Duration) -> bool {
        match self.inner {
            Inner::Closed { .. } => true,
            Inner::Open { since } => now.saturating_sub(since) >= self.config.open_for,
            Inner::HalfOpen { trial_since: None } => true,
            Inner::HalfOpen {
                trial_since: Some(t),
            } => now.saturating_sub(t) >= self.config.open_for,
        }
    }

    /// Takes the right to send one request at `now`; false when the breaker refuses.
    /// In Half-Open this hands out the single trial.
    pub fn try_acquire(&mut self, now: Duration) -> bool {
        if !self.admits(now) {
            return false;
        }
        match self.inner {
            Inner::Closed { .. } => {}
            Inner::Open { .. } | Inner::HalfOpen { .. } => {
                self.inner = Inner::HalfOpen {
                    trial_since: Some(now),
                };
            }
        }
        true
    }

    pub fn on_success(&mut self) {
        self.inner = Inner::Closed {
            consecutive_failures: 0,
        };
    }

    pub fn on_failure(&mut self, now: Duration) {
        self.inner = match self.inner {
            Inner::Closed {
                consecutive_failures,
            } => {
                let n = consecutive_failures.saturating_add(1);
                if n >= self.config.failure_threshold {
                    Inner::Open { since: now }
                } else {
                    Inner::Closed {
                        consecutive_failures: n,
                    }
                }
            }
            Inner::HalfOpen { .. } | Inner::Open { .. } => Inner::Open { since: now },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn fresh() -> Breaker {
        Breaker::new(BreakerConfig::default())
    }

    #[test]
    fn opens_at_the_fifth_consecutive_failure() {
        let mut b = fresh();
        for i in 0..4 {
            assert!(b.try_acquire(S(i)));
            b.on_failure(S(i));
            assert_eq!(
                b.state(S(i)),
                BreakerState::Closed,
                "after failure {}",
                i + 1
            );
        }
        assert!(b.try_acquire(S(4)));
        b.on_failure(S(4));
        assert_eq!(b.state(S(4)), BreakerState::Open);
        assert!(!b.admits(S(5)));
        assert!(!b.try_acquire(S(63)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = fresh();
        for _ in 0..4 {
            b.on_failure(S(0));
        }
        b.on_success();
        for _ in 0..4 {
            b.on_failure(S(0));
        }
        assert_eq!(b.state(S(0)), BreakerState::Closed);
    }

    #[test]
    fn half_open_after_sixty_seconds_lets_one_trial() {
        let mut b = fresh();
        for _ in 0..5 {
            b.on_failure(S(10));
        }
        assert_eq!(b.state(S(69)), BreakerState::Open);
        assert_eq!(b.state(S(70)), BreakerState::HalfOpen);
        assert!(b.try_acquire(S(70)));
        assert!(!b.admits(S(71)), "only one trial at a time");
        assert!(!b.try_acquire(S(71)));
        b.on_success();
        assert_eq!(b.state(S(71)), BreakerState::Closed);
        assert!(b.try_acquire(S(71)));
    }

    #[test]
    fn a_failed_trial_reopens() {
        let mut b = fresh();
        for _ in 0..5 {
            b.on_failure(S(0));
        }
        assert!(b.try_acquire(S(60)));
        b.on_failure(S(61));
        assert_eq!(b.state(S(61)), BreakerState::Open);
        assert_eq!(b.state(S(120)), BreakerState::Open);
        assert_eq!(b.state(S(121)), BreakerState::HalfOpen);
    }

    #[test]
    fn a_lost_trial_does_not_stick() {
        let mut b = fresh();
        for _ in 0..5 {
            b.on_failure(S(0));
        }
        assert!(b.try_acquire(S(60)));
        assert!(!b.try_acquire(S(119)));
        assert!(b.try_acquire(S(120)));
    }

    proptest! {
        /// Against a simple model: the breaker is Open exactly when the last
        /// `threshold` outcomes since the last success were failures and the open
        /// window has not passed.
        #[test]
        fn never_admits_while_open(events in proptest::collection::vec((any::<bool>(), 0u64..30), 0..200)) {
            let mut b = fresh();
            let mut now = S(0);
            let mut run = 0u32;
            let mut opened_at: Option<Duration> = None;
            for (ok, dt) in events {
                now += S(dt);
                let admitted = b.try_acquire(now);
                if let Some(t) = opened_at {
                    prop_assert_eq!(admitted, now - t >= S(60));
                } else {
                    prop_assert!(admitted);
                }
                if !admitted {
                    continue;
                }
                if ok {
                    b.on_success();
                    run = 0;
                    opened_at = None;
                } else {
                    b.on_failure(now);
                    run += 1;
                    if opened_at.is_some() || run >= 5 {
                        opened_at = Some(now);
                    }
                }
                prop_assert_eq!(b.state(now) == BreakerState::Open, opened_at.is_some());
            }
        }
    }
}
