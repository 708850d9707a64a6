//! A registered provider's life in the registry beyond its registration: its bond
//! (the routing stake), being reached, bans, the rows the store keeps, and leaving
//! memory when stale. A child module of `registry`, so it sees the private state.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use parking_lot::Mutex;

use tenzro_models::api::RegisterRequest;

use super::{ProviderEntry, ProviderInfo, Registry, RegistryError, State};
use crate::money::slashing::{Reason, Slash};
use crate::providers::breaker::Breaker;
use crate::providers::status::OutcomeWindow;
use crate::providers::verdict::AttestationVerdict;

impl Registry {
    /// The bond of registered provider `id`: (bonded, unbonding).
    pub fn bond(&self, id: &str) -> (u128, bool) {
        self.bonds.lock().get(id).copied().unwrap_or((0, false))
    }

    /// Sets the bond of registered provider `id` (the bonds module calls this at
    /// start and whenever a bond changes): `bonded` is its routing stake, and an
    /// unbonding provider gets no new requests (it stays registered and keeps
    /// serving its open channels). Applies to ids not (or no longer) in memory too.
    pub fn set_bond(&self, id: &str, bonded: u128, unbonding: bool) {
        {
            let mut b = self.bonds.lock();
            if bonded == 0 && !unbonding {
                b.remove(id);
            } else {
                b.insert(id.to_owned(), (bonded, unbonding));
            }
        }
    }

    /// Records that the gateway reached `entry`'s endpoint: it may now be routed to.
    pub fn mark_reached(&self, entry: &Arc<ProviderEntry>) {
        let newly = entry.with_state(|s| !std::mem::replace(&mut s.reached, true));
        if newly {
            tracing::info!(provider = %entry.info.id, endpoint = %entry.info.endpoint, "provider reached; it enters routing");
        }
    }

    /// Whether provider `id` is in memory and the gateway has reached it.
    pub fn is_reached(&self, id: &str) -> bool {
        self.get(id).is_some_and(|e| e.with_state(|s| s.reached))
    }

    /// Whether `entry` may get new requests now: routable status, reached, not
    /// unbonding (routing's other filters aside).
    pub fn routable(&self, entry: &ProviderEntry) -> bool {
        let reached = entry.with_state(|s| s.reached);
        reached
            && self.status_of(entry).routable()
            && (entry.info.from_config || !self.bond(&entry.info.id).1)
    }

    /// Whether the bond of provider `id` earns a share of the stakers' pool: the
    /// provider is registered (in memory, not from the config file), the gateway
    /// has reached it, and it is not banned. A bond on a key that serves nobody
    /// earns nothing.
    pub fn earns_staking(&self, id: &str) -> bool {
        self.get(id)
            .is_some_and(|e| !e.info.from_config && e.with_state(|s| s.reached && !s.banned))
            && !self.is_banned(id)
    }

    pub fn is_config(&self, id: &str) -> bool {
        self.config_ids.read().contains(id)
    }

    pub fn is_banned(&self, id: &str) -> bool {
        self.banned.read().contains(id)
    }

    /// [`Registry::prepare`]s a registration from source address `ip`, then counts
    /// it against the source's limit: only a registration whose signature (and the
    /// rest of `prepare`'s checks) passed is counted, so unsigned junk cannot use up
    /// a shared address's (e.g. a NAT's) budget. Signed ones stay limited.
    pub fn prepare_from(
        &self,
        signed: &tenzro_models::api::Signed,
        now_unix: u64,
        ip: Option<std::net::IpAddr>,
    ) -> Result<ProviderInfo, RegistryError> {
        let info = self.prepare(signed, now_unix)?;
        if let Some(ip) = ip {
            self.check_source(ip)?;
        }
        Ok(info)
    }

    /// Counts one registration from source address `ip` (429 past the limit).
    pub fn check_source(&self, ip: std::net::IpAddr) -> Result<(), RegistryError> {
        let now = self.clock.now();
        self.limiter
            .lock()
            .check(ip, now)
            .map_err(RegistryError::RateLimited)
    }

