//! `response_format`, `tools`, `tool_choice` and `parallel_tool_calls`: the rules
//! both servers apply before any model work (the gateway before routing, the
//! provider before compiling the grammar). Whether a schema compiles is the
//! provider's check; it answers in the same shape, naming the same field.

use serde_json::{Value, json};

use super::{ChatCompletionRequest, FieldError, FunctionDef, Role, ToolChoice};

/// Most functions in `tools` (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;
/// Largest schema (serialized) or grammar accepted, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// What the output must look like.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        strict: bool,
    },
    /// Our extension: a Lark grammar (llguidance's syntax).
    Grammar(String),
}

/// `tool_choice`, resolved (`auto` when tools are given, else `none`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolUse {
    None,
    Auto,
    Required,
    Named(String),
}

/// The request's structured-output and tool fields, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Structured {
    pub format: OutputFormat,
    /// The functions, each with an object schema for its parameters.
    pub tools: Vec<FunctionDef>,
    pub tool_use: ToolUse,
    pub parallel: bool,
}

impl Structured {
    /// True when decoding is constrained (a format other than text, or tool calls).
    pub fn constrained(&self) -> bool {
        self.format != OutputFormat::Text || self.tool_use != ToolUse::None
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn size(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}

fn format(req: &ChatCompletionRequest) -> Result<OutputFormat, FieldError> {
    let err = |m: String| FieldError::new("response_format", m);
    let Some(rf) = &req.response_format else {
        return Ok(OutputFormat::Text);
    };
    match rf.kind.as_str() {
        "text" => Ok(OutputFormat::Text),
        "json_object" => Ok(OutputFormat::JsonObject),
        "json_schema" => {
            let js = rf.json_schema.as_ref().ok_or_else(|| {
                err("`response_format.json_schema` is required when `type` is `json_schema`".into())
            })?;
            if !valid_name(&js.name) {
                return Err(err(format!(
                    "`response_format.json_schema.name` must be 1 to 64 letters, digits, `_` or `-`, got {:?}",
                    js.name
                )));
            }
            let schema = js
                .schema
                .clone()
                .unwrap_or_else(|| json!({"type": "object"}));
            if !schema.is_object() {
                return Err(err(
                    "`response_format.json_schema.schema` must be a JSON Schema object".into(),
                ));
            }
            let n = size(&schema);
            if n > MAX_SCHEMA_BYTES {
                return Err(err(format!(
                    "`response_format.json_schema.schema` is {n} bytes; at most {MAX_SCHEMA_BYTES} are allowed"
                )));
            }
            Ok(OutputFormat::JsonSchema {
                name: js.name.clone(),
                schema,
                strict: js.strict.unwrap_or(false),
            })
        }
        "grammar" => match rf.grammar.as_deref() {
            Some(g) if !g.trim().is_empty() && g.len() <= MAX_SCHEMA_BYTES => {
                Ok(OutputFormat::Grammar(g.to_owned()))
            }
            Some(g) if !g.trim().is_empty() => Err(err(format!(
                "`response_format.grammar` is {} bytes; at most {MAX_SCHEMA_BYTES} are allowed",
                g.len()
            ))),
            _ => Err(err(
                "`response_format.grammar` (a Lark grammar) is required when `type` is `grammar`"
                    .into(),
            )),
        },
        other => Err(err(format!(
            "Invalid value for `response_format.type`: {other:?}. Supported values are: \"text\", \"json_object\", \"json_schema\" and \"grammar\"."
        ))),
    }
}

fn tools(req: &ChatCompletionRequest) -> Result<Vec<FunctionDef>, FieldError> {
    let Some(tools) = &req.tools else {
        return Ok(Vec::new());
    };
    if tools.len() > MAX_TOOLS {
        return Err(FieldError::new(
            "tools",
            format!(
                "`tools` may list at most {MAX_TOOLS} functions, got {}",
                tools.len()
            ),
        ));
    }
    let mut out: Vec<FunctionDef> = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let param = |f: &str| format!("tools[{i}]{f}");
        if t.kind != "function" {
            return Err(FieldError::new(
                &param(".type"),
                format!("Only `function` tools are supported, got {:?}", t.kind),
            ));
        }
        let f = &t.function;
        if !valid_name(&f.name) {
            return Err(FieldError::new(
                &param(".function.name"),
                format!(
                    "Function names must be 1 to 64 letters, digits, `_` or `-`, got {:?}",
                    f.name
                ),
            ));
        }
        if out.iter().any(|o| o.name == f.name) {
            return Err(FieldError::new(
                &param(".function.name"),
                format!("The function name {:?} is listed twice", f.name),
            ));
        }
        let parameters = f
            .parameters
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        if !parameters.is_object() || size(&parameters) > MAX_SCHEMA_BYTES {
            return Err(FieldError::new(
                &param(".function.parameters"),
                format!(
                    "`parameters` must be a JSON Schema object of at most {MAX_SCHEMA_BYTES} bytes"
                ),
            ));
        }
        out.push(FunctionDef {
            parameters: Some(parameters),
            ..f.clone()
        });
    }
    Ok(out)
}

fn tool_use(req: &ChatCompletionRequest, tools: &[FunctionDef]) -> Result<ToolUse, FieldError> {
    let err = |m: String| FieldError::new("tool_choice", m);
    let Some(choice) = &req.tool_choice else {
        return Ok(if tools.is_empty() {
            ToolUse::None
        } else {
            ToolUse::Auto
        });
    };
    let used = match choice {
        ToolChoice::Mode(m) => match m.as_str() {
            "none" => return Ok(ToolUse::None),
            "auto" => ToolUse::Auto,
            "required" => ToolUse::Required,
            other => {
                return Err(err(format!(
                    "Invalid value for `tool_choice`: {other:?}. Supported values are: \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}."
                )));
            }
        },
        ToolChoice::Named(n) => {
            if n.kind != "function" {
                return Err(err(format!(
                    "`tool_choice.type` must be \"function\", got {:?}",
                    n.kind
                )));
            }
            if !tools.iter().any(|t| t.name == n.function.name) {
                return Err(err(format!(
                    "`tool_choice` names the function {:?}, which is not in `tools`",
                    n.function.name
                )));
            }
            ToolUse::Named(n.function.name.clone())
        }
    };
    if tools.is_empty() {
        return Err(err(
            "`tool_choice` is only allowed when `tools` are specified".into(),
        ));
    }
    Ok(used)
}

/// Assistant turns' `tool_calls` and `tool` turns' `tool_call_id`.
fn messages(req: &ChatCompletionRequest) -> Result<(), FieldError> {
    for (i, m) in req.messages.iter().enumerate() {
        if let Some(calls) = &m.tool_calls {
            if m.role != Role::Assistant {
                return Err(FieldError::new(
                    &format!("messages[{i}].tool_calls"),
                    "Only assistant messages may carry `tool_calls`",
                ));
            }
            for (k, c) in calls.iter().enumerate() {
                if c.kind != "function" {
                    return Err(FieldError::new(
                        &format!("messages[{i}].tool_calls[{k}].type"),
                        format!("Only `function` calls are supported, got {:?}", c.kind),
                    ));
                }
            }
        }
        if m.role == Role::Tool && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
            return Err(FieldError::new(
                &format!("messages[{i}].tool_call_id"),
                "A `tool` message must have the `tool_call_id` of the call it answers",
            ));
        }
    }
    Ok(())
}

