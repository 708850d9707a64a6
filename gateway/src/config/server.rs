//! The node's own tables: `[server]`, `[upstream]`, `[store]`, `[limits]`,
//! `[identities]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Secret;

/// The identity registry (TDIP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitiesSection {
    /// Most agents (not terminated) one owner may have, counting sub-agents.
    pub max_agents_per_owner: usize,
}

impl Default for IdentitiesSection {
    fn default() -> Self {
        IdentitiesSection {
            max_agents_per_owner: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`; empty: SQLite at
    /// `DATA_DIR/gateway.db`.
    pub url: Secret,
    /// Group commit: the book's changes reach the store once per interval.
    pub commit_interval_ms: u64,
    /// An account's lease (one replica serves it at a time) lasts this long and is
    /// renewed by commits.
    pub lease_ttl_s: u64,
    /// Accounts unused this long are released for other replicas (0: never).
    pub lease_idle_s: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            url: Secret::default(),
            commit_interval_ms: 10,
            lease_ttl_s: 30,
            lease_idle_s: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where the SQLite store (gateway.db), the payer key and the replica id live.
    pub data_dir: PathBuf,
    /// Bearer token of the admin API; empty disables it.
    pub admin_token: Secret,
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from(".tenzro/gateway"),
            admin_token: Secret::default(),
            max_body_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    /// Until the provider's response headers and first body bytes.
    pub first_byte_timeout_ms: u64,
    /// Longest silence between two chunks of a response.
    pub idle_timeout_ms: u64,
    /// Providers tried per request (the first one and failovers).
    pub max_attempts: usize,
    /// Largest answer relayed, streamed or not; a stream past it is cut.
    pub max_response_bytes: usize,
    /// Largest unterminated SSE event a stream may hold pending; past it the stream
    /// is cut (so one endless event cannot grow the gateway's memory).
    pub max_event_bytes: usize,
    /// Calls an `http://` provider in HTTP/2 without TLS (one multiplexed
    /// connection) once a probe saw it answer in h2c; false: HTTP/1.1 only
    /// (`crate::proxy::upstream`).
    pub h2c: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout_ms: 2_000,
            first_byte_timeout_ms: 60_000,
            idle_timeout_ms: 60_000,
            max_attempts: 3,
            max_response_bytes: 64 << 20,
            max_event_bytes: 1 << 20,
            h2c: true,
        }
    }
}

impl UpstreamConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_millis(self.first_byte_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Per-key defaults; 0 disables the limit.
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
    /// Completion tokens assumed when a request names no `max_tokens` and the model
    /// declares no `max_context`.
    pub default_max_tokens: u32,
    /// Balance of accounts made by `keys create` when `--balance` is not given (TNZO).
    pub dev_balance: String,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            requests_per_minute: 600,
            tokens_per_minute: 2_000_000,
            default_max_tokens: 4096,
            dev_balance: "1000".into(),
        }
    }
}
