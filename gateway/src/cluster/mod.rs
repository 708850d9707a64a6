//! Several gateway replicas on one PostgreSQL (issue 17), without HTTP types.
//!
//! - Who serves an account: the replica holding its lease (`store::lease`). A
//!   replica that gets a request for an account another live replica holds forwards
//!   it there (`proxy::forward`), to the address that replica published in the
//!   store (`[cluster] advertise`), with the replicas' shared secret in a header an
//!   outside caller cannot produce. A dead holder's accounts are taken over once
//!   their leases expire (`store.lease_ttl_s`), as before.
//! - What is shared beyond money ([`sync`]): providers, verdicts, bans, key
//!   revocations and bond stakes are in the store; a replica that writes one sends a
//!   hint (`NOTIFY`, `store::cluster`) and every replica re-reads the row it names
//!   (a hint is never believed), plus a periodic reconcile of what changed since
//!   the last one, so a lost hint costs at most `reconcile_s`. Heartbeats are kept
//!   per replica and written as one batched statement per reconcile.
//! - SQLite serves one gateway process: [`lock`] refuses a second one at start.

pub mod lock;
pub mod sync;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::store::cluster::Holder;
use crate::store::{Store, StoreError};

/// The header a replica puts on a request it forwards: the shared secret.
pub const FORWARD_HEADER: &str = "x-tenzro-forward";
/// The forwarding replica's id (for logs on the holder).
pub const FORWARDED_BY_HEADER: &str = "x-tenzro-forwarded-by";
/// Shortest accepted shared secret.
pub const MIN_SECRET_LEN: usize = 16;
/// How long a looked-up lease holder is reused before asking the store again.
const HOLDER_CACHE: Duration = Duration::from_secs(1);
/// Most holders cached (one per account recently forwarded); cleared when full.
const HOLDER_CACHE_MAX: usize = 100_000;

/// `[cluster]`: several replicas on one PostgreSQL. Its `Debug` never shows the
/// secret.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// This replica's internal base URL the other replicas forward requests to,
    /// e.g. `http://10.0.0.5:8080` (`TENZRO_CLUSTER_ADVERTISE`). Empty: requests
    /// for accounts another replica holds are answered 503 `replica_busy`.
    pub advertise: String,
    /// The secret every replica shares (`TENZRO_CLUSTER_SECRET`, at least 16
    /// characters); required with `advertise`.
    pub secret: String,
    /// How often a replica says it is alive (seconds).
    pub heartbeat_s: u64,
    /// How often a replica re-reads what changed in the store, and writes the
    /// heartbeats it got since (seconds).
    pub reconcile_s: u64,
    /// Connecting to the lease holder when forwarding (milliseconds).
    pub forward_connect_timeout_ms: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            advertise: String::new(),
            secret: String::new(),
            heartbeat_s: 2,
            reconcile_s: 5,
            forward_connect_timeout_ms: 1000,
        }
    }
}

impl std::fmt::Debug for ClusterSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSection")
            .field("advertise", &self.advertise)
            .field(
                "secret",
                &if self.secret.is_empty() {
                    "(empty)"
                } else {
                    "***"
                },
            )
            .field("heartbeat_s", &self.heartbeat_s)
            .field("reconcile_s", &self.reconcile_s)
            .field(
                "forward_connect_timeout_ms",
                &self.forward_connect_timeout_ms,
            )
            .finish()
    }
}

impl ClusterSection {
    /// Checks the section against the store it runs on.
    pub fn validate(&self, sqlite: bool) -> Result<(), String> {
        if self.advertise.is_empty() {
            return Ok(());
        }
        if sqlite {
            return Err("cluster.advertise needs a PostgreSQL store (store.url): SQLite serves one gateway process".into());
        }
        let a = self.advertise.as_str();
        let rest = a
            .strip_prefix("http://")
            .or_else(|| a.strip_prefix("https://"))
            .ok_or_else(|| {
                format!("cluster.advertise must be an http:// or https:// URL, got {a:?}")
            })?;
        if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
            return Err(format!(
                "cluster.advertise must be a base URL like http://10.0.0.5:8080 (no path), got {a:?}"
            ));
        }
        if self.secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "cluster.secret (TENZRO_CLUSTER_SECRET) must be at least {MIN_SECRET_LEN} characters when cluster.advertise is set"
            ));
        }
        Ok(())
    }
}

