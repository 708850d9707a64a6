//! The streaming relay: splits the provider's SSE into events, meters each chunk
//! within the gateway's bounds, cuts streams that pass the limits, judges the
//! receipt at `[DONE]`, and settles however the stream ends.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tenzro_models::api::Usage;

use super::{Audit, InFlight, error_chain};
use crate::metering::{self, ChunkPeek, Event, Meter, SseSplitter};
use crate::metrics::Metrics;
use crate::money::book::{Book, Charge, Reservation};
use crate::providers::registry::{Outcome, ProviderEntry, Registry};
use crate::verify::Texts;

/// Charges what a stream metered when it ends, however it ends (finished, cut by
/// the provider or the limits, or dropped because the client went away).
pub(super) struct Settlement {
    pub book: Arc<Book>,
    pub request_id: String,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub reservation: Option<Reservation>,
    pub meter: Meter,
    pub entry: Arc<ProviderEntry>,
    /// `Some(true)` finished, `Some(false)` cut, `None` client left.
    pub outcome: Option<bool>,
    pub ttfb: Duration,
    /// Held for its `Drop`: the provider's in-flight count falls when the stream ends.
    pub _in_flight: InFlight,
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            // Once a chunk reached the client the prompt is owed (issue 11).
            if let Err(e) = self.meter.on_cut() {
                tracing::error!(error = %e, "metering overflow");
            }
            let m = &self.meter;
            let charge = Charge {
                amount: m.cost,
                provider: &self.entry.info.id,
                request_id: &self.request_id,
            };
            match self.book.settle(r, charge, self.registry.unix_now()) {
                Ok(s) if s.capped => {
                    tracing::warn!(provider = %self.entry.info.id, cost = m.cost, "stream cost above the reservation; capped")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "settling a stream failed"),
            }
            self.metrics.tokens(m.prompt_tokens, m.completion_tokens);
            let tokens = m.prompt_tokens.saturating_add(m.completion_tokens);
            let now = self.registry.unix_now();
            self.metrics
                .recent
                .charged(now, m.quote.asset, m.cost, tokens);
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

/// How long and how much a stream may take.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Longest silence between two reads.
    pub idle: Duration,
    /// Bytes read from the provider in all (`upstream.max_response_bytes`).
    pub max_bytes: usize,
    /// Bytes of one event not yet terminated (`upstream.max_event_bytes`).
    pub max_event: usize,
}

pub(super) struct Relay {
    pub upstream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    pub first: Option<Bytes>,
    pub splitter: SseSplitter,
    pub limits: Limits,
    pub include_usage: bool,
    pub settlement: Settlement,
    pub finished: bool,
    /// Bytes read from the provider so far.
    pub read: usize,
    pub audit: Audit,
    /// Each choice's text, kept only when the receipt is checked.
    pub texts: Option<Texts>,
    /// The last receipt a chunk carried.
    pub receipt: Option<serde_json::Value>,
    /// Picked for a model audit: choice 0's text, offered at `[DONE]`.
    pub tap: Option<crate::audit::tap::Tap>,
}

