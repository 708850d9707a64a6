//! The provider registry: who serves what, at which price, and how well.
//!
//! Providers come from the config file or register themselves with a signed
//! [`RegisterRequest`]; they stay alive with signed heartbeats. Per provider the
//! registry keeps the metrics of §8.2 (total, successful, failed, EMA latency, last
//! heartbeat), the outcome window its [`Status`] is computed from, and its circuit
//! [`Breaker`](crate::providers::breaker::Breaker).
//!
//! Identity (issue 10): a registered provider's id *is* the DID of its signing key
//! (`PublicKey::did()`), so an id cannot be squatted by another key, before or after
//! a restart. Providers from the config file are a separate namespace no
//! registration can replace. A registered provider's routing stake is its bond
//! ([`Registry::set_bond`]), never what it declares. A ban binds the id (so the key)
//! and slashes 100%; un-banning restores nothing. A new registration enters routing
//! only once the gateway has reached its endpoint ([`Registry::mark_reached`]), and
//! registered providers silent for `stale_after` leave memory ([`Registry::evict_stale`];
//! their rows, bans and slashes stay in the store, see `store::registry`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::{Mutex, RwLock};
use std::time::Duration;

use tenzro_attest::Policy;
use tenzro_attest::keys::{PublicKey, Signature};
use tenzro_models::api::{
    HEARTBEAT_DOMAIN, Heartbeat, HeartbeatResponse, REGISTER_DOMAIN, RegisterRequest,
    RegisterResponse, Signed,
};

use crate::clock::SharedClock;
use crate::money::slashing::{self, Reason, Slash};
use crate::pricing::{self, Asset, Quote, Rates};
use crate::providers::entry::State;
pub use crate::providers::entry::{Outcome, ProviderEntry, ProviderView, SEEN_SAVE_EVERY};
pub use crate::providers::info::{ModelEntry, ProviderInfo, RegistryError};
use crate::providers::routing::Candidate;
pub use crate::providers::settings::RegistryConfig;
use crate::providers::status::Status;
use crate::providers::verdict::AttestationVerdict;

/// Silence that counts as downtime (whitepaper §3.2).
pub const DOWNTIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub struct Registry {
    /// Providers by id, indexed by model (routing reads only a model's own).
    providers: RwLock<crate::providers::index::ProviderMap>,
    clock: SharedClock,
    pub config: RegistryConfig,
    /// What TEE evidence must satisfy (default policy: 24 h freshness).
    pub attest_policy: Policy,
    /// Unix seconds at the clock's origin: `unix_now` = this + the clock.
    unix_base: u64,
    /// The newest slashes (bounded, see `registry_slashes`), oldest first; the
    /// store keeps them all.
    slashes: Mutex<Vec<Slash>>,
    /// Per provider id: the total slashed (all records, stored ones included).
    slashed_total: Mutex<BTreeMap<String, u128>>,
    /// Slashes the bonds module has not applied yet (it drains them).
    unapplied: Mutex<Vec<Slash>>,
    /// Ids of every slash record known here (restored, made here, or learnt from
    /// another replica through the store: `registry_slashes`).
    slash_ids: Mutex<std::collections::HashSet<String>>,
    /// Slashes not yet written to the store (the committer drains them).
    unsaved: Mutex<Vec<Slash>>,
    /// Ids of the providers from the config file (a namespace of their own).
    config_ids: RwLock<BTreeSet<String>>,
    /// Per registered provider id: (bonded amount, unbonding), set by the bonds
    /// module; kept apart from the entries so a slash or ban reaches a bond whose
    /// provider left memory.
    bonds: Mutex<BTreeMap<String, (u128, bool)>>,
    /// Banned ids (with the key, for registered ones: id = DID of the key).
    banned: RwLock<BTreeSet<String>>,
    /// Providers whose stored row is out of date (see `store::registry`).
    dirty: Mutex<BTreeSet<String>>,
    /// Providers banned or unbanned here and not yet saved: only these carry their
    /// ban state to the store (a row saved for another reason must not undo a ban
    /// another replica made).
    ban_changes: Mutex<BTreeSet<String>>,
    limiter: Mutex<crate::providers::bounds::SourceLimiter>,
}

