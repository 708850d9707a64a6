//! Structured outputs and tool calls for a chat request: the checked fields
//! (`tenzro_models::api::structured`, the same rules the gateway applies), the
//! prompt with the tools in it, and the grammar the engine decodes under.

use serde_json::{Value, json};
use tenzro_models::api::{
    ChatCompletionRequest, FieldError, OutputFormat, Role, Structured, ToolUse,
};
use tenzro_models::grammar::{Compiled, GrammarError, GrammarSpec};
use tenzro_models::llm::Llm;
use tenzro_models::template::TemplateMessage;
use tenzro_models::tools::{self, CLOSE, OPEN, ToolDef, ToolMode};

use crate::error::ApiError;

pub fn field_error(e: FieldError) -> ApiError {
    ApiError::bad_param(&e.param, e.message)
}

/// The request's structured-output and tool fields, checked.
pub fn check(req: &ChatCompletionRequest) -> Result<Structured, ApiError> {
    tenzro_models::api::structured(req).map_err(field_error)
}

fn defs(s: &Structured) -> Vec<ToolDef> {
    s.tools
        .iter()
        .map(|f| ToolDef {
            name: f.name.clone(),
            description: f.description.clone(),
            parameters: f
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object"})),
            strict: f.strict.unwrap_or(false),
        })
        .collect()
}

/// The grammar for the request, compiled, or `None` when decoding is free.
/// A grammar that does not compile is a 400 naming `response_format` (or `tools`).
pub fn grammar(s: &Structured, llm: &Llm) -> Result<Option<Compiled>, ApiError> {
    let (spec, param) = match (&s.tool_use, &s.format) {
        (ToolUse::None, OutputFormat::Text) => return Ok(None),
        (ToolUse::None, OutputFormat::JsonObject) => (GrammarSpec::JsonObject, "response_format"),
        (ToolUse::None, OutputFormat::JsonSchema { schema, strict, .. }) => (
            GrammarSpec::JsonSchema {
                schema: schema.clone(),
                strict: *strict,
            },
            "response_format",
        ),
        (ToolUse::None, OutputFormat::Grammar(g)) => {
            (GrammarSpec::Lark(g.clone()), "response_format")
        }
        (used, _) => {
            let mode = match used {
                ToolUse::Required => ToolMode::Required,
                ToolUse::Named(n) => ToolMode::Named(n.clone()),
                _ => ToolMode::Auto,
            };
            let spec = tools::grammar(&defs(s), &mode, s.parallel)
                .map_err(|e| ApiError::bad_param("tools", e.to_string()))?;
            (spec, "tools")
        }
    };
    let grammars = llm
        .grammars()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match grammars.compile(&spec) {
        Ok(c) => Ok(Some(c)),
        Err(GrammarError::Invalid(m)) => Err(ApiError::bad_param(
            param,
            format!("`{param}` cannot be used for constrained decoding: {m}"),
        )),
        Err(e @ GrammarError::Internal(_)) => Err(ApiError::Internal(e.to_string())),
    }
}

/// True when the conversation or the request involves tools.
fn has_tools(req: &ChatCompletionRequest, s: &Structured) -> bool {
    !s.tools.is_empty()
        || req
            .messages
            .iter()
            .any(|m| m.tool_calls.is_some() || m.role == Role::Tool)
}

/// Render the prompt. Without tools: the model's template over `messages`. With
/// tools: the template renders them itself when it reads `tools`; otherwise the
/// default system block lists them (when they may be called), past calls are
/// written as `<tool_call>` blocks and tool results as `<tool_response>` blocks.
pub fn render(
    req: &ChatCompletionRequest,
    s: &Structured,
    llm: &Llm,
    mut messages: Vec<TemplateMessage>,
) -> Result<String, ApiError> {
    let bad = |e: tenzro_models::ModelError| ApiError::bad_param("messages", e.to_string());
    if !has_tools(req, s) {
        return llm.render_chat(&messages).map_err(bad);
    }
    if llm.template_supports_tools() {
        let msgs: Vec<Value> = req
            .messages
            .iter()
            .zip(&messages)
            .map(|(m, t)| {
                let mut v = json!({"role": t.role, "content": t.content});
                if let Some(calls) = &m.tool_calls {
                    v["tool_calls"] = calls
                        .iter()
                        .map(|c| {
                            let args = serde_json::from_str::<Value>(&c.function.arguments)
                                .unwrap_or_else(|_| Value::from(c.function.arguments.clone()));
                            json!({"id": c.id, "type": "function",
                                "function": {"name": c.function.name, "arguments": args}})
                        })
                        .collect();
                }
                if let Some(id) = &m.tool_call_id {
                    v["tool_call_id"] = Value::from(id.clone());
                }
                v
            })
            .collect();
        let tools: Vec<Value> = s
            .tools
            .iter()
            .map(|f| json!({"type": "function", "function": f}))
            .collect();
        return llm
            .render_chat_with_tools(&msgs, &Value::from(tools))
            .map_err(bad);
    }
    for (m, t) in req.messages.iter().zip(messages.iter_mut()) {
        if let Some(calls) = &m.tool_calls {
            for c in calls {
                let call = format!(
                    "{{\"name\": {}, \"arguments\": {}}}",
                    Value::from(c.function.name.clone()),
                    c.function.arguments
                );
                if !t.content.is_empty() {
                    t.content.push('\n');
                }
                t.content.push_str(&format!("{OPEN}{call}{CLOSE}"));
            }
        }
        if m.role == Role::Tool {
            t.content = format!("<tool_response>\n{}\n</tool_response>", t.content);
        }
    }
    if s.tool_use != ToolUse::None {
        let block = tools::system_block(&defs(s));
        match messages.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{block}", first.content);
            }
            _ => messages.insert(
                0,
                TemplateMessage {
                    role: "system".into(),
                    content: block,
                },
            ),
        }
    }
    llm.render_chat(&messages).map_err(bad)
}
