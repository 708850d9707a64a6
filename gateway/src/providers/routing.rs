//! Choosing providers (whitepaper §4): filter the pool, then order it by a strategy.
//!
//! The result is an ordered list: the first is called, the rest are the failover
//! order. Every ordering ends with the provider id, so ties are deterministic.
//! Scores are integers (ppm) for the same reason.

use std::cmp::Reverse;
use std::fmt;

use serde::{Deserialize, Serialize};
use tenzro_models::api::ModelCategory;

use crate::pricing::ONE;
use crate::providers::status::Status;

/// One (provider, model) pair as routing sees it: a snapshot, no locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub provider: String,
    /// Whether the provider serves the requested model; the fields below describe that
    /// model's entry when it does.
    pub serves_model: bool,
    pub category: ModelCategory,
    pub status: Status,
    /// The gateway has reached the provider's endpoint since it registered.
    pub reachable: bool,
    /// The provider's bond is unbonding: no new requests.
    pub unbonding: bool,
    pub breaker_admits: bool,
    /// The provider's TEE evidence was verified by the gateway and is still fresh (a
    /// declared TEE kind alone does not set this).
    pub tee: bool,
    /// The provider registered this model with `tee_required`: it is routed only
    /// while `tee` holds, whether or not the request asks for a TEE.
    pub tee_required: bool,
    pub stake: u128,
    /// Effective price per token for comparison: base price × multipliers, in
    /// 10^-12 base units.
    pub price: u128,
    /// EMA latency in microseconds; `None` until measured (counts as fastest, so a new
    /// provider gets tried).
    pub latency_us: Option<u64>,
    pub successes: u64,
    pub total: u64,
}

impl Candidate {
    /// successes / total in ppm; 0.5 when there is no history yet.
    pub fn reputation_ppm(&self) -> u64 {
        if self.total == 0 {
            return 500_000;
        }
        u64::try_from(
            u128::from(self.successes.min(self.total)) * 1_000_000 / u128::from(self.total),
        )
        .unwrap_or(1_000_000)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    LowestPrice,
    LowestLatency,
    HighestReputation,
    Random,
    #[default]
    Weighted,
}

/// Weights of the weighted score, in ppm (0.4 = 400_000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    pub price: u64,
    pub latency: u64,
    pub reputation: u64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            price: 400_000,
            latency: 300_000,
            reputation: 300_000,
        }
    }
}

impl Weights {
    /// From decimal weights (config or request); each clamped to 0..=1.
    pub fn from_f64(price: f64, latency: f64, reputation: f64) -> Self {
        let ppm = |w: f64| {
            if w.is_finite() {
                (w.clamp(0.0, 1.0) * 1e6).round() as u64
            } else {
                0
            }
        };
        Weights {
            price: ppm(price),
            latency: ppm(latency),
            reputation: ppm(reputation),
        }
    }
}

/// Minimum stake per model category (§3.2), in base units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StakeMinimums {
    pub llm: u128,
    pub image_gen: u128,
    pub speech: u128,
    pub embedding: u128,
    pub custom: u128,
}

impl Default for StakeMinimums {
    fn default() -> Self {
        StakeMinimums {
            llm: 100_000 * ONE,
            image_gen: 50_000 * ONE,
            speech: 25_000 * ONE,
            embedding: 25_000 * ONE,
            custom: 10_000 * ONE,
        }
    }
}

impl StakeMinimums {
    pub fn for_category(&self, c: ModelCategory) -> u128 {
        match c {
            ModelCategory::Llm => self.llm,
            ModelCategory::ImageGen => self.image_gen,
            ModelCategory::Speech => self.speech,
            ModelCategory::Embedding => self.embedding,
            ModelCategory::Custom => self.custom,
        }
    }
}

/// The filters, in the order they apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Model,
    Status,
    Reachable,
    Breaker,
    Tee,
    Unbonding,
    Stake,
}

impl Filter {
    pub fn as_str(self) -> &'static str {
        match self {
            Filter::Model => "model",
            Filter::Status => "status",
            Filter::Reachable => "reachable",
            Filter::Unbonding => "unbonding",
            Filter::Breaker => "circuit_breaker",
            Filter::Tee => "tee",
            Filter::Stake => "stake",
        }
    }
}

/// No provider fits; `filter` is the one that removed the last candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoProvider {
    pub model: String,
    pub filter: Filter,
    /// How many candidates the emptying filter removed.
    pub removed: usize,
}

impl fmt::Display for NoProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, n) = (&self.model, self.removed);
        match self.filter {
            Filter::Model => write!(f, "no live provider serves model '{m}'"),
            Filter::Status => write!(
                f,
                "no provider for '{m}': all {n} serving it are Inactive or Banned"
            ),
            Filter::Reachable => write!(
                f,
                "no provider for '{m}': the gateway has not yet reached any of the {n} remaining (new registrations enter routing once their endpoint answers)"
            ),
            Filter::Unbonding => write!(
                f,
                "no provider for '{m}': all {n} remaining are unbonding their stake"
            ),
            Filter::Breaker => write!(
                f,
                "no provider for '{m}': the circuit breakers of all {n} remaining are open"
            ),
            Filter::Tee => write!(
                f,
                "no provider for '{m}' has TEE evidence the gateway verified ({n} remaining have no trusted, fresh verdict)"
            ),
            Filter::Stake => write!(
                f,
                "no provider for '{m}' has the minimum stake for its category ({n} below it)"
            ),
        }
    }
}

