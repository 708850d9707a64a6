//! The Tenzro gateway: an OpenAI-compatible front door that authenticates callers,
//! routes to providers, keeps failing ones out with circuit breakers, meters tokens
//! per streamed chunk and prices them.
//!
//! Domain modules are plain Rust with no axum: [`routing`], [`breaker`],
//! [`status`], [`registry`], [`pricing`], [`metering`], [`ledger`], [`accounts`],
//! [`ratelimit`]. The HTTP layer is [`routes`] (the route table and thin handlers)
//! over [`proxy`] (admission, failover and the streaming relay).

pub mod accounts;
pub mod attestation;
pub mod breaker;
pub mod clock;
pub mod config;
pub mod error;
pub mod ledger;
pub mod metering;
pub mod metrics;
pub mod pricing;
pub mod proxy;
pub mod ratelimit;
pub mod registry;
pub mod routes;
pub mod routing;
pub mod state;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::{Accounts, DefaultLimits};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::ledger::{InMemoryLedger, Ledger};
use crate::metrics::Metrics;
use crate::registry::{ProviderInfo, Registry};
pub use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Accounts(#[from] accounts::AccountsError),
    #[error("provider {0}: {1}")]
    Provider(String, registry::RegistryError),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Builds the gateway's state from a validated config, on the real clock.
pub fn build(config: Config) -> Result<AppState, StartError> {
    build_with_clock(config, SystemClock::shared())
}

/// Builds the gateway's state on a given clock (tests drive breakers by hand).
pub fn build_with_clock(config: Config, clock: SharedClock) -> Result<AppState, StartError> {
    let registry = Arc::new(Registry::new(config.registry()?, clock));
    for p in &config.providers {
        let info = ProviderInfo::from_registration(config.static_registration(p)?, true)
            .map_err(|e| StartError::Provider(p.id.clone(), e))?;
        registry.upsert(info).map_err(|e| StartError::Provider(p.id.clone(), e))?;
    }
    let ledger: Arc<dyn Ledger> = Arc::new(InMemoryLedger::new());
    let limits = DefaultLimits {
        requests_per_minute: config.limits.requests_per_minute,
        tokens_per_minute: config.limits.tokens_per_minute,
    };
    let accounts = Arc::new(Accounts::open(config.accounts_path(), ledger.clone(), limits)?);
    let client = reqwest::Client::builder()
        .connect_timeout(config.upstream.connect_timeout())
        .tcp_nodelay(true)
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build()?;
    Ok(AppState {
        rates: Arc::new(config.rates()?),
        config: Arc::new(config),
        registry,
        accounts,
        ledger,
        metrics: Arc::new(Metrics::new()),
        client,
        tasks: TaskTracker::new(),
        cancel: CancellationToken::new(),
    })
}

/// Serves on `listener` (TCP_NODELAY on every accepted connection) until
/// `state.cancel` fires, then drains requests, waits for tracked tasks and writes
/// the accounts file back.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let app = routes::router(state.clone());
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    let cancel = state.cancel.clone();
    state.tasks.spawn(attestation::reverify_loop(state.registry.clone(), state.client.clone(), cancel.clone()));
    let result = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
    state.tasks.close();
    state.tasks.wait().await;
    if let Err(e) = state.accounts.save() {
        tracing::error!(error = %e, "saving balances on shutdown failed");
    }
    result
}
