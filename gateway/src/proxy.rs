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
//! A stream cut by the provider (or by the gateway's limits: `max_response_bytes`,
//! `max_event_bytes`) ends with an `error` event (which OpenAI SDKs raise as
//! `APIError`). Once a chunk reached the client, the prompt is owed: a cut stream pays
//! the verified completion tokens of the chunks relayed plus the prompt (the
//! provider's count bounded by the gateway's estimate, or the estimate when the
//! usage never came).
//!
//! Admission prices the worst case per candidate (`n` × prompts × max new tokens,
//! plus the prompt bound): a candidate whose quote overflows, or whose worst case the
//! balance or the key's scope refuses, is skipped with its reason; the request fails
//! only when none is left. What a response is charged, and when a provider is slashed
//! for fraud, is in [`crate::verify`]. Every request sent upstream carries the payer's
//! signature (`x-tenzro-payer-auth`, [`tenzro_attest::payer`]).

mod relay;

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
use crate::metering::{Meter, SseSplitter};
use crate::money::book::{Book, BookError, Charge, Reservation};
use crate::money::scope::ScopeRefusal;
use crate::money::slashing::Reason;
use crate::pricing::Quote;
use crate::registry::{Outcome, ProviderEntry, Registry};
use crate::routing::{self, Filter, NoProvider, RouteRequest, Weights};
use crate::state::AppState;
use crate::verify::{self, Bounds, Texts};
use relay::{Limits, Relay, Settlement};
use tenzro_attest::PublicKey;
use tenzro_attest::payer::{PAYER_AUTH_HEADER, PaidRequest};

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
    /// Choices generated: `n` × the number of prompts (1 for embeddings).
    pub choices: u64,
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

/// One provider we may call, priced for this request's worst case.
struct Priced {
    entry: Arc<ProviderEntry>,
    quote: Quote,
    bounds: Bounds,
    /// The worst case's cost on this provider.
    worst: u128,
}

/// What a response's receipt and claims are judged against.
pub(crate) struct Audit {
    pub request_id: String,
    pub model: String,
    /// SHA-256 of the exact body sent upstream.
    pub request_sha256: [u8; 32],
    /// The provider's registered key and declared weight digest, when this response's
    /// receipt is checked (a registered key, and sampled).
    pub check: Option<(PublicKey, Option<[u8; 32]>)>,
}

impl Audit {
    /// Every reason the response cannot be honest (empty when none).
    pub fn faults(
        &self,
        bounds: &Bounds,
        claimed: Option<(u64, u64)>,
        chunk_tokens: Option<u64>,
        receipt: Option<&serde_json::Value>,
        response_sha256: [u8; 32],
    ) -> Vec<String> {
        let mut faults = Vec::new();
        // The receipt signs `usage`: chunks claiming more than it contradict it.
        if let (Some((_, completion)), Some(chunks)) = (claimed, chunk_tokens)
            && chunks > completion
        {
            faults.push(format!(
                "the stream's chunks claimed {chunks} completion tokens (tenzro.tokens) but its usage says {completion}"
            ));
        }
        if let Some((_, completion)) = claimed
            && let Some(why) = bounds.impossible_claim(completion)
        {
            faults.push(why);
        }
        if let Some((key, weights)) = &self.check {
            let expected = verify::Expected {
                key,
                model: &self.model,
                weight_sha256: *weights,
                request_sha256: self.request_sha256,
                response_sha256,
                usage: claimed,
            };
            if let Err(why) = verify::check_receipt(receipt, &expected) {
                faults.push(why);
            }
        }
        faults
    }
}

/// Records a fraud incident (whitepaper §3.2, 25% of the stake) with its evidence;
/// true when there was one (the response then counts as a failure for the
/// provider's breaker and status, so a provider that keeps cheating leaves routing).
fn slash_for_fraud(
    registry: &Registry,
    provider: &str,
    request_id: &str,
    faults: Vec<String>,
) -> bool {
    if faults.is_empty() {
        return false;
    }
    let detail = format!("request {request_id}: {}", faults.join("; "));
    if registry
        .slash(provider, Reason::FraudulentResults, &detail)
        .is_none()
    {
        tracing::warn!(%provider, %detail, "fraud by a provider no longer registered");
    }
    true
}

