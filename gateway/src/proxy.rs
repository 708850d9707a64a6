//! Calling providers: admission, failover before the first byte, the non-streamed
//! answer, and the streaming relay that meters and charges per chunk.
//!
//! Cost reporting: a non-streamed answer carries `usage.cost` / `usage.asset` and
//! the `x-tenzro-cost` / `x-tenzro-asset` headers. A stream's headers leave before its
//! cost is known, so it carries `x-tenzro-asset` only; the cost is in the final
//! usage chunk (when the client asked for `stream_options.include_usage`) and always
//! in an SSE comment line `: x-tenzro-cost=N x-tenzro-asset=A` just before
//! `data: [DONE]` (SDKs ignore comments).
//!
//! A stream cut by the provider ends with an `error` event (which OpenAI SDKs raise
//! as `APIError`) and is charged for the completion tokens of the chunks relayed to
//! the client; prompt tokens are charged only when the provider's usage arrived, so
//! a provider that dies bears its own prompt cost.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;

use crate::accounts::{KeyEntry, Operation};
use crate::clock::unix_now;
use crate::error::ApiError;
use crate::metering::{self, Event, Meter, SseSplitter};
use crate::metrics::Metrics;
use crate::money::book::{Book, BookError, Charge, Reservation};
use crate::pricing::Quote;
use crate::registry::{Outcome, ProviderEntry, Registry};
use crate::routing::{self, Filter, NoProvider, RouteRequest, Weights};
use crate::state::AppState;

/// Our request extension: `{"tenzro": {"tee": true, "strategy": "...", "weights": [p, l, r]}}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RequestExt {
    #[serde(default)]
    pub tee: bool,
    #[serde(default)]
    pub strategy: Option<routing::Strategy>,
    #[serde(default)]
    pub weights: Option<[f64; 3]>,
}

/// A validated inference request, ready to send upstream.
#[derive(Debug)]
pub struct Inference {
    pub op: Operation,
    /// The upstream path, also the metrics label.
    pub path: &'static str,
    pub model: String,
    pub body: Bytes,
    pub stream: bool,
    pub include_usage: bool,
    pub prompt_estimate: u64,
    /// `None`: the model's context (or the configured default) bounds it.
    pub max_tokens: Option<u32>,
    /// False for embeddings (no completion tokens).
    pub generates: bool,
    pub ext: RequestExt,
}

/// A reservation not yet settled; released when dropped.
struct Held {
    book: Arc<Book>,
    reservation: Option<Reservation>,
}

impl Held {
    fn take(&mut self) -> Option<Reservation> {
        self.reservation.take()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.book.release(r);
        }
    }
}

/// Decrements a provider's in-flight count when dropped.
struct InFlight(Arc<ProviderEntry>);

