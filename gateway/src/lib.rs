//! The Tenzro gateway: an OpenAI-compatible front door that authenticates callers,
//! routes to providers, keeps failing ones out with circuit breakers, meters tokens
//! per streamed chunk and prices them.
//!
//! Domain modules are plain Rust with no axum (checked by `layers_tests`):
//! [`providers`] (registry, routing, breakers, status, attestation), [`accounts`],
//! [`money`] (the book, scopes, channels, bonds, settlement), [`store`] (the SQL
//! store, one file per table family), [`tasks`] (the background loops over them),
//! [`pricing`], [`metering`], [`verify`], [`ratelimit`], [`clock`]. The HTTP layer
//! is [`http`] (the route table and thin handlers) over [`proxy`] (admission,
//! failover and the streaming relay).

pub mod a2a;
pub mod accounts;
pub mod audit;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod console;
pub mod http;
pub mod mcp;
pub mod metering;
pub mod metrics;
pub mod money;
pub mod pricing;
pub mod providers;
pub mod proxy;
pub mod ratelimit;
pub mod state;
pub mod store;
pub mod tasks;
pub mod verify;

#[cfg(test)]
mod layers_tests;

use std::sync::Arc;
use std::time::Duration;

use tenzro_attest::ProviderKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::{Accounts, DefaultLimits};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::money::book::Book;
use crate::providers::registry::{ProviderInfo, Registry};
pub use crate::state::AppState;
use crate::store::Store;
use crate::tasks::vouchers::Courier;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("store {url}: {source}")]
    Store {
        url: String,
        source: store::StoreError,
    },
    #[error("restoring the book: {0}")]
    Book(#[from] money::book::BookError),
    #[error("stored identities do not load: {0}")]
    Identities(String),
    #[error("payer key: {0}")]
    Key(#[from] tenzro_attest::Error),
    #[error("data directory {0}: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
    #[error("provider {0}: {1}")]
    Provider(String, providers::registry::RegistryError),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("{0}")]
    Cluster(String),
}

/// Opens the configured store (creating the data directory for SQLite).
pub async fn open_store(config: &Config) -> Result<Store, StartError> {
    let url = config.store_url();
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.server.data_dir)
            .map_err(|e| StartError::DataDir(config.server.data_dir.clone(), e))?;
    }
    Store::open(&url).await.map_err(|source| StartError::Store {
        url: redact(&url),
        source,
    })
}

/// A store URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

/// A store failure at start, naming the store without its password.
fn store_error(config: &Config) -> impl Fn(store::StoreError) -> StartError + use<> {
    let url = redact(&config.store_url());
    move |source| StartError::Store {
        url: url.clone(),
        source,
    }
}

/// The registry on `clock` with the configured policy and `[[providers]]`.
fn configured_registry(config: &Config, clock: SharedClock) -> Result<Arc<Registry>, StartError> {
    let mut registry = Registry::new(config.registry()?, clock);
    registry.attest_policy = config.attest_policy()?;
    let registry = Arc::new(registry);
    for p in &config.providers {
        let info = ProviderInfo::from_registration(config.static_registration(p)?, true)
            .map_err(|e| StartError::Provider(p.id.clone(), e))?;
        registry
            .upsert(info)
            .map_err(|e| StartError::Provider(p.id.clone(), e))?;
    }
    Ok(registry)
}

/// Builds the gateway's state from a validated config, on the real clock.
pub async fn build(config: Config) -> Result<AppState, StartError> {
    build_with_clock(config, SystemClock::shared()).await
}

