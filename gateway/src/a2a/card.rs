//! `GET /.well-known/agent-card.json` (and the older `/.well-known/agent.json`):
//! the gateway as an A2A agent. The card carries both the 0.3 fields (`url`,
//! `protocolVersion`, `preferredTransport`) and 1.0's `supportedInterfaces`; the
//! one endpoint `/a2a` speaks both (see [`super::wire`]). Its URL is `[a2a]
//! public_url` when the operator set one, else built from the request's `Host`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use crate::state::AppState;

/// The absolute URL of `/a2a`, from `X-Forwarded-Proto`/`Host` of the request.
fn endpoint(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}/a2a")
}

/// The scheme and host of `url` (`https://host:port`).
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn skill(id: &str, name: &str, description: &str, tags: &[&str], examples: &[&str]) -> Value {
    json!({
        "id": id,
        "name": name,
        "description": description,
        "tags": tags,
        "examples": examples,
        "inputModes": ["text/plain"],
        "outputModes": ["text/plain"],
    })
}

/// The card; `faucet`: whether the faucet skill is listed.
pub fn build(url: &str, faucet: bool) -> Value {
    let mut skills = vec![
        skill(
            "inference",
            "Inference",
            "Send a message; one chat completion on the best provider answers it, paid per token from your key's balance within its scope. Choose the model with metadata.model (GET /v1/models lists them; default: the cheapest LLM) and the length with metadata.max_tokens. The task's metadata.tenzro carries the cost, provider and the provider's signed receipt.",
            &["inference", "llm", "chat", "pay-per-token"],
            &["Summarise the A2A protocol in one sentence."],
        ),
        skill(
            "wallet",
            "Wallet",
            "Balances, held amounts, spend today and the delegation scope of your key (GET /v1/account; the MCP tool get_balance).",
            &["wallet", "balance", "scope"],
            &[],
        ),
        skill(
            "identity",
            "Identity",
            "Resolve did:tenzro and did:pdis identities and their DID documents (GET /v1/identities/{did}); agents under a human's delegation.",
            &["identity", "did"],
            &[],
        ),
        skill(
            "settlement",
            "Settlement",
            "Per-request payment channels with signed vouchers, closed and settled with a 0.5% commission (GET /v1/channels, POST /v1/channels/{id}/close).",
            &["settlement", "payment-channel", "voucher"],
            &[],
        ),
        skill(
            "verification",
            "Verification",
            "Every answer carries the provider's Ed25519-signed receipt (model, weights, request and response digests, tokens), and providers' TEE attestations are verified by the gateway.",
            &["verification", "receipt", "attestation", "tee"],
            &[],
        ),
    ];
    if faucet {
        skills.push(skill(
            "faucet",
            "Faucet",
            "Development gateways only: POST /v1/faucet funds your account a few times per hour.",
            &["faucet", "development"],
            &[],
        ));
    }
    json!({
        "name": "Tenzro gateway",
        "description": "Open inference network: open-weight models served by independent providers (optionally in TEEs), routed by price, latency and reputation, paid per token with signed receipts.",
        "url": url,
        "preferredTransport": "JSONRPC",
        "protocolVersion": "0.3.0",
        "supportedInterfaces": [
            { "url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0" },
            { "url": url, "protocolBinding": "JSONRPC", "protocolVersion": "0.3" },
        ],
        "version": env!("CARGO_PKG_VERSION"),
        "provider": { "organization": "Tenzro", "url": origin(url) },
        "capabilities": { "streaming": true, "pushNotifications": false, "stateTransitionHistory": false },
        "securitySchemes": {
            "bearer": { "type": "http", "scheme": "bearer", "description": "A Tenzro API key (tz-...), as for the OpenAI-compatible API." }
        },
        "security": [ { "bearer": [] } ],
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": skills,
    })
}

/// The card: its `url` is `[a2a] public_url` when set, else built from the request.
pub async fn card(State(state): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let url = match state.config.a2a.public_url.as_str() {
        "" => endpoint(&headers),
        configured => configured.to_owned(),
    };
    Json(build(&url, state.config.faucet.enabled))
}