impl Registry {
    pub fn new(config: RegistryConfig, clock: SharedClock) -> Self {
        let unix_base = clock.unix().saturating_sub(clock.now().as_secs());
        let limiter =
            crate::providers::bounds::SourceLimiter::new(config.registrations_per_minute, 65_536);
        Registry {
            config_ids: RwLock::default(),
            bonds: Mutex::default(),
            banned: RwLock::default(),
            dirty: Mutex::default(),
            ban_changes: Mutex::default(),
            limiter: Mutex::new(limiter),
            providers: RwLock::default(),
            clock,
            config,
            attest_policy: Policy::default(),
            unix_base,
            slashes: Mutex::new(Vec::new()),
            slashed_total: Mutex::default(),
            unapplied: Mutex::default(),
            slash_ids: Mutex::default(),
            unsaved: Mutex::new(Vec::new()),
        }
    }

    /// A provider's routing stake: for one from the config file, its configured
    /// stake less what was slashed; for a registered one, its bond (what it declares
    /// counts for nothing).
    pub fn stake_of(&self, entry: &ProviderEntry) -> u128 {
        if entry.info.from_config {
            entry
                .info
                .stake
                .saturating_sub(self.slashed(&entry.info.id))
        } else {
            self.bond(&entry.info.id).0
        }
    }

    /// Slashes provider `id` for `reason` (a share of its routing stake); `None`
    /// for a provider neither in memory nor bonded. A registered provider's bond
    /// shrinks by the amount at once (the bonds module then moves it to the
    /// treasury and confirms the bond with [`Registry::set_bond`]).
    pub fn slash(&self, id: &str, reason: Reason, detail: &str) -> Option<Slash> {
        let stake = match self.get(id) {
            Some(entry) => self.stake_of(&entry),
            None => {
                let bonded = self.bonds.lock().get(id).copied()?;
                bonded.0
            }
        };
        let s = slashing::slash(id, stake, reason, detail, self.unix_now());
        if !self.is_config(id)
            && let Some(bond) = self.bonds.lock().get_mut(id)
        {
            bond.0 = bond.0.saturating_sub(s.amount);
        }
        tracing::warn!(provider = %id, amount = %s.amount, reason = reason.as_str(), detail = %s.detail, "slashed");
        self.keep_slash(&s);
        {
            let mut v = self.unsaved.lock();
            v.push(s.clone());
        }
        Some(s)
    }

    /// Slashes made since the last call, for the store.
    pub fn take_unsaved_slashes(&self) -> Vec<Slash> {
        std::mem::take(&mut *self.unsaved.lock())
    }

    /// Puts slashes that failed to save back in the queue.
    pub fn requeue_slashes(&self, mut failed: Vec<Slash>) {
        {
            let mut v = self.unsaved.lock();
            failed.append(&mut v);
            *v = failed;
        }
    }

    /// Unix seconds on the registry's clock (a manual clock moves it in tests).
    pub fn unix_now(&self) -> u64 {
        self.unix_base.saturating_add(self.clock.now().as_secs())
    }

    /// Stores `verdict` on `entry` if it is still the registered entry for its id, and
    /// records a slash when the failure is the provider's fault.
    pub fn record_attestation(&self, entry: &Arc<ProviderEntry>, verdict: AttestationVerdict) {
        let current = self
            .get(&entry.info.id)
            .is_some_and(|e| Arc::ptr_eq(&e, entry));
        if !current {
            return;
        }
        if verdict.slashable {
            // Served weights that differ from the registered digests are their own
            // fault (5%); any other failed check is an invalid attestation (10%).
            let reason = if verdict.only_weights_differ() {
                Reason::ModelHashMismatch
            } else {
                Reason::InvalidAttestation
            };
            self.slash(&entry.info.id, reason, &verdict.reasons_text());
        } else if verdict.trusted {
            tracing::info!(provider = %entry.info.id, expires_at = verdict.expires_at, "attestation verified");
        } else {
            tracing::info!(provider = %entry.info.id, reasons = ?verdict.reasons, "attestation not trusted");
        }
        entry.with_state(|s| s.attestation = Some(verdict));
        self.mark_dirty(&entry.info.id);
    }

    /// The stored verdict of provider `id`.
    pub fn attestation(&self, id: &str) -> Option<AttestationVerdict> {
        self.get(id)?.with_state(|s| s.attestation.clone())
    }