impl InFlight {
    fn new(e: Arc<ProviderEntry>) -> Self {
        e.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(e)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn run(
    state: &AppState,
    key: &KeyEntry,
    req: Inference,
    request_id: &str,
    started: Instant,
) -> Result<Response, ApiError> {
    check_scope(key, &req)?;
    let rates = &state.rates;
    let pool = state.registry.candidates(&req.model, key.asset, rates);
    if !pool.iter().any(|(_, c, _)| c.serves_model) {
        return Err(ApiError::ModelNotFound(req.model.clone()));
    }
    let cfg = &state.config;
    let prefs = key.record.scope.routing.clone().unwrap_or_default();
    let weights = req
        .ext
        .weights
        .or(prefs.weights)
        .map(|w| Weights::from_f64(w[0], w[1], w[2]))
        .unwrap_or(cfg.routing.weights());
    let route_req = RouteRequest {
        model: &req.model,
        tee_required: req.ext.tee,
        strategy: req
            .ext
            .strategy
            .or(prefs.strategy)
            .unwrap_or(cfg.routing.strategy),
        weights,
        degraded_penalty: cfg.routing.penalty_ppm(),
        seed: rand_seed(),
    };
    let cands: Vec<routing::Candidate> = pool.iter().map(|(_, c, _)| c.clone()).collect();
    let order = routing::route(&cands, &route_req, &state.registry.config.stakes)
        .map_err(ApiError::NoProvider)?;
    let attempts: Vec<(Arc<ProviderEntry>, Quote, Option<u32>)> = order
        .into_iter()
        .take(cfg.upstream.max_attempts)
        .filter_map(|i| {
            let (e, _, q) = &pool[i];
            let ctx = e.info.model(&req.model).and_then(|m| m.info.max_context);
            q.map(|q| (e.clone(), q, ctx))
        })
        .collect();

    // Admission: the worst case over every provider we may try.
    let max_new = if !req.generates {
        0
    } else {
        match req.max_tokens {
            Some(n) => u64::from(n),
            None => attempts
                .iter()
                .map(|a| u64::from(a.2.unwrap_or(cfg.limits.default_max_tokens)))
                .max()
                .unwrap_or(u64::from(cfg.limits.default_max_tokens)),
        }
    };
    let worst_tokens = req.prompt_estimate.saturating_add(max_new);
    let mut worst_cost = 0u128;
    for (_, q, _) in &attempts {
        let c = q
            .cost(worst_tokens)
            .map_err(|e| ApiError::bad_request(format!("cannot price this request: {e}")))?;
        worst_cost = worst_cost.max(c);
    }
    state.lease(&key.record.account).await?;
    let reservation = state
        .book
        .reserve(
            &key.record.account,
            key.asset,
            worst_cost,
            Some((&key.record.id, &key.limits)),
            unix_now(),
        )
        .map_err(|e| payment_error(e, worst_tokens, req.prompt_estimate, max_new))?;
    if let Err(limited) = key.limiters.check(worst_tokens) {
        state.book.release(reservation);
        return Err(rate_limited(limited));
    }

    // Released on every path that does not hand it to a settlement, including this
    // future being dropped because the client went away.
    let mut reservation = Held {
        book: state.book.clone(),
        reservation: Some(reservation),
    };
    let mut last_error = String::from("no provider accepted the request");
    let mut tried = 0usize;
    for (entry, quote, _) in attempts {
        let now = state.registry.now();
        if !entry.try_acquire(now) {
            continue;
        }
        tried += 1;
        let in_flight = InFlight::new(entry.clone());
        let channel = match reservation
            .reservation
            .as_ref()
            .map(|r| state.book.bind(r, &entry.info.id, unix_now()))
        {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                return Err(ApiError::Internal(format!(
                    "opening a payment channel: {e}"
                )));
            }
            None => break,
        };
        let url = format!("{}{}", entry.info.endpoint, req.path);
        let sent = Instant::now();
        let pre_upstream = sent.duration_since(started);
        let call = state
            .client
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", request_id)
            .header("x-tenzro-channel", &channel)
            .body(req.body.clone())
            .send();
        let deadline = cfg.upstream.first_byte_timeout();
        let resp = match tokio::time::timeout(deadline, call).await {
            Err(_) => Err(format!(
                "{}: no answer within {} ms",
                entry.info.id,
                deadline.as_millis()
            )),
            Ok(Err(e)) => Err(format!("{}: {}", entry.info.id, error_chain(&e))),
            Ok(Ok(r)) => Ok(r),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                entry.record(state.registry.now(), Outcome::Failure);
                tracing::warn!(provider = %entry.info.id, error = %e, "upstream failed before the first byte; trying the next");
                last_error = e;
                continue;
            }
        };
        let status = resp.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            if status.is_server_error() {
                entry.record(state.registry.now(), Outcome::Failure);
            }
            last_error = format!("{}: HTTP {}", entry.info.id, status.as_u16());
            tracing::warn!(provider = %entry.info.id, status = status.as_u16(), "upstream refused; trying the next");
            continue;
        }
        if !status.is_success() {
            // The provider judged the request itself: relay its answer.
            entry.record(
                state.registry.now(),
                Outcome::Success {
                    latency: sent.elapsed(),
                },
            );
            let body = read_limited(resp, cfg.upstream.idle_timeout(), 1 << 20)
                .await
                .unwrap_or_default();
            if let Some(r) = reservation.take() {
                state.book.release(r);
            }
            let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            return Err(ApiError::Relayed { status, body });
        }

        if !req.stream {
            let body = match read_limited(
                resp,
                cfg.upstream.idle_timeout(),
                cfg.upstream.max_response_bytes,
            )
            .await
            {
                Ok(b) => b,
                Err(e) => {
                    entry.record(state.registry.now(), Outcome::Failure);
                    last_error = format!("{}: {e}", entry.info.id);
                    continue;
                }
            };
            let waited = sent.elapsed();
            entry.record(state.registry.now(), Outcome::Success { latency: waited });
            state.metrics.upstream(&entry.info.id, waited);
            let Some(r) = reservation.take() else { break };
            let after = Instant::now();
            let mut resp = finish_whole(state, &entry, r, quote, request_id, body)?;
            if let Ok(v) = HeaderValue::from_str(&channel) {
                resp.headers_mut().insert("x-tenzro-channel", v);
            }
            drop(in_flight);
            state
                .metrics
                .overhead(req.path, pre_upstream + after.elapsed());
            return Ok(resp);
        }

