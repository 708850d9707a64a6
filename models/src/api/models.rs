use serde::{Deserialize, Serialize};

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// One entry of `/v1/models`: OpenAI's four fields, then ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// Registry fields (category, context length, price, weight digest...), kept
    /// open so the gateway can add its own without a new wire type.
    #[serde(flatten)]
    pub meta: serde_json::Map<String, serde_json::Value>,
}
