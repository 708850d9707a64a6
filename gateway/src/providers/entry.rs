//! One provider in the registry: its declaration, live state (breaker, outcome
//! window, metrics, verdict) and in-flight count.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::pricing::{self, Asset, Quote, Rates};
use crate::providers::breaker::{Breaker, BreakerState};
use crate::providers::info::{ModelEntry, ProviderInfo};
use crate::providers::status::{OutcomeWindow, Status, StatusConfig, status};
use crate::providers::verdict::AttestationVerdict;

#[derive(Debug, Clone)]
pub(super) struct State {
    pub(super) breaker: Breaker,
    pub(super) window: OutcomeWindow,
    pub(super) total: u64,
    pub(super) successful: u64,
    pub(super) failed: u64,
    pub(super) ema_latency_us: Option<u64>,
    pub(super) last_heartbeat: Duration,
    /// The current outage (no heartbeat for over 24 h) was already slashed.
    pub(super) downtime_slashed: bool,
    pub(super) banned: bool,
    /// The latest verdict on the provider's TEE evidence (reset on re-registration).
    pub(super) attestation: Option<AttestationVerdict>,
    /// The gateway has reached the endpoint (attestation document or `/health`);
    /// until then the provider gets no requests.
    pub(super) reached: bool,
    /// Since when it has been unreached (registration, restore or a new endpoint);
    /// past `unreached_ttl` it leaves memory.
    pub(super) unreached_since: Duration,
    /// When the last heartbeat was marked for the store.
    pub(super) seen_saved: Duration,
}

/// How often a heartbeat's time reaches the store (it only decides, after a
/// restart, whether a provider is stale).
pub const SEEN_SAVE_EVERY: Duration = Duration::from_secs(600);

/// One provider: its declaration, its live state, and its in-flight count.
#[derive(Debug)]
pub struct ProviderEntry {
    pub info: ProviderInfo,
    pub in_flight: AtomicU32,
    pub(super) state: Mutex<State>,
}

/// A point-in-time view of a provider for the admin API and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderView {
    pub id: String,
    pub endpoint: String,
    pub status: Status,
    pub breaker: &'static str,
    pub total: u64,
    pub successful: u64,
    pub failed: u64,
    pub ema_latency_ms: Option<f64>,
    pub last_heartbeat_s_ago: Option<u64>,
    pub stake: String,
    pub tee: String,
    pub in_flight: u32,
    pub models: Vec<String>,
    /// Whether the stored attestation verdict is trusted and fresh (TEE routing).
    pub tee_verified: bool,
    pub attestation: Option<AttestationVerdict>,
    /// The gateway has reached the endpoint (routable only then).
    pub reached: bool,
    /// Unbonding: no new requests.
    pub unbonding: bool,
    pub from_config: bool,
}

/// The outcome of one upstream attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success { latency: Duration },
    Failure,
}

impl ProviderEntry {
    pub(super) fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock())
    }

    /// Takes the breaker's permission for one request (the Half-Open trial included).
    pub fn try_acquire(&self, now: Duration) -> bool {
        self.with_state(|s| s.breaker.try_acquire(now))
    }

    pub fn record(&self, now: Duration, outcome: Outcome) {
        self.with_state(|s| {
            s.total += 1;
            match outcome {
                Outcome::Success { latency } => {
                    s.successful += 1;
                    s.breaker.on_success();
                    s.window.record(now, true);
                    let x = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                    // EMA with alpha = 1/5, in integers.
                    s.ema_latency_us = Some(match s.ema_latency_us {
                        None => x,
                        Some(e) => (e.saturating_mul(4).saturating_add(x)) / 5,
                    });
                }
                Outcome::Failure => {
                    s.failed += 1;
                    s.breaker.on_failure(now);
                    s.window.record(now, false);
                }
            }
        });
    }

    pub fn breaker_state(&self, now: Duration) -> BreakerState {
        self.with_state(|s| s.breaker.state(now))
    }

    pub(super) fn status_at(&self, s: &State, cfg: &StatusConfig, now: Duration) -> Status {
        let (ok, failed) = s.window.counts(now);
        let age = (!self.info.from_config).then(|| now.saturating_sub(s.last_heartbeat));
        status(cfg, s.banned, ok, failed, age)
    }

    /// The price quote for a request on `model` right now, without the TEE premium.
    pub fn quote(
        &self,
        model: &ModelEntry,
        asset: Asset,
        rates: &Rates,
    ) -> Result<Quote, pricing::PricingError> {
        self.quote_tee(model, asset, rates, false)
    }

    /// The price quote with the TEE premium when `tee` (see
    /// [`pricing::tee_applies`]: asked for, and the verdict is trusted and fresh).
    pub fn quote_tee(
        &self,
        model: &ModelEntry,
        asset: Asset,
        rates: &Rates,
        tee: bool,
    ) -> Result<Quote, pricing::PricingError> {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        Ok(Quote::new(
            model.price,
            pricing::complexity_ppm(model.info.parameters),
            pricing::congestion_ppm(in_flight, self.info.max_concurrency),
            pricing::tee_ppm(tee),
            asset,
            rates.get(asset)?,
        ))
    }
}
