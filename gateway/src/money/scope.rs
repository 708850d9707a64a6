//! Delegation scopes (whitepaper §10.5): what an agent's key may spend and on what.
//!
//! The checks here are pure; [`crate::money::book::Book::reserve`] runs them under
//! the same lock that holds the money, so concurrent requests from one key can never
//! spend past its limits together.
//!
//! **Delegation only narrows** ([`crate::accounts::delegation::delegate`]). A key that creates an agent (its
//! scope must allow the `agents:create` operation) gives it a scope within its own:
//! every limit at most the parent's, allowed models, operations, payment protocols
//! and chains a subset of the parent's, the time window inside the parent's. A limit
//! the child does not name is the parent's (never "unlimited"). The result is the
//! intersection of the parent's effective scope with the request ([`crate::accounts::delegation::intersect`]),
//! stored as the child key's scope, so a key's stored scope is the intersection of
//! its whole chain. The chain's daily limits also hold together: the child records
//! its ancestors' keys ([`crate::store::records::KeyScope::ancestors`]) and every charge
//! of a key counts in its ancestors' 24 h windows too ([`admit_shared`]), so an
//! agent cannot spend past its own daily limit through sub-agents. Suspending or
//! terminating any identity of the chain stops the key (checked per request).

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Seconds in the rolling window of `max_daily_spend`.
pub const DAY: u64 = 86_400;

/// An inclusive window of Unix seconds in which a key may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeBound {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
}

/// Spending limits of a delegation scope, as admission checks them; `None` means
/// unlimited. Amounts are base units of the key's asset. Built from the stored
/// scope ([`crate::store::records::KeyScope::spend_limits`]), whose fields are the
/// wire form (decimal strings), so this type has none of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendLimits {
    pub max_transaction_value: Option<u128>,
    pub max_daily_spend: Option<u128>,
    pub allowed_payment_protocols: Option<Vec<String>>,
    pub allowed_chains: Option<Vec<String>>,
    pub time_bound: Option<TimeBound>,
}

/// How the gateway pays providers; the only protocol it speaks today.
pub const PAYMENT_PROTOCOL: &str = "tenzro-channel";
/// Where channels settle; off-chain for now.
pub const CHAIN: &str = "tenzro";

/// Why a scope refused a request, with the numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeRefusal {
    #[error(
        "max_transaction_value: this request may cost up to {worst} base units, over the scope's limit of {limit} by {over}"
    )]
    Transaction {
        worst: u128,
        limit: u128,
        over: u128,
    },
    #[error(
        "max_daily_spend: {spent} base units spent and {pending} reserved in the last 24 h; this request may cost up to {worst} more, over the limit of {limit} by {over}"
    )]
    Daily {
        spent: u128,
        pending: u128,
        worst: u128,
        limit: u128,
        over: u128,
    },
    #[error(
        "time_bound: this key may be used only from {not_before:?} to {not_after:?} (Unix seconds); it is now {now}"
    )]
    Time {
        now: u64,
        not_before: Option<u64>,
        not_after: Option<u64>,
    },
    #[error("allowed_payment_protocols does not include {0:?}")]
    Protocol(String),
    #[error("allowed_chains does not include {0:?}")]
    Chain(String),
    #[error(
        "max_daily_spend of the delegating key {key}: {spent} base units spent and {pending} reserved in the last 24 h by it and the agents under it; this request may cost up to {worst} more, over its limit of {limit} by {over}"
    )]
    AncestorDaily {
        key: String,
        spent: u128,
        pending: u128,
        worst: u128,
        limit: u128,
        over: u128,
    },
}

/// Checks `worst` against the daily limits of a key's delegating ancestors
/// (`(key id, max_daily_spend)`), each in its own window; the caller then adds it to
/// their `pending` with [`hold_shared`] under the same lock.
pub fn admit_shared(
    windows: &mut HashMap<String, SpendWindow>,
    ancestors: &[(String, u128)],
    worst: u128,
    now: u64,
) -> Result<(), ScopeRefusal> {
    for (key, limit) in ancestors {
        let w = windows.entry(key.clone()).or_default();
        let spent = w.spent(now);
        let total = spent.saturating_add(w.pending).saturating_add(worst);
        if total > *limit {
            return Err(ScopeRefusal::AncestorDaily {
                key: key.clone(),
                spent,
                pending: w.pending,
                worst,
                limit: *limit,
                over: total - limit,
            });
        }
    }
    Ok(())
}

/// Adds an admitted request's worst case to its ancestors' windows.
pub fn hold_shared(windows: &mut HashMap<String, SpendWindow>, ancestors: &[String], worst: u128) {
    for key in ancestors {
        let w = windows.entry(key.clone()).or_default();
        w.pending = w.pending.saturating_add(worst);
    }
}

/// Ends a request in its ancestors' windows: frees its worst case and records what
/// it was charged (0 when it was released unused).
pub fn settle_shared(
    windows: &mut HashMap<String, SpendWindow>,
    ancestors: &[String],
    worst: u128,
    charged: u128,
    now: u64,
) {
    for key in ancestors {
        if let Some(w) = windows.get_mut(key) {
            w.pending = w.pending.saturating_sub(worst);
            w.record(now, charged);
        }
    }
}

