//! Rate limits: requests per minute and tokens per minute, per key **and per
//! delegation chain**.
//!
//! Every key has one pair of buckets ([`Limiters`]), kept in a [`LimiterRegistry`] by
//! key id. A request by an agent's key must fit the buckets of the key itself and of
//! every ancestor that delegated to it ([`crate::accounts::KeyScope::ancestors`]),
//! and it takes from all of them ([`ChainLimiters::check`]): all are checked first
//! under their locks, and only when every one admits the request is it taken from
//! every one, so a refusal takes nothing from any bucket. An agent with
//! `requests_per_minute = 10` and `agents:create` therefore cannot get more than 10
//! requests a minute by making sub-agents: theirs count against its bucket too, like
//! the daily spend windows ([`crate::money::scope::admit_shared`]).
//!
//! The buckets are GCRA (a cell every `60 s / limit`, a burst of `limit`), on an
//! injected [`Clock`].

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::clock::{SharedClock, SystemClock};

/// Why a request was refused, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Requests {
        retry_after: Duration,
    },
    Tokens {
        retry_after: Duration,
    },
    /// One request asks for more tokens than a whole minute allows (of the key or
    /// of one of its ancestors).
    TooLarge {
        limit: u32,
    },
}

/// Requests and tokens per minute of one key; zero means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
}

const MINUTE_NS: u128 = 60_000_000_000;

/// A GCRA bucket: `limit` cells a minute, a burst of `limit`; `tat` is the
/// theoretical arrival time (nanoseconds on the clock) of the next cell.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    limit: u32,
    tat: u128,
}

impl Bucket {
    fn new(limit: u32) -> Self {
        Bucket { limit, tat: 0 }
    }

    /// Where `tat` would move taking `n` cells at `now`, or how long to wait;
    /// `None` inside when unlimited. The caller checks `n <= limit` first.
    fn admit(&self, now: u128, n: u64) -> Result<Option<u128>, Duration> {
        if self.limit == 0 {
            return Ok(None);
        }
        let limit = u128::from(self.limit);
        let interval = MINUTE_NS / limit;
        let tolerance = interval * limit;
        let new_tat = self.tat.max(now) + interval * u128::from(n);
        let ahead = new_tat - now;
        if ahead > tolerance {
            let wait = u64::try_from(ahead - tolerance).unwrap_or(u64::MAX);
            return Err(Duration::from_nanos(wait));
        }
        Ok(Some(new_tat))
    }
}

/// The two buckets of one key.
#[derive(Debug)]
pub struct Limiters {
    state: Mutex<(Bucket, Bucket)>,
}

