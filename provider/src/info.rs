//! `/v1/models`, `/v1/attestation`, `/health`, `/metrics`, `/tokenize`.

use axum::Json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use tenzro_models::api::{ChatMessage, ModelCard, ModelList, Role};
use tenzro_models::template::TemplateMessage;

use crate::attestation::{AttestationDocument, Nonce};
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;

pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let mut data = Vec::new();
    for (id, m) in state.chat.iter() {
        let llm = m.engine.llm();
        data.push(card(
            &state,
            id,
            json!({
                "category": "LLM",
                "modality": "text",
                "max_context": llm.context_length,
                "price_per_token": m.price_per_token,
                "parameters": m.parameters,
                "format": m.format,
                "architecture": m.architecture,
                "weight_sha256": llm.sha256,
            }),
        ));
    }
    for (id, m) in state.embedding.iter() {
        data.push(card(
            &state,
            id,
            json!({
                "category": "Embedding",
                "modality": "text",
                "max_context": m.embedder.max_tokens,
                "dimensions": m.embedder.dimensions,
                "price_per_token": m.price_per_token,
                "parameters": m.parameters,
                "format": "safetensors",
                "weight_sha256": m.embedder.sha256,
            }),
        ));
    }
    data.sort_by(|a, b| a.id.cmp(&b.id));
    Json(ModelList {
        object: "list".into(),
        data,
    })
}

/// `GET /v1/attestation?nonce=HEX`: evidence over this provider's key, weights and
/// the caller's nonce (see `attestation`). A nonce asked before is answered from a
/// bounded cache; fresh evidence is limited per source address (429 with
/// Retry-After past `[attestation] fresh_per_minute` / `fresh_burst`).
pub async fn attestation(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    Extension(peer): Extension<Peer>,
) -> Result<Json<AttestationDocument>, ApiError> {
    let nonce = Nonce::from_query(query.as_deref())
        .map_err(|e| ApiError::bad_param("nonce", e.to_string()))?;
    let key = nonce.as_bytes().to_vec();
    if let Some(document) = state.evidence.get(&key) {
        return Ok(Json(AttestationDocument::clone(&document)));
    }
    state
        .evidence_limit
        .take(peer.0, Instant::now())
        .map_err(|wait| ApiError::RateLimited {
            retry_after: u32::try_from(wait.as_secs().saturating_add(1)).unwrap_or(u32::MAX),
        })?;
    let identity = state.identity.clone();
    let document = tokio::task::spawn_blocking(move || identity.document(&nonce))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("producing evidence: {e}")))?;
    state.evidence.insert(key, Arc::new(document.clone()));
    Ok(Json(document))
}

/// The caller's address (`ConnectInfo` when the server has it; unspecified in
/// tests that call the router directly), set by `routes`.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub IpAddr);

fn card(state: &AppState, id: &str, meta: Value) -> ModelCard {
    ModelCard {
        id: id.to_owned(),
        object: "model".into(),
        created: state.started,
        owned_by: "tenzro-provider".into(),
        meta: match meta {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
    }
}

pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let mut models: Vec<&String> = state.chat.keys().chain(state.embedding.keys()).collect();
    models.sort();
    Json(json!({ "status": "ok", "models": models }))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (queued, active) = state.chat.values().fold((0, 0), |(q, a), m| {
        (q + m.engine.queue_depth(), a + m.engine.active_sequences())
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(queued, active),
    )
}

/// `POST /tokenize`: the ids the model would see, as llama.cpp and vLLM offer.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    model: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
}

pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let model = state.chat_model(&req.model)?;
    let llm = model.engine.llm();
    let text = match (req.prompt, req.messages) {
        (Some(p), None) => p,
        (None, Some(messages)) => {
            let msgs: Vec<TemplateMessage> = messages
                .iter()
                .map(|m| TemplateMessage {
                    role: if m.role == Role::Developer {
                        "system".into()
                    } else {
                        m.role.as_str().into()
                    },
                    content: m.text(),
                })
                .collect();
            llm.render_chat(&msgs)
                .map_err(|e| ApiError::bad_param("messages", e.to_string()))?
        }
        _ => return Err(ApiError::bad("Send exactly one of `prompt` or `messages`")),
    };
    let ids = llm
        .encode(&text)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // `text`: what was tokenized (for `messages`, the chat template's rendering,
    // which a gateway's model audit scores an answer after).
    Ok(Json(
        json!({ "count": ids.len(), "tokens": ids, "text": text }),
    ))
}