/// Rebuilds spend windows from stored charges by key, counting each key's charges
/// in the windows of its ancestors too (`ancestors_of` gives them), in time order.
pub fn rebuild_windows(
    charges: &[(String, Vec<(u64, u128)>)],
    ancestors_of: impl Fn(&str) -> Vec<String>,
) -> HashMap<String, SpendWindow> {
    let mut all: HashMap<String, Vec<(u64, u128)>> = HashMap::new();
    for (key, list) in charges {
        all.entry(key.clone()).or_default().extend(list);
        for a in ancestors_of(key) {
            all.entry(a).or_default().extend(list);
        }
    }
    all.into_iter()
        .map(|(key, mut list)| {
            list.sort_unstable_by_key(|c| c.0);
            let mut w = SpendWindow::default();
            for (at, amount) in list {
                w.record(at, amount);
            }
            (key, w)
        })
        .collect()
}

/// Why a delegated scope was refused: the field that would be wider than the
/// delegating key's.
/// A key's spending in the last 24 hours: settled charges by time, and the worst
/// cases of requests in flight.
#[derive(Debug, Clone, Default)]
pub struct SpendWindow {
    charges: VecDeque<(u64, u128)>,
    settled: u128,
    pub pending: u128,
}

impl SpendWindow {
    /// Drops charges older than 24 h and returns the total of the rest.
    pub fn spent(&mut self, now: u64) -> u128 {
        while let Some(&(at, amount)) = self.charges.front() {
            if at + DAY > now {
                break;
            }
            self.charges.pop_front();
            self.settled -= amount;
        }
        self.settled
    }

    pub fn record(&mut self, at: u64, amount: u128) {
        if amount == 0 {
            return;
        }
        self.settled = self.settled.saturating_add(amount);
        self.charges.push_back((at, amount));
    }

    /// The spent total without pruning (for reports between admissions).
    pub fn spent_total(&self) -> u128 {
        self.settled
    }
}

impl SpendLimits {
    /// Checks a request's worst case against the limits; the caller adds it to
    /// `window.pending` under the same lock when this returns `Ok`.
    pub fn admit(
        &self,
        window: &mut SpendWindow,
        worst: u128,
        now: u64,
    ) -> Result<(), ScopeRefusal> {
        if let Some(tb) = self.time_bound
            && (tb.not_before.is_some_and(|t| now < t) || tb.not_after.is_some_and(|t| now > t))
        {
            return Err(ScopeRefusal::Time {
                now,
                not_before: tb.not_before,
                not_after: tb.not_after,
            });
        }
        if let Some(p) = &self.allowed_payment_protocols
            && !p.iter().any(|p| p == PAYMENT_PROTOCOL)
        {
            return Err(ScopeRefusal::Protocol(PAYMENT_PROTOCOL.into()));
        }
        if let Some(c) = &self.allowed_chains
            && !c.iter().any(|c| c == CHAIN)
        {
            return Err(ScopeRefusal::Chain(CHAIN.into()));
        }
        if let Some(limit) = self.max_transaction_value
            && worst > limit
        {
            return Err(ScopeRefusal::Transaction {
                worst,
                limit,
                over: worst - limit,
            });
        }
        if let Some(limit) = self.max_daily_spend {
            let spent = window.spent(now);
            let total = spent.saturating_add(window.pending).saturating_add(worst);
            if total > limit {
                return Err(ScopeRefusal::Daily {
                    spent,
                    pending: window.pending,
                    worst,
                    limit,
                    over: total - limit,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_refuses_with_its_numbers() {
        let mut w = SpendWindow::default();
        let open = SpendLimits::default();
        assert_eq!(open.admit(&mut w, u128::MAX, 0), Ok(()));

        let tx = SpendLimits {
            max_transaction_value: Some(100),
            ..Default::default()
        };
        assert_eq!(tx.admit(&mut w, 100, 0), Ok(()));
        assert_eq!(
            tx.admit(&mut w, 130, 0),
            Err(ScopeRefusal::Transaction {
                worst: 130,
                limit: 100,
                over: 30
            })
        );

        let daily = SpendLimits {
            max_daily_spend: Some(1000),
            ..Default::default()
        };
        w.record(10, 600);
        w.pending = 300;
        assert_eq!(daily.admit(&mut w, 100, 20), Ok(()));
        assert_eq!(
            daily.admit(&mut w, 150, 20),
            Err(ScopeRefusal::Daily {
                spent: 600,
                pending: 300,
                worst: 150,
                limit: 1000,
                over: 50
            })
        );
        // A day later the old charge has rolled out of the window.
        assert_eq!(daily.admit(&mut w, 700, 10 + DAY), Ok(()));
        assert_eq!(w.spent(10 + DAY), 0);

        let tb = SpendLimits {
            time_bound: Some(TimeBound {
                not_before: Some(5),
                not_after: Some(9),
            }),
            ..Default::default()
        };
        assert!(matches!(
            tb.admit(&mut w, 1, 4),
            Err(ScopeRefusal::Time { now: 4, .. })
        ));
        assert_eq!(tb.admit(&mut w, 1, 9), Ok(()));
        assert!(matches!(
            tb.admit(&mut w, 1, 10),
            Err(ScopeRefusal::Time { .. })
        ));

        let proto = SpendLimits {
            allowed_payment_protocols: Some(vec!["x402".into()]),
            ..Default::default()
        };
        assert_eq!(
            proto.admit(&mut w, 1, 0),
            Err(ScopeRefusal::Protocol(PAYMENT_PROTOCOL.into()))
        );
        let chain = SpendLimits {
            allowed_chains: Some(vec!["ethereum".into(), CHAIN.into()]),
            ..Default::default()
        };
        assert_eq!(chain.admit(&mut w, 1, 0), Ok(()));
    }
}
