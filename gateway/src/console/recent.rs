//! The operator's recent counters: a per-minute ring of inference requests, errors,
//! charged spend and tokens over the last hour (at most [`MINUTES`] entries), fed by
//! the `observe` middleware and where a response is settled; read by
//! `GET /admin/stats` ([`super`]). Plain Rust (no HTTP), so `metrics` may hold it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::pricing::Asset;

/// Minutes of history kept (the chart's hour).
pub const MINUTES: usize = 60;

/// One minute of counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Minute {
    /// Unix seconds at the minute's start.
    pub start: u64,
    pub requests: u64,
    pub errors: u64,
    pub tokens: u64,
    /// Charged base units by asset.
    pub spend: BTreeMap<&'static str, u128>,
}

impl Minute {
    pub fn json(&self) -> Value {
        let spend: BTreeMap<&str, String> = self
            .spend
            .iter()
            .map(|(a, v)| (*a, v.to_string()))
            .collect();
        json!({
            "start": self.start,
            "requests": self.requests,
            "errors": self.errors,
            "tokens": self.tokens,
            "spend": spend,
        })
    }
}

/// The last hour's counters, one entry per minute that saw anything (at most
/// [`MINUTES`]), oldest first.
#[derive(Debug, Default)]
pub struct Recent {
    minutes: Mutex<VecDeque<Minute>>,
}

/// Inference endpoints (the rates count these, not the console's own polling).
fn counted(endpoint: &str) -> bool {
    matches!(
        endpoint,
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings"
    )
}

impl Recent {
    fn with_minute(&self, now: u64, f: impl FnOnce(&mut Minute)) {
        let Ok(mut q) = self.minutes.lock() else {
            return;
        };
        let start = now - now % 60;
        if q.back().is_none_or(|m| m.start < start) {
            q.push_back(Minute {
                start,
                ..Minute::default()
            });
        }
        // Keep only the last hour (and never more than MINUTES entries).
        while q.len() > MINUTES
            || q.front()
                .is_some_and(|m| m.start + (MINUTES as u64) * 60 <= start)
        {
            q.pop_front();
        }
        if let Some(m) = q.back_mut() {
            f(m);
        }
    }

    /// A response of `endpoint` with `status` (the `observe` middleware's call).
    pub fn request(&self, now: u64, endpoint: &str, status: u16) {
        if counted(endpoint) {
            self.with_minute(now, |m| {
                m.requests += 1;
                if status >= 400 {
                    m.errors += 1;
                }
            });
        }
    }

    /// A charged response: `amount` base units of `asset` for `tokens` tokens.
    pub fn charged(&self, now: u64, asset: Asset, amount: u128, tokens: u64) {
        self.with_minute(now, |m| {
            m.tokens = m.tokens.saturating_add(tokens);
            let s = m.spend.entry(asset.as_str()).or_default();
            *s = s.saturating_add(amount);
        });
    }

    /// The last hour, one entry per minute (empty minutes included), oldest first.
    pub fn hour(&self, now: u64) -> Vec<Minute> {
        let q = self.minutes.lock().map(|q| q.clone()).unwrap_or_default();
        let last = now - now % 60;
        (0..MINUTES as u64)
            .rev()
            .map(|back| {
                let start = last.saturating_sub(back * 60);
                q.iter()
                    .find(|m| m.start == start)
                    .cloned()
                    .unwrap_or(Minute {
                        start,
                        ..Minute::default()
                    })
            })
            .collect()
    }
}

/// Requests and errors per second over the last 60 seconds (the current minute
/// and the part of the previous one still inside the window).
pub fn rates(hour: &[Minute], now: u64) -> (f64, f64) {
    let into = (now % 60) as f64;
    let (prev, cur) = match hour {
        [.., p, c] => (p, c),
        [c] => (c, c),
        [] => return (0.0, 0.0),
    };
    let weight = (60.0 - into) / 60.0;
    let rate = |f: fn(&Minute) -> u64| {
        let prev = if std::ptr::eq(prev, cur) {
            0.0
        } else {
            f(prev) as f64 * weight
        };
        (prev + f(cur) as f64) / 60.0
    };
    (rate(|m| m.requests), rate(|m| m.errors))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// A minute's start (a multiple of 60).
    const T0: u64 = 1_800_000_000;

    #[test]
    fn the_ring_keeps_one_hour_by_minute() {
        let r = Recent::default();
        r.request(T0 + 5, "/v1/chat/completions", 200);
        r.request(T0 + 6, "/v1/chat/completions", 502);
        r.request(T0 + 7, "/v1/account", 200);
        r.charged(T0 + 8, Asset::Tnzo, 7, 3);
        r.charged(T0 + 65, Asset::Tnzo, 5, 2);
        let hour = r.hour(T0 + 70);
        assert_eq!(hour.len(), MINUTES);
        let (prev, cur) = (&hour[MINUTES - 2], &hour[MINUTES - 1]);
        assert_eq!(
            (prev.start, prev.requests, prev.errors, prev.tokens),
            (T0, 2, 1, 3)
        );
        assert_eq!(prev.spend.get("TNZO"), Some(&7));
        assert_eq!((cur.start, cur.requests, cur.tokens), (T0 + 60, 0, 2));
        // An hour later the first minute is gone; the queue never exceeds MINUTES.
        for i in 0..200 {
            r.request(T0 + 120 + i * 60, "/v1/embeddings", 200);
        }
        assert!(r.minutes.lock().unwrap().len() <= MINUTES);
        let late = r.hour(T0 + 120 + 199 * 60);
        assert!(late.iter().all(|m| m.start > T0 + 60 && m.requests == 1));
    }

    #[test]
    fn rates_weigh_the_previous_minute_by_what_is_left_of_the_window() {
        let r = Recent::default();
        for _ in 0..60 {
            r.request(T0 + 1, "/v1/chat/completions", 200);
        }
        for _ in 0..30 {
            r.request(T0 + 61, "/v1/chat/completions", 500);
        }
        let now = T0 + 90;
        let (req, err) = rates(&r.hour(now), now);
        // Half of the previous minute (30) plus the current 30, over 60 s.
        assert!((req - 1.0).abs() < 1e-9, "{req}");
        assert!((err - 0.5).abs() < 1e-9, "{err}");
        assert_eq!(rates(&[], now), (0.0, 0.0));
    }
}