        // Stream: wait for the first body bytes before answering, so a provider that
        // fails now can still be replaced.
        let mut upstream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>> =
            Box::pin(resp.bytes_stream());
        let left = deadline.saturating_sub(sent.elapsed());
        let first = match tokio::time::timeout(left, upstream.next()).await {
            Ok(Some(Ok(b))) => b,
            Ok(Some(Err(e))) => {
                last_error = format!("{}: {}", entry.info.id, error_chain(&e));
                entry.record(state.registry.now(), Outcome::Failure);
                continue;
            }
            Ok(None) => {
                last_error = format!("{}: empty stream", entry.info.id);
                entry.record(state.registry.now(), Outcome::Failure);
                continue;
            }
            Err(_) => {
                last_error = format!(
                    "{}: no first chunk within {} ms",
                    entry.info.id,
                    deadline.as_millis()
                );
                entry.record(state.registry.now(), Outcome::Failure);
                continue;
            }
        };
        let ttfb = sent.elapsed();
        state.metrics.upstream(&entry.info.id, ttfb);
        let Some(r) = reservation.take() else { break };
        let settlement = Settlement {
            book: state.book.clone(),
            request_id: request_id.to_owned(),
            registry: state.registry.clone(),
            metrics: state.metrics.clone(),
            reservation: Some(r),
            meter: Meter::new(quote),
            entry: entry.clone(),
            outcome: None,
            ttfb,
            _in_flight: in_flight,
        };
        let relay = Relay {
            upstream,
            first: Some(first),
            splitter: SseSplitter::default(),
            idle: cfg.upstream.idle_timeout(),
            include_usage: req.include_usage,
            settlement,
            finished: false,
        };
        let body = Body::from_stream(futures::stream::unfold(relay, |mut r| async move {
            r.next_bytes()
                .await
                .map(|b| (Ok::<Bytes, Infallible>(b), r))
        }));
        let mut resp = Response::new(body);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(
            "x-tenzro-asset",
            HeaderValue::from_static(key.asset.as_str()),
        );
        if let Ok(v) = HeaderValue::from_str(&entry.info.id) {
            h.insert("x-tenzro-provider", v);
        }
        if let Ok(v) = HeaderValue::from_str(&channel) {
            h.insert("x-tenzro-channel", v);
        }
        state.metrics.overhead(req.path, pre_upstream);
        return Ok(resp);
    }
    drop(reservation);
    if tried == 0 {
        return Err(ApiError::NoProvider(NoProvider {
            model: req.model,
            filter: Filter::Breaker,
            removed: 0,
        }));
    }
    Err(ApiError::Upstream {
        message: format!(
            "all {tried} provider(s) tried for '{}' failed; try again later",
            req.model
        ),
        cause: last_error,
    })
}

fn check_scope(key: &KeyEntry, req: &Inference) -> Result<(), ApiError> {
    let scope = &key.record.scope;
    if let Some(ops) = &scope.allowed_operations
        && !ops.contains(&req.op)
    {
        return Err(ApiError::Forbidden(format!(
            "this key may not use the {} operation",
            req.op.as_str()
        )));
    }
    if let Some(models) = &scope.allowed_models
        && !models.iter().any(|m| m == &req.model)
    {
        return Err(ApiError::Forbidden(format!(
            "this key may not use model '{}'",
            req.model
        )));
    }
    Ok(())
}

fn rate_limited(l: crate::ratelimit::Limited) -> ApiError {
    use crate::ratelimit::Limited;
    match l {
        Limited::Requests { retry_after } => ApiError::RateLimited {
            message:
                "requests-per-minute limit of this key reached; retry after the Retry-After delay"
                    .into(),
            retry_after,
        },
        Limited::Tokens { retry_after } => ApiError::RateLimited {
            message:
                "tokens-per-minute limit of this key reached; retry after the Retry-After delay"
                    .into(),
            retry_after,
        },
        Limited::TooLarge { limit } => ApiError::RateLimited {
            message: format!(
                "this request's worst case exceeds the key's {limit} tokens per minute; lower max_tokens"
            ),
            retry_after: Duration::from_secs(60),
        },
    }
}

