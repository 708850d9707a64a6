//! The in-process fleet: `n` providers with their own keys register with the
//! gateway's real [`Registry`] (signed registrations, verified), are reached, get
//! a bond, and send signed heartbeats on a simulated clock; some fail (no
//! heartbeats, failed requests that open their breakers) and recover. Every
//! simulated second the registry's marked rows go to a real store through
//! `store::registry::save`, as the gateway's persist loop does, and every
//! [`FLUSH_EVERY`] s the heartbeats heard since go in one batched liveness write
//! (`Store::flush_seen`), as the cluster sync loop does.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenzro_attest::ProviderKey;
use tenzro_gateway::clock::ManualClock;
use tenzro_gateway::pricing::{Asset, ONE, Rates};
use tenzro_gateway::providers::registry::{Outcome, Registry, RegistryConfig};
use tenzro_gateway::providers::routing::{self, Candidate, RouteRequest, Strategy, Weights};
use tenzro_gateway::store::Store;
use tenzro_models::api::{
    HEARTBEAT_DOMAIN, Heartbeat, ModelCategory, ModelInfo, REGISTER_DOMAIN, RegisterRequest, Signed,
};

/// Seconds between a provider's heartbeats (the registry's default asks for 30).
pub const HEARTBEAT_EVERY: u64 = 30;
/// Every this many providers, one fails (5 %).
const FAIL_EVERY: usize = 20;
/// How long a failing provider stays down, in simulated seconds.
const DOWN_FOR: u64 = 120;
/// Seconds between two batched liveness writes (`[cluster] reconcile_s`'s default).
pub const FLUSH_EVERY: u64 = 5;

/// What one run measures (all durations in microseconds).
#[derive(Debug, Default)]
pub struct Figures {
    pub register_us: Vec<f64>,
    pub heartbeat_us: Vec<f64>,
    pub route_us: Vec<f64>,
    pub scan_us: Vec<f64>,
    pub route_failures: usize,
    /// Rows written per simulated second while the fleet registers.
    pub join_rows: Vec<usize>,
    /// Rows written per simulated second afterwards (heartbeats, failures).
    pub steady_rows: Vec<usize>,
    /// Wall time of each save (µs).
    pub save_us: Vec<f64>,
    /// Liveness rows in each batched write (`Store::flush_seen`), and its
    /// statements and wall time (µs).
    pub seen_rows: Vec<usize>,
    pub seen_statements: usize,
    pub flush_us: Vec<f64>,
    pub heartbeats: usize,
    pub rss_before_kb: u64,
    pub rss_fleet_kb: u64,
    pub hwm_kb: u64,
}

pub struct Sim {
    pub registry: Registry,
    clock: Arc<ManualClock>,
    store: Store,
    keys: Vec<ProviderKey>,
    ids: Vec<String>,
    models: usize,
    rates: Rates,
    seed: u64,
    /// Heartbeats heard since the last batched write (provider -> Unix second),
    /// as `cluster::sync::Shared::heard` keeps them.
    heard: HashMap<String, u64>,
}

fn model(id: String) -> ModelInfo {
    ModelInfo {
        id,
        name: None,
        version: None,
        category: ModelCategory::Llm,
        modality: None,
        price_per_token: "1000".into(),
        max_context: Some(4096),
        parameters: None,
        formats: vec![],
        tee_required: false,
        weight_sha256: None,
    }
}

fn sign(key: &ProviderKey, domain: &[u8], payload: String) -> Signed {
    let signature = key.sign(&Signed::signed_bytes(domain, &payload)).to_hex();
    Signed { payload, signature }
}

/// The model provider `i` serves: `per_model` providers per model.
pub fn model_of(i: usize, models: usize) -> String {
    format!("model-{}", i % models.max(1))
}

