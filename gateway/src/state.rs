//! Shared state of the HTTP layer.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::Accounts;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::money::book::Book;
use crate::money::store::Store;
use crate::pricing::Rates;
use crate::registry::Registry;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub accounts: Arc<Accounts>,
    pub book: Arc<Book>,
    pub store: Store,
    /// The accounts this replica serves (see [`crate::money::lease`]).
    pub leases: Arc<crate::money::lease::Leases>,
    /// Signs channel vouchers on the payers' behalf.
    pub payer_key: Arc<tenzro_attest::ProviderKey>,
    /// The identity registry (TDIP). A change is made in place under this lock and
    /// writes only its rows, after the lock is released (`identity_store`).
    pub identities: Arc<std::sync::RwLock<tenzro_identity::Identities>>,
    /// Serialises identity changes and their row writes.
    pub identities_save: Arc<tokio::sync::Mutex<()>>,
    /// Faucet grants by account (Unix seconds), for its hourly limit.
    pub faucet: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u64>>>>,
    pub rates: Arc<Rates>,
    pub metrics: Arc<Metrics>,
    pub client: reqwest::Client,
    /// The bounded client of attestation fetches and health probes.
    pub verifier: crate::attestation::Verifier,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
}

impl AppState {
    /// Takes `account`'s lease for this replica, loading its money into the book
    /// when it was not here (see [`crate::money::lease`]).
    pub async fn lease(&self, account: &str) -> Result<(), crate::money::lease::LeaseError> {
        self.leases
            .ensure(&self.store, &self.book, account, crate::clock::unix_now())
            .await
    }
}
