//! Forwarding to the lease holder (issue 17): a request for an account that another
//! live replica holds is sent there instead of being answered 503 `replica_busy`,
//! so a client behind a plain round-robin balancer is served wherever it lands.
//!
//! The forward carries the caller's own headers (its API key too: the holder
//! authenticates and admits it as any request) plus `x-tenzro-forward`, an HMAC
//! under the replicas' shared secret over the method, path, time, body and the
//! caller's `Authorization` (`cluster::auth`; the secret never travels). A
//! request bearing that header is served where it lands and never forwarded
//! again; one whose header does not check (an outside caller, a replay, out of
//! its time window) is refused 403 before anything else. Streams pass through chunk by chunk; a holder
//! that dies mid-stream ends the client's stream with an `error` event.
//!
//! Only the routes that take the account's lease are forwarded: inference, the
//! account and its channels, the faucet, bonds and unbonds (by the owner's key:
//! they move the owner's money), a channel's dispute signed by its provider (by
//! the channel's payer), and an admin's `/admin/accounts/{id}/…` (by the id in
//! the path). A holder that does not answer
//! (dead, its lease not expired yet) is answered 503 with Retry-After until the
//! lease expires and a surviving replica takes the account over.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::cluster::auth::Forwarded;
use crate::cluster::{FORWARD_HEADER, FORWARDED_BY_HEADER};
use crate::http::error::ApiError;
use crate::http::extract::admin_token_matches;
use crate::state::AppState;
use crate::store::cluster::Holder;
use crate::store::lease::LeaseError;

/// Path prefixes whose handlers take the caller's account lease.
const LEASED: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/account",
    "/v1/channels",
    "/v1/faucet",
    "/v1/providers/bonds",
];

/// An admin's routes about one account (its view, credit, keys): served where
/// the account's money is.
const ADMIN_ACCOUNTS: &str = "/admin/accounts/";

/// Forwards to the lease holder, or lets the route answer: run by
/// [`crate::http::observe::observe`] around every route (one middleware layer
/// instead of two: each layer costs a boxed clone of the routes per request).
pub async fn route(state: &AppState, req: Request, next: Next) -> Response {
    // A forward from another replica is served here, never forwarded again; one
    // that is not (an outside caller) is refused before anything else.
    if req.headers().contains_key(FORWARD_HEADER) {
        return match from_replica(state, req).await {
            Ok(req) => next.run(req).await,
            Err(e) => e.into_response(),
        };
    }
    // The body is not `Sync`: only the head is looked at before it moves on.
    let (parts, body) = req.into_parts();
    let found = target(state, &parts.headers, parts.uri.path()).await;
    let req = Request::from_parts(parts, body);
    match found {
        Ok(None) => next.run(req).await,
        Ok(Some((account, holder))) => forward(state, &account, holder, req).await,
        Err(e) => e.into_response(),
    }
}

/// The account and its holder when this request goes elsewhere.
async fn target(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
) -> Result<Option<(String, Holder)>, ApiError> {
    if !state.cluster.forwarding() {
        return Ok(None);
    }
    let Some((account, by_key)) = account_of(state, headers, path).await? else {
        return Ok(None);
    };
    let account = &account;
    let local = state.clock.unix();
    if state.leases.holds(account, local) {
        return Ok(None);
    }
    // Lease ends are on the store's clock (`store::lease`).
    let now = state.leases.store_now(local);
    let holder = state
        .cluster
        .holder_elsewhere(&state.store, account, now)
        .await
        .map_err(ApiError::internal)?;
    let holder = match holder {
        Some(h) => h,
        // An admin's route takes no lease here: it claims (or 404s) as it would.
        None if !by_key => return Ok(None),
        // Nobody (live) holds it: take it here before the route runs. Another
        // replica may take it at the same moment; then it is forwarded there
        // rather than answered `replica_busy` by this replica's admission.
        None => match state.lease(account).await {
            Ok(()) => return Ok(None),
            Err(LeaseError::HeldElsewhere(_)) => {
                state.cluster.forget_holder(account);
                let found = state
                    .cluster
                    .holder_elsewhere(&state.store, account, now)
                    .await
                    .map_err(ApiError::internal)?;
                // Held by a replica that published no address: the route answers.
                let Some(h) = found else { return Ok(None) };
                h
            }
            // The route meets the same error and answers it as it does.
            Err(_) => return Ok(None),
        },
    };
    // Silent for three heartbeats: dead (its lease expires soon), not worth a
    // connection attempt.
    if !state.cluster.alive(&holder) {
        return Err(holder_gone(&holder, now));
    }
    Ok(Some((account.clone(), holder)))
}