/// Builds the gateway's state on a given clock (tests drive breakers by hand):
/// opens the store and restores the book from it.
pub async fn build_with_clock(
    mut config: Config,
    clock: SharedClock,
) -> Result<AppState, StartError> {
    config.amounts = config.amounts()?;
    let registry = configured_registry(&config, clock.clone())?;
    // SQLite serves one process; [cluster] needs PostgreSQL (`cluster::lock`).
    cluster::lock::lock_sqlite(&config.store_url()).map_err(StartError::Cluster)?;
    config
        .cluster
        .validate(config.store_url().starts_with("sqlite:"))
        .map_err(StartError::Cluster)?;
    let store = open_store(&config).await?;
    let stored = store_error(&config);
    let snap = store.load().await.map_err(&stored)?;
    // Accounts' money enters the book when this replica takes their leases
    // (`store::lease`); the network-wide pools and earnings load now.
    // Bans, slashes and the registered providers heard from recently.
    let restored = store::registry::restore(&registry, &store, snap.slashes)
        .await
        .map_err(&stored)?;
    tracing::info!(providers = restored, "registry restored from the store");
    let collateral =
        providers::collateral::CollateralStore::new(&config.attestation, &config.server.data_dir)?;
    let verifier =
        providers::attestation::Verifier::new(config.registration.allow_private_endpoints)?
            .with_collateral(Arc::new(collateral));
    let book = Arc::new(Book::new(config.book()?));
    book.load_pools(&snap.pools, &snap.earnings)?;
    let bonds = store.bonds().await.map_err(&stored)?;
    let applied = store.applied_slashes().await.map_err(&stored)?;
    book.load_bonds(bonds, applied)?;
    for b in book.bonds() {
        tasks::bonds::publish(&registry, &b);
    }
    let replica = store::lease::Leases::replica_id(&config.server.data_dir)
        .map_err(|e| StartError::DataDir(config.server.data_dir.clone(), e))?;
    let cluster = Arc::new(cluster::Cluster::new(
        config.cluster.clone(),
        replica.clone(),
    )?);
    let leases = Arc::new(
        store::lease::Leases::new(replica, config.store.lease_ttl_s).with_token(cluster.token()),
    );
    if !store.is_sqlite() {
        claim_replica(&config, &store, &cluster, &leases, &clock).await?;
    }
    let limits = DefaultLimits {
        requests_per_minute: config.limits.requests_per_minute,
        tokens_per_minute: config.limits.tokens_per_minute,
    };
    let accounts = Arc::new(Accounts::new(
        store.clone(),
        book.clone(),
        limits,
        (snap.accounts, snap.keys),
        clock.clone(),
    ));
    let identities = match store.load_identities().await {
        Ok(reg) => reg,
        Err(e @ store::StoreError::Corrupt { .. }) => {
            return Err(StartError::Identities(e.to_string()));
        }
        Err(source) => return Err(stored(source)),
    };
    let payer_key = Arc::new(ProviderKey::load_or_create(&config.payer_key_path())?);
    // Model requests pick their client per provider (HTTP/1.1 or h2c); the rest
    // (vouchers, replicas' hints) use the HTTP/1.1 one. Neither follows redirects
    // nor, unless private endpoints are allowed, connects to private addresses.
    let upstream = proxy::upstream::Upstream::new(&config)?;
    let client = upstream.http1().clone();
    let audits = audit::Audits::new(config.attestation.audit_rate, config.audit.clone());
    let shared = cluster::sync::Shared {
        cluster: cluster.clone(),
        registry: registry.clone(),
        accounts: accounts.clone(),
        leases: leases.clone(),
        store: store.clone(),
        client: client.clone(),
        heard: Arc::default(),
    };
    Ok(AppState::new(state::Inner {
        clock,
        rates: Arc::new(config.rates()?),
        config: Arc::new(config),
        registry,
        accounts,
        book,
        store,
        leases,
        cluster,
        shared,
        payer_key,
        faucet: Arc::default(),
        identities: Arc::new(parking_lot::RwLock::new(identities)),
        identities_save: Arc::default(),
        metrics: Arc::new(Metrics::new()),
        client,
        upstream,
        verifier,
        tasks: TaskTracker::new(),
        audits,
        cancel: CancellationToken::new(),
    }))
}

/// Claims this process's replica id in the store (`cluster::identity`: a second
/// live process with the same data directory is refused) and measures its clock
/// against the store's before any lease is taken.
async fn claim_replica(
    config: &Config,
    store: &store::Store,
    cluster: &cluster::Cluster,
    leases: &store::lease::Leases,
    clock: &SharedClock,
) -> Result<(), StartError> {
    let claimant = cluster::identity::Claimant {
        id: &cluster.replica,
        token: cluster.token(),
        address: &config.cluster.advertise,
        window_s: cluster.liveness_window_s(),
        data_dir: &config.server.data_dir,
    };
    cluster::identity::claim(store, claimant)
        .await
        .map_err(|e| StartError::Cluster(e.to_string()))?;
    let skew = cluster::sync::measure_skew(store, || clock.unix())
        .await
        .map_err(store_error(config))?;
    leases.set_skew(skew);
    Ok(())
}