impl Sim {
    pub fn new(n: usize, per_model: usize, store: Store) -> Self {
        let clock = ManualClock::new();
        let config = RegistryConfig {
            max_registered: n.max(RegistryConfig::default().max_registered),
            ..RegistryConfig::default()
        };
        let registry = Registry::new(config, clock.clone());
        let keys: Vec<ProviderKey> = (0..n)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                ProviderKey::from_seed(&seed)
            })
            .collect();
        let ids = keys.iter().map(ProviderKey::did).collect();
        Sim {
            registry,
            clock,
            store,
            keys,
            ids,
            models: (n / per_model.max(1)).max(1),
            rates: Rates::default(),
            seed: 0x5eed,
            heard: HashMap::new(),
        }
    }

    pub fn models(&self) -> usize {
        self.models
    }

    fn register(&self, i: usize, f: &mut Figures) -> anyhow::Result<()> {
        let key = &self.keys[i];
        let req = RegisterRequest {
            provider_id: self.ids[i].clone(),
            endpoint: format!(
                "http://10.{}.{}.{}:8000",
                i >> 16 & 255,
                i >> 8 & 255,
                i & 255
            ),
            public_key: key.public_key_hex(),
            models: vec![model(model_of(i, self.models))],
            stake: "0".into(),
            tee: "none".into(),
            max_concurrency: Some(8),
            heartbeat_interval_s: None,
            timestamp: self.registry.unix_now(),
        };
        let signed = sign(key, REGISTER_DOMAIN, serde_json::to_string(&req)?);
        let t0 = Instant::now();
        self.registry
            .register(&signed, self.registry.unix_now())
            .map_err(|e| anyhow::anyhow!("registration {i}: {e}"))?;
        f.register_us.push(t0.elapsed().as_secs_f64() * 1e6);
        // The gateway's reach probe answered, and the owner bonded the minimum.
        if let Some(e) = self.registry.get(&self.ids[i]) {
            self.registry.mark_reached(&e);
        }
        self.registry.set_bond(&self.ids[i], 100_000 * ONE, false);
        Ok(())
    }

    fn heartbeat(&mut self, i: usize, f: &mut Figures) -> anyhow::Result<()> {
        let hb = Heartbeat {
            provider_id: self.ids[i].clone(),
            timestamp: self.registry.unix_now(),
            in_flight: Some(0),
        };
        let signed = sign(&self.keys[i], HEARTBEAT_DOMAIN, serde_json::to_string(&hb)?);
        let t0 = Instant::now();
        self.registry
            .heartbeat(&signed, self.registry.unix_now())
            .map_err(|e| anyhow::anyhow!("heartbeat {i}: {e}"))?;
        f.heartbeat_us.push(t0.elapsed().as_secs_f64() * 1e6);
        f.heartbeats += 1;
        self.heard
            .insert(self.ids[i].clone(), self.registry.unix_now());
        Ok(())
    }

    /// One routing decision as `proxy::admit::plan` makes it: the model's
    /// candidates from the registry, then filter and order.
    fn route(&mut self, model: &str, f: &mut Figures) {
        self.seed = self
            .seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let t0 = Instant::now();
        let pool = self
            .registry
            .candidates_for(model, Asset::Tnzo, &self.rates, false);
        let cands: Vec<Candidate> = pool.iter().map(|(_, c, _)| c.clone()).collect();
        let req = RouteRequest {
            model,
            tee_required: false,
            strategy: Strategy::Weighted,
            weights: Weights::default(),
            degraded_penalty: 500_000,
            seed: self.seed,
        };
        let order = routing::route(&cands, &req, &self.registry.config.stakes);
        f.route_us.push(t0.elapsed().as_secs_f64() * 1e6);
        if order.is_err() {
            f.route_failures += 1;
        }
        black_box(order.ok());
    }

    /// The shape of routing before the model index: every provider in memory is
    /// read (its model list, status, stake and verdict) to build a candidate. A
    /// lower bound of the old cost (it also priced and cloned each one).
    fn scan(&self, model: &str, f: &mut Figures) {
        let t0 = Instant::now();
        let mut serving = 0usize;
        for e in self.registry.all() {
            let m = e.info.model(model).is_some();
            let status = self.registry.status_of(&e);
            let stake = self.registry.stake_of(&e);
            let tee = self.registry.tee_verified(&e);
            serving += usize::from(black_box((m, status, stake, tee)).0);
        }
        f.scan_us.push(t0.elapsed().as_secs_f64() * 1e6);
        black_box(serving);
    }

    /// The batched liveness write of the heartbeats heard since the last one.
    async fn flush(&mut self, f: &mut Figures) -> anyhow::Result<()> {
        let heard: Vec<(String, u64)> = std::mem::take(&mut self.heard).into_iter().collect();
        let t0 = Instant::now();
        self.store.flush_seen(&heard).await?;
        f.flush_us.push(t0.elapsed().as_secs_f64() * 1e6);
        f.seen_statements += heard.len().div_ceil(500);
        f.seen_rows.push(heard.len());
        Ok(())
    }

    async fn save(&self, f: &mut Figures) -> anyhow::Result<usize> {
        let t0 = Instant::now();
        let rows = tenzro_gateway::store::registry::save(&self.registry, &self.store).await?;
        f.save_us.push(t0.elapsed().as_secs_f64() * 1e6);
        Ok(rows)
    }

    /// Whether provider `i` is down at simulated second `t` (5 % of them, each
    /// for [`DOWN_FOR`] s at its own time after the fleet joined).
    fn down(&self, i: usize, t: u64) -> Option<u64> {
        if !i.is_multiple_of(FAIL_EVERY) {
            return None;
        }
        let from = 2 * HEARTBEAT_EVERY + (i as u64 * 7) % 240;
        (t >= from && t < from + DOWN_FOR).then_some(t - from)
    }

    /// The run: the fleet joins over one heartbeat interval, then `secs`
    /// simulated seconds of heartbeats, failures, recoveries and routing.
    pub async fn run(
        &mut self,
        secs: u64,
        decisions: usize,
        scans: usize,
    ) -> anyhow::Result<Figures> {
        let n = self.ids.len();
        let mut f = Figures {
            rss_before_kb: crate::rss_kb("VmRSS"),
            ..Figures::default()
        };
        let per_tick = n.div_ceil(HEARTBEAT_EVERY as usize);
        for t in 0..HEARTBEAT_EVERY {
            let lo = (t as usize * per_tick).min(n);
            for i in lo..(lo + per_tick).min(n) {
                self.register(i, &mut f)?;
            }
            let rows = self.save(&mut f).await?;
            f.join_rows.push(rows);
            self.clock.advance(Duration::from_secs(1));
        }
        f.rss_fleet_kb = crate::rss_kb("VmRSS");
        for t in HEARTBEAT_EVERY..HEARTBEAT_EVERY + secs {
            self.tick(t, &mut f)?;
            for k in 0..decisions {
                let m = model_of((t as usize * decisions + k) * 7919, self.models);
                self.route(&m, &mut f);
            }
            for k in 0..scans {
                self.scan(&model_of(t as usize + k, self.models), &mut f);
            }
            let rows = self.save(&mut f).await?;
            f.steady_rows.push(rows);
            if t.is_multiple_of(FLUSH_EVERY) {
                self.flush(&mut f).await?;
            }
            self.clock.advance(Duration::from_secs(1));
        }
        f.hwm_kb = crate::rss_kb("VmHWM");
        Ok(f)
    }

    /// One simulated second: heartbeats from the providers whose turn it is and
    /// that are up; a provider going down fails its requests (its breaker opens),
    /// one coming back succeeds again.
    fn tick(&mut self, t: u64, f: &mut Figures) -> anyhow::Result<()> {
        let now = self.registry.now();
        for i in 0..self.ids.len() {
            match self.down(i, t) {
                Some(0) => {
                    if let Some(e) = self.registry.get(&self.ids[i]) {
                        for _ in 0..5 {
                            e.record(now, Outcome::Failure);
                        }
                    }
                }
                Some(_) => {}
                None => {
                    if self.down(i, t.saturating_sub(1)).is_some()
                        && let Some(e) = self.registry.get(&self.ids[i])
                    {
                        e.record(
                            now,
                            Outcome::Success {
                                latency: Duration::from_millis(40),
                            },
                        );
                    }
                    if (t + i as u64).is_multiple_of(HEARTBEAT_EVERY) {
                        self.heartbeat(i, f)?;
                    }
                }
            }
        }
        Ok(())
    }
}