/// Checks a forward's header (`cluster::auth`: its time first, then its MAC over
/// the request, body included, and that it is not a replay) and gives the request
/// back with its body.
async fn from_replica(state: &AppState, req: Request) -> Result<Request, ApiError> {
    let refused = |why: &dyn std::fmt::Display| {
        tracing::info!(reason = %why, "a forward header refused");
        ApiError::Forbidden(format!(
            "the {FORWARD_HEADER} header is reserved for the gateway's own replicas; send the request without it"
        ))
    };
    let now = state.leases.store_now(state.clock.unix());
    let header = req
        .headers()
        .get(FORWARD_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let pre = state
        .cluster
        .precheck_forward(header, now)
        .map_err(|e| refused(&e))?;
    let (parts, body) = req.into_parts();
    // A replica forwards only what it read within the same limit.
    let bytes = axum::body::to_bytes(body, state.config.server.max_body_bytes)
        .await
        .map_err(|e| refused(&e))?;
    let f = Forwarded {
        method: parts.method.as_str(),
        path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        body: &bytes,
        authorization: parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
        to: &state.cluster.replica,
    };
    state
        .cluster
        .accept_forward(pre, &f, now)
        .map_err(|e| refused(&e))?;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// 503 with Retry-After until the dead holder's lease expires.
fn holder_gone(holder: &Holder, now: u64) -> ApiError {
    let wait = holder.until.saturating_sub(now).clamp(1, 60);
    ApiError::Unavailable {
        message: format!(
            "the gateway replica serving this account does not answer; another replica takes the account over within {wait} s: retry then"
        ),
        retry_after: Duration::from_secs(wait),
    }
}

/// The account whose lease the route takes, and whether it is the caller key's:
/// an admin's account route names it (only with the admin token: anyone else's
/// request is the route's to refuse, and costs no store read here), the others
/// serve the caller's key.
async fn account_of(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
) -> Result<Option<(String, bool)>, ApiError> {
    if let Some(rest) = path.strip_prefix(ADMIN_ACCOUNTS) {
        let id = rest.split('/').next().unwrap_or_default();
        let admin = bearer(headers).is_some_and(|t| admin_token_matches(state, t));
        return Ok((admin && !id.is_empty()).then(|| (id.to_owned(), false)));
    }
    if !LEASED.iter().any(|p| path.starts_with(p)) {
        return Ok(None);
    }
    let Some(key) = bearer(headers) else {
        return provider_dispute(state, headers, path).await;
    };
    // An unknown key is the route's to refuse (401), here as anywhere.
    let entry = state
        .accounts
        .lookup(key)
        .await
        .map_err(ApiError::internal)?;
    Ok(entry.map(|e| (e.record.account.clone(), true)))
}

/// A dispute the channel's provider signed (no API key): it changes the payer's
/// channel, so it is served where the payer's account is. The payer is looked up
/// by the channel id (one read, as the route makes); the signature is the
/// holder's to check, and this replica takes no lease for it before the route
/// has checked it (an anonymous caller does not choose what this replica claims).
async fn provider_dispute(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
) -> Result<Option<(String, bool)>, ApiError> {
    let Some(channel) = path
        .strip_prefix("/v1/channels/")
        .and_then(|rest| rest.strip_suffix("/dispute"))
        .filter(|c| !c.is_empty() && !c.contains('/'))
    else {
        return Ok(None);
    };
    if !headers.contains_key(crate::money::dispute_auth::HEADER) {
        return Ok(None);
    }
    let parties = state
        .store
        .channel_parties(channel)
        .await
        .map_err(ApiError::internal)?;
    Ok(parties.map(|(payer, _)| (payer, false)))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Headers that belong to one connection, not to the request.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    ) || name.as_str() == FORWARD_HEADER
        || name.as_str() == FORWARDED_BY_HEADER
}

async fn forward(state: &AppState, account: &str, holder: Holder, req: Request) -> Response {
    let limit = state.config.server.max_body_bytes;
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return ApiError::PayloadTooLarge(limit).into_response();
    };
    let base = holder.address.as_deref().unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut rb = state.cluster.forwarder.request(
        parts.method.clone(),
        format!("{}{path}", base.trim_end_matches('/')),
    );
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            rb = rb.header(name, value);
        }
    }
    let signed = state.cluster.sign_forward(
        &Forwarded {
            method: parts.method.as_str(),
            path_and_query: path,
            body: &bytes,
            authorization: parts
                .headers
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
            to: &holder.owner,
        },
        state.leases.store_now(state.clock.unix()),
    );
    rb = rb
        .header(FORWARD_HEADER, signed)
        .header(FORWARDED_BY_HEADER, state.cluster.replica.as_str())
        .body(bytes);
    match rb.send().await {
        Ok(resp) => relay(resp),
        // Not connected: nothing reached the holder, a retry is safe.
        Err(e) if e.is_connect() => {
            state.cluster.forget_holder(account);
            tracing::warn!(account, holder = %holder.owner, error = %e, "the lease holder did not answer a forward");
            holder_gone(&holder, state.leases.store_now(state.clock.unix())).into_response()
        }
        // Sent, no answer: the holder may have applied it (a credit, a bond), so
        // the caller is not told to retry.
        Err(e) => {
            state.cluster.forget_holder(account);
            tracing::warn!(account, holder = %holder.owner, error = %e, "a forward was sent and got no answer");
            ApiError::Upstream {
                message: "the gateway replica serving this account stopped answering after the request was sent: its outcome is unknown; check the account before retrying".into(),
                cause: e.to_string(),
            }
            .into_response()
        }
    }
}

/// The holder's answer as it comes: status, headers and body chunk by chunk.
fn relay(resp: reqwest::Response) -> Response {
    let status = resp.status();
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut headers = HeaderMap::new();
    for (name, value) in resp.headers() {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let stream = resp.bytes_stream();
    let body = futures::stream::unfold(Some(stream), move |s| async move {
        let mut s = s?;
        match s.next().await {
            Some(Ok(chunk)) => Some((Ok::<Bytes, std::io::Error>(chunk), Some(s))),
            None => None,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the lease holder's answer was cut");
                if sse {
                    Some((Ok(Bytes::from(cut_event())), None))
                } else {
                    Some((Err(std::io::Error::other(e)), None))
                }
            }
        }
    });
    let mut out = Response::new(Body::from_stream(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out.headers_mut()
        .insert("x-tenzro-forwarded", HeaderValue::from_static("1"));
    out
}

/// The `error` event that ends a forwarded stream whose holder went away.
fn cut_event() -> Vec<u8> {
    let body = tenzro_models::api::ErrorBody::new(
        "server_error",
        "the gateway replica serving this stream stopped before the end; retry the request",
    )
    .with_code("replica_lost");
    crate::metering::sse(&serde_json::to_vec(&body).unwrap_or_default())
}