impl Limiters {
    /// A zero limit means unlimited.
    pub fn new(rates: Rates) -> Self {
        Limiters {
            state: Mutex::new((
                Bucket::new(rates.requests_per_minute),
                Bucket::new(rates.tokens_per_minute),
            )),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (Bucket, Bucket)> {
        self.state.lock()
    }

    /// Sets the limits (keeping what was taken), when the key's own record says
    /// them.
    fn set_rates(&self, rates: Rates) {
        let mut g = self.lock();
        g.0.limit = rates.requests_per_minute;
        g.1.limit = rates.tokens_per_minute;
    }
}

/// The buckets of a key and of its ancestors, nearest first: what a request by the
/// key must pass.
#[derive(Debug)]
pub struct ChainLimiters {
    clock: SharedClock,
    /// The buckets of the key and of its ancestors, each once, sorted by address
    /// (the lock order).
    chain: Vec<Arc<Limiters>>,
}

impl ChainLimiters {
    /// One request of up to `tokens` tokens: admitted by every bucket of the chain
    /// and taken from every one, or refused taking nothing. Requests are checked
    /// before tokens; the wait is the longest of the refusing buckets.
    pub fn check(&self, tokens: u64) -> Result<(), Limited> {
        self.admit(tokens, true)
    }

    /// Whether one request would be admitted now, taking nothing: for work that
    /// must not start (and store anything) when the request that follows it
    /// would be refused.
    pub fn peek(&self) -> Result<(), Limited> {
        self.admit(1, false)
    }

    fn admit(&self, tokens: u64, take: bool) -> Result<(), Limited> {
        let now = self.clock.now().as_nanos();
        let tokens = tokens.max(1);
        // `chain` is in address order: every request locks buckets in one global
        // order, so two chains sharing buckets cannot deadlock whatever their
        // ancestor lists say.
        let mut guards: Vec<_> = self.chain.iter().map(|l| l.lock()).collect();
        let mut requests = Vec::with_capacity(guards.len());
        let mut wait: Option<Duration> = None;
        for g in &guards {
            match g.0.admit(now, 1) {
                Ok(t) => requests.push(t),
                Err(w) => wait = Some(wait.map_or(w, |v| v.max(w))),
            }
        }
        if let Some(retry_after) = wait {
            return Err(Limited::Requests { retry_after });
        }
        if let Some(limit) = guards
            .iter()
            .map(|g| g.1.limit)
            .filter(|&l| l > 0 && tokens > u64::from(l))
            .min()
        {
            return Err(Limited::TooLarge { limit });
        }
        let mut token_tats = Vec::with_capacity(guards.len());
        for g in &guards {
            match g.1.admit(now, tokens) {
                Ok(t) => token_tats.push(t),
                Err(w) => wait = Some(wait.map_or(w, |v| v.max(w))),
            }
        }
        if let Some(retry_after) = wait {
            return Err(Limited::Tokens { retry_after });
        }
        if !take {
            return Ok(());
        }
        for ((g, r), t) in guards.iter_mut().zip(requests).zip(token_tats) {
            if let Some(r) = r {
                g.0.tat = r;
            }
            if let Some(t) = t {
                g.1.tat = t;
            }
        }
        Ok(())
    }
}

/// The buckets of every key this gateway has seen, by key id, so that a key and
/// all the agents under it share one pair.
#[derive(Debug)]
pub struct LimiterRegistry {
    clock: SharedClock,
    by_key: RwLock<HashMap<String, Arc<Limiters>>>,
}

impl Default for LimiterRegistry {
    fn default() -> Self {
        LimiterRegistry::new(SystemClock::shared())
    }
}

impl LimiterRegistry {
    pub fn new(clock: SharedClock) -> Self {
        LimiterRegistry {
            clock,
            by_key: RwLock::new(HashMap::new()),
        }
    }

    /// The chain a request by `key_id` must pass. `own` are the key's limits (they
    /// replace whatever an agent under it assumed); `ancestors`, nearest first, the
    /// ids of the keys above it with the limits to assume for one whose own key
    /// this gateway has not loaded yet.
    pub fn chain(&self, key_id: &str, own: Rates, ancestors: &[(String, Rates)]) -> ChainLimiters {
        let mut map = self.by_key.write();
        let mine = map
            .entry(key_id.to_owned())
            .or_insert_with(|| Arc::new(Limiters::new(own)))
            .clone();
        mine.set_rates(own);
        let mut chain = vec![mine];
        for (id, assumed) in ancestors {
            let l = map
                .entry(id.clone())
                .or_insert_with(|| Arc::new(Limiters::new(*assumed)))
                .clone();
            if !chain.iter().any(|c| Arc::ptr_eq(c, &l)) {
                chain.push(l);
            }
        }
        chain.sort_by_key(|l| Arc::as_ptr(l) as usize);
        ChainLimiters {
            clock: self.clock.clone(),
            chain,
        }
    }

    /// How many keys have buckets here.
    pub fn len(&self) -> usize {
        self.by_key.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the buckets of revoked keys.
    pub fn forget(&self, key_ids: &[String]) {
        let mut map = self.by_key.write();
        for id in key_ids {
            map.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn rates(requests_per_minute: u32, tokens_per_minute: u32) -> Rates {
        Rates {
            requests_per_minute,
            tokens_per_minute,
        }
    }

    fn registry() -> (Arc<ManualClock>, LimiterRegistry) {
        let clock = ManualClock::new();
        let reg = LimiterRegistry::new(clock.clone());
        (clock, reg)
    }

    #[test]
    fn requests_per_minute() {
        let (clock, reg) = registry();
        let l = reg.chain("k", rates(3, 0), &[]);
        for _ in 0..3 {
            assert_eq!(l.check(10), Ok(()));
        }
        match l.check(10) {
            Err(Limited::Requests { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(20));
            }
            other => unreachable!("expected a request limit, got {other:?}"),
        }
        clock.advance(Duration::from_secs(20));
        assert_eq!(l.check(10), Ok(()));
        assert!(l.check(10).is_err());
    }

    #[test]
    fn a_peek_takes_nothing_and_says_what_check_would() {
        let (_, reg) = registry();
        let l = reg.chain("k", rates(2, 0), &[]);
        for _ in 0..5 {
            assert_eq!(l.peek(), Ok(()));
        }
        assert_eq!(l.check(1), Ok(()));
        assert_eq!(l.check(1), Ok(()));
        assert!(matches!(l.peek(), Err(Limited::Requests { .. })));
        assert!(l.check(1).is_err());
    }

    #[test]
    fn tokens_per_minute() {
        let (_, reg) = registry();
        let l = reg.chain("k", rates(0, 100), &[]);
        assert_eq!(l.check(60), Ok(()));
        assert!(matches!(l.check(60), Err(Limited::Tokens { .. })));
        assert_eq!(l.check(101), Err(Limited::TooLarge { limit: 100 }));
        let unlimited = reg.chain("u", rates(0, 0), &[]);
        assert_eq!(unlimited.check(u64::MAX), Ok(()));
    }

    /// The attack of the security review: sub-agents of a key limited to N
    /// requests a minute must not get N each.
    #[test]
    fn sub_agents_share_their_ancestors_limits() {
        let (clock, reg) = registry();
        let parent = reg.chain("parent", rates(10, 0), &[]);
        let up = [("parent".to_owned(), rates(10, 0))];
        let children: Vec<_> = (0..100)
            .map(|i| reg.chain(&format!("child{i}"), rates(10, 0), &up))
            .collect();
        let admitted = children.iter().filter(|c| c.check(1).is_ok()).count();
        assert_eq!(admitted, 10, "100 sub-agents together get the parent's 10");
        assert!(matches!(parent.check(1), Err(Limited::Requests { .. })));
        // A grandchild counts against both.
        clock.advance(Duration::from_secs(60));
        let up2 = [
            ("child0".to_owned(), rates(10, 0)),
            ("parent".to_owned(), rates(10, 0)),
        ];
        let grandchild = reg.chain("grandchild", rates(10, 0), &up2);
        for _ in 0..10 {
            assert_eq!(grandchild.check(1), Ok(()));
        }
        assert!(children[0].check(1).is_err());
        assert!(children[1].check(1).is_err());
        assert!(parent.check(1).is_err());
    }

    /// Check all, then take from all: a request one bucket refuses takes nothing
    /// from the others (else a throttled agent could drain its parent's minute).
    #[test]
    fn a_refusal_takes_nothing() {
        let (_, reg) = registry();
        let up = [("parent".to_owned(), rates(10, 1_000))];
        let child = reg.chain("child", rates(2, 1_000), &up);
        let sibling = reg.chain("sibling", rates(10, 1_000), &up);
        assert_eq!(child.check(1), Ok(()));
        assert_eq!(child.check(1), Ok(()));
        for _ in 0..50 {
            assert!(matches!(child.check(1), Err(Limited::Requests { .. })));
        }
        // The parent lost only the two admitted requests.
        for _ in 0..8 {
            assert_eq!(sibling.check(1), Ok(()));
        }
        assert!(sibling.check(1).is_err());
        // A token refusal by the parent takes no request cell from the child.
        let (_, reg) = registry();
        let up = [("parent".to_owned(), rates(0, 100))];
        let child = reg.chain("child", rates(1, 0), &up);
        assert_eq!(child.check(101), Err(Limited::TooLarge { limit: 100 }));
        assert_eq!(child.check(100), Ok(()));
    }

    /// A key's own record sets its limits, over what an agent under it assumed.
    #[test]
    fn own_limits_win() {
        let (_, reg) = registry();
        let up = [("parent".to_owned(), rates(100, 0))];
        let child = reg.chain("child", rates(100, 0), &up);
        let _parent = reg.chain("parent", rates(2, 0), &[]);
        assert_eq!(child.check(1), Ok(()));
        assert_eq!(child.check(1), Ok(()));
        assert!(child.check(1).is_err());
    }
}
