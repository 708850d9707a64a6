//! The open-loop load generator: requests leave on a fixed schedule whatever the
//! server does, and latency counts from each request's scheduled start, so a
//! stalled server cannot hide its queue.

use std::time::{Duration, Instant};

/// Longest wait for one response; a request past it counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A phase sends at least this many requests, so that its p99 is not simply its
/// slowest request (a low rate runs longer than the phase's seconds).
pub const MIN_REQUESTS: u64 = 200;

/// Where one phase sends its requests.
pub struct Target<'a> {
    pub url: &'a str,
    pub key: Option<&'a str>,
}

/// One phase's outcome.
pub struct Phase {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub ok: usize,
    pub errors: usize,
}

impl Phase {
    /// p99 within `slo_ms` and at most 1 % errors.
    pub fn passes(&self, slo_ms: f64) -> bool {
        self.p99_ms <= slo_ms && self.errors * 100 <= self.ok
    }
}

/// Sends `rate` requests per second for `secs` seconds (or [`MIN_REQUESTS`],
/// whichever is more), open loop, each cut off after [`REQUEST_TIMEOUT`].
pub async fn phase(
    client: &reqwest::Client,
    t: &Target<'_>,
    body: &'static str,
    rate: u64,
    secs: u64,
) -> Phase {
    let n = usize::try_from((rate * secs).max(MIN_REQUESTS)).unwrap_or(usize::MAX);
    let start = Instant::now() + Duration::from_millis(20);
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + Duration::from_nanos(i as u64 * 1_000_000_000 / rate.max(1));
        let (client, url, key) = (client.clone(), t.url.to_owned(), t.key.map(str::to_owned));
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let mut rb = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .timeout(REQUEST_TIMEOUT);
            if let Some(k) = key {
                rb = rb.bearer_auth(k);
            }
            let ok = match rb.send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            (ok, at.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    for h in handles {
        match h.await {
            Ok((true, d)) => lat.push(d),
            _ => errors += 1,
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(f64::NAN)
    };
    Phase {
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        ok: lat.len(),
        errors,
    }
}
