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

pub mod auth;
pub mod identity;
pub mod lock;
pub mod misses;
pub mod sync;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

use crate::store::cluster::Holder;
use crate::store::{Store, StoreError};

/// The header a replica puts on a request it forwards: an HMAC under the shared
/// secret (`auth`), never the secret itself.
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
    /// This process's claim on `replica` in the store (`identity`): made at
    /// start, never shown.
    token: String,
    /// MACs of forwards accepted within the window (`auth`).
    replays: Mutex<auth::Replays>,
    holders: Mutex<HashMap<String, (Holder, Instant)>>,
    /// Unknown provider ids' store lookups (heartbeats), bounded.
    pub misses: Mutex<misses::Misses>,
    /// The store's count of slash records at the last reconcile (`u64::MAX`:
    /// not read yet).
    pub slash_rows: std::sync::atomic::AtomicU64,
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
            token: uuid::Uuid::new_v4().simple().to_string(),
            replays: Mutex::default(),
            section,
            holders: Mutex::default(),
            misses: Mutex::default(),
            slash_rows: std::sync::atomic::AtomicU64::new(u64::MAX),
        })
    }

    /// Whether this replica forwards to (and accepts forwards from) the others.
    pub fn forwarding(&self) -> bool {
        !self.section.advertise.is_empty()
    }

    /// The forward header for `f`, sent at `now` (the store's clock).
    pub fn sign_forward(&self, f: &auth::Forwarded<'_>, now: u64) -> String {
        auth::sign(&self.section.secret, f, now)
    }

    /// The first look at a forward header, before the body is read: well formed
    /// and within the window of `now` (the store's clock). Always refused when
    /// forwarding is off.
    pub fn precheck_forward(
        &self,
        header: &str,
        now: u64,
    ) -> Result<auth::Header, auth::ForwardAuthError> {
        if !self.forwarding() {
            return Err(auth::ForwardAuthError::Mismatch);
        }
        let h = auth::parse(header)?;
        auth::fresh(h.at, now)?;
        Ok(h)
    }

    /// Accepts a prechecked forward header for `f`: its MAC matches and was not
    /// accepted before.
    pub fn accept_forward(
        &self,
        h: auth::Header,
        f: &auth::Forwarded<'_>,
        now: u64,
    ) -> Result<(), auth::ForwardAuthError> {
        auth::check(&self.section.secret, &h, f)?;
        if !self.replays.lock().first_time(&h, now) {
            return Err(auth::ForwardAuthError::Replayed);
        }
        Ok(())
    }

    /// This process's token on its replica id.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How long a replica may be silent before it counts as dead: three
    /// heartbeats.
    pub fn liveness_window_s(&self) -> u64 {
        3 * self.section.heartbeat_s.max(1)
    }

    /// The live replica other than this one that holds `account`'s lease at
    /// `now` (the store's clock, `Leases::store_now`) and published an address, if any (looked up at most once a second
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

    /// Whether `holder` said it was alive within three heartbeats (measured by
    /// the store's clock, as it stamped them).
    pub fn alive(&self, holder: &Holder) -> bool {
        holder.seen_age <= self.liveness_window_s()
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
    fn only_a_replicas_forward_is_accepted_once_and_never_when_forwarding_is_off() {
        let c = Cluster::new(section("http://h:1", "0123456789abcdef"), "r1".into()).unwrap();
        let f = auth::Forwarded {
            method: "POST",
            path_and_query: "/v1/account",
            body: b"",
            authorization: Some(b"Bearer tz-x"),
            to: "r1",
        };
        let h = c.sign_forward(&f, 1_000);
        let pre = c.precheck_forward(&h, 1_010).unwrap();
        assert_eq!(c.accept_forward(pre, &f, 1_010), Ok(()));
        assert_eq!(
            c.accept_forward(pre, &f, 1_011),
            Err(auth::ForwardAuthError::Replayed)
        );
        assert_eq!(
            c.precheck_forward(&h, 1_000 + auth::WINDOW_S + 1),
            Err(auth::ForwardAuthError::Stale)
        );
        for bad in ["0123456789abcdef", "", "guess"] {
            assert!(c.precheck_forward(bad, 1_000).is_err(), "{bad}");
        }
        let other = Cluster::new(section("http://h:1", "0123456789abcdeF"), "r2".into()).unwrap();
        let forged = other.sign_forward(&f, 1_000);
        let pre = c.precheck_forward(&forged, 1_000).unwrap();
        assert_eq!(
            c.accept_forward(pre, &f, 1_000),
            Err(auth::ForwardAuthError::Mismatch)
        );
        let off = Cluster::new(section("", ""), "r1".into()).unwrap();
        let h = off.sign_forward(&f, 1_000);
        assert!(
            off.precheck_forward(&h, 1_000).is_err(),
            "no secret configured: nothing is accepted"
        );
    }
}