    pub(super) fn mark_dirty(&self, id: &str) {
        if !self.is_config(id) {
            self.dirty.lock().insert(id.to_owned());
        }
    }

    /// Ids whose stored row is out of date, for the store.
    pub fn take_dirty(&self) -> Vec<String> {
        std::mem::take(&mut *self.dirty.lock())
            .into_iter()
            .collect()
    }

    /// Puts ids that failed to save back.
    pub fn requeue_dirty(&self, ids: Vec<String>) {
        {
            let mut d = self.dirty.lock();
            d.extend(ids);
        }
    }

    /// Bans provider `id` for good: its id (= its key's DID) can never register
    /// again, and its whole stake is slashed (whitepaper §8.2) once. `Ok(None)`
    /// when it was banned already.
    pub fn ban(&self, id: &str, detail: &str) -> Result<Option<Slash>, RegistryError> {
        let entry = self.get(id);
        if entry.is_none() && !self.bonds.lock().contains_key(id) {
            return Err(RegistryError::UnknownProvider(id.to_owned()));
        }
        let newly = self.banned.write().insert(id.to_owned());
        if let Some(e) = &entry {
            e.with_state(|s| s.banned = true);
        }
        self.ban_changes.lock().insert(id.to_owned());
        self.mark_dirty(id);
        Ok(if newly {
            self.slash(id, Reason::Ban, detail)
        } else {
            None
        })
    }

    /// Lifts a ban; the slashed stake stays slashed.
    pub fn unban(&self, id: &str) -> Result<(), RegistryError> {
        let was = self.banned.write().remove(id);
        if let Some(e) = self.get(id) {
            e.with_state(|s| s.banned = false);
        } else if !was {
            return Err(RegistryError::UnknownProvider(id.to_owned()));
        }
        self.ban_changes.lock().insert(id.to_owned());
        self.mark_dirty(id);
        Ok(())
    }

    /// Takes whether `id`'s ban state changed here since its last save (the save
    /// then writes it; [`Registry::requeue_ban_change`] when the save failed).
    pub fn take_ban_change(&self, id: &str) -> bool {
        self.ban_changes.lock().remove(id)
    }

    /// Marks `id`'s ban state as still to be saved.
    pub fn requeue_ban_change(&self, id: &str) {
        self.ban_changes.lock().insert(id.to_owned());
    }

    /// Whether `id`'s ban state changed here and is not saved yet.
    pub fn ban_change_pending(&self, id: &str) -> bool {
        self.ban_changes.lock().contains(id)
    }

    /// Restores the stored bans (at start).
    pub fn restore_bans(&self, ids: impl IntoIterator<Item = String>) {
        {
            let mut b = self.banned.write();
            b.extend(ids);
        }
    }

    /// What the store keeps of registered provider `id`: its registration, verdict,
    /// when it was last heard from (Unix seconds) and whether it is banned.
    pub fn stored(&self, id: &str) -> Option<(RegisterRequest, Option<AttestationVerdict>, u64)> {
        let e = self.get(id).filter(|e| !e.info.from_config)?;
        let (verdict, seen) = e.with_state(|s| (s.attestation.clone(), s.last_heartbeat));
        Some((
            e.info.to_registration(),
            verdict,
            self.unix_base.saturating_add(seen.as_secs()),
        ))
    }

    /// Puts a stored registered provider back in memory (at start): checked as a
    /// registration is (id = DID of the key, bounds, namespace), not yet reached.
    pub fn restore(
        &self,
        req: RegisterRequest,
        attestation: Option<AttestationVerdict>,
    ) -> Result<(), RegistryError> {
        let info = ProviderInfo::from_registration(req, false)?;
        let key = info
            .public_key
            .ok_or_else(|| RegistryError::Malformed("public_key is required".into()))?;
        if info.id != key.did() {
            return Err(RegistryError::IdNotKey {
                claimed: info.id,
                did: key.did(),
            });
        }
        self.config
            .bounds
            .check(&info)
            .map_err(RegistryError::OutOfBounds)?;
        let banned = self.is_banned(&info.id);
        let now = self.clock.now();
        let mut map = self.providers.write();
        if self.is_config(&info.id) {
            return Err(RegistryError::ConfigProvider(info.id));
        }
        let state = State {
            banned,
            attestation,
            ..self.fresh_state(false, now)
        };
        let entry = Arc::new(ProviderEntry {
            info,
            in_flight: AtomicU32::new(0),
            state: Mutex::new(state),
        });
        map.insert(entry.info.id.clone(), entry);
        Ok(())
    }