/// The tasks that make the book durable and pay out: group commit, the settlement
/// sweep, bond payouts and the voucher courier (after reconciling open channels).
/// They stop on `money`, after the HTTP server (the courier on `state.cancel`).
fn spawn_money_tasks(state: &AppState, money: &CancellationToken) {
    let cfg = &state.config;
    state.tasks.spawn(tasks::committer::run(
        state.book.clone(),
        state.store.clone(),
        state.registry.clone(),
        state.leases.clone(),
        Duration::from_millis(cfg.store.commit_interval_ms.max(1)),
        cfg.store.lease_idle_s,
        money.clone(),
    ));
    state.tasks.spawn(tasks::committer::sweep(
        state.book.clone(),
        state.store.clone(),
        state.leases.clone(),
        state.clock.clone(),
        Duration::from_secs(cfg.channels.settle_sweep_s.max(1)),
        money.clone(),
    ));
    state.tasks.spawn(
        tasks::bonds::BondsTask {
            book: state.book.clone(),
            store: state.store.clone(),
            leases: state.leases.clone(),
            registry: state.registry.clone(),
            payout_interval_s: cfg.bonds.payout_interval_s,
        }
        .run(money.clone()),
    );
    let courier = Courier {
        book: state.book.clone(),
        store: state.store.clone(),
        registry: state.registry.clone(),
        client: state.client.clone(),
        key: state.payer_key.clone(),
    };
    let (interval, checkpoint) = (
        Duration::from_millis(cfg.channels.voucher_interval_ms.max(1)),
        Duration::from_millis(cfg.channels.checkpoint_interval_ms.max(1)),
    );
    let (store, book, leases, clock) = (
        state.store.clone(),
        state.book.clone(),
        state.leases.clone(),
        state.clock.clone(),
    );
    let cancel = state.cancel.clone();
    state.tasks.spawn(async move {
        // Take the accounts with open channels first, so their channels are
        // reconciled with what the providers hold before new vouchers go out.
        match store.accounts_with_channels().await {
            Ok(accounts) => {
                for a in accounts {
                    if let Err(e) = leases.ensure(&store, &book, &a, clock.unix()).await {
                        tracing::info!(account = %a, error = %e, "not reconciling this account here");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "listing accounts with channels"),
        }
        courier.reconcile().await;
        courier.run(interval, checkpoint, cancel).await;
    });
}

/// Serves on `listener` (HTTP/1.1, TCP_NODELAY: `http::listen`) until
/// `state.cancel` fires, then drains requests, commits the book one last time and
/// waits for tracked tasks.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let app = http::router(state.clone());
    let cancel = state.cancel.clone();
    // The money tasks outlive the HTTP server, so that streams drained during
    // shutdown are committed too.
    let money = CancellationToken::new();
    // Peer auditors are paid from the operator's `[audit] account` (none: only the
    // reference audits; see `audit::peer`).
    let funding = (!state.audits.config.account.is_empty()).then(|| audit::peer::Funding {
        account: state.audits.config.account.clone(),
        book: state.book.clone(),
        store: state.store.clone(),
        leases: state.leases.clone(),
        payer_key: state.payer_key.clone(),
        rates: state.rates.clone(),
        clock: state.clock.clone(),
    });
    state.tasks.spawn(audit::worker::run(
        state.audits.clone(),
        state.registry.clone(),
        funding,
        cancel.clone(),
    ));
    state.tasks.spawn(providers::attestation::reverify_loop(
        state.registry.clone(),
        state.verifier.clone(),
        cancel.clone(),
    ));
    state.tasks.spawn(store::registry::persist_loop(
        state.registry.clone(),
        state.store.clone(),
        Duration::from_secs(1),
        money.clone(),
    ));
    spawn_money_tasks(&state, &money);
    // Shared state between replicas: hints, reconcile, this replica's address.
    state.tasks.spawn(
        state
            .shared
            .clone()
            .run(state.config.store_url(), cancel.clone()),
    );
    a2a::start_retention(&state, cancel.clone()).await;
    // HTTP/1.1; the source address reaches handlers (registrations are limited
    // per address).
    let result = http::listen::serve(listener, app, state.cancel.clone()).await;
    money.cancel();
    state.tasks.close();
    state.tasks.wait().await;
    state.store.close().await;
    result
}
