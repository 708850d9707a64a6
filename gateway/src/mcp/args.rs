//! The MCP tools' inputs: each is a JSON Schema the client sees, and the
//! arguments are parsed into these types before any call (an unknown field or a
//! wrong type is a tool error naming it).

use rmcp::schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Filters of `list_models` (all optional; together they narrow).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct ListModels {
    /// Registry category: LLM, Embedding, ImageGen, Speech or Custom.
    pub category: Option<String>,
    /// Modality, e.g. `text` or `text-embedding`.
    pub modality: Option<String>,
    /// Only models a verified TEE provider serves now.
    pub tee: Option<bool>,
    /// Highest price per token, TNZO base units (decimal string).
    pub max_price: Option<String>,
    /// Only models this provider (its id, a DID) serves.
    pub provider: Option<String>,
}

/// One chat message.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The fields of `POST /v1/chat/completions` (one answer, not streamed).
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct Chat {
    /// A model id from `list_models`.
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// OpenAI's `response_format` (`json_object`, `json_schema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// Tenzro's request extension, e.g. `{"tee": true}` or a routing strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenzro: Option<Value>,
}

/// The fields of `POST /v1/embeddings`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct Embed {
    pub model: String,
    /// One text or a list of texts.
    pub input: EmbedInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(untagged)]
pub enum EmbedInput {
    Text(String),
    Texts(Vec<String>),
}

/// What a request would cost at most, before sending it.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct Estimate {
    pub model: String,
    /// The chat messages (or give `prompt`).
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    /// A plain prompt or embedding input.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Completion tokens to allow (the gateway holds this many).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Priced with the TEE premium.
    #[serde(default)]
    pub tee: Option<bool>,
}

/// No input.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct Nothing {}

/// A channel id (from `list_channels` or `get_balance`).
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct ChannelId {
    pub id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct Did {
    /// `did:tenzro:...` or `did:pdis:...`.
    pub did: String,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct ProviderStatus {
    /// One provider's id; all providers without it.
    pub provider: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct VerifyReceipt {
    /// The receipt object (`tenzro.receipt` of an answer, or `receipt` from `chat`).
    pub receipt: Value,
    /// The provider it must come from (its id, the DID of its key).
    #[serde(default)]
    pub provider: Option<String>,
}
