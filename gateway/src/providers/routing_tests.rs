#![expect(clippy::unwrap_used, reason = "tests")]

use super::Strategy;
use super::*;
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

fn cand(id: &str, price: u128, latency: Option<u64>, ok: u64, total: u64) -> Candidate {
    Candidate {
        provider: id.to_owned(),
        serves_model: true,
        category: ModelCategory::Llm,
        status: Status::Active,
        reachable: true,
        unbonding: false,
        breaker_admits: true,
        tee: false,
        tee_required: false,
        stake: 100_000 * ONE,
        price,
        latency_us: latency,
        successes: ok,
        total,
    }
}

fn req(strategy: Strategy) -> RouteRequest<'static> {
    RouteRequest {
        model: "m",
        tee_required: false,
        strategy,
        weights: Weights::default(),
        degraded_penalty: 500_000,
        seed: 7,
    }
}

/// Routes and returns the provider ids in order.
fn check(pool: &[Candidate], r: &RouteRequest<'_>, expect: &[&str]) {
    let got: Vec<&str> = route(pool, r, &StakeMinimums::default())
        .unwrap()
        .into_iter()
        .map(|i| pool[i].provider.as_str())
        .collect();
    assert_eq!(got, expect, "{:?}", r.strategy);
}

fn pool3() -> Vec<Candidate> {
    vec![
        cand("a", 30, Some(5_000), 90, 100),
        cand("b", 10, Some(20_000), 50, 100),
        cand("c", 20, Some(1_000), 99, 100),
    ]
}

#[test]
fn each_strategy_orders_the_pool() {
    let p = pool3();
    check(&p, &req(Strategy::LowestPrice), &["b", "c", "a"]);
    check(&p, &req(Strategy::LowestLatency), &["c", "a", "b"]);
    check(&p, &req(Strategy::HighestReputation), &["c", "a", "b"]);
    // Weighted (0.4/0.3/0.3): a = .4·0 + .3·(1-4/19) + .3·.9; b = .4 + 0 + .15;
    // c = .4·.5 + .3 + .297.
    check(&p, &req(Strategy::Weighted), &["c", "b", "a"]);
}

#[test]
fn weights_can_be_overridden() {
    let p = pool3();
    let mut r = req(Strategy::Weighted);
    r.weights = Weights::from_f64(1.0, 0.0, 0.0);
    check(&p, &r, &["b", "c", "a"]);
    r.weights = Weights::from_f64(0.0, 1.0, 0.0);
    check(&p, &r, &["c", "a", "b"]);
    r.weights = Weights::from_f64(0.0, 0.0, 1.0);
    check(&p, &r, &["c", "a", "b"]);
}

#[test]
fn ties_break_by_provider_id() {
    let p = vec![
        cand("z", 10, None, 0, 0),
        cand("m", 10, None, 0, 0),
        cand("a", 10, None, 0, 0),
    ];
    for s in [
        Strategy::LowestPrice,
        Strategy::LowestLatency,
        Strategy::HighestReputation,
        Strategy::Weighted,
    ] {
        check(&p, &req(s), &["a", "m", "z"]);
    }
}

#[test]
fn degraded_ranks_last_or_is_penalised() {
    let mut p = pool3();
    p[1].status = Status::Degraded; // b is the cheapest.
    check(&p, &req(Strategy::LowestPrice), &["c", "a", "b"]);
    check(&p, &req(Strategy::Weighted), &["c", "a", "b"]);
}

#[test]
fn random_depends_only_on_the_seed() {
    let p: Vec<Candidate> = (0..8)
        .map(|i| cand(&format!("p{i}"), 1, None, 0, 0))
        .collect();
    let mut rev = p.clone();
    rev.reverse();
    let a = route(&p, &req(Strategy::Random), &StakeMinimums::default()).unwrap();
    let b = route(&rev, &req(Strategy::Random), &StakeMinimums::default()).unwrap();
    let ids = |pool: &[Candidate], v: Vec<usize>| {
        v.into_iter()
            .map(|i| pool[i].provider.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&p, a), ids(&rev, b));
    // Different seeds give different orders at least sometimes.
    let orders: std::collections::BTreeSet<Vec<usize>> = (0..20)
        .map(|s| {
            route(
                &p,
                &RouteRequest {
                    seed: s,
                    ..req(Strategy::Random)
                },
                &StakeMinimums::default(),
            )
            .unwrap()
        })
        .collect();
    assert!(orders.len() > 10);
}

fn check_empty(pool: &[Candidate], tee: bool, filter: Filter, removed: usize) {
    let r = RouteRequest {
        tee_required: tee,
        ..req(Strategy::Weighted)
    };
    let err = route(pool, &r, &StakeMinimums::default()).unwrap_err();
    assert_eq!((err.filter, err.removed), (filter, removed), "{err}");
    assert!(!err.to_string().is_empty());
}

