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

mod admit;
mod answer_json;
mod attempt;
pub mod forward;
mod h2c;
mod relay;
mod stream;
pub mod upstream;
mod whole;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tenzro_attest::PublicKey;

use crate::accounts::{KeyEntry, Operation};
use crate::http::error::ApiError;
use crate::money::book::{Book, Reservation};
use crate::money::slashing::Reason;
use crate::providers::registry::{ProviderEntry, Registry};
use crate::providers::routing::{self, Filter, NoProvider};
use crate::state::AppState;
use crate::verify::{self, Bounds};
use attempt::{Attempt, Call};

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

/// Plan → admit → try each candidate in order → the whole answer or the streamed
/// relay; when none answers, the last refusal or the failures.
pub async fn run(
    state: &AppState,
    key: &KeyEntry,
    req: Inference,
    request_id: &str,
    started: Instant,
) -> Result<Response, ApiError> {
    let plan = admit::plan(state, key, &req)?;
    let (priced, reservation) = admit::admit(state, key, &req, plan).await?;
    // Released on every path that does not hand it to a settlement, including this
    // future being dropped because the client went away.
    let mut held = Held {
        book: state.book.clone(),
        reservation: Some(reservation),
    };
    let call = Call {
        state,
        key,
        req: &req,
        request_id,
        started,
        request_sha256: tenzro_attest::sha256(&req.body),
    };
    let mut last_error = String::from("no provider accepted the request");
    let mut tried = 0usize;
    // The last provider refusal (4xx other than 429), relayed when no candidate answers.
    let mut refused: Option<(StatusCode, Bytes)> = None;
    for p in priced {
        match call.attempt(p, &mut held).await? {
            Attempt::NotTried => continue,
            Attempt::Answered(resp) => return Ok(resp),
            Attempt::Failed(e) => last_error = e,
            Attempt::Refused(e, status, body) => {
                last_error = e;
                refused = Some((status, body));
            }
            Attempt::Stop => {
                tried += 1;
                break;
            }
        }
        tried += 1;
    }
    drop(held);
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

/// A routing seed or sampling draw: rand's thread-local ChaCha generator (seeded
/// from the OS, reseeded as it goes), with no syscall per request.
fn rand_seed() -> u64 {
    rand::random()
}

async fn read_limited(
    resp: reqwest::Response,
    idle: Duration,
    max: usize,
) -> Result<Bytes, String> {
    let mut stream = resp.bytes_stream();
    // A body that comes in one chunk (the usual case) is kept as it came; only a
    // second chunk starts a copy.
    let mut first: Option<Bytes> = None;
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(format!("body stalled for {} ms", idle.as_millis())),
            Ok(None) => return Ok(first.unwrap_or_else(|| Bytes::from(buf))),
            Ok(Some(Err(e))) => return Err(error_chain(&e)),
            Ok(Some(Ok(b))) => {
                let held = first.as_ref().map_or(buf.len(), Bytes::len);
                if held + b.len() > max {
                    return Err(format!("response larger than {max} bytes"));
                }
                match first.take() {
                    None if buf.is_empty() => first = Some(b),
                    Some(f) => {
                        buf.reserve(f.len() + b.len());
                        buf.extend_from_slice(&f);
                        buf.extend_from_slice(&b);
                    }
                    None => buf.extend_from_slice(&b),
                }
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

#[cfg(test)]
mod tests {
    use super::admit::{bounds_for, scope_room};
    use super::*;
    use crate::money::scope::ScopeRefusal;

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
