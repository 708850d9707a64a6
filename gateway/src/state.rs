//! Shared state of the HTTP layer.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::Accounts;
use crate::config::Config;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::pricing::Rates;
use crate::registry::Registry;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub accounts: Arc<Accounts>,
    pub ledger: Arc<dyn Ledger>,
    pub rates: Arc<Rates>,
    pub metrics: Arc<Metrics>,
    pub client: reqwest::Client,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
}
