//! Bounds on `GET /v1/attestation`: evidence (a TEE quote on real hardware) is
//! produced once per nonce and kept in a bounded cache, and each source address
//! may ask for only so many fresh documents (a token bucket per address). Plain
//! data structures on an injected clock (`Instant` arguments); no HTTP.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// The last `capacity` values by key; the oldest inserted goes first.
pub struct Cache<K, V> {
    capacity: usize,
    inner: Mutex<(HashMap<K, V>, VecDeque<K>)>,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Cache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Cache {
            capacity: capacity.max(1),
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        lock(&self.inner).0.get(key).cloned()
    }

    pub fn insert(&self, key: K, value: V) {
        let mut guard = lock(&self.inner);
        let (map, order) = &mut *guard;
        if map.insert(key.clone(), value).is_some() {
            return;
        }
        order.push_back(key);
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.inner).0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A token bucket per source address: `burst` at once, refilled at `per_minute`.
/// At most `max_addresses` buckets are kept; when that many are busy, new
/// addresses share one bucket (so a flood of addresses cannot grow memory).
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    max_addresses: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The address new callers share once the limiter tracks `max_addresses`.
const OVERFLOW: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

impl RateLimiter {
    pub fn new(per_minute: u32, burst: u32, max_addresses: usize) -> Self {
        RateLimiter {
            per_second: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            max_addresses: max_addresses.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `who` at `now`, or says how long until one is there.
    pub fn take(&self, who: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = lock(&self.buckets);
        let mut who = who;
        if !buckets.contains_key(&who) && buckets.len() >= self.max_addresses {
            // Drop the buckets that refilled: they remember nothing.
            buckets.retain(|_, b| self.refilled(*b, now) < self.burst);
            if buckets.len() >= self.max_addresses {
                who = OVERFLOW;
            }
        }
        let bucket = buckets.entry(who).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let tokens = self.refilled(*bucket, now);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + elapsed * self.per_second).min(self.burst)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn the_cache_keeps_the_newest_entries() {
        let c = Cache::new(2);
        c.insert(1, "a");
        c.insert(2, "b");
        c.insert(1, "again");
        assert_eq!(c.get(&1), Some("again"));
        c.insert(3, "c");
        assert_eq!(
            (c.get(&1), c.get(&2), c.get(&3), c.len()),
            (None, Some("b"), Some("c"), 2)
        );
    }

    #[test]
    fn a_burst_then_the_rate_per_address() {
        let t0 = Instant::now();
        let l = RateLimiter::new(60, 3, 100);
        for _ in 0..3 {
            l.take(ip(1), t0).unwrap();
        }
        let wait = l.take(ip(1), t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another address has its own bucket.
        l.take(ip(2), t0).unwrap();
        // One token a second comes back, never more than the burst.
        l.take(ip(1), t0 + Duration::from_secs(1)).unwrap();
        assert!(l.take(ip(1), t0 + Duration::from_secs(1)).is_err());
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            l.take(ip(1), later).unwrap();
        }
        assert!(l.take(ip(1), later).is_err());
    }

    #[test]
    fn a_flood_of_addresses_shares_one_bucket_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let l = RateLimiter::new(60, 1, 4);
        for i in 0..4 {
            l.take(ip(i), t0).unwrap();
        }
        // Four busy buckets: the fifth and later addresses share the overflow one.
        l.take(ip(10), t0).unwrap();
        assert!(l.take(ip(11), t0).is_err());
        assert!(lock(&l.buckets).len() <= 5);
        // Once the old buckets refill they are forgotten and new addresses get their own.
        let later = t0 + Duration::from_secs(10);
        l.take(ip(11), later).unwrap();
        l.take(ip(12), later).unwrap();
        assert!(lock(&l.buckets).len() <= 5);
    }
}