/// Check the structured-output and tool fields of a chat request.
pub fn structured(req: &ChatCompletionRequest) -> Result<Structured, FieldError> {
    let format = format(req)?;
    let tools = tools(req)?;
    let tool_use = tool_use(req, &tools)?;
    messages(req)?;
    if tool_use != ToolUse::None && format != OutputFormat::Text {
        return Err(FieldError::new(
            "response_format",
            "`response_format` cannot be combined with tool calls; set `tool_choice` to \"none\" or drop `response_format`",
        ));
    }
    Ok(Structured {
        format,
        tools,
        tool_use,
        parallel: req.parallel_tool_calls.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(extra: Value) -> ChatCompletionRequest {
        let mut base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    /// `Ok` with the checked value, or the refused field.
    fn check(extra: Value) -> Result<Structured, String> {
        structured(&req(extra)).map_err(|e| e.param)
    }

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    }

    #[test]
    fn formats() {
        assert_eq!(check(json!({})).unwrap().format, OutputFormat::Text);
        assert_eq!(
            check(json!({"response_format": {"type": "json_object"}}))
                .unwrap()
                .format,
            OutputFormat::JsonObject
        );
        let s = check(
            json!({"response_format": {"type": "json_schema", "json_schema":
            {"name": "x", "schema": {"type": "object"}, "strict": true}}}),
        )
        .unwrap();
        assert!(matches!(
            s.format,
            OutputFormat::JsonSchema { strict: true, .. }
        ));
        assert!(s.constrained());
        for bad in [
            json!({"type": "xml"}),
            json!({"type": "json_schema"}),
            json!({"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}}),
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}),
            json!({"type": "grammar"}),
            json!({"type": "grammar", "grammar": "x".repeat(MAX_SCHEMA_BYTES + 1)}),
        ] {
            assert_eq!(
                check(json!({"response_format": bad})).unwrap_err(),
                "response_format",
                "{bad}"
            );
        }
    }

    #[test]
    fn tools_and_choices() {
        let s = check(json!({"tools": weather()})).unwrap();
        assert_eq!((s.tool_use, s.parallel), (ToolUse::Auto, true));
        let s = check(json!({"tools": weather(), "tool_choice": "none"})).unwrap();
        assert!(!s.constrained());
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let s = check(json!({"tools": weather(), "tool_choice": named,
            "parallel_tool_calls": false}))
        .unwrap();
        assert_eq!(
            (s.tool_use, s.parallel),
            (ToolUse::Named("get_weather".into()), false)
        );
        let other = json!({"type": "function", "function": {"name": "nope"}});
        assert_eq!(
            check(json!({"tools": weather(), "tool_choice": other})).unwrap_err(),
            "tool_choice"
        );
        assert_eq!(
            check(json!({"tools": weather(), "tool_choice": "always"})).unwrap_err(),
            "tool_choice"
        );
        assert_eq!(
            check(json!({"tool_choice": "required"})).unwrap_err(),
            "tool_choice"
        );
        let twice = json!([weather()[0], weather()[0]]);
        assert_eq!(
            check(json!({"tools": twice})).unwrap_err(),
            "tools[1].function.name"
        );
        let bad = json!([{"type": "retrieval", "function": {"name": "f"}}]);
        assert_eq!(check(json!({"tools": bad})).unwrap_err(), "tools[0].type");
        let both = json!({"tools": weather(), "tool_choice": "required",
            "response_format": {"type": "json_object"}});
        assert_eq!(check(both).unwrap_err(), "response_format");
    }

    #[test]
    fn follow_up_turns() {
        let ok = json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]});
        assert!(check(ok).is_ok());
        let no_id = json!({"messages": [{"role": "tool", "content": "sunny"}]});
        assert_eq!(check(no_id).unwrap_err(), "messages[0].tool_call_id");
    }
}
