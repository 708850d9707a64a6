//! The open-loop load generator of the replica benchmark: request `i` leaves at
//! its scheduled time whatever the servers do (latency counts from then), goes to
//! the replica and with the account key that the routing plan picks for `i`, and
//! must come back whole (the mock's ten chunks and `[DONE]`).

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for one response; a request past it counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A phase sends at least this many requests.
pub const MIN_REQUESTS: u64 = 200;

/// How requests are spread over replicas and accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Each account always goes to replica `account % replicas` (a load balancer
    /// with key affinity).
    Pinned,
    /// Request `i` goes to replica `i % replicas`, whatever its account (a plain
    /// round-robin balancer): every account reaches every replica, and a replica
    /// that does not hold an account's lease forwards to the one that does.
    RoundRobin,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Pinned => "pinned",
            Plan::RoundRobin => "round-robin",
        }
    }

    /// (replica, account) of request `i`.
    pub fn pick(self, i: usize, replicas: usize, accounts: usize) -> (usize, usize) {
        let (r, a) = (replicas.max(1), accounts.max(1));
        match self {
            Plan::Pinned => {
                let account = i % a;
                (account % r, account)
            }
            // Consecutive requests change replica; account `q` is sent to every
            // replica in turn.
            Plan::RoundRobin => (i % r, (i / r) % a),
        }
    }
}

/// One phase's outcome.
pub struct Phase {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub ok: usize,
    pub errors: usize,
    /// Error answers by their code (`replica_busy`, ...) or kind.
    pub error_kinds: Vec<(String, usize)>,
}

impl Phase {
    /// p99 within `slo_ms` and at most 1 % errors.
    pub fn passes(&self, slo_ms: f64) -> bool {
        self.p99_ms <= slo_ms && self.errors * 100 <= self.ok
    }
}

/// Where a phase sends its requests.
pub struct Targets {
    /// `http://127.0.0.1:PORT/v1/chat/completions` per replica.
    pub urls: Vec<String>,
    pub keys: Vec<String>,
    pub plan: Plan,
}

async fn one(
    client: reqwest::Client,
    url: String,
    key: String,
    body: &'static str,
) -> Result<(), String> {
    let r = client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timeout".to_owned()
            } else {
                "connect".to_owned()
            }
        })?;
    let status = r.status();
    let text = r.text().await.map_err(|_| "body".to_owned())?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let code = v["error"]["code"].as_str().unwrap_or("");
        return Err(format!("{} {code}", status.as_u16()));
    }
    if text.contains("w9 ") && text.contains("[DONE]") {
        Ok(())
    } else {
        Err("incomplete".to_owned())
    }
}

/// Sends `rate` requests per second for `secs` seconds (or [`MIN_REQUESTS`]).
pub async fn phase(
    client: &reqwest::Client,
    t: &Targets,
    body: &'static str,
    rate: u64,
    secs: u64,
) -> Phase {
    let n = usize::try_from((rate * secs).max(MIN_REQUESTS)).unwrap_or(usize::MAX);
    let start = Instant::now() + Duration::from_millis(20);
    let mut handles = Vec::with_capacity(n);
    let keys = Arc::new(t.keys.clone());
    for i in 0..n {
        let at = start + Duration::from_nanos(i as u64 * 1_000_000_000 / rate.max(1));
        let (replica, account) = t.plan.pick(i, t.urls.len(), keys.len());
        let (client, url) = (client.clone(), t.urls[replica].clone());
        let key = keys[account].clone();
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let r = one(client, url, key, body).await;
            (r, at.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for h in handles {
        match h.await {
            Ok((Ok(()), d)) => lat.push(d),
            Ok((Err(kind), _)) => *kinds.entry(kind).or_default() += 1,
            Err(_) => *kinds.entry("task".to_owned()).or_default() += 1,
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Phase {
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        ok: lat.len(),
        errors: kinds.values().sum(),
        error_kinds: kinds.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::Plan;

    #[test]
    fn round_robin_sends_every_account_to_every_replica() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..60 {
            let (r, a) = Plan::RoundRobin.pick(i, 3, 10);
            assert_eq!(r, i % 3);
            seen.insert((a, r));
        }
        assert_eq!(seen.len(), 30, "10 accounts x 3 replicas");
        for i in 0..60 {
            let (r, a) = Plan::Pinned.pick(i, 3, 10);
            assert_eq!(r, a % 3);
        }
    }
}
