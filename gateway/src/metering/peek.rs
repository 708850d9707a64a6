//! Reading a chunk without building it: the choices' text, the provider's
//! per-chunk token count (`tenzro.tokens`), its usage and receipt.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use tenzro_models::api::Usage;

/// What the gateway needs to know of one chunk, read without building the chunk.
#[derive(Debug, Default, Deserialize)]
pub struct ChunkPeek<'a> {
    #[serde(default, borrow)]
    pub choices: Option<Vec<ChoicePeek<'a>>>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub tenzro: Option<PeekExt>,
    #[serde(default)]
    pub error: Option<IgnoredAny>,
}

/// A choice of a chunk: its index and the text it carries.
#[derive(Debug, Default, Deserialize)]
pub struct ChoicePeek<'a> {
    #[serde(default)]
    pub index: u64,
    #[serde(default, borrow)]
    pub delta: Option<DeltaPeek<'a>>,
    /// Text completions stream `text` instead of `delta`.
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DeltaPeek<'a> {
    #[serde(default, borrow)]
    pub content: Option<Cow<'a, str>>,
    /// A tool call's pieces: the provider sends its name, then its arguments, each
    /// in a chunk of its own (one call per chunk).
    #[serde(default, borrow)]
    pub tool_calls: Option<Vec<ToolCallPeek<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ToolCallPeek<'a> {
    #[serde(default, borrow)]
    pub function: Option<FunctionPeek<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FunctionPeek<'a> {
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub arguments: Option<Cow<'a, str>>,
}

impl DeltaPeek<'_> {
    /// The text of the chunk's tool-call piece: its name, else its arguments. The
    /// pieces of a choice, in order, spell each call's name then its arguments,
    /// which is how the receipt counts them.
    fn tool_piece(&self) -> Option<&str> {
        let f = self.tool_calls.as_ref()?.first()?.function.as_ref()?;
        f.name
            .as_deref()
            .filter(|n| !n.is_empty())
            .or(f.arguments.as_deref())
    }
}

impl ChoicePeek<'_> {
    /// The text this choice carries in this chunk (`delta.content` or `text`).
    pub fn piece(&self) -> &str {
        self.delta
            .as_ref()
            .and_then(|d| d.content.as_deref())
            .or(self.text.as_deref())
            .or_else(|| self.delta.as_ref().and_then(DeltaPeek::tool_piece))
            .unwrap_or("")
    }

    fn has_text(&self) -> bool {
        !self.piece().is_empty()
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct PeekExt {
    #[serde(default)]
    pub tokens: Option<u64>,
    /// The provider's signed receipt (checked by [`crate::verify`]).
    #[serde(default)]
    pub receipt: Option<serde_json::Value>,
}

/// One event, classified.
#[derive(Debug)]
pub enum Event<'a> {
    /// `data: [DONE]`.
    Done,
    /// A JSON chunk.
    Chunk(ChunkPeek<'a>),
    /// Data that is not JSON we understand; relayed untouched, not metered.
    Opaque,
    /// No data (comment, keep-alive).
    Empty,
}

pub fn classify(data: Option<&[u8]>) -> Event<'_> {
    match data {
        None => Event::Empty,
        Some(d) if d.trim_ascii() == b"[DONE]" => Event::Done,
        Some(d) => serde_json::from_slice::<ChunkPeek<'_>>(d)
            .map(Event::Chunk)
            .unwrap_or(Event::Opaque),
    }
}

impl ChunkPeek<'_> {
    /// Completion tokens this chunk claims: the provider's own count when it gives
    /// one, else one per choice that carries text (an estimate for providers without
    /// our extension).
    pub fn tokens(&self) -> u64 {
        match &self.tenzro {
            Some(PeekExt {
                tokens: Some(n), ..
            }) => *n,
            _ => self
                .choices
                .as_ref()
                .map_or(0, |c| c.iter().filter(|c| c.has_text()).count() as u64),
        }
    }

    /// Bytes of text this chunk carries, over all its choices.
    pub fn text_bytes(&self) -> u64 {
        self.choices
            .as_ref()
            .map_or(0, |c| c.iter().map(|c| c.piece().len() as u64).sum())
    }

    /// Tool calls this chunk starts: choices whose tool-call piece carries the
    /// call's name (the provider sends a call's name in its first piece).
    pub fn tool_calls_started(&self) -> u64 {
        self.choices.as_ref().map_or(0, |c| {
            c.iter()
                .filter_map(|c| {
                    c.delta
                        .as_ref()?
                        .tool_calls
                        .as_ref()?
                        .first()?
                        .function
                        .as_ref()?
                        .name
                        .as_deref()
                })
                .filter(|n| !n.is_empty())
                .count() as u64
        })
    }

    pub fn has_choices(&self) -> bool {
        self.choices.as_ref().is_some_and(|c| !c.is_empty())
    }

    /// The receipt this chunk carries, if any.
    pub fn receipt(&self) -> Option<&serde_json::Value> {
        self.tenzro.as_ref().and_then(|t| t.receipt.as_ref())
    }
}