impl Relay {
    pub async fn next_bytes(&mut self) -> Option<Bytes> {
        loop {
            if self.finished {
                return None;
            }
            let chunk = match self.first.take() {
                Some(b) => Ok(b),
                None => match tokio::time::timeout(self.limits.idle, self.upstream.next()).await {
                    Ok(Some(Ok(b))) => Ok(b),
                    Ok(Some(Err(e))) => Err((
                        format!("the provider's stream broke: {}", error_chain(&e)),
                        true,
                    )),
                    Ok(None) => Err(("the provider ended the stream early".to_owned(), true)),
                    Err(_) => Err((
                        format!(
                            "the provider went silent for {} ms",
                            self.limits.idle.as_millis()
                        ),
                        false,
                    )),
                },
            };
            let out = match chunk {
                Ok(b) => {
                    self.read = self.read.saturating_add(b.len());
                    if self.read > self.limits.max_bytes {
                        let message = format!(
                            "the provider's answer passed {} bytes (upstream.max_response_bytes)",
                            self.limits.max_bytes
                        );
                        tracing::warn!(provider = %self.settlement.entry.info.id, %message, "stream cut");
                        self.cut(&message)
                    } else {
                        let mut out = self.process(&b);
                        if !self.finished && self.splitter.pending() > self.limits.max_event {
                            let message = format!(
                                "the provider sent an event longer than {} bytes (upstream.max_event_bytes)",
                                self.limits.max_event
                            );
                            tracing::warn!(provider = %self.settlement.entry.info.id, %message, "stream cut");
                            out.extend(self.cut(&message));
                        }
                        out
                    }
                }
                Err((message, provider_ended)) => {
                    tracing::warn!(provider = %self.settlement.entry.info.id, %message, "stream cut");
                    if provider_ended {
                        self.judge_end();
                    }
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
        // Free what a pending event held.
        self.splitter = SseSplitter::default();
        self.texts = None;
        let body = tenzro_models::api::ErrorBody::new(
            "upstream_error",
            format!("{message}; you were charged only for what you received"),
        )
        .with_code("stream_interrupted");
        metering::sse(&serde_json::to_vec(&body).unwrap_or_default())
    }

    /// At `[DONE]`: a claim the request made impossible, or a receipt that is
    /// missing or false, is fraud (and the response a failure of the provider).
    fn judge(&mut self) {
        let m = &self.settlement.meter;
        let digest = self.texts.as_ref().map(Texts::digest).unwrap_or_default();
        let faults = self.audit.faults(
            &m.bounds,
            m.claimed,
            Some(m.chunk_tokens),
            self.receipt.as_ref(),
            digest,
        );
        let fraud = super::slash_for_fraud(
            &self.settlement.registry,
            &self.settlement.entry.info.id,
            &self.audit.request_id,
            faults,
        );
        self.settlement.outcome = Some(!fraud);
    }

    /// When the provider itself ended the stream before `[DONE]`: with a usage or a
    /// receipt, both are judged as at `[DONE]`; without, a chunk claim the request
    /// made impossible is fraud, and when the receipt was to be checked only the
    /// prompt is paid (ending early must not dodge the receipt check). Either way
    /// the response counts as a failure.
    fn judge_end(&mut self) {
        if self.receipt.is_some() || self.settlement.meter.complete {
            self.judge();
        } else {
            let m = &mut self.settlement.meter;
            let faults: Vec<String> = m
                .bounds
                .impossible_claim(m.chunk_tokens)
                .into_iter()
                .collect();
            super::slash_for_fraud(
                &self.settlement.registry,
                &self.settlement.entry.info.id,
                &self.audit.request_id,
                faults,
            );
            if self.audit.check.is_some()
                && let Err(e) = m.on_unproven_end()
            {
                tracing::error!(error = %e, "metering overflow");
            }
        }
        self.settlement.outcome = Some(false);
    }

    fn process(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + 64);
        for ev in self.splitter.push(bytes) {
            if self.finished {
                break;
            }
            let data = metering::event_data(&ev);
            match metering::classify(data.as_deref()) {
                Event::Empty | Event::Opaque => pass(&mut out, &ev),
                Event::Done => self.done(&mut out),
                Event::Chunk(p) if p.error.is_some() => {
                    pass(&mut out, &ev);
                    self.finished = true;
                    self.judge_end();
                }
                Event::Chunk(p) => {
                    self.observe(&p);
                    let has_choices = p.has_choices();
                    // Chunks are not committed to the channel as they pass: their
                    // claims may exceed the final usage, which caps the charge, and a
                    // channel charge cannot be taken back. The usage is committed
                    // below; a cut stream settles what it metered when it ends.
                    match p.usage {
                        None => pass(&mut out, &ev),
                        Some(usage) => {
                            let data = data.as_deref().unwrap_or_default();
                            self.final_usage(&mut out, &usage, has_choices, data);
                        }
                    }
                }
            }
        }
        out
    }

    /// `[DONE]`: the receipt is judged, the prompt owed, and the stream ends with
    /// its cost comment.
    fn done(&mut self, out: &mut Vec<u8>) {
        self.judge();
        if self.settlement.outcome == Some(true)
            && let Some(tap) = self.tap.take()
        {
            tap.finish();
        }
        let m = &mut self.settlement.meter;
        if let Err(e) = m.on_cut() {
            tracing::error!(error = %e, "metering overflow");
        }
        out.extend_from_slice(&metering::cost_comment(m.cost, m.quote.asset));
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.finished = true;
    }

    /// What a relayed chunk tells: each choice's text (for the response digest),
    /// the last receipt, and the completion tokens it claims.
    fn observe(&mut self, p: &ChunkPeek<'_>) {
        let s = &mut self.settlement;
        if let (Some(texts), Some(choices)) = (&mut self.texts, &p.choices) {
            for c in choices {
                texts.push(c.index, c.piece(), s.meter.bounds.choices);
            }
        }
        if let (Some(tap), Some(choices)) = (&mut self.tap, &p.choices) {
            for c in choices {
                let delta = c.delta.as_ref();
                let text = delta.and_then(|d| d.content.as_deref());
                let tool = delta.is_some_and(|d| d.tool_calls.is_some());
                tap.push(c.index, text.or(c.text.as_deref()), tool);
            }
        }
        if let Some(r) = p.receipt() {
            self.receipt = Some(r.clone());
        }
        if (p.has_choices() || p.usage.is_none())
            && let Err(e) = s
                .meter
                .on_chunk(p.tokens(), p.text_bytes(), p.tool_calls_started())
        {
            tracing::error!(error = %e, "metering overflow");
        }
    }

    /// The provider's usage chunk: it caps the charge, which is committed to the
    /// channel now, and reaches the client rewritten with the gateway's usage (or
    /// without it, when the client did not ask for usage).
    fn final_usage(&mut self, out: &mut Vec<u8>, usage: &Usage, has_choices: bool, data: &[u8]) {
        let s = &mut self.settlement;
        if let Err(e) = s.meter.on_usage(usage) {
            tracing::error!(error = %e, "metering overflow");
        }
        if let Some(r) = &s.reservation
            && let Err(e) =
                s.book
                    .progress(r, s.meter.cost, &s.entry.info.id, s.registry.unix_now())
        {
            tracing::error!(error = %e, "metering into the channel failed");
        }
        let rewritten = if self.include_usage {
            metering::rewrite_usage(data, Some(&s.meter.usage())).ok()
        } else if has_choices {
            metering::rewrite_usage(data, None).ok()
        } else {
            None
        };
        if let Some(d) = rewritten {
            out.extend_from_slice(&metering::sse(&d));
        }
    }
}

/// Relays an event as it came.
fn pass(out: &mut Vec<u8>, event: &[u8]) {
    out.extend_from_slice(event);
    out.extend_from_slice(b"\n\n");
}
