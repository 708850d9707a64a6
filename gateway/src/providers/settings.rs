//! The registry's settings (from `[breaker]`, `[status]`, `[stake_minimums]` and
//! `[registration]`).

use std::time::Duration;

use crate::providers::breaker::BreakerConfig;
use crate::providers::routing::StakeMinimums;
use crate::providers::status::StatusConfig;

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub breaker: BreakerConfig,
    pub status: StatusConfig,
    pub stakes: StakeMinimums,
    /// How far a signed timestamp may be from the gateway's clock.
    pub max_skew_s: u64,
    /// Seconds between heartbeats the gateway asks for.
    pub heartbeat_interval_s: u64,
    /// What a registration may declare.
    pub bounds: crate::providers::bounds::RegistrationBounds,
    /// Registered providers without a heartbeat this long leave memory and routing.
    pub stale_after: Duration,
    /// Registered providers the gateway has reached, held in memory at most (new
    /// registrations wait, 503, while it is full).
    pub max_registered: usize,
    /// Registrations not reached yet, held in memory at most (their own cap: they
    /// never count toward `max_registered`).
    pub max_unreached: usize,
    /// A registration the gateway has not reached within this long leaves memory
    /// (its stored row stays; the provider registers again).
    pub unreached_ttl: Duration,
    /// Registrations per source address per minute (0: unlimited).
    pub registrations_per_minute: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            breaker: BreakerConfig::default(),
            status: StatusConfig::default(),
            stakes: StakeMinimums::default(),
            max_skew_s: 300,
            heartbeat_interval_s: 30,
            bounds: crate::providers::bounds::RegistrationBounds::default(),
            stale_after: Duration::from_secs(7 * 24 * 3600),
            max_registered: 10_000,
            max_unreached: 1_000,
            unreached_ttl: Duration::from_secs(600),
            registrations_per_minute: 60,
        }
    }
}
