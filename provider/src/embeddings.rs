//! `/v1/embeddings`.

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use tenzro_models::api::{
    Embedding, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage,
    EmbeddingVector, EncodingFormat,
};
use tenzro_models::embed::{EmbedError, EmbedInput};

use crate::channels::Meter;
use crate::error::{ApiError, HashedJson};
use crate::receipt::{self, Served};
use crate::state::AppState;

pub async fn embeddings(
    State(state): State<AppState>,
    meter: Meter,
    HashedJson {
        value: req,
        sha256: request_sha256,
    }: HashedJson<EmbeddingRequest>,
) -> Result<Json<EmbeddingResponse>, ApiError> {
    let model = state.embedding_model(&req.model)?;
    let input = validate(&req, state.config.server.max_embedding_inputs)?;
    if let Some(d) = req.dimensions
        && d as usize != model.embedder.dimensions
    {
        return Err(ApiError::bad_param(
            "dimensions",
            format!(
                "This model only produces {} dimensions, got dimensions={d}",
                model.embedder.dimensions
            ),
        ));
    }
    let permit = model
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let embedder = model.embedder.clone();
    let (vectors, tokens) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        embedder.embed(input)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| match e {
        EmbedError::Model(e) => ApiError::Internal(e.to_string()),
        e => ApiError::bad_param("input", e.to_string()),
    })?;
    state.metrics.tokens(tokens as u64, 0);
    meter.record(tokens as u64);
    let served = Served {
        model: req.model.clone(),
        request_sha256,
        response_sha256: receipt::embeddings_digest(&vectors),
        prompt_tokens: tokens as u64,
        completion_tokens: 0,
    };
    let tenzro = receipt::sign(&state.identity, served);
    let format = req.encoding_format.unwrap_or(EncodingFormat::Float);
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| Embedding {
            object: "embedding".into(),
            index: i as u32,
            embedding: encode(v, format),
        })
        .collect();
    Ok(Json(EmbeddingResponse {
        object: "list".into(),
        data,
        model: req.model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens as u64,
            total_tokens: tokens as u64,
            cost: None,
            asset: None,
        },
        tenzro: Some(tenzro),
    }))
}

fn validate(req: &EmbeddingRequest, max_inputs: usize) -> Result<EmbedInput, ApiError> {
    req.check_fields()
        .map_err(|e| ApiError::bad_param(&e.param, e.message))?;
    let bad = |m: String| ApiError::bad_param("input", m);
    let count = match &req.input {
        EmbeddingInput::Text(_) | EmbeddingInput::Tokens(_) => 1,
        EmbeddingInput::Texts(v) => v.len(),
        EmbeddingInput::TokenLists(v) => v.len(),
    };
    if count == 0 {
        return Err(bad("`input` must not be an empty list".into()));
    }
    if count > max_inputs {
        return Err(bad(format!(
            "`input` has {count} items; at most {max_inputs} are allowed"
        )));
    }
    let input = match req.input.clone() {
        EmbeddingInput::Text(t) => EmbedInput::Texts(vec![t]),
        EmbeddingInput::Texts(v) => EmbedInput::Texts(v),
        EmbeddingInput::Tokens(ids) => EmbedInput::Tokens(vec![ids]),
        EmbeddingInput::TokenLists(v) => EmbedInput::Tokens(v),
    };
    let empty = match &input {
        EmbedInput::Texts(v) => v.iter().position(String::is_empty),
        EmbedInput::Tokens(v) => v.iter().position(Vec::is_empty),
    };
    if let Some(i) = empty {
        return Err(bad(format!(
            "`input[{i}]` is empty; every input must have content"
        )));
    }
    Ok(input)
}

fn encode(v: Vec<f32>, format: EncodingFormat) -> EmbeddingVector {
    match format {
        EncodingFormat::Float => EmbeddingVector::Float(v),
        EncodingFormat::Base64 => {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}