/// What the request asks of routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRequest<'a> {
    pub model: &'a str,
    pub tee_required: bool,
    pub strategy: Strategy,
    pub weights: Weights,
    /// Score multiplier for Degraded providers in the weighted strategy (ppm).
    pub degraded_penalty: u64,
    /// Seed of the random strategy.
    pub seed: u64,
}

/// A pool filter: true keeps the candidate.
type Keep<'a> = &'a dyn Fn(&Candidate) -> bool;

/// Filters `pool` and orders what is left; returns indexes into `pool`.
pub fn route(
    pool: &[Candidate],
    req: &RouteRequest<'_>,
    stakes: &StakeMinimums,
) -> Result<Vec<usize>, NoProvider> {
    let filters: [(Filter, Keep<'_>); 7] = [
        (Filter::Model, &|c| c.serves_model),
        (Filter::Status, &|c| c.status.routable()),
        (Filter::Reachable, &|c| c.reachable),
        (Filter::Breaker, &|c| c.breaker_admits),
        (Filter::Tee, &|c| {
            c.tee || !(req.tee_required || c.tee_required)
        }),
        (Filter::Unbonding, &|c| !c.unbonding),
        (Filter::Stake, &|c| {
            c.stake >= stakes.for_category(c.category)
        }),
    ];
    let mut left: Vec<usize> = (0..pool.len()).collect();
    for (filter, keep) in filters {
        let before = left.len();
        left.retain(|&i| keep(&pool[i]));
        if left.is_empty() {
            return Err(NoProvider {
                model: req.model.to_owned(),
                filter,
                removed: before,
            });
        }
    }
    order(pool, &mut left, req);
    Ok(left)
}

fn degraded(c: &Candidate) -> bool {
    c.status == Status::Degraded
}

fn order(pool: &[Candidate], idx: &mut [usize], req: &RouteRequest<'_>) {
    let id = |i: usize| pool[i].provider.as_str();
    match req.strategy {
        Strategy::LowestPrice => {
            idx.sort_by(|&a, &b| {
                let key = |i: usize| (degraded(&pool[i]), pool[i].price);
                key(a).cmp(&key(b)).then_with(|| id(a).cmp(id(b)))
            });
        }
        Strategy::LowestLatency => {
            idx.sort_by(|&a, &b| {
                let key = |i: usize| (degraded(&pool[i]), pool[i].latency_us.unwrap_or(0));
                key(a).cmp(&key(b)).then_with(|| id(a).cmp(id(b)))
            });
        }
        Strategy::HighestReputation => {
            idx.sort_by(|&a, &b| {
                let key = |i: usize| (degraded(&pool[i]), Reverse(pool[i].reputation_ppm()));
                key(a).cmp(&key(b)).then_with(|| id(a).cmp(id(b)))
            });
        }
        Strategy::Random => {
            // Sort first so the shuffle depends only on the seed, not on pool order.
            idx.sort_by(|&a, &b| {
                degraded(&pool[a])
                    .cmp(&degraded(&pool[b]))
                    .then_with(|| id(a).cmp(id(b)))
            });
            let active = idx.iter().filter(|&&i| !degraded(&pool[i])).count();
            let mut rng = SplitMix(req.seed);
            let (head, tail) = idx.split_at_mut(active);
            shuffle(head, &mut rng);
            shuffle(tail, &mut rng);
        }
        Strategy::Weighted => {
            let scores = weighted_scores(pool, idx, req);
            let mut pairs: Vec<(usize, u128)> = idx.iter().copied().zip(scores).collect();
            pairs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| id(a.0).cmp(id(b.0))));
            for (slot, (i, _)) in idx.iter_mut().zip(pairs) {
                *slot = i;
            }
        }
    }
}

/// `w_p(1 - norm_price) + w_l(1 - norm_latency) + w_r·reputation`, min-max
/// normalised over the filtered pool, each term in ppm × ppm; Degraded providers'
/// scores are multiplied by the penalty.
pub fn weighted_scores(pool: &[Candidate], idx: &[usize], req: &RouteRequest<'_>) -> Vec<u128> {
    const M: u128 = 1_000_000;
    let prices: Vec<u128> = idx.iter().map(|&i| pool[i].price).collect();
    let lats: Vec<u128> = idx
        .iter()
        .map(|&i| u128::from(pool[i].latency_us.unwrap_or(0)))
        .collect();
    let norm = |v: u128, all: &[u128]| -> u128 {
        let (lo, hi) = (
            all.iter().copied().min().unwrap_or(0),
            all.iter().copied().max().unwrap_or(0),
        );
        if hi == lo {
            0
        } else {
            (v - lo).saturating_mul(M) / (hi - lo)
        }
    };
    let w = req.weights;
    idx.iter()
        .enumerate()
        .map(|(k, &i)| {
            let c = &pool[i];
            let s = u128::from(w.price) * (M - norm(prices[k], &prices))
                + u128::from(w.latency) * (M - norm(lats[k], &lats))
                + u128::from(w.reputation) * u128::from(c.reputation_ppm());
            if degraded(c) {
                s * u128::from(req.degraded_penalty) / M
            } else {
                s
            }
        })
        .collect()
}

/// SplitMix64: small, seedable, good enough to spread load.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn shuffle(v: &mut [usize], rng: &mut SplitMix) {
    for i in (1..v.len()).rev() {
        let j = usize::try_from(rng.next() % (i as u64 + 1)).unwrap_or(0);
        v.swap(i, j);
    }
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
