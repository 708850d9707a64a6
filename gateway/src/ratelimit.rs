//! Per-key rate limits with governor: requests per minute and tokens per minute.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Why a request was refused, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Requests {
        retry_after: Duration,
    },
    Tokens {
        retry_after: Duration,
    },
    /// One request asks for more tokens than a whole minute allows.
    TooLarge {
        limit: u32,
    },
}

#[derive(Debug)]
pub struct Limiters {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<DefaultDirectRateLimiter>,
    tokens_per_minute: u32,
}

impl Limiters {
    /// A zero limit means unlimited.
    pub fn new(requests_per_minute: u32, tokens_per_minute: u32) -> Self {
        let make = |n: u32| NonZeroU32::new(n).map(|n| RateLimiter::direct(Quota::per_minute(n)));
        Limiters {
            requests: make(requests_per_minute),
            tokens: make(tokens_per_minute),
            tokens_per_minute,
        }
    }

    /// Takes one request and `tokens` tokens, or says why not (taking nothing from
    /// the token bucket when the request bucket refuses).
    pub fn check(&self, tokens: u64) -> Result<(), Limited> {
        let clock = DefaultClock::default();
        if let Some(r) = &self.requests
            && let Err(not_until) = r.check()
        {
            return Err(Limited::Requests {
                retry_after: not_until.wait_time_from(clock.now()),
            });
        }
        if let Some(t) = &self.tokens {
            let n = u32::try_from(tokens.max(1)).unwrap_or(u32::MAX);
            let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            match t.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return Err(Limited::Tokens {
                        retry_after: not_until.wait_time_from(clock.now()),
                    });
                }
                Err(_) => {
                    return Err(Limited::TooLarge {
                        limit: self.tokens_per_minute,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_per_minute() {
        let l = Limiters::new(3, 0);
        for _ in 0..3 {
            assert_eq!(l.check(10), Ok(()));
        }
        match l.check(10) {
            Err(Limited::Requests { retry_after }) => assert!(retry_after > Duration::from_secs(1)),
            other => unreachable!("expected a request limit, got {other:?}"),
        }
    }

    #[test]
    fn tokens_per_minute() {
        let l = Limiters::new(0, 100);
        assert_eq!(l.check(60), Ok(()));
        assert!(matches!(l.check(60), Err(Limited::Tokens { .. })));
        assert_eq!(l.check(101), Err(Limited::TooLarge { limit: 100 }));
        let unlimited = Limiters::new(0, 0);
        assert_eq!(unlimited.check(u64::MAX), Ok(()));
    }
}