#[test]
fn filters_report_which_one_emptied_the_pool() {
    check_empty(&[], false, Filter::Model, 0);
    let mut p = pool3();
    p.iter_mut().for_each(|c| c.serves_model = false);
    check_empty(&p, false, Filter::Model, 3);

    let mut p = pool3();
    p[0].status = Status::Inactive;
    p[1].status = Status::Banned;
    p[2].serves_model = false;
    check_empty(&p, false, Filter::Status, 2);

    let mut p = pool3();
    p[0].status = Status::Inactive;
    p[1].breaker_admits = false;
    p[2].breaker_admits = false;
    check_empty(&p, false, Filter::Breaker, 2);

    check_empty(&pool3(), true, Filter::Tee, 3);

    // Not yet reached (a registration whose endpoint never answered).
    let mut p = pool3();
    p[0].status = Status::Inactive;
    p[1].reachable = false;
    p[2].reachable = false;
    check_empty(&p, false, Filter::Reachable, 2);

    // Unbonding providers get no new requests, whatever their stake.
    let mut p = pool3();
    p.iter_mut().for_each(|c| c.unbonding = true);
    check_empty(&p, false, Filter::Unbonding, 3);

    let mut p = pool3();
    p.iter_mut().for_each(|c| c.stake = 99_999 * ONE);
    check_empty(&p, false, Filter::Stake, 3);
    // An embedding model needs less stake.
    p.iter_mut()
        .for_each(|c| c.category = ModelCategory::Embedding);
    assert_eq!(
        route(&p, &req(Strategy::Weighted), &StakeMinimums::default())
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn tee_filter_keeps_tee_providers() {
    let mut p = pool3();
    p[0].tee = true;
    let r = RouteRequest {
        tee_required: true,
        ..req(Strategy::LowestPrice)
    };
    check(&p, &r, &["a"]);
}

#[test]
fn stake_minimums_by_category() {
    let s = StakeMinimums::default();
    let tnzo = |n: u128| n * ONE;
    assert_eq!(s.for_category(ModelCategory::Llm), tnzo(100_000));
    assert_eq!(s.for_category(ModelCategory::ImageGen), tnzo(50_000));
    assert_eq!(s.for_category(ModelCategory::Embedding), tnzo(25_000));
    assert_eq!(s.for_category(ModelCategory::Speech), tnzo(25_000));
    assert_eq!(s.for_category(ModelCategory::Custom), tnzo(10_000));
}

fn arb_candidate() -> impl proptest::strategy::Strategy<Value = Candidate> {
    (
        0u8..12,
        any::<bool>(),
        prop_oneof![
            Just(Status::Active),
            Just(Status::Degraded),
            Just(Status::Inactive),
            Just(Status::Banned)
        ],
        any::<bool>(),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        0u128..200_000,
        0u128..1_000,
        proptest::option::of(0u64..100_000),
        (0u64..100, 0u64..100),
    )
        .prop_map(
            |(
                id,
                serves,
                status,
                breaker,
                (tee, reachable, unbonding),
                stake,
                price,
                lat,
                (ok, extra),
            )| Candidate {
                provider: format!("p{id}"),
                serves_model: serves,
                category: ModelCategory::Llm,
                status,
                reachable,
                unbonding,
                breaker_admits: breaker,
                tee,
                tee_required: false,
                stake: stake * ONE,
                price,
                latency_us: lat,
                successes: ok,
                total: ok + extra,
            },
        )
}

fn arb_strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop_oneof![
        Just(Strategy::LowestPrice),
        Just(Strategy::LowestLatency),
        Just(Strategy::HighestReputation),
        Just(Strategy::Random),
        Just(Strategy::Weighted),
    ]
}

proptest! {
    /// The result is exactly the candidates that pass every filter, each once.
    #[test]
    fn route_returns_exactly_the_eligible(
        pool in proptest::collection::vec(arb_candidate(), 0..12),
        strategy in arb_strategy(), tee in any::<bool>(), seed in any::<u64>(),
    ) {
        let r = RouteRequest { tee_required: tee, strategy, seed, ..req(strategy) };
        let stakes = StakeMinimums::default();
        let eligible: std::collections::BTreeSet<usize> = (0..pool.len()).filter(|&i| {
            let c = &pool[i];
            c.serves_model && c.status.routable() && c.reachable && !c.unbonding && c.breaker_admits && (c.tee || !tee) && c.stake >= stakes.llm
        }).collect();
        match route(&pool, &r, &stakes) {
            Ok(order) => {
                let got: std::collections::BTreeSet<usize> = order.iter().copied().collect();
                prop_assert_eq!(got.len(), order.len());
                prop_assert_eq!(got, eligible);
            }
            Err(e) => {
                prop_assert!(eligible.is_empty());
                prop_assert!(e.removed > 0 || (pool.is_empty() && e.filter == Filter::Model));
            }
        }
    }

    /// Shuffling the input never changes the chosen order of distinct providers.
    #[test]
    fn order_does_not_depend_on_input_order(
        pool in proptest::collection::vec(arb_candidate(), 1..10),
        strategy in arb_strategy(), seed in any::<u64>(),
    ) {
        let mut seen = std::collections::BTreeSet::new();
        let pool: Vec<Candidate> = pool.into_iter().filter(|c| seen.insert(c.provider.clone())).collect();
        let mut rev = pool.clone();
        rev.reverse();
        let r = RouteRequest { seed, ..req(strategy) };
        let ids = |p: &[Candidate]| route(p, &r, &StakeMinimums::default())
            .map(|v| v.into_iter().map(|i| p[i].provider.clone()).collect::<Vec<_>>());
        prop_assert_eq!(ids(&pool), ids(&rev));
    }

    /// Lowest price puts an Active provider of minimal price first.
    #[test]
    fn lowest_price_picks_a_minimum(pool in proptest::collection::vec(arb_candidate(), 1..10)) {
        if let Ok(order) = route(&pool, &req(Strategy::LowestPrice), &StakeMinimums::default()) {
            let first = &pool[order[0]];
            for &i in &order {
                if pool[i].status == first.status {
                    prop_assert!(first.price <= pool[i].price);
                }
            }
        }
    }
}
