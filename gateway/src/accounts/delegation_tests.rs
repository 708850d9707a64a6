//! Delegation: `delegate` only narrows, `intersect` is what both allow, and the
//! shared daily windows of a chain.
#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::money::scope::*;
use crate::store::records::Ancestor;

const D: DefaultLimits = DefaultLimits {
    requests_per_minute: 600,
    tokens_per_minute: 1000,
};

fn scope(json: serde_json::Value) -> KeyScope {
    serde_json::from_value(json).unwrap()
}

/// `delegate(parent, child)`: the scope it gives, or the field it names.
fn check(
    parent: serde_json::Value,
    child: serde_json::Value,
    expect: Result<serde_json::Value, &str>,
) {
    let got = delegate(&scope(parent.clone()), &scope(child.clone()), D);
    match (got, expect) {
        (Ok(s), Ok(want)) => assert_eq!(s, scope(want), "{parent} / {child}"),
        (Err(e), Err(field)) => assert_eq!(e.field, field, "{parent} / {child}: {e}"),
        (got, want) => panic!("{parent} / {child}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn a_child_inherits_what_it_leaves_out_and_may_only_narrow() {
    use serde_json::json;
    let parent =
        json!({"allowed_models": ["nope"], "max_transaction_value": "1", "max_daily_spend": "1"});
    // The escape of issue 11: `scope: {}` is the parent's scope, not "unlimited".
    check(parent.clone(), json!({}), Ok(parent.clone()));
    check(
        parent.clone(),
        json!({"allowed_models": ["m"]}),
        Err("allowed_models"),
    );
    check(
        parent.clone(),
        json!({"max_daily_spend": "2"}),
        Err("max_daily_spend"),
    );
    check(
        parent.clone(),
        json!({"max_transaction_value": "2"}),
        Err("max_transaction_value"),
    );
    check(
        parent.clone(),
        json!({"max_daily_spend": "0"}),
        Ok(
            json!({"allowed_models": ["nope"], "max_transaction_value": "1", "max_daily_spend": "0"}),
        ),
    );
    check(
        json!({"allowed_operations": ["chat"]}),
        json!({"allowed_operations": ["chat", "agents:create"]}),
        Err("allowed_operations"),
    );
    check(
        json!({}),
        json!({"allowed_operations": ["agents:create"]}),
        Ok(json!({"allowed_operations": ["agents:create"]})),
    );
    // Rate limits: a missing parent limit is the gateway's default, 0 is unlimited.
    check(
        json!({}),
        json!({"requests_per_minute": 601}),
        Err("requests_per_minute"),
    );
    check(
        json!({}),
        json!({"requests_per_minute": 0}),
        Err("requests_per_minute"),
    );
    check(
        json!({"requests_per_minute": 0}),
        json!({"requests_per_minute": 0}),
        Ok(json!({"requests_per_minute": 0})),
    );
    check(
        json!({"tokens_per_minute": 5}),
        json!({}),
        Ok(json!({"tokens_per_minute": 5})),
    );
    check(
        json!({"tokens_per_minute": 5}),
        json!({"tokens_per_minute": 6}),
        Err("tokens_per_minute"),
    );
    // Time windows inside the parent's.
    let tb = json!({"time_bound": {"not_before": 10, "not_after": 20}});
    check(
        tb.clone(),
        json!({"time_bound": {"not_before": 9}}),
        Err("time_bound.not_before"),
    );
    check(
        tb.clone(),
        json!({"time_bound": {"not_before": 12}}),
        Err("time_bound.not_after"),
    );
    check(
        tb.clone(),
        json!({"time_bound": {"not_before": 12, "not_after": 15}}),
        Ok(json!({"time_bound": {"not_before": 12, "not_after": 15}})),
    );
    check(tb.clone(), json!({}), Ok(tb.clone()));
    check(
        json!({"allowed_chains": ["tenzro"]}),
        json!({"allowed_chains": ["ethereum"]}),
        Err("allowed_chains"),
    );
    check(
        json!({"allowed_payment_protocols": ["tenzro-channel"]}),
        json!({"allowed_payment_protocols": ["x402"]}),
        Err("allowed_payment_protocols"),
    );
}

#[test]
fn a_request_cannot_name_ancestors() {
    let parent = KeyScope {
        ancestors: vec![Ancestor {
            key_id: "key_root".into(),
            max_daily_spend: Some(5),
        }],
        ..KeyScope::default()
    };
    let forged = KeyScope {
        ancestors: vec![Ancestor {
            key_id: "key_other".into(),
            max_daily_spend: None,
        }],
        ..KeyScope::default()
    };
    assert_eq!(
        delegate(&parent, &forged, D).unwrap().ancestors,
        parent.ancestors
    );
}

#[test]
fn intersection_is_what_both_allow() {
    use serde_json::json;
    let a = scope(
        json!({"allowed_models": ["x", "y"], "max_daily_spend": "10", "time_bound": {"not_after": 50}, "requests_per_minute": 0}),
    );
    let b = scope(
        json!({"allowed_models": ["y", "z"], "max_transaction_value": "3", "time_bound": {"not_before": 5, "not_after": 60}}),
    );
    assert_eq!(
        intersect(&a, &b, D),
        scope(
            json!({"allowed_models": ["y"], "max_daily_spend": "10", "max_transaction_value": "3",
                     "time_bound": {"not_before": 5, "not_after": 50}, "requests_per_minute": 600})
        )
    );
    assert_eq!(
        intersect(&a, &b, D),
        intersect(&b, &a, D),
        "symmetric in what it allows"
    );
    assert_eq!(
        intersect(&KeyScope::default(), &b, D),
        b,
        "an open scope changes nothing"
    );
    // A missing rate limit is the gateway's default, so it bounds an unlimited (0) one.
    assert_eq!(
        intersect(&KeyScope::default(), &a, D).requests_per_minute,
        Some(600)
    );
}

#[test]
fn ancestors_windows_count_every_descendant() {
    let mut w: HashMap<String, SpendWindow> = HashMap::new();
    let up = vec![("parent".to_string(), 100u128), ("root".to_string(), 150)];
    let ids: Vec<String> = up.iter().map(|a| a.0.clone()).collect();
    admit_shared(&mut w, &up, 60, 0).unwrap();
    hold_shared(&mut w, &ids, 60);
    // A sibling under the same parent: the parent's window already has 60 pending.
    assert!(matches!(
        admit_shared(&mut w, &up, 50, 0),
        Err(ScopeRefusal::AncestorDaily { ref key, over: 10, .. }) if key == "parent"
    ));
    settle_shared(&mut w, &ids, 60, 40, 1);
    admit_shared(&mut w, &up, 60, 2).unwrap();
    // Only the root above: 40 spent, 110 left.
    assert!(admit_shared(&mut w, &up[1..], 111, 2).is_err());
    admit_shared(&mut w, &up[1..], 110, 2).unwrap();
    // A day later the charge rolled out.
    admit_shared(&mut w, &up, 100, 1 + DAY).unwrap();

    // Rebuilt from stored charges, a child's charges count at its ancestors.
    let charges = vec![
        ("child".to_string(), vec![(5, 7u128)]),
        ("parent".to_string(), vec![(3, 2u128)]),
    ];
    let mut rebuilt = rebuild_windows(&charges, |k| match k {
        "child" => vec!["parent".into(), "root".into()],
        _ => Vec::new(),
    });
    assert_eq!(rebuilt.get_mut("parent").unwrap().spent(10), 9);
    assert_eq!(rebuilt.get_mut("root").unwrap().spent(10), 7);
    assert_eq!(rebuilt.get_mut("child").unwrap().spent(10), 7);
    assert_eq!(
        rebuilt.get_mut("parent").unwrap().spent(5 + DAY),
        0,
        "in time order, so all roll out"
    );
}

fn arb_list() -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::of(prop::collection::vec(
        prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(String::from),
        0..4,
    ))
}

fn arb_ops() -> impl Strategy<Value = Option<Vec<Operation>>> {
    prop::option::of(prop::collection::vec(
        prop::sample::select(vec![
            Operation::Chat,
            Operation::Embeddings,
            Operation::AgentsCreate,
            Operation::Channels,
        ]),
        0..4,
    ))
}

fn arb_scope() -> impl Strategy<Value = KeyScope> {
    (
        arb_list(),
        arb_ops(),
        prop::option::of(0u32..1000),
        prop::option::of(0u128..1000),
        prop::option::of(0u128..1000),
        prop::option::of((prop::option::of(0u64..100), prop::option::of(0u64..100))),
    )
        .prop_map(|(models, ops, rpm, tx, daily, tb)| KeyScope {
            allowed_models: models,
            allowed_operations: ops,
            requests_per_minute: rpm,
            max_transaction_value: tx,
            max_daily_spend: daily,
            time_bound: tb.map(|(not_before, not_after)| TimeBound {
                not_before,
                not_after,
            }),
            ..KeyScope::default()
        })
}

proptest! {
    /// Over random chains of delegations (each refused or narrowed), a key's
    /// effective scope never allows a request that an ancestor's refuses, and its
    /// limits are never above any ancestor's.
    #[test]
    fn delegation_never_widens(
        root in arb_scope(),
        asks in prop::collection::vec(arb_scope(), 1..6),
        probes in prop::collection::vec((prop::sample::select(vec!["a", "b", "c", "e"]), 0usize..4, 0u128..1200, 0u64..120), 16),
    ) {
        let mut chain = vec![root];
        for ask in &asks {
            let parent = chain.last().unwrap().clone();
            if let Ok(child) = delegate(&parent, ask, D) {
                chain.push(child);
            } else {
                // Refused: the same ask with the parent's scope intersected is accepted.
                let narrowed = intersect(&parent, ask, D);
                prop_assert!(delegate(&parent, &narrowed, D).is_ok());
                chain.push(narrowed);
            }
        }
        let ops = [Operation::Chat, Operation::Embeddings, Operation::AgentsCreate, Operation::Channels];
        let key = chain.last().unwrap();
        for (i, ancestor) in chain.iter().enumerate() {
            for &(model, op, worst, now) in &probes {
                if allows(key, model, ops[op], worst, now) {
                    prop_assert!(allows(ancestor, model, ops[op], worst, now), "ancestor {i} refuses what the key allows");
                }
            }
            if let Some(l) = ancestor.max_daily_spend {
                prop_assert!(key.max_daily_spend.is_some_and(|k| k <= l));
            }
            if let Some(l) = ancestor.max_transaction_value {
                prop_assert!(key.max_transaction_value.is_some_and(|k| k <= l));
            }
            prop_assert!(rate(key.requests_per_minute, D.requests_per_minute) <= rate(ancestor.requests_per_minute, D.requests_per_minute));
        }
    }

    /// However a chain's keys spend, no ancestor's window passes its daily limit.
    #[test]
    fn shared_windows_hold_every_limit(
        limits in prop::collection::vec(1u128..500, 1..4),
        spends in prop::collection::vec((0usize..4, 1u128..200, 0u128..=100), 1..40),
    ) {
        // Key i's ancestors are keys 0..i (nearest first); each has its own limit.
        let n = limits.len();
        let mut w: HashMap<String, SpendWindow> = HashMap::new();
        let mut spent = vec![0u128; n];
        for (who, worst, pct) in spends {
            let who = who % n;
            let mut up: Vec<(String, u128)> = (0..=who).rev().map(|i| (format!("k{i}"), limits[i])).collect();
            // The key's own window is checked first, like the book does.
            let own = up.remove(0);
            let ids: Vec<String> = up.iter().map(|a| a.0.clone()).collect();
            let all = [vec![own.clone()], up.clone()].concat();
            if admit_shared(&mut w, &all, worst, 0).is_err() {
                continue;
            }
            let all_ids = [vec![own.0.clone()], ids].concat();
            hold_shared(&mut w, &all_ids, worst);
            let charged = worst * pct / 100;
            settle_shared(&mut w, &all_ids, worst, charged, 0);
            for s in &mut spent[..=who] {
                *s += charged;
            }
        }
        for i in 0..n {
            prop_assert!(spent[i] <= limits[i], "key {i} spent {} over {}", spent[i], limits[i]);
            prop_assert_eq!(w.get_mut(&format!("k{i}")).map(|w| w.spent(0)).unwrap_or(0), spent[i]);
        }
    }
}
