//! Reading a whole (non-streamed) answer: usage, text length, tool calls,
//! response digest and receipt.

use std::borrow::Cow;

use serde::Deserialize;

use super::items_digest;

/// What the gateway reads of a whole (non-streamed) answer.
#[derive(Debug, Default)]
pub struct Whole {
    /// The provider's `usage` (prompt, completion).
    pub usage: Option<(u64, u64)>,
    /// Byte length of the text the answer carries (all choices).
    pub text_bytes: u64,
    /// Tool calls the answer carries (all choices).
    pub tool_calls: u64,
    /// The response digest as the receipt defines it.
    pub response_sha256: [u8; 32],
    pub receipt: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WholePeek<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoicePeek<'a>>,
    #[serde(default)]
    data: Vec<EmbeddingPeek>,
    #[serde(default)]
    usage: Option<UsagePeek>,
    #[serde(default)]
    tenzro: Option<ExtPeek>,
}

// Texts borrowed from the body where they hold no escapes (no copy per choice).
#[derive(Deserialize)]
struct ChoicePeek<'a> {
    #[serde(default)]
    index: u64,
    #[serde(default, borrow)]
    message: Option<MessagePeek<'a>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessagePeek<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Vec<ToolCallPeek>,
}

#[derive(Deserialize)]
struct ToolCallPeek {
    #[serde(default)]
    function: FunctionPeek,
}

#[derive(Deserialize, Default)]
struct FunctionPeek {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

impl<'a> MessagePeek<'a> {
    /// The message's text as the receipt signs it: the content, then each tool
    /// call's name and arguments.
    fn text(&self) -> Cow<'a, str> {
        let mut t = self.content.clone().unwrap_or_default();
        if self.tool_calls.is_empty() {
            return t;
        }
        let t = t.to_mut();
        for c in &self.tool_calls {
            t.push_str(&c.function.name);
            t.push_str(&c.function.arguments);
        }
        Cow::Owned(std::mem::take(t))
    }
}

#[derive(Deserialize)]
struct EmbeddingPeek {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    embedding: Option<Vector>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Vector {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Deserialize)]
struct UsagePeek {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct ExtPeek {
    #[serde(default)]
    receipt: Option<serde_json::Value>,
}

/// Reads a whole answer's usage, text length, response digest and receipt; `None`
/// when the body is not a JSON object of that shape.
pub fn read_whole(body: &[u8]) -> Option<Whole> {
    use base64::Engine as _;
    let mut p: WholePeek<'_> = serde_json::from_slice(body).ok()?;
    let usage = p.usage.map(|u| (u.prompt_tokens, u.completion_tokens));
    let receipt = p.tenzro.and_then(|t| t.receipt);
    let mut tool_calls = 0;
    let (text_bytes, response_sha256) = if p.data.is_empty() {
        p.choices.sort_by_key(|c| c.index);
        let texts: Vec<Cow<'_, str>> = p
            .choices
            .iter()
            .map(|c| match (&c.message, &c.text) {
                (Some(m), _) => m.text(),
                (None, Some(t)) => t.clone(),
                (None, None) => Cow::Borrowed(""),
            })
            .collect();
        let bytes = texts.iter().map(|t| t.len() as u64).sum();
        tool_calls = p
            .choices
            .iter()
            .filter_map(|c| c.message.as_ref())
            .map(|m| m.tool_calls.len() as u64)
            .sum();
        (bytes, items_digest(texts.iter().map(|t| t.as_bytes())))
    } else {
        p.data.sort_by_key(|d| d.index);
        let vectors: Vec<Vec<u8>> = p
            .data
            .iter()
            .map(|d| match &d.embedding {
                Some(Vector::Floats(v)) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Some(Vector::Base64(s)) => base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .unwrap_or_default(),
                None => Vec::new(),
            })
            .collect();
        (0, items_digest(vectors.iter().map(Vec::as_slice)))
    };
    Some(Whole {
        usage,
        text_bytes,
        tool_calls,
        response_sha256,
        receipt,
    })
}
