//! The engine's per-token logprobs in OpenAI's two shapes: chat's
//! `logprobs.content[]` and legacy completions' parallel lists (`tokens`,
//! `token_logprobs`, `top_logprobs`, `text_offset`). No HTTP here.

use std::collections::BTreeMap;

use tenzro_models::api::{ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs};
use tenzro_models::logprobs::{Offsets, TokenLogprob};

/// Which shape a request's logprobs take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Chat,
    Legacy,
}

/// Per-choice state of one response's logprobs: the legacy `text_offset`s run
/// on across the chunks of a stream.
pub struct Logprobs {
    wire: Wire,
    offsets: Vec<Offsets>,
}

impl Logprobs {
    pub fn new(wire: Wire, choices: usize) -> Self {
        Logprobs {
            wire,
            offsets: vec![Offsets::default(); choices],
        }
    }

    /// The `logprobs` value for these entries of `choice` (the next ones after
    /// those already converted); `None` when there are none.
    pub fn convert(&mut self, choice: u32, entries: &[TokenLogprob]) -> Option<serde_json::Value> {
        if entries.is_empty() {
            return None;
        }
        self.whole(choice, entries)
    }

    /// Like [`Logprobs::convert`], but an empty list is an empty payload (a
    /// whole response that asked for logprobs always has them).
    pub fn whole(&mut self, choice: u32, entries: &[TokenLogprob]) -> Option<serde_json::Value> {
        let value = match self.wire {
            Wire::Chat => serde_json::to_value(chat(entries)),
            Wire::Legacy => {
                let offsets = self.offsets.get_mut(choice as usize)?;
                serde_json::to_value(legacy(entries, offsets))
            }
        };
        value.ok()
    }
}

pub fn chat(entries: &[TokenLogprob]) -> ChatLogprobs {
    let content = entries
        .iter()
        .map(|e| ChatTokenLogprob {
            token: e.token.clone(),
            logprob: e.logprob.unwrap_or(tenzro_models::logprobs::FLOOR),
            bytes: Some(e.bytes.clone()),
            top_logprobs: e
                .top
                .iter()
                .map(|t| ChatTopLogprob {
                    token: t.token.clone(),
                    logprob: t.logprob,
                    bytes: Some(t.bytes.clone()),
                })
                .collect(),
        })
        .collect();
    ChatLogprobs {
        content: Some(content),
        refusal: None,
    }
}

pub fn legacy(entries: &[TokenLogprob], offsets: &mut Offsets) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for e in entries {
        out.tokens.push(e.token.clone());
        out.token_logprobs.push(e.logprob);
        // The first token of a scored prompt has no distribution, hence no top.
        out.top_logprobs.push(e.logprob.map(|_| {
            let mut top = BTreeMap::new();
            for t in &e.top {
                top.entry(t.token.clone()).or_insert(t.logprob);
            }
            top
        }));
        out.text_offset.push(offsets.next(&e.bytes));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenzro_models::logprobs::TopLogprob;

    fn entry(token: &str, logprob: Option<f32>) -> TokenLogprob {
        TokenLogprob {
            id: 1,
            token: token.into(),
            bytes: token.as_bytes().to_vec(),
            logprob,
            top: vec![TopLogprob {
                id: 1,
                token: token.into(),
                bytes: token.as_bytes().to_vec(),
                logprob: logprob.unwrap_or(0.0),
            }],
        }
    }

    #[test]
    fn chat_shape_is_openais() {
        let mut l = Logprobs::new(Wire::Chat, 1);
        assert_eq!(l.convert(0, &[]), None);
        let v = l.convert(0, &[entry("é", Some(-0.5))]).unwrap_or_default();
        assert_eq!(v["content"][0]["token"], "é");
        assert_eq!(v["content"][0]["logprob"], -0.5);
        assert_eq!(v["content"][0]["bytes"], serde_json::json!([195, 169]));
        assert_eq!(v["content"][0]["top_logprobs"][0]["token"], "é");
        assert!(v["refusal"].is_null());
        assert_eq!(
            l.whole(0, &[]).unwrap_or_default()["content"],
            serde_json::json!([])
        );
    }

    #[test]
    fn legacy_offsets_run_on_across_chunks() {
        let mut l = Logprobs::new(Wire::Legacy, 2);
        let a = l
            .convert(1, &[entry("Hi", None), entry(" é", Some(-1.0))])
            .unwrap_or_default();
        assert_eq!(a["tokens"], serde_json::json!(["Hi", " é"]));
        assert_eq!(a["token_logprobs"], serde_json::json!([null, -1.0]));
        assert!(a["top_logprobs"][0].is_null());
        assert_eq!(a["top_logprobs"][1][" é"], -1.0);
        assert_eq!(a["text_offset"], serde_json::json!([0, 2]));
        let b = l.convert(1, &[entry("!", Some(-2.0))]).unwrap_or_default();
        assert_eq!(b["text_offset"], serde_json::json!([4]));
        // Choice 0 counts on its own.
        let c = l.convert(0, &[entry("!", Some(-2.0))]).unwrap_or_default();
        assert_eq!(c["text_offset"], serde_json::json!([0]));
    }
}