    /// A provider's state when it enters memory: no outcomes yet, heard from at
    /// `now`, not banned, no attestation verdict; `reached`: routable at once.
    pub(super) fn fresh_state(&self, reached: bool, now: Duration) -> State {
        State {
            breaker: Breaker::new(self.config.breaker),
            window: OutcomeWindow::default(),
            total: 0,
            successful: 0,
            failed: 0,
            ema_latency_us: None,
            last_heartbeat: now,
            downtime_slashed: false,
            banned: false,
            attestation: None,
            reached,
            unreached_since: now,
            seen_saved: now,
        }
    }

    /// Whether a new registration fits: reached and unreached registrations have
    /// caps of their own, so registrations at endpoints nobody serves cannot lock
    /// out providers that answer. `registered`: every provider in memory.
    pub(super) fn check_room<'a>(
        &self,
        registered: impl Iterator<Item = &'a Arc<ProviderEntry>>,
    ) -> Result<(), RegistryError> {
        let (mut reached, mut unreached) = (0usize, 0usize);
        for e in registered.filter(|e| !e.info.from_config) {
            if e.with_state(|s| s.reached) {
                reached += 1;
            } else {
                unreached += 1;
            }
        }
        if reached >= self.config.max_registered {
            return Err(RegistryError::Full(reached));
        }
        if unreached >= self.config.max_unreached {
            return Err(RegistryError::PendingFull(unreached));
        }
        Ok(())
    }

    /// Registered providers, not banned, that the gateway has not reached yet.
    pub fn unreached(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|e| !e.info.from_config && !self.is_banned(&e.info.id))
            .filter(|e| !e.with_state(|s| s.reached))
            .map(|e| e.info.id.clone())
            .collect()
    }

    /// Drops registered providers without a heartbeat for `stale_after`, and those
    /// the gateway has not reached within `unreached_ttl`, from memory and routing
    /// (their stored rows, bans, bonds and slashes stay); returns their ids.
    pub fn evict_stale(&self) -> Vec<String> {
        let now = self.clock.now();
        let (stale, ttl) = (self.config.stale_after, self.config.unreached_ttl);
        let mut map = self.providers.write();
        let gone: Vec<String> = map
            .values()
            .filter(|e| !e.info.from_config)
            .filter(|e| {
                e.with_state(|s| {
                    now.saturating_sub(s.last_heartbeat) > stale
                        || (!s.reached && now.saturating_sub(s.unreached_since) > ttl)
                })
            })
            .map(|e| e.info.id.clone())
            .collect();
        for id in &gone {
            map.remove(id);
            tracing::info!(provider = %id, "stale provider dropped from memory");
        }
        gone
    }
}

/// `old`'s state as a registration renews it: same key and namespace, heard from
/// at `now`, attestation to be checked again, and a new endpoint to be reached
/// again before it gets requests (an entry still unreached keeps its deadline:
/// registering again does not extend it).
pub(super) fn renewed(
    old: &ProviderEntry,
    info: &ProviderInfo,
    now: Duration,
) -> Result<State, RegistryError> {
    if old.info.public_key != info.public_key || old.info.from_config != info.from_config {
        return Err(RegistryError::KeyMismatch(info.id.clone()));
    }
    let mut s = old.with_state(|s| s.clone());
    if s.banned {
        return Err(RegistryError::Banned(info.id.clone()));
    }
    s.last_heartbeat = now;
    s.downtime_slashed = false;
    s.attestation = None;
    let still = s.reached && old.info.endpoint == info.endpoint;
    if s.reached && !still {
        s.unreached_since = now;
    }
    s.reached = still;
    Ok(s)
}
