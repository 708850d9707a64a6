//! A non-streamed answer: read it whole (bounded), price it at its verified token
//! counts, judge its receipt, settle, and write the cost into it.

use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;

use super::answer_json::Members;
use super::attempt::{Answer, Attempt, Call};
use super::{Audit, Held, read_limited, slash_for_fraud};
use crate::http::error::ApiError;
use crate::money::book::{Charge, Reservation};
use crate::pricing::Quote;
use crate::providers::registry::{Outcome, ProviderEntry};
use crate::state::AppState;
use crate::verify::{self, Bounds};

pub(super) async fn answer(
    call: &Call<'_>,
    a: Answer,
    held: &mut Held,
) -> Result<Attempt, ApiError> {
    let (state, entry) = (call.state, &a.priced.entry);
    let cfg = &state.config;
    let body = match read_limited(
        a.resp,
        cfg.upstream.idle_timeout(),
        cfg.upstream.max_response_bytes,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            entry.record(state.registry.now(), Outcome::Failure);
            return Ok(Attempt::Failed(format!("{}: {e}", entry.info.id)));
        }
    };
    let waited = a.sent.elapsed();
    state.metrics.upstream(&entry.info.id, waited);
    // Read before anything is charged: an answer whose members the gateway cannot
    // read is not served with the provider's own usage and cost.
    let Some(members) = Members::of(&body) else {
        entry.record(state.registry.now(), Outcome::Failure);
        let e = format!(
            "{}: the answer is not a readable JSON object",
            entry.info.id
        );
        return Ok(Attempt::Failed(e));
    };
    let Some(r) = held.take() else {
        return Ok(Attempt::Stop);
    };
    let after = Instant::now();
    let (quote, bounds) = (a.priced.quote, a.priced.bounds);
    let served = body.clone();
    let answer = (&body, &members);
    let (mut resp, fraud) = finish_whole(state, entry, r, (quote, &bounds), &a.audit, answer)?;
    if !fraud {
        // Model audits (`crate::audit`): at the configured rate, off this path.
        let (req, id) = (call.req, call.request_id);
        state.audits.offer(|| {
            let body = req.body.clone();
            crate::audit::Sample::new(id, entry, &req.model, req.path, body, served)
        });
    }
    let outcome = if fraud {
        Outcome::Failure
    } else {
        Outcome::Success { latency: waited }
    };
    entry.record(state.registry.now(), outcome);
    if let Ok(v) = HeaderValue::from_str(&a.channel) {
        resp.headers_mut().insert("x-tenzro-channel", v);
    }
    drop(a.in_flight);
    let pre_upstream = a.sent.duration_since(call.started);
    state
        .metrics
        .overhead(call.req.path, pre_upstream + after.elapsed());
    Ok(Attempt::Answered(resp))
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
    (body, members): (&Bytes, &Members<'_>),
) -> Result<(Response, bool), ApiError> {
    let whole = verify::read_whole(body).unwrap_or_default();
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
        .settle(r, charge, state.clock.unix())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if settled.capped {
        tracing::warn!(provider = %entry.info.id, cost, charged = settled.charged, "cost above the reservation; capped");
    }
    state.metrics.tokens(prompt, completion);
    let tokens = prompt.saturating_add(completion);
    let now = state.clock.unix();
    state
        .metrics
        .recent
        .charged(now, quote.asset, settled.charged, tokens);
    let asset = quote.asset.as_str();
    // Whatever the provider wrote in its usage, the client reads what was charged
    // (nothing for usage the gateway could not read).
    let out = members.with_cost(body, (prompt, completion), settled.charged, asset);
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
