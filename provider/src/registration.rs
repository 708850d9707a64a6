//! The registration a provider sends a gateway, built from what it loaded.

use tenzro_models::api::{ModelCategory, ModelInfo, RegisterRequest};

use crate::state::AppState;

/// What this provider tells a gateway about itself: every served model with its
/// price, context, size and weight digest, its stake, key and TEE kind.
pub fn registration(state: &AppState, endpoint: String) -> RegisterRequest {
    let mut models = Vec::new();
    for (id, m) in state.chat.iter() {
        let llm = m.engine.llm();
        models.push(ModelInfo {
            id: id.clone(),
            name: None,
            version: None,
            category: ModelCategory::Llm,
            modality: Some("text".into()),
            price_per_token: m.price_per_token.clone(),
            max_context: u32::try_from(llm.context_length).ok(),
            parameters: Some(m.parameters),
            formats: vec!["gguf".into()],
            tee_required: false,
            weight_sha256: Some(llm.sha256.clone()),
        });
    }
    for (id, m) in state.embedding.iter() {
        models.push(ModelInfo {
            id: id.clone(),
            name: None,
            version: None,
            category: ModelCategory::Embedding,
            modality: Some("text-embedding".into()),
            price_per_token: m.price_per_token.clone(),
            max_context: u32::try_from(m.embedder.max_tokens).ok(),
            parameters: Some(m.parameters),
            formats: vec!["safetensors".into()],
            tee_required: false,
            weight_sha256: Some(m.embedder.sha256.clone()),
        });
    }
    models.sort_by(|a, b| a.id.cmp(&b.id));
    RegisterRequest {
        provider_id: state.identity.did().to_string(),
        endpoint,
        public_key: state.identity.public_key().to_string(),
        models,
        stake: (u128::from(state.config.stake_tnzo) * 10u128.pow(18)).to_string(),
        tee: state.identity.tee_kind().to_string(),
        max_concurrency: u32::try_from(state.config.engine.max_sequences).ok(),
        heartbeat_interval_s: None,
        timestamp: 0,
    }
}
