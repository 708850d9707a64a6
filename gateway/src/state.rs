//! Shared state of the HTTP layer.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::Accounts;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::money::book::Book;
use crate::pricing::Rates;
use crate::providers::registry::Registry;
use crate::store::Store;

/// What every handler shares, behind one `Arc`: a request clones the pointer (axum's
/// `State` extractor and each middleware take it by value), not ~25 `Arc`s.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn new(inner: Inner) -> AppState {
        AppState(Arc::new(inner))
    }

    /// The fields to change before the state is shared (tests set a section after
    /// `build`); `None` once it was cloned.
    pub fn inner_mut(&mut self) -> Option<&mut Inner> {
        Arc::get_mut(&mut self.0)
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The shared state's fields (reached through [`AppState`]'s `Deref`).
pub struct Inner {
    pub config: Arc<Config>,
    /// The one clock (monotonic and Unix seconds): the registry's, and what money,
    /// leases, dispute windows and channel expiry read.
    pub clock: crate::clock::SharedClock,
    pub registry: Arc<Registry>,
    pub accounts: Arc<Accounts>,
    pub book: Arc<Book>,
    pub store: Store,
    /// The accounts this replica serves (see [`crate::store::lease`]).
    pub leases: Arc<crate::store::lease::Leases>,
    /// This replica among the others: forwarding, the shared secret (`crate::cluster`).
    pub cluster: Arc<crate::cluster::Cluster>,
    /// Keeps this replica's memory in step with what the others store.
    pub shared: crate::cluster::sync::Shared,
    /// Signs channel vouchers on the payers' behalf.
    pub payer_key: Arc<tenzro_attest::ProviderKey>,
    /// The identity registry (TDIP). A change is made in place under this lock and
    /// writes only its rows, after the lock is released (`store::identity`).
    pub identities: Arc<parking_lot::RwLock<tenzro_identity::Identities>>,
    /// Serialises identity changes and their row writes.
    pub identities_save: Arc<tokio::sync::Mutex<()>>,
    /// Faucet grants by account (Unix seconds), for its hourly limit.
    pub faucet: Arc<parking_lot::Mutex<std::collections::HashMap<String, Vec<u64>>>>,
    pub rates: Arc<Rates>,
    pub metrics: Arc<Metrics>,
    pub client: reqwest::Client,
    /// The clients of model requests, by what each provider speaks (`crate::proxy::upstream`).
    pub upstream: Arc<crate::proxy::upstream::Upstream>,
    /// The bounded client of attestation fetches and health probes.
    pub verifier: crate::providers::attestation::Verifier,
    /// Model audits: the sampler the proxy offers answers to (`crate::audit`).
    pub audits: crate::audit::Audits,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
}

impl Inner {
    /// Takes `account`'s lease for this replica, loading its money into the book
    /// when it was not here (see [`crate::store::lease`]).
    pub async fn lease(&self, account: &str) -> Result<(), crate::store::lease::LeaseError> {
        self.leases
            .ensure(&self.store, &self.book, account, self.clock.unix())
            .await
    }
}
