//! Delegation only narrows (whitepaper §10.5): a key that creates an agent gives it
//! a scope within its own ([`delegate`]); the stored scope is the intersection of the
//! whole chain ([`intersect`]). The spend limits a scope carries are checked by the
//! book ([`crate::money::scope`]).

use crate::money::scope::{SpendWindow, TimeBound};
use crate::store::records::{DefaultLimits, KeyScope, Operation};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope.{field} {reason}; a delegated scope may only narrow the delegating key's")]
pub struct Widening {
    pub field: &'static str,
    pub reason: String,
}

fn widening(field: &'static str, reason: impl Into<String>) -> Widening {
    Widening {
        field,
        reason: reason.into(),
    }
}

/// A rate limit as a number: `None` is the gateway's default, 0 is unlimited.
fn rate(v: Option<u32>, default: u32) -> u64 {
    match v.unwrap_or(default) {
        0 => u64::MAX,
        n => u64::from(n),
    }
}

fn min_rate(a: Option<u32>, b: Option<u32>, default: u32) -> Option<u32> {
    match (a, b) {
        (None, None) => None,
        _ => {
            let m = rate(a, default).min(rate(b, default));
            Some(u32::try_from(m).unwrap_or(0))
        }
    }
}

fn min_opt(a: Option<u128>, b: Option<u128>) -> Option<u128> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn meet<T: Clone + PartialEq>(a: &Option<Vec<T>>, b: &Option<Vec<T>>) -> Option<Vec<T>> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.iter().filter(|v| y.contains(v)).cloned().collect()),
        (x, None) => x.clone(),
        (None, y) => y.clone(),
    }
}

