//! A streamed answer: wait for the first body bytes (a provider that fails now can
//! still be replaced), then hand the reservation to the [`Relay`] and answer with
//! its event stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::attempt::{Answer, Attempt, Call};
use super::relay::{Limits, Relay, Settlement};
use super::{Held, InFlight, error_chain};
use crate::http::error::ApiError;
use crate::metering::{Meter, SseSplitter};
use crate::money::book::Reservation;
use crate::providers::registry::{Outcome, ProviderEntry};
use crate::verify::Texts;

/// The provider's body as a stream of byte chunks.
type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

pub(super) async fn answer(
    call: &Call<'_>,
    a: Answer,
    held: &mut Held,
) -> Result<Attempt, ApiError> {
    let (state, entry) = (call.state, a.priced.entry.clone());
    let cfg = &state.config;
    let mut upstream: Upstream = Box::pin(a.resp.bytes_stream());
    let first = match first_chunk(&mut upstream, a.sent, cfg.upstream.first_byte_timeout()).await {
        Ok(b) => b,
        Err(e) => {
            entry.record(state.registry.now(), Outcome::Failure);
            return Ok(Attempt::Failed(format!("{}: {e}", entry.info.id)));
        }
    };
    let ttfb = a.sent.elapsed();
    state.metrics.upstream(&entry.info.id, ttfb);
    let Some(r) = held.take() else {
        return Ok(Attempt::Stop);
    };
    let (quote, bounds) = (a.priced.quote, a.priced.bounds);
    let settlement = settlement(
        call,
        &entry,
        r,
        Meter::new(quote, bounds),
        ttfb,
        a.in_flight,
    );
    let texts = a.audit.check.is_some().then(|| Texts::new(bounds.choices));
    let relay = Relay {
        upstream,
        first: Some(first),
        splitter: SseSplitter::default(),
        limits: Limits {
            idle: cfg.upstream.idle_timeout(),
            max_bytes: cfg.upstream.max_response_bytes,
            max_event: cfg.upstream.max_event_bytes,
        },
        include_usage: call.req.include_usage,
        settlement,
        finished: false,
        read: 0,
        audit: a.audit,
        texts,
        receipt: None,
        // Model audits (`crate::audit::tap`): drawn now, offered at `[DONE]`.
        tap: state.audits.tap(
            call.request_id,
            &entry,
            &call.req.model,
            call.req.path,
            &call.req.body,
        ),
    };
    let resp = sse_response(relay, call, &entry.info.id, &a.channel);
    state
        .metrics
        .overhead(call.req.path, a.sent.duration_since(call.started));
    Ok(Attempt::Answered(resp))
}

/// What settles the reservation `r` when the stream ends, however it ends.
fn settlement(
    call: &Call<'_>,
    entry: &Arc<ProviderEntry>,
    r: Reservation,
    meter: Meter,
    ttfb: Duration,
    in_flight: InFlight,
) -> Settlement {
    let state = call.state;
    Settlement {
        book: state.book.clone(),
        request_id: call.request_id.to_owned(),
        registry: state.registry.clone(),
        metrics: state.metrics.clone(),
        reservation: Some(r),
        meter,
        entry: entry.clone(),
        outcome: None,
        ttfb,
        _in_flight: in_flight,
    }
}

/// The stream's first bytes, within `deadline` of `sent`; the error says why not.
async fn first_chunk(
    upstream: &mut Upstream,
    sent: Instant,
    deadline: Duration,
) -> Result<Bytes, String> {
    let left = deadline.saturating_sub(sent.elapsed());
    match tokio::time::timeout(left, upstream.next()).await {
        Ok(Some(Ok(b))) => Ok(b),
        Ok(Some(Err(e))) => Err(error_chain(&e)),
        Ok(None) => Err("empty stream".to_owned()),
        Err(_) => Err(format!("no first chunk within {} ms", deadline.as_millis())),
    }
}

/// The event stream's response: the relay's events, their content type and the
/// gateway's headers.
fn sse_response(relay: Relay, call: &Call<'_>, provider: &str, channel: &str) -> Response {
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
        HeaderValue::from_static(call.key.asset.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(provider) {
        h.insert("x-tenzro-provider", v);
    }
    if let Ok(v) = HeaderValue::from_str(channel) {
        h.insert("x-tenzro-channel", v);
    }
    resp
}