fn payment_error(e: BookError, worst: u64, prompt: u64, max_new: u64) -> ApiError {
    match e {
        BookError::Insufficient {
            asset,
            needed,
            available,
        } => ApiError::PaymentRequired(format!(
            "insufficient balance: this request may cost up to {needed} {asset} base units \
             (about {prompt} prompt + {max_new} completion tokens = {worst}), and {available} are available; \
             lower max_tokens or add funds"
        )),
        BookError::UnknownAccount(a) => {
            ApiError::PaymentRequired(format!("account {a} has no balance in its asset"))
        }
        BookError::Scope(refusal) => ApiError::PaymentRequired(format!(
            "delegation scope refuses this request ({prompt} prompt + {max_new} completion tokens at most): {refusal}"
        )),
        other => ApiError::Internal(other.to_string()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn rand_seed() -> u64 {
    let u = uuid::Uuid::new_v4().as_u64_pair();
    u.0 ^ u.1
}

async fn read_limited(
    resp: reqwest::Response,
    idle: Duration,
    max: usize,
) -> Result<Bytes, String> {
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(format!("body stalled for {} ms", idle.as_millis())),
            Ok(None) => return Ok(Bytes::from(buf)),
            Ok(Some(Err(e))) => return Err(error_chain(&e)),
            Ok(Some(Ok(b))) => {
                if buf.len() + b.len() > max {
                    return Err(format!("response larger than {max} bytes"));
                }
                buf.extend_from_slice(&b);
            }
        }
    }
}

#[derive(Deserialize)]
struct UsagePeek {
    #[serde(default)]
    usage: Option<UsageCounts>,
}

#[derive(Deserialize)]
struct UsageCounts {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Prices a whole answer, settles, and adds the cost to its usage and headers.
fn finish_whole(
    state: &AppState,
    entry: &ProviderEntry,
    r: Reservation,
    quote: Quote,
    request_id: &str,
    body: Bytes,
) -> Result<Response, ApiError> {
    let usage = serde_json::from_slice::<UsagePeek>(&body)
        .ok()
        .and_then(|p| p.usage);
    let (prompt, completion) = match &usage {
        Some(u) => (u.prompt_tokens, u.completion_tokens),
        None => {
            tracing::warn!(provider = %entry.info.id, "answer without usage; charging nothing");
            (0, 0)
        }
    };
    let cost = quote
        .cost(prompt.saturating_add(completion))
        .unwrap_or(r.amount);
    let charge = Charge {
        amount: cost,
        provider: &entry.info.id,
        request_id,
    };
    let settled = state
        .book
        .settle(r, charge, unix_now())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if settled.capped {
        tracing::warn!(provider = %entry.info.id, cost, charged = settled.charged, "cost above the reservation; capped");
    }
    state.metrics.tokens(prompt, completion);
    let asset = quote.asset.as_str();
    let out = if usage.is_some() {
        add_cost(&body, settled.charged, asset).unwrap_or(body)
    } else {
        body
    };
    let mut resp = Response::new(Body::from(out));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&settled.charged.to_string()) {
        h.insert("x-tenzro-cost", v);
    }
    h.insert("x-tenzro-asset", HeaderValue::from_static(asset));
    if let Ok(v) = HeaderValue::from_str(&entry.info.id) {
        h.insert("x-tenzro-provider", v);
    }
    Ok(resp)
}

/// Sets `usage.cost` and `usage.asset` in a JSON body, keeping the rest.
fn add_cost(body: &[u8], cost: u128, asset: &str) -> Option<Bytes> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let usage = v.get_mut("usage")?.as_object_mut()?;
    usage.insert("cost".into(), cost.to_string().into());
    usage.insert("asset".into(), asset.into());
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// Charges what a stream metered when it ends, however it ends (finished, cut by
/// the provider, or dropped because the client went away).
struct Settlement {
    book: Arc<Book>,
    request_id: String,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    reservation: Option<Reservation>,
    meter: Meter,
    entry: Arc<ProviderEntry>,
    /// `Some(true)` finished, `Some(false)` cut by the provider, `None` client left.
    outcome: Option<bool>,
    ttfb: Duration,
    _in_flight: InFlight,
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            let m = &self.meter;
            let charge = Charge {
                amount: m.cost,
                provider: &self.entry.info.id,
                request_id: &self.request_id,
            };
            match self.book.settle(r, charge, unix_now()) {
                Ok(s) if s.capped => {
                    tracing::warn!(provider = %self.entry.info.id, cost = m.cost, "stream cost above the reservation; capped")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "settling a stream failed"),
            }
            self.metrics.tokens(m.prompt_tokens, m.completion_tokens);
        }
        let now = self.registry.now();
        match self.outcome {
            Some(true) => self
                .entry
                .record(now, Outcome::Success { latency: self.ttfb }),
            Some(false) => self.entry.record(now, Outcome::Failure),
            None => {}
        }
    }
}