fn meet_time(a: Option<TimeBound>, b: Option<TimeBound>) -> Option<TimeBound> {
    match (a, b) {
        (Some(x), Some(y)) => Some(TimeBound {
            not_before: x.not_before.max(y.not_before),
            not_after: match (x.not_after, y.not_after) {
                (Some(p), Some(q)) => Some(p.min(q)),
                (p, None) => p,
                (None, q) => q,
            },
        }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// What both scopes allow: the lower of each limit, the common models, operations,
/// protocols and chains, the overlap of the time windows. Routing preferences and
/// ancestors come from `b` (the narrower key) when it names them.
pub fn intersect(a: &KeyScope, b: &KeyScope, defaults: DefaultLimits) -> KeyScope {
    KeyScope {
        allowed_models: meet(&a.allowed_models, &b.allowed_models),
        allowed_operations: meet(&a.allowed_operations, &b.allowed_operations),
        requests_per_minute: min_rate(
            a.requests_per_minute,
            b.requests_per_minute,
            defaults.requests_per_minute,
        ),
        tokens_per_minute: min_rate(
            a.tokens_per_minute,
            b.tokens_per_minute,
            defaults.tokens_per_minute,
        ),
        routing: b.routing.clone().or_else(|| a.routing.clone()),
        max_transaction_value: min_opt(a.max_transaction_value, b.max_transaction_value),
        max_daily_spend: min_opt(a.max_daily_spend, b.max_daily_spend),
        allowed_payment_protocols: meet(&a.allowed_payment_protocols, &b.allowed_payment_protocols),
        allowed_chains: meet(&a.allowed_chains, &b.allowed_chains),
        time_bound: meet_time(a.time_bound, b.time_bound),
        ancestors: if b.ancestors.is_empty() {
            a.ancestors.clone()
        } else {
            b.ancestors.clone()
        },
    }
}

fn subset<T: PartialEq + std::fmt::Debug>(
    field: &'static str,
    parent: &Option<Vec<T>>,
    child: &Option<Vec<T>>,
) -> Result<(), Widening> {
    let (Some(p), Some(c)) = (parent, child) else {
        return Ok(());
    };
    match c.iter().find(|v| !p.contains(v)) {
        Some(v) => Err(widening(
            field,
            format!("names {v:?}, which the delegating key may not use (it may use {p:?})"),
        )),
        None => Ok(()),
    }
}

fn at_most(field: &'static str, parent: Option<u128>, child: Option<u128>) -> Result<(), Widening> {
    match (parent, child) {
        (Some(p), Some(c)) if c > p => Err(widening(
            field,
            format!("is {c}, over the delegating key's {p}"),
        )),
        _ => Ok(()),
    }
}

fn rate_at_most(
    field: &'static str,
    parent: Option<u32>,
    child: Option<u32>,
    default: u32,
) -> Result<(), Widening> {
    if child.is_none() {
        return Ok(());
    }
    let (p, c) = (rate(parent, default), rate(child, default));
    if c > p {
        let show = |v: u64| {
            if v == u64::MAX {
                "unlimited (0)".to_string()
            } else {
                v.to_string()
            }
        };
        return Err(widening(
            field,
            format!("is {}, over the delegating key's {}", show(c), show(p)),
        ));
    }
    Ok(())
}

/// The scope a key delegates: `child` must be within `parent` (the delegating key's
/// effective scope) field by field, else the first field that widens it is named;
/// fields `child` leaves out are the parent's. See the module docs.
pub fn delegate(
    parent: &KeyScope,
    child: &KeyScope,
    defaults: DefaultLimits,
) -> Result<KeyScope, Widening> {
    subset(
        "allowed_models",
        &parent.allowed_models,
        &child.allowed_models,
    )?;
    subset(
        "allowed_operations",
        &parent.allowed_operations,
        &child.allowed_operations,
    )?;
    subset(
        "allowed_payment_protocols",
        &parent.allowed_payment_protocols,
        &child.allowed_payment_protocols,
    )?;
    subset(
        "allowed_chains",
        &parent.allowed_chains,
        &child.allowed_chains,
    )?;
    at_most(
        "max_transaction_value",
        parent.max_transaction_value,
        child.max_transaction_value,
    )?;
    at_most(
        "max_daily_spend",
        parent.max_daily_spend,
        child.max_daily_spend,
    )?;
    rate_at_most(
        "requests_per_minute",
        parent.requests_per_minute,
        child.requests_per_minute,
        defaults.requests_per_minute,
    )?;
    rate_at_most(
        "tokens_per_minute",
        parent.tokens_per_minute,
        child.tokens_per_minute,
        defaults.tokens_per_minute,
    )?;
    if let (Some(p), Some(c)) = (parent.time_bound, child.time_bound) {
        if let Some(pb) = p.not_before
            && c.not_before.is_some_and(|cb| cb < pb)
        {
            return Err(widening(
                "time_bound.not_before",
                format!("is before the delegating key's {pb}"),
            ));
        }
        if let Some(pa) = p.not_after
            && c.not_after.is_none_or(|ca| ca > pa)
        {
            return Err(widening(
                "time_bound.not_after",
                format!("is after the delegating key's {pa} (or missing)"),
            ));
        }
    }
    let child = KeyScope {
        ancestors: Vec::new(),
        ..child.clone()
    };
    Ok(intersect(parent, &child, defaults))
}

/// Whether `scope` allows one request for `model` and `op` that may cost `worst` at
/// `now`, leaving out the daily window (checked by the book). For tests and docs.
pub fn allows(scope: &KeyScope, model: &str, op: Operation, worst: u128, now: u64) -> bool {
    let listed =
        |l: &Option<Vec<String>>, v: &str| l.as_ref().is_none_or(|l| l.iter().any(|x| x == v));
    listed(&scope.allowed_models, model)
        && scope
            .allowed_operations
            .as_ref()
            .is_none_or(|o| o.contains(&op))
        && scope
            .spend_limits()
            .admit(&mut SpendWindow::default(), worst, now)
            .is_ok()
}

#[cfg(test)]
#[path = "delegation_tests.rs"]
mod tests;
