//! Tool calling for models whose chat template does not describe tools: the default
//! system block that lists them, the grammar that makes the output a valid call (or,
//! for `auto`, text or a call), and the parser that turns the output back into
//! OpenAI's `tool_calls`.
//!
//! The output format is the Hermes/Qwen one, one block per call:
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! Under `auto` the grammar allows either such blocks or text that does not start
//! with `<`, so the first character decides, and a stream can pass text through
//! without holding it back.

use serde_json::{Value, json};

use crate::grammar::{GrammarError, GrammarSpec, styled_schema};

pub const OPEN: &str = "<tool_call>\n";
pub const CLOSE: &str = "\n</tool_call>";
/// Most calls in one answer when `parallel_tool_calls` is on.
pub const MAX_PARALLEL_CALLS: usize = 4;

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema for the arguments (an object schema).
    pub parameters: Value,
    pub strict: bool,
}

/// `tool_choice` other than `none` (which needs no grammar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolMode {
    Auto,
    Required,
    Named(String),
}

/// The system text that tells a model without a tools-aware template what it may
/// call and how. Documented in the README ("Tool calling").
pub fn system_block(tools: &[ToolDef]) -> String {
    let mut out =
        String::from("You may call functions. Each line below describes one function as JSON:\n");
    for t in tools {
        let line = json!({
            "name": t.name,
            "description": t.description.clone().unwrap_or_default(),
            "parameters": t.parameters,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out.push_str(
        "To call a function, answer with a block\n<tool_call>\n{\"name\": \"<function name>\", \
         \"arguments\": {<arguments as JSON>}}\n</tool_call>\nand nothing else.",
    );
    out
}

/// A call's schema: `{"name": <one of the names>, "arguments": <its parameters>}`.
fn call_schema(tools: &[&ToolDef]) -> Value {
    let one = |t: &ToolDef| {
        json!({
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                "arguments": t.parameters,
            },
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })
    };
    match tools {
        [t] => one(t),
        many => json!({"anyOf": many.iter().map(|t| one(t)).collect::<Vec<_>>()}),
    }
}

/// The grammar for `mode` over `tools`. A named function must be in `tools` (the
/// caller validated it); `parallel` allows several calls in a row.
pub fn grammar(
    tools: &[ToolDef],
    mode: &ToolMode,
    parallel: bool,
) -> Result<GrammarSpec, GrammarError> {
    let allowed: Vec<&ToolDef> = match mode {
        ToolMode::Named(name) => tools.iter().filter(|t| &t.name == name).collect(),
        ToolMode::Auto | ToolMode::Required => tools.iter().collect(),
    };
    if allowed.is_empty() {
        return Err(GrammarError::Invalid("no function to call".into()));
    }
    let strict = allowed.iter().all(|t| t.strict);
    let schema = styled_schema(&call_schema(&allowed), strict)?;
    // Parallel calls are bounded (a small model would otherwise repeat its call
    // until `max_tokens`): at most one per listed function, and MAX_PARALLEL_CALLS.
    let most = if parallel && !matches!(mode, ToolMode::Named(_)) {
        allowed.len().clamp(1, MAX_PARALLEL_CALLS)
    } else {
        1
    };
    let calls = format!(
        "calls: {}",
        (1..=most)
            .map(|k| vec!["call"; k].join(" \"\\n\" "))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let start = match mode {
        ToolMode::Auto => "start: TEXT | calls\nTEXT: /[^<\\s][\\s\\S]*/",
        ToolMode::Required | ToolMode::Named(_) => "start: calls",
    };
    Ok(GrammarSpec::Lark(format!(
        "{start}\n{calls}\ncall: \"<tool_call>\\n\" %json {schema} \"\\n</tool_call>\"\n"
    )))
}

/// One call as parsed from the output: the name and the arguments' JSON text
/// exactly as generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

/// Parse one call's JSON (between the markers).
pub fn parse_call(body: &str) -> Option<ParsedCall> {
    let v: Value = serde_json::from_str(body).ok()?;
    let name = v.get("name")?.as_str()?.to_owned();
    let args = v.get("arguments")?;
    if !args.is_object() {
        return None;
    }
    // Keep the generated text when it is in our style; else re-serialize.
    let prefix = format!(
        "{{\"name\": {}, \"arguments\": ",
        Value::from(name.as_str())
    );
    let arguments = match body
        .trim()
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix('}'))
    {
        Some(a) if serde_json::from_str::<Value>(a).ok().as_ref() == Some(args) => a.to_owned(),
        _ => args.to_string(),
    };
    Some(ParsedCall { name, arguments })
}

/// What a choice's output splits into, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Call(ParsedCall),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Undecided,
    Text,
    Calls,
}

/// Splits one choice's text, as it streams, into plain text and whole calls. Text
/// passes through at once; a call comes out when its closing marker arrives.
#[derive(Debug)]
pub struct CallSplitter {
    mode: Mode,
    buf: String,
    /// Calls emitted so far.
    pub calls: u32,
}

impl Default for CallSplitter {
    fn default() -> Self {
        CallSplitter {
            mode: Mode::Undecided,
            buf: String::new(),
            calls: 0,
        }
    }
}

impl CallSplitter {
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        if self.mode == Mode::Undecided {
            let trimmed = self.buf.trim_start();
            match trimmed.chars().next() {
                None => return Vec::new(),
                Some('<') => self.mode = Mode::Calls,
                Some(_) => self.mode = Mode::Text,
            }
        }
        match self.mode {
            Mode::Text => vec![Piece::Text(std::mem::take(&mut self.buf))],
            _ => self.take_calls(),
        }
    }

    fn take_calls(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        loop {
            let start = self.buf.trim_start();
            let Some(rest) = start.strip_prefix(OPEN.trim_end()) else {
                break;
            };
            let Some(end) = rest.find(CLOSE.trim_start()) else {
                break;
            };
            match parse_call(&rest[..end]) {
                Some(call) => {
                    let consumed = self.buf.len() - rest.len() + end + CLOSE.trim_start().len();
                    self.buf.drain(..consumed);
                    self.calls += 1;
                    out.push(Piece::Call(call));
                }
                None => break,
            }
        }
        out
    }

    /// The end of the output: whatever is left (a call cut short) as text.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buf);
        let blank = rest.is_empty() || (self.mode != Mode::Text && rest.trim().is_empty());
        if blank {
            Vec::new()
        } else {
            vec![Piece::Text(rest)]
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn weather() -> ToolDef {
        ToolDef {
            name: "get_weather".into(),
            description: Some("Weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": false}),
            strict: true,
        }
    }

    fn split(pieces: &[&str]) -> Vec<Piece> {
        let mut s = CallSplitter::default();
        let mut out: Vec<Piece> = pieces.iter().flat_map(|p| s.push(p)).collect();
        out.extend(s.finish());
        out
    }

    fn call(name: &str, arguments: &str) -> Piece {
        Piece::Call(ParsedCall {
            name: name.into(),
            arguments: arguments.into(),
        })
    }

    #[test]
    fn calls_split_out_of_a_stream_in_any_pieces() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
        let want = vec![call("get_weather", r#"{"city": "Paris"}"#), call("f", "{}")];
        assert_eq!(split(&[text]), want);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split(&refs), want);
    }

    #[test]
    fn text_passes_through_and_a_cut_call_stays_text() {
        assert_eq!(
            split(&["Hel", "lo <b>"]),
            vec![Piece::Text("Hel".into()), Piece::Text("lo <b>".into())]
        );
        let cut = "<tool_call>\n{\"name\": \"get_weather\", \"argu";
        assert_eq!(split(&[cut]), vec![Piece::Text(cut.into())]);
    }

    #[test]
    fn arguments_keep_their_generated_text_or_are_reserialized() {
        let c = parse_call(r#"{"name": "f", "arguments": {"a": [1, 2]}}"#).unwrap();
        assert_eq!(c.arguments, r#"{"a": [1, 2]}"#);
        let c = parse_call(r#"{"arguments":{"a":1},"name":"f"}"#).unwrap();
        assert_eq!((c.name.as_str(), c.arguments.as_str()), ("f", r#"{"a":1}"#));
        assert!(parse_call(r#"{"name": "f", "arguments": 3}"#).is_none());
        assert!(parse_call(r#"{"name": 1, "arguments": {}}"#).is_none());
    }

    #[test]
    fn grammars_for_each_mode_compile_and_name_the_tools() {
        let tools = vec![
            weather(),
            ToolDef {
                name: "f".into(),
                description: None,
                parameters: json!({"type": "object"}),
                strict: false,
            },
        ];
        for mode in [
            ToolMode::Auto,
            ToolMode::Required,
            ToolMode::Named("f".into()),
        ] {
            let GrammarSpec::Lark(text) = grammar(&tools, &mode, true).unwrap() else {
                unreachable!()
            };
            assert!(text.contains("<tool_call>"), "{text}");
            assert_eq!(
                text.contains("get_weather"),
                mode != ToolMode::Named("f".into())
            );
            assert_eq!(text.contains("TEXT"), mode == ToolMode::Auto);
        }
        assert!(grammar(&tools, &ToolMode::Named("nope".into()), true).is_err());
        let block = system_block(&tools);
        assert!(block.contains("get_weather") && block.contains("<tool_call>"));
    }
}