struct Relay {
    upstream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    first: Option<Bytes>,
    splitter: SseSplitter,
    idle: Duration,
    include_usage: bool,
    settlement: Settlement,
    finished: bool,
}

impl Relay {
    async fn next_bytes(&mut self) -> Option<Bytes> {
        loop {
            if self.finished {
                return None;
            }
            let chunk = match self.first.take() {
                Some(b) => Ok(b),
                None => match tokio::time::timeout(self.idle, self.upstream.next()).await {
                    Ok(Some(Ok(b))) => Ok(b),
                    Ok(Some(Err(e))) => {
                        Err(format!("the provider's stream broke: {}", error_chain(&e)))
                    }
                    Ok(None) => Err("the provider ended the stream early".to_owned()),
                    Err(_) => Err(format!(
                        "the provider went silent for {} ms",
                        self.idle.as_millis()
                    )),
                },
            };
            let out = match chunk {
                Ok(b) => self.process(&b),
                Err(message) => {
                    tracing::warn!(provider = %self.settlement.entry.info.id, %message, "stream cut");
                    self.cut(&message)
                }
            };
            if !out.is_empty() {
                return Some(Bytes::from(out));
            }
        }
    }

    fn cut(&mut self, message: &str) -> Vec<u8> {
        self.finished = true;
        self.settlement.outcome = Some(false);
        let body = tenzro_models::api::ErrorBody::new(
            "upstream_error",
            format!("{message}; you were charged only for the tokens received"),
        )
        .with_code("stream_interrupted");
        metering::sse(&serde_json::to_vec(&body).unwrap_or_default())
    }

    fn process(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + 64);
        for ev in self.splitter.push(bytes) {
            if self.finished {
                break;
            }
            let data = metering::event_data(&ev);
            match metering::classify(data.as_deref()) {
                Event::Empty | Event::Opaque => {
                    out.extend_from_slice(&ev);
                    out.extend_from_slice(b"\n\n");
                }
                Event::Done => {
                    let m = &self.settlement.meter;
                    out.extend_from_slice(&metering::cost_comment(m.cost, m.quote.asset));
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    self.finished = true;
                    self.settlement.outcome = Some(true);
                }
                Event::Chunk(p) if p.error.is_some() => {
                    out.extend_from_slice(&ev);
                    out.extend_from_slice(b"\n\n");
                    self.finished = true;
                    self.settlement.outcome = Some(false);
                }
                Event::Chunk(p) => {
                    let s = &mut self.settlement;
                    if (p.has_choices() || p.usage.is_none())
                        && let Err(e) = s.meter.on_tokens(p.tokens())
                    {
                        tracing::error!(error = %e, "metering overflow");
                    }
                    let has_choices = p.has_choices();
                    let Some(usage) = p.usage else {
                        if let Some(r) = &s.reservation
                            && let Err(e) =
                                s.book
                                    .progress(r, s.meter.cost, &s.entry.info.id, unix_now())
                        {
                            tracing::error!(error = %e, "metering into the channel failed");
                        }
                        out.extend_from_slice(&ev);
                        out.extend_from_slice(b"\n\n");
                        continue;
                    };
                    if let Err(e) = s.meter.on_usage(&usage) {
                        tracing::error!(error = %e, "metering overflow");
                    }
                    if let Some(r) = &s.reservation
                        && let Err(e) =
                            s.book
                                .progress(r, s.meter.cost, &s.entry.info.id, unix_now())
                    {
                        tracing::error!(error = %e, "metering into the channel failed");
                    }
                    let data = data.unwrap_or_default();
                    let rewritten = if self.include_usage {
                        metering::rewrite_usage(&data, Some(&s.meter.usage())).ok()
                    } else if has_choices {
                        metering::rewrite_usage(&data, None).ok()
                    } else {
                        None
                    };
                    if let Some(d) = rewritten {
                        out.extend_from_slice(&metering::sse(&d));
                    }
                }
            }
        }
        out
    }
}
