//! Time as the gateway sees it: one [`Clock`] (in `AppState`, shared by the registry,
//! the book's callers, leases, heartbeats, dispute windows and channel expiry) with a
//! monotonic reading and Unix seconds, and a [`ManualClock`] that tests move by hand
//! instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A clock: monotonic time since some fixed origin, and Unix seconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Duration;
    /// Seconds since the Unix epoch, moving with [`Clock::now`].
    fn unix(&self) -> u64;
}

pub type SharedClock = Arc<dyn Clock>;

/// The real monotonic clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock {
            origin: Instant::now(),
        })
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn unix(&self) -> u64 {
        unix_now()
    }
}

/// A clock that moves only when told to: its Unix time starts at the real one and
/// advances with it.
#[derive(Debug)]
pub struct ManualClock {
    millis: AtomicU64,
    unix_origin: u64,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            millis: AtomicU64::new(0),
            unix_origin: unix_now(),
        }
    }
}

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(ManualClock::default())
    }

    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }

    fn unix(&self) -> u64 {
        self.unix_origin.saturating_add(self.now().as_secs())
    }
}

/// Seconds since the Unix epoch (0 if the system clock is before it): the real
/// time, for what runs outside a gateway's clock (the CLI, stored-record stamps).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