    /// Slashes (1%) each registered provider silent for more than 24 hours, once per
    /// outage; returns the slashes made.
    pub fn slash_downtime(&self) -> Vec<Slash> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for e in self.all() {
            if e.info.from_config {
                continue;
            }
            let silent = e.with_state(|s| {
                let over = now.saturating_sub(s.last_heartbeat) > DOWNTIME && !s.downtime_slashed;
                if over {
                    s.downtime_slashed = true;
                }
                over.then_some(now.saturating_sub(s.last_heartbeat))
            });
            if let Some(for_how_long) = silent {
                let detail = format!("no heartbeat for {} h", for_how_long.as_secs() / 3600);
                out.extend(self.slash(&e.info.id, Reason::Downtime, &detail));
            }
        }
        out
    }

    /// The newest slashes (at most [`MAX_SLASHES_PER_PROVIDER`] per provider and
    /// [`MAX_SLASHES_KEPT`] in all), oldest first.
    pub fn slashes(&self) -> Vec<Slash> {
        self.slashes.lock().clone()
    }

    /// Registered providers (with a key, not banned) whose verdict is missing, or
    /// within the last tenth of its freshness window.
    pub fn attestation_due(&self) -> Vec<String> {
        let now = self.unix_now();
        let margin = self.attest_policy.freshness_secs / 10;
        self.all()
            .into_iter()
            .filter(|e| e.info.public_key.is_some() && !e.info.from_config)
            .filter(|e| !self.is_banned(&e.info.id))
            .filter(|e| {
                e.with_state(|s| match &s.attestation {
                    None => true,
                    Some(v) => now.saturating_add(margin) >= v.expires_at,
                })
            })
            .map(|e| e.info.id.clone())
            .collect()
    }

    pub fn now(&self) -> Duration {
        self.clock.now()
    }

    /// Adds or replaces a provider, keeping the live state of one it replaces. A
    /// config provider's id is never replaced by a registered one, and a banned id
    /// never comes back.
    pub fn upsert(&self, info: ProviderInfo) -> Result<Arc<ProviderEntry>, RegistryError> {
        let now = self.clock.now();
        if self.is_banned(&info.id) {
            return Err(RegistryError::Banned(info.id));
        }
        let mut map = self.providers.write();
        if !info.from_config && self.is_config(&info.id) {
            return Err(RegistryError::ConfigProvider(info.id));
        }
        let state = match map.get(&info.id) {
            Some(old) => life::renewed(old, &info, now)?,
            None => {
                if !info.from_config {
                    self.check_room(map.values())?;
                }
                // The operator vouches for configured endpoints.
                self.fresh_state(info.from_config, now)
            }
        };
        if info.from_config {
            self.config_ids.write().insert(info.id.clone());
        }
        let entry = Arc::new(ProviderEntry {
            info,
            in_flight: AtomicU32::new(0),
            state: Mutex::new(state),
        });
        map.insert(entry.info.id.clone(), entry.clone());
        drop(map);
        self.mark_dirty(&entry.info.id);
        Ok(entry)
    }

    fn check_fresh(&self, timestamp: u64, now_unix: u64) -> Result<(), RegistryError> {
        let skew = timestamp.abs_diff(now_unix);
        if skew > self.config.max_skew_s {
            Err(RegistryError::Stale(skew))
        } else {
            Ok(())
        }
    }

    /// Verifies a signed registration into provider info without applying it: the
    /// signature, the timestamp, the id (= DID of the key), the namespace, bans and
    /// the declared bounds. The endpoint's addresses are checked by the caller
    /// (`registry_bounds::check_endpoint`, which resolves names).
    pub fn prepare(&self, signed: &Signed, now_unix: u64) -> Result<ProviderInfo, RegistryError> {
        let req: RegisterRequest = serde_json::from_str(&signed.payload)
            .map_err(|e| RegistryError::Malformed(e.to_string()))?;
        let mut info = ProviderInfo::from_registration(req.clone(), false)?;
        let key = info
            .public_key
            .ok_or_else(|| RegistryError::Malformed("public_key is required".into()))?;
        verify(&key, REGISTER_DOMAIN, signed)?;
        self.check_fresh(req.timestamp, now_unix)?;
        let did = key.did();
        if info.id != did {
            return Err(RegistryError::IdNotKey {
                claimed: info.id,
                did,
            });
        }
        if self.is_config(&info.id) {
            return Err(RegistryError::ConfigProvider(info.id));
        }
        if self.is_banned(&info.id) {
            return Err(RegistryError::Banned(info.id));
        }
        self.config
            .bounds
            .check(&info)
            .map_err(RegistryError::OutOfBounds)?;
        // The declared stake counts for nothing: the routing stake is the bond.
        info.stake = 0;
        Ok(info)
    }

    /// Applies a registration [`Registry::prepare`]d.
    pub fn admit(&self, info: ProviderInfo) -> Result<RegisterResponse, RegistryError> {
        let entry = self.upsert(info)?;
        let status = self.status_of(&entry);
        tracing::info!(provider = %entry.info.id, endpoint = %entry.info.endpoint, models = entry.info.models.len(), "provider registered");
        Ok(RegisterResponse {
            provider_id: entry.info.id.clone(),
            status: status.as_str().to_owned(),
            heartbeat_interval_s: self.config.heartbeat_interval_s,
        })
    }

    /// Verifies and applies a signed registration (without the endpoint address
    /// check, which needs DNS: the HTTP handler does it between the two steps).
    pub fn register(
        &self,
        signed: &Signed,
        now_unix: u64,
    ) -> Result<RegisterResponse, RegistryError> {
        let info = self.prepare(signed, now_unix)?;
        self.admit(info)
    }

    /// Verifies and applies a signed heartbeat.
    pub fn heartbeat(
        &self,
        signed: &Signed,
        now_unix: u64,
    ) -> Result<HeartbeatResponse, RegistryError> {
        let hb: Heartbeat = serde_json::from_str(&signed.payload)
            .map_err(|e| RegistryError::Malformed(e.to_string()))?;
        let entry = self
            .get(&hb.provider_id)
            .ok_or_else(|| RegistryError::UnknownProvider(hb.provider_id.clone()))?;
        let key = entry
            .info
            .public_key
            .ok_or_else(|| RegistryError::UnknownProvider(hb.provider_id.clone()))?;
        verify(&key, HEARTBEAT_DOMAIN, signed)?;
        self.check_fresh(hb.timestamp, now_unix)?;
        let now = self.clock.now();
        let save = entry.with_state(|s| {
            s.last_heartbeat = now;
            s.downtime_slashed = false;
            let due = now.saturating_sub(s.seen_saved) >= SEEN_SAVE_EVERY;
            if due {
                s.seen_saved = now;
            }
            due
        });
        if save {
            self.mark_dirty(&entry.info.id);
        }
        Ok(HeartbeatResponse {
            status: self.status_of(&entry).as_str().to_owned(),
        })
    }

    pub fn get(&self, id: &str) -> Option<Arc<ProviderEntry>> {
        self.providers.read().get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<ProviderEntry>> {
        self.providers.read().values().cloned().collect()
    }

    /// How many providers in memory declared `model` (the model index's entry).
    pub fn serving_count(&self, model: &str) -> usize {
        self.providers.read().serving_count(model)
    }

    pub fn status_of(&self, entry: &ProviderEntry) -> Status {
        let now = self.clock.now();
        entry.with_state(|s| entry.status_at(s, &self.config.status, now))
    }

    /// Routing candidates for `model` for a request that does not ask for a TEE.
    pub fn candidates(
        &self,
        model: &str,
        asset: Asset,
        rates: &Rates,
    ) -> Vec<(Arc<ProviderEntry>, Candidate, Option<Quote>)> {
        self.candidates_for(model, asset, rates, false)
    }

    /// Whether `entry`'s stored verdict is trusted and fresh now (what TEE routing
    /// and the TEE premium follow; a declared TEE kind alone counts for nothing).
    pub fn tee_verified(&self, entry: &ProviderEntry) -> bool {
        let unix = self.unix_now();
        entry.with_state(|s| s.attestation.as_ref().is_some_and(|a| a.is_fresh(unix)))
    }

    /// Routing candidates for `model`, one per provider that declared it (read
    /// from the model index; `serves_model` false for one that cannot be priced in
    /// `asset`), priced in `asset`; `tee_requested`: the request
    /// asks for a TEE. The TEE premium is in a candidate's quote only when the
    /// request asks for a TEE or the provider registered the model `tee_required`,
    /// and the provider's verdict is trusted and fresh ([`pricing::tee_applies`]).
    pub fn candidates_for(
        &self,
        model: &str,
        asset: Asset,
        rates: &Rates,
        tee_requested: bool,
    ) -> Vec<(Arc<ProviderEntry>, Candidate, Option<Quote>)> {
        let now = self.clock.now();
        let unix = self.unix_now();
        // Only the providers that declared the model: O(candidates), not O(registry).
        let serving = self.providers.read().serving(model);
        serving
            .into_iter()
            .map(|e| {
                let m = e.info.model(model);
                let tee_required = m.is_some_and(|m| m.info.tee_required);
                let fresh =
                    e.with_state(|s| s.attestation.as_ref().is_some_and(|a| a.is_fresh(unix)));
                let premium = pricing::tee_applies(tee_requested || tee_required, fresh);
                let quote = m.and_then(|m| e.quote_tee(m, asset, rates, premium).ok());
                let (status, admits, latency, ok, total, verified, reached) = e.with_state(|s| {
                    (
                        e.status_at(s, &self.config.status, now),
                        s.breaker.admits(now),
                        s.ema_latency_us,
                        s.successful,
                        s.total,
                        s.attestation.as_ref().is_some_and(|a| a.is_fresh(unix)),
                        s.reached,
                    )
                });
                let cand = Candidate {
                    provider: e.info.id.clone(),
                    serves_model: m.is_some() && quote.is_some(),
                    category: m
                        .map(|m| m.info.category)
                        .unwrap_or(tenzro_models::api::ModelCategory::Custom),
                    status,
                    reachable: reached,
                    unbonding: !e.info.from_config && self.bond(&e.info.id).1,
                    breaker_admits: admits,
                    // Only evidence verified by the gateway counts, never the declaration.
                    tee: verified,
                    tee_required,
                    stake: self.stake_of(&e),
                    price: quote
                        .map(|q| {
                            pricing::mul_div_floor(q.base_price, q.multiplier, 1_000_000)
                                .unwrap_or(u128::MAX)
                        })
                        .unwrap_or(u128::MAX),
                    latency_us: latency,
                    successes: ok,
                    total,
                };
                (e, cand, quote)
            })
            .collect()
    }

    pub fn views(&self) -> Vec<ProviderView> {
        let now = self.clock.now();
        let unix = self.unix_now();
        self.all()
            .iter()
            .map(|e| {
                e.with_state(|s| ProviderView {
                    id: e.info.id.clone(),
                    endpoint: e.info.endpoint.clone(),
                    status: e.status_at(s, &self.config.status, now),
                    breaker: s.breaker.state(now).as_str(),
                    total: s.total,
                    successful: s.successful,
                    failed: s.failed,
                    ema_latency_ms: s.ema_latency_us.map(|u| u as f64 / 1000.0),
                    last_heartbeat_s_ago: (!e.info.from_config)
                        .then(|| now.saturating_sub(s.last_heartbeat).as_secs()),
                    stake: self.stake_of(e).to_string(),
                    tee: e.info.tee.as_str().to_owned(),
                    in_flight: e.in_flight.load(Ordering::Relaxed),
                    models: e.info.models.iter().map(|m| m.info.id.clone()).collect(),
                    tee_verified: s.attestation.as_ref().is_some_and(|a| a.is_fresh(unix)),
                    attestation: s.attestation.clone(),
                    reached: s.reached,
                    unbonding: !e.info.from_config && self.bond(&e.info.id).1,
                    from_config: e.info.from_config,
                })
            })
            .collect()
    }
}

fn verify(key: &PublicKey, domain: &[u8], signed: &Signed) -> Result<(), RegistryError> {
    let sig = Signature::from_hex(&signed.signature).map_err(|_| RegistryError::BadSignature)?;
    if key.verify(&Signed::signed_bytes(domain, &signed.payload), &sig) {
        Ok(())
    } else {
        Err(RegistryError::BadSignature)
    }
}

#[path = "registry_life.rs"]
mod life;

#[path = "registry_slashes.rs"]
mod slashes;

#[path = "registry_shared.rs"]
mod shared;
pub use shared::Applied;
pub use slashes::{MAX_SLASHES_KEPT, MAX_SLASHES_PER_PROVIDER};

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
