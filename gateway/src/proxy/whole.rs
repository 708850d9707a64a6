//! A non-streamed answer: read it whole (bounded), price it at its verified token
//! counts, judge its receipt, settle, and write the cost into it.

use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

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
    let Some(r) = held.take() else {
        return Ok(Attempt::Stop);
    };
    let after = Instant::now();
    let (quote, bounds) = (a.priced.quote, a.priced.bounds);
    let served = body.clone();
    let (mut resp, fraud) = finish_whole(state, entry, r, (quote, &bounds), &a.audit, body)?;
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
/// keeping the rest: only `usage` is parsed and written again, the other members
/// are copied as the provider sent them (parsing the whole answer into a map and
/// writing it back was ~1 % of the gateway's CPU). `None` when the body is not an
/// object with a `usage` object.
fn add_cost(
    body: &[u8],
    (prompt, completion): (u64, u64),
    cost: u128,
    asset: &str,
) -> Option<Bytes> {
    let members = match serde_json::from_slice::<Members<'_>>(body) {
        Ok(m) if m.unique() => m.0,
        // A key with escapes (not borrowable) or a repeated key: the map's rules.
        _ => return add_cost_map(body, (prompt, completion), cost, asset),
    };
    let (_, raw) = members.iter().find(|(k, _)| *k == "usage")?;
    let mut usage: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(raw.get()).ok()?;
    set_usage(&mut usage, (prompt, completion), cost, asset);
    let mut out = Vec::with_capacity(body.len() + 64);
    out.push(b'{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, k).ok()?;
        out.push(b':');
        if *k == "usage" {
            serde_json::to_writer(&mut out, &usage).ok()?;
        } else {
            out.extend_from_slice(v.get().as_bytes());
        }
    }
    out.push(b'}');
    Some(Bytes::from(out))
}

/// [`add_cost`] through a whole map (keys with escapes, repeated keys).
fn add_cost_map(body: &[u8], tokens: (u64, u64), cost: u128, asset: &str) -> Option<Bytes> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    set_usage(v.get_mut("usage")?.as_object_mut()?, tokens, cost, asset);
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

fn set_usage(
    usage: &mut serde_json::Map<String, serde_json::Value>,
    (prompt, completion): (u64, u64),
    cost: u128,
    asset: &str,
) {
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
}

/// A JSON object's members in order, values as the raw text they were sent in
/// (borrowed: nothing is copied or parsed into values).
struct Members<'a>(Vec<(&'a str, &'a RawValue)>);

impl Members<'_> {
    /// No key appears twice (sorted copy: O(n log n) however many members).
    fn unique(&self) -> bool {
        let mut keys: Vec<&str> = self.0.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.windows(2).all(|w| w[0] != w[1])
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(k) = map.next_key::<&'de str>()? {
                    members.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn the_cost_is_written_into_usage_and_the_rest_is_kept() {
        let body = br#"{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"h\u00e9 \"x\""}}],"usage":{"prompt_tokens":9,"completion_tokens":5,"total_tokens":14},"tenzro":{"receipt":{"a":[1,2.50]}}}"#;
        let out = add_cost(body, (7, 3), 42, "TNZO").unwrap();
        let (got, want) = (json(&out), json(body));
        assert_eq!(got["choices"], want["choices"]);
        assert_eq!(got["tenzro"], want["tenzro"]);
        assert_eq!(
            got["usage"],
            serde_json::json!({"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,"cost":"42","asset":"TNZO"})
        );
        // The members keep their order and the other members their bytes.
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with(r#"{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"h\u00e9 \"x\""}}],"usage":{"#), "{text}");
        assert!(
            text.ends_with(r#","tenzro":{"receipt":{"a":[1,2.50]}}}"#),
            "{text}"
        );
    }

    #[test]
    fn escaped_or_repeated_keys_follow_the_map_and_no_usage_changes_nothing() {
        // Embeddings: no completion tokens, none added.
        let body = br#"{"data":[],"us\u0061ge":{"prompt_tokens":4}}"#;
        let got = json(&add_cost(body, (4, 0), 1, "TNZO").unwrap());
        assert_eq!(got["usage"]["total_tokens"], 4);
        assert!(got["usage"].get("completion_tokens").is_none());
        let body =
            br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2,"completion_tokens":2}}"#;
        let got = json(&add_cost(body, (5, 6), 1, "TNZO").unwrap());
        assert_eq!(got["usage"]["completion_tokens"], 6);
        assert_eq!(got.as_object().unwrap().len(), 1);
        assert!(add_cost(br#"{"id":"x"}"#, (1, 1), 1, "TNZO").is_none());
        assert!(add_cost(br#"{"usage":3}"#, (1, 1), 1, "TNZO").is_none());
        assert!(add_cost(b"[1]", (1, 1), 1, "TNZO").is_none());
        assert!(add_cost(br#"{"usage":{}"#, (1, 1), 1, "TNZO").is_none());
    }
}