/// This replica's place among the others.
#[derive(Debug)]
pub struct Cluster {
    /// This replica's id (the lease owner it writes).
    pub replica: String,
    pub section: ClusterSection,
    /// The client that forwards to other replicas (internal addresses allowed, no
    /// redirects, no overall timeout: streams last).
    pub forwarder: reqwest::Client,
    secret_digest: [u8; 32],
    holders: Mutex<HashMap<String, (Holder, Instant)>>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Cluster {
    pub fn new(section: ClusterSection, replica: String) -> Result<Self, reqwest::Error> {
        let forwarder = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(
                section.forward_connect_timeout_ms.max(1),
            ))
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(Cluster {
            replica,
            forwarder,
            secret_digest: digest(&section.secret),
            section,
            holders: Mutex::default(),
        })
    }

    /// Whether this replica forwards to (and accepts forwards from) the others.
    pub fn forwarding(&self) -> bool {
        !self.section.advertise.is_empty()
    }

    /// The shared secret, for the forward header.
    pub fn secret(&self) -> &str {
        &self.section.secret
    }

    /// Whether `presented` is the shared secret (compared as digests, in constant
    /// time). Always false when forwarding is off.
    pub fn secret_matches(&self, presented: &str) -> bool {
        if !self.forwarding() {
            return false;
        }
        let d = digest(presented);
        d.iter()
            .zip(self.secret_digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// The live replica other than this one that holds `account`'s lease at
    /// `now` and published an address, if any (looked up at most once a second
    /// per account).
    pub async fn holder_elsewhere(
        &self,
        store: &Store,
        account: &str,
        now: u64,
    ) -> Result<Option<Holder>, StoreError> {
        let cached = {
            let h = self.holders.lock();
            h.get(account)
                .filter(|(_, at)| at.elapsed() < HOLDER_CACHE)
                .map(|(h, _)| h.clone())
        };
        let holder = match cached {
            Some(h) => Some(h),
            None => {
                let found = store.lease_holder(account).await?;
                if let Some(h) = &found {
                    let mut cache = self.holders.lock();
                    if cache.len() >= HOLDER_CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(account.to_owned(), (h.clone(), Instant::now()));
                }
                found
            }
        };
        Ok(holder.filter(|h| h.owner != self.replica && h.until > now && h.address.is_some()))
    }

    /// Whether `holder` said it was alive within three heartbeats of `now`.
    pub fn alive(&self, holder: &Holder, now: u64) -> bool {
        holder.seen + 3 * self.section.heartbeat_s.max(1) >= now
    }

    /// Forgets the cached holder of `account` (a forward to it failed).
    pub fn forget_holder(&self, account: &str) {
        self.holders.lock().remove(account);
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn section(advertise: &str, secret: &str) -> ClusterSection {
        ClusterSection {
            advertise: advertise.into(),
            secret: secret.into(),
            ..ClusterSection::default()
        }
    }

    #[test]
    fn the_section_is_checked_against_the_store() {
        let ok = "0123456789abcdef";
        assert_eq!(section("", "").validate(true), Ok(()));
        assert_eq!(section("http://10.0.0.5:8080", ok).validate(false), Ok(()));
        let sqlite = section("http://10.0.0.5:8080", ok).validate(true);
        assert!(sqlite.is_err_and(|e| e.contains("PostgreSQL")));
        let short = section("http://10.0.0.5:8080", "short").validate(false);
        assert!(short.is_err_and(|e| e.contains("cluster.secret")));
        for bad in ["10.0.0.5:8080", "http://", "http://h:1/v1", "ftp://h"] {
            let e = section(bad, ok).validate(false);
            assert!(e.is_err_and(|e| e.contains("cluster.advertise")), "{bad}");
        }
    }

    #[test]
    fn only_the_shared_secret_matches_and_never_when_forwarding_is_off() {
        let c = Cluster::new(section("http://h:1", "0123456789abcdef"), "r1".into()).unwrap();
        assert!(c.secret_matches("0123456789abcdef"));
        assert!(!c.secret_matches("0123456789abcdeF"));
        assert!(!c.secret_matches(""));
        let off = Cluster::new(section("", ""), "r1".into()).unwrap();
        assert!(
            !off.secret_matches(""),
            "no secret configured: nothing matches"
        );
    }
}