/// The bounds of a request on a provider that declared `context` for the model.
fn bounds_for(req: &Inference, context: Option<u32>, default_max_tokens: u32) -> Bounds {
    let (max_new, hard_cap) = if !req.generates {
        (0, true)
    } else {
        match (req.max_tokens, context) {
            (Some(n), _) => (u64::from(n), true),
            (None, Some(c)) => (u64::from(c), true),
            (None, None) => (u64::from(default_max_tokens), false),
        }
    };
    Bounds {
        prompt_estimate: req.prompt_estimate,
        choices: if req.generates { req.choices.max(1) } else { 1 },
        max_new,
        hard_cap,
        generates: req.generates,
    }
}

/// The most a request may cost under a scope that refused a larger amount, when the
/// refusal was about the amount (`None`: no amount would do).
fn scope_room(refusal: &ScopeRefusal) -> Option<u128> {
    match refusal {
        ScopeRefusal::Transaction { worst, over, .. }
        | ScopeRefusal::Daily { worst, over, .. }
        | ScopeRefusal::AncestorDaily { worst, over, .. } => Some(worst.saturating_sub(*over)),
        _ => None,
    }
}

/// At most this many skipped candidates are named in an error.
const SKIPS_SHOWN: usize = 5;

fn with_skips(message: String, skipped: &[String]) -> String {
    if skipped.is_empty() {
        return message;
    }
    let shown: Vec<&str> = skipped
        .iter()
        .take(SKIPS_SHOWN)
        .map(String::as_str)
        .collect();
    let more = skipped.len().saturating_sub(SKIPS_SHOWN);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{message} (providers skipped: {}{tail})", shown.join("; "))
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
    let pool = state
        .registry
        .candidates_for(&req.model, key.asset, rates, req.ext.tee);
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

    // Admission: the worst case per candidate; one that cannot be priced is skipped.
    let mut skipped: Vec<String> = Vec::new();
    let mut priced: Vec<Priced> = Vec::new();
    for i in order {
        let (e, _, q) = &pool[i];
        let Some(quote) = *q else { continue };
        let context = e.info.model(&req.model).and_then(|m| m.info.max_context);
        let bounds = bounds_for(&req, context, cfg.limits.default_max_tokens);
        match quote.cost(bounds.worst_tokens()) {
            Ok(worst) => priced.push(Priced {
                entry: e.clone(),
                quote,
                bounds,
                worst,
            }),
            Err(err) => skipped.push(format!(
                "{}: cannot price {} tokens: {err}",
                e.info.id,
                bounds.worst_tokens()
            )),
        }
    }
    // Hold the most expensive of the providers we may try; when the balance or the
    // scope refuses it, drop the candidates it refuses and try the rest.
    state.lease(&key.record.account).await?;
    let mut refusal_err: Option<ApiError> = None;
    let reserved = loop {
        let window = &priced[..priced.len().min(cfg.upstream.max_attempts)];
        let Some(top) = window.iter().max_by_key(|p| p.worst) else {
            break None;
        };
        let (amount, top_bounds) = (top.worst, top.bounds);
        match state.book.reserve(
            &key.record.account,
            key.asset,
            amount,
            Some((&key.record.id, &key.limits)),
            unix_now(),
        ) {
            Ok(r) => break Some(r),
            Err(e @ BookError::Insufficient { available, .. }) => {
                for p in priced.iter().filter(|p| p.worst > available) {
                    skipped.push(format!(
                        "{}: may cost up to {} and {available} are available",
                        p.entry.info.id, p.worst
                    ));
                }
                priced.retain(|p| p.worst <= available);
                refusal_err = Some(payment_error(e, &top_bounds));
            }
            Err(BookError::Scope(refusal)) => {
                // Only a limit on the amount can admit a cheaper candidate.
                let Some(room) = scope_room(&refusal) else {
                    return Err(payment_error(BookError::Scope(refusal), &top_bounds));
                };
                for p in priced.iter().filter(|p| p.worst > room) {
                    skipped.push(format!(
                        "{}: may cost up to {}, over what the key's scope allows ({room})",
                        p.entry.info.id, p.worst
                    ));
                }
                priced.retain(|p| p.worst <= room);
                refusal_err = Some(payment_error(BookError::Scope(refusal), &top_bounds));
            }
            Err(e) => return Err(payment_error(e, &top_bounds)),
        }
    };
    let Some(reservation) = reserved else {
        return Err(match refusal_err {
            Some(ApiError::PaymentRequired(m)) => {
                ApiError::PaymentRequired(with_skips(m, &skipped))
            }
            Some(other) => other,
            None if !skipped.is_empty() => ApiError::bad_request(with_skips(
                format!(
                    "cannot price this request on any provider of '{}'",
                    req.model
                ),
                &skipped,
            )),
            None => ApiError::NoProvider(NoProvider {
                model: req.model,
                filter: Filter::Model,
                removed: 0,
            }),
        });
    };
    priced.truncate(cfg.upstream.max_attempts);
    if !skipped.is_empty() {
        tracing::info!(model = %req.model, skipped = ?skipped, "candidates skipped at admission");
    }
    let worst_tokens = priced
        .iter()
        .map(|p| p.bounds.worst_tokens())
        .max()
        .unwrap_or(req.prompt_estimate);
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
    let request_sha256 = tenzro_attest::sha256(&req.body);
    let mut last_error = String::from("no provider accepted the request");
    let mut tried = 0usize;
    // The last provider refusal (4xx other than 429), relayed when no candidate answers.
    let mut refused: Option<(StatusCode, Bytes)> = None;
    for Priced {
        entry,
        quote,
        bounds,
        ..
    } in priced
    {
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
        let audit = Audit {
            request_id: request_id.to_owned(),
            model: req.model.clone(),
            request_sha256,
            check: entry
                .info
                .public_key
                .filter(|_| verify::sampled(cfg.receipts.verify_sample_ppm, rand_seed()))
                .map(|k| (k, declared_weights(&entry, &req.model))),
        };
        let url = format!("{}{}", entry.info.endpoint, req.path);
        let payer_auth = PaidRequest {
            method: "POST",
            path_and_query: req.path,
            channel_id: &channel,
            body: &req.body,
        }
        .sign(&state.payer_key, unix_now());
        let sent = Instant::now();
        let pre_upstream = sent.duration_since(started);
        let call = state
            .client
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", request_id)
            .header("x-tenzro-channel", &channel)
            .header(PAYER_AUTH_HEADER, payer_auth)
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
            // A provider's refusal is not trusted to judge the request (the gateway
            // already validated it): it counts as a failure for its breaker and the
            // next candidate gets the request; only when none is left is the last
            // refusal relayed (a registrant answering 400 at once must not win routing
            // and fail every request for the model).
            entry.record(state.registry.now(), Outcome::Failure);
            let body = read_limited(resp, cfg.upstream.idle_timeout(), 1 << 20)
                .await
                .unwrap_or_default();
            tracing::warn!(provider = %entry.info.id, status = status.as_u16(), "upstream refused the request; trying the next");
            last_error = format!("{}: HTTP {}", entry.info.id, status.as_u16());
            let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            refused = Some((status, body));
            continue;
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
            state.metrics.upstream(&entry.info.id, waited);
            let Some(r) = reservation.take() else { break };
            let after = Instant::now();
            let (mut resp, fraud) = finish_whole(state, &entry, r, (quote, &bounds), &audit, body)?;
            let outcome = if fraud {
                Outcome::Failure
            } else {
                Outcome::Success { latency: waited }
            };
            entry.record(state.registry.now(), outcome);
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
            meter: Meter::new(quote, bounds),
            entry: entry.clone(),
            outcome: None,
            ttfb,
            _in_flight: in_flight,
        };
        let texts = audit.check.is_some().then(|| Texts::new(bounds.choices));
        let relay = Relay {
            upstream,
            first: Some(first),
            splitter: SseSplitter::default(),
            limits: Limits {
                idle: cfg.upstream.idle_timeout(),
                max_bytes: cfg.upstream.max_response_bytes,
                max_event: cfg.upstream.max_event_bytes,
            },
            include_usage: req.include_usage,
            settlement,
            finished: false,
            read: 0,
            audit,
            texts,
            receipt: None,
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
    if let Some((status, body)) = refused {
        return Err(ApiError::Relayed { status, body });
    }
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

fn payment_error(e: BookError, b: &Bounds) -> ApiError {
    let (prompt, completion, worst) = (b.prompt_estimate, b.completion_cap(), b.worst_tokens());
    let choices = if b.choices > 1 {
        format!(" for {} choices", b.choices)
    } else {
        String::new()
    };
    match e {
        BookError::Insufficient {
            asset,
            needed,
            available,
        } => ApiError::PaymentRequired(format!(
            "insufficient balance: this request may cost up to {needed} {asset} base units \
             (about {prompt} prompt + {completion} completion tokens{choices} = {worst}), and {available} are available; \
             lower max_tokens or add funds"
        )),
        BookError::UnknownAccount(a) => {
            ApiError::PaymentRequired(format!("account {a} has no balance in its asset"))
        }
        BookError::Scope(refusal) => ApiError::PaymentRequired(format!(
            "delegation scope refuses this request ({prompt} prompt + {completion} completion tokens{choices} at most): {refusal}"
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

/// The declared weight digest of `model` on a provider, when it declared one.
fn declared_weights(entry: &ProviderEntry, model: &str) -> Option<[u8; 32]> {
    let hex = entry.info.model(model)?.info.weight_sha256.as_deref()?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

/// Prices a whole answer at its verified token counts, judges its receipt, settles,
/// and writes the charged counts and cost into its usage and headers; true when the
/// answer was fraudulent.
fn finish_whole(
    state: &AppState,
    entry: &ProviderEntry,
    r: Reservation,
    (quote, bounds): (Quote, &Bounds),
    audit: &Audit,
    body: Bytes,
) -> Result<(Response, bool), ApiError> {
    let whole = verify::read_whole(&body).unwrap_or_default();
    let (prompt, completion) = match whole.usage {
        Some((p, c)) => (
            bounds.prompt_bound(p),
            c.min(bounds.completion_bound(None, whole.text_bytes, whole.tool_calls)),
        ),
        None => {
            tracing::warn!(provider = %entry.info.id, "answer without usage; charging nothing");
            (0, 0)
        }
    };
    let faults = audit.faults(
        bounds,
        whole.usage,
        None,
        whole.receipt.as_ref(),
        whole.response_sha256,
    );
    let fraud = slash_for_fraud(&state.registry, &entry.info.id, &audit.request_id, faults);
    let cost = quote
        .cost(prompt.saturating_add(completion))
        .unwrap_or(r.amount);
    let charge = Charge {
        amount: cost,
        provider: &entry.info.id,
        request_id: &audit.request_id,
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
    let out = if whole.usage.is_some() {
        add_cost(&body, (prompt, completion), settled.charged, asset).unwrap_or(body)
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
    Ok((resp, fraud))
}

/// Sets the charged token counts, `usage.cost` and `usage.asset` in a JSON body,
/// keeping the rest.
fn add_cost(
    body: &[u8],
    (prompt, completion): (u64, u64),
    cost: u128,
    asset: &str,
) -> Option<Bytes> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let usage = v.get_mut("usage")?.as_object_mut()?;
    usage.insert("prompt_tokens".into(), prompt.into());
    if usage.contains_key("completion_tokens") {
        usage.insert("completion_tokens".into(), completion.into());
    }
    usage.insert(
        "total_tokens".into(),
        prompt.saturating_add(completion).into(),
    );
    usage.insert("cost".into(), cost.to_string().into());
    usage.insert("asset".into(), asset.into());
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(refusal: ScopeRefusal, expect: Option<u128>) {
        assert_eq!(scope_room(&refusal), expect, "{refusal}");
    }

    #[test]
    fn only_amount_limits_leave_room_for_a_cheaper_candidate() {
        check(
            ScopeRefusal::Transaction {
                worst: 100,
                limit: 60,
                over: 40,
            },
            Some(60),
        );
        check(
            ScopeRefusal::Daily {
                spent: 10,
                pending: 5,
                worst: 100,
                limit: 50,
                over: 65,
            },
            Some(35),
        );
        check(
            ScopeRefusal::AncestorDaily {
                key: "k".into(),
                spent: 0,
                pending: 0,
                worst: 10,
                limit: 0,
                over: 10,
            },
            Some(0),
        );
        check(ScopeRefusal::Protocol("x".into()), None);
        check(
            ScopeRefusal::Time {
                now: 5,
                not_before: Some(10),
                not_after: None,
            },
            None,
        );
    }

    #[test]
    fn bounds_follow_the_request_and_the_provider() {
        let req = |max_tokens, choices, generates| Inference {
            op: Operation::Chat,
            path: "/v1/chat/completions",
            model: "m".into(),
            body: Bytes::new(),
            stream: false,
            include_usage: false,
            prompt_estimate: 34,
            max_tokens,
            generates,
            choices,
            ext: RequestExt::default(),
        };
        let b = bounds_for(&req(Some(8), 16, true), Some(1024), 4096);
        assert_eq!((b.max_new, b.hard_cap, b.completion_cap()), (8, true, 128));
        assert_eq!(b.worst_tokens(), 34 + 128);
        let b = bounds_for(&req(None, 1, true), Some(1024), 4096);
        assert_eq!((b.max_new, b.hard_cap), (1024, true));
        let b = bounds_for(&req(None, 2, true), None, 4096);
        assert_eq!(
            (b.max_new, b.hard_cap, b.completion_cap()),
            (4096, false, 8192)
        );
        let b = bounds_for(&req(None, 5, false), None, 4096);
        assert_eq!(
            (b.choices, b.completion_cap(), b.worst_tokens()),
            (1, 0, 34)
        );
    }
}
