//! One attempt on one provider: take its breaker's permission, open the payment
//! channel, send the signed request before the first-byte deadline, and sort the
//! answer: a failure (try the next), a refusal (kept, try the next), or an answer
//! (whole or streamed).

use std::time::Instant;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use tenzro_attest::payer::{PAYER_AUTH_HEADER, PaidRequest};

use super::admit::Priced;
use super::{
    Audit, Held, InFlight, Inference, declared_weights, error_chain, rand_seed, read_limited,
};
use crate::accounts::KeyEntry;
use crate::clock::unix_now;
use crate::http::error::ApiError;
use crate::providers::registry::{Outcome, ProviderEntry};
use crate::state::AppState;
use crate::verify;

/// The headers every forwarded request carries, named once (a name given as a
/// `&str` is parsed and copied on every request).
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const CHANNEL: HeaderName = HeaderName::from_static("x-tenzro-channel");
const PAYER_AUTH: HeaderName = HeaderName::from_static(PAYER_AUTH_HEADER);

/// A header value that differs on every request (the payer's signature, the
/// request id): marked sensitive, so HTTP/2's HPACK sends it as a literal never
/// indexed instead of adding it to the connection's header table, where it would
/// evict entries that repeat (the channel, the content type) and never be reused.
fn unique(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

/// One request's context, shared by its attempts.
pub(super) struct Call<'a> {
    pub state: &'a AppState,
    pub key: &'a KeyEntry,
    pub req: &'a Inference,
    pub request_id: &'a str,
    pub started: Instant,
    /// SHA-256 of the exact body sent upstream.
    pub request_sha256: [u8; 32],
}

/// How one attempt ended.
pub(super) enum Attempt {
    /// The breaker did not admit it: not tried.
    NotTried,
    /// Failed before an answer (counted against the provider): try the next.
    Failed(String),
    /// The provider refused the request (4xx): try the next, relay it when none
    /// is left.
    Refused(String, StatusCode, Bytes),
    /// The reservation was handed to a settlement already: stop.
    Stop,
    Answered(Response),
}

/// A provider that answered 2xx, with what settling its answer needs.
pub(super) struct Answer {
    pub priced: Priced,
    pub channel: String,
    pub audit: Audit,
    pub in_flight: InFlight,
    /// When the request was sent.
    pub sent: Instant,
    pub resp: reqwest::Response,
}

impl Call<'_> {
    pub(super) async fn attempt(
        &self,
        priced: Priced,
        held: &mut Held,
    ) -> Result<Attempt, ApiError> {
        let (state, entry) = (self.state, priced.entry.clone());
        if !entry.try_acquire(state.registry.now()) {
            return Ok(Attempt::NotTried);
        }
        let in_flight = InFlight::new(entry.clone());
        let channel = match held
            .reservation
            .as_ref()
            .map(|r| state.book.bind(r, &entry.info.id, state.clock.unix()))
        {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                return Err(ApiError::Internal(format!(
                    "opening a payment channel: {e}"
                )));
            }
            None => return Ok(Attempt::Stop),
        };
        let audit = self.audit(&entry);
        let sent = Instant::now();
        let resp = match self.send(&entry, &channel).await {
            Ok(r) => r,
            Err(e) => {
                entry.record(state.registry.now(), Outcome::Failure);
                tracing::warn!(provider = %entry.info.id, error = %e, "upstream failed before the first byte; trying the next");
                return Ok(Attempt::Failed(e));
            }
        };
        if let Some(end) = self.refusal(&entry, &resp) {
            return Ok(match end {
                Ok(failed) => failed,
                Err(status) => {
                    let body = read_limited(resp, state.config.upstream.idle_timeout(), 1 << 20)
                        .await
                        .unwrap_or_default();
                    let e = format!("{}: HTTP {}", entry.info.id, status.as_u16());
                    Attempt::Refused(e, status, body)
                }
            });
        }
        let answer = Answer {
            priced,
            channel,
            audit,
            in_flight,
            sent,
            resp,
        };
        if self.req.stream {
            super::stream::answer(self, answer, held).await
        } else {
            super::whole::answer(self, answer, held).await
        }
    }

    /// What this response's receipt is judged against (sampled).
    fn audit(&self, entry: &ProviderEntry) -> Audit {
        let cfg = &self.state.config;
        Audit {
            request_id: self.request_id.to_owned(),
            model: self.req.model.clone(),
            request_sha256: self.request_sha256,
            check: entry
                .info
                .public_key
                .filter(|_| verify::sampled(cfg.receipts.verify_sample_ppm, rand_seed()))
                .map(|k| (k, declared_weights(entry, &self.req.model))),
        }
    }

    /// Sends the signed request; the answer's headers must come within the
    /// first-byte deadline.
    async fn send(
        &self,
        entry: &ProviderEntry,
        channel: &str,
    ) -> Result<reqwest::Response, String> {
        let (state, req) = (self.state, self.req);
        let url = state
            .upstream
            .url(&entry.info.endpoint, req.path)
            .map_err(|e| format!("{}: {e}", entry.info.id))?;
        let payer_auth = PaidRequest {
            method: "POST",
            path_and_query: req.path,
            channel_id: channel,
            body: &req.body,
        }
        // Real time: the provider checks it against its own clock.
        .sign(&state.payer_key, unix_now());
        let invalid = |what: &str| format!("{}: invalid {what} header", entry.info.id);
        let payer_auth =
            HeaderValue::try_from(payer_auth).map_err(|_| invalid(PAYER_AUTH_HEADER))?;
        let request_id =
            HeaderValue::from_str(self.request_id).map_err(|_| invalid("x-request-id"))?;
        let channel = HeaderValue::from_str(channel).map_err(|_| invalid("x-tenzro-channel"))?;
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(REQUEST_ID, unique(request_id));
        headers.insert(CHANNEL, channel);
        headers.insert(PAYER_AUTH, unique(payer_auth));
        let call = state
            .upstream
            .post(&entry.info.endpoint, url, headers, req.body.clone());
        let deadline = state.config.upstream.first_byte_timeout();
        match tokio::time::timeout(deadline, call).await {
            Err(_) => Err(format!(
                "{}: no answer within {} ms",
                entry.info.id,
                deadline.as_millis()
            )),
            Ok(Err(e)) => {
                state.upstream.failed(&entry.info.endpoint);
                Err(format!("{}: {}", entry.info.id, error_chain(&*e)))
            }
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// A non-2xx answer: `Ok(failed)` for 5xx and 429, `Err(status)` for a refusal
    /// whose body is kept. A provider's refusal is not trusted to judge the request
    /// (the gateway already validated it): it counts as a failure for its breaker
    /// and the next candidate gets the request; only when none is left is the last
    /// refusal relayed (a registrant answering 400 at once must not win routing and
    /// fail every request for the model).
    fn refusal(
        &self,
        entry: &ProviderEntry,
        resp: &reqwest::Response,
    ) -> Option<Result<Attempt, StatusCode>> {
        let status = resp.status();
        let now = self.state.registry.now();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            if status.is_server_error() {
                entry.record(now, Outcome::Failure);
            }
            tracing::warn!(provider = %entry.info.id, status = status.as_u16(), "upstream refused; trying the next");
            let e = format!("{}: HTTP {}", entry.info.id, status.as_u16());
            return Some(Ok(Attempt::Failed(e)));
        }
        if status.is_success() {
            return None;
        }
        entry.record(now, Outcome::Failure);
        tracing::warn!(provider = %entry.info.id, status = status.as_u16(), "upstream refused the request; trying the next");
        Some(Err(
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY)
        ))
    }
}
