//! Chat templates: the Jinja template the model was trained with (from the GGUF's
//! `tokenizer.chat_template` or `tokenizer_config.json`), rendered with minijinja
//! so the model sees exactly the prompt format it expects.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::Serialize;

use crate::ModelError;

/// One message as the template sees it: `{"role": ..., "content": ...}`.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template mentions `tools` (it renders them itself).
    tools: bool,
}

const NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self, ModelError> {
        let mut env = Environment::new();
        // HF templates call Python string methods (`.strip()`, `.startswith()`...).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned(NAME, source)
            .map_err(|e| ModelError::Template(e.to_string()))?;
        let tools = source_mentions_tools(&env);
        Ok(ChatTemplate {
            tools,
            env,
            bos_token,
            eos_token,
        })
    }

    pub fn supports_tools(&self) -> bool {
        self.tools
    }

    /// Render with `tools` in the context and messages as JSON (so assistant turns
    /// carry `tool_calls` and tool turns `tool_call_id`), as HF templates expect.
    pub fn render_with_tools(
        &self,
        messages: &[serde_json::Value],
        tools: &serde_json::Value,
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| ModelError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| ModelError::Template(e.to_string()))
    }

    /// Render the conversation, ending with the assistant's turn opened when
    /// `add_generation_prompt` is set.
    pub fn render(
        &self,
        messages: &[TemplateMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| ModelError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| ModelError::Template(e.to_string()))
    }
}

/// True when the template reads a `tools` variable.
fn source_mentions_tools(env: &Environment<'static>) -> bool {
    env.get_template(NAME)
        .map(|t| t.undeclared_variables(false).contains("tools"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn renders_chatml_with_python_methods() {
        let t = ChatTemplate::new(CHATML.into(), "<s>".into(), "</s>".into()).unwrap();
        let out = t
            .render(&[msg("system", "Be brief. "), msg("user", "Hi")], true)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t.render(&[msg("user", "Hi")], false).unwrap();
        assert!(!out.ends_with("assistant\n"));
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok";
        let t = ChatTemplate::new(src.into(), String::new(), String::new()).unwrap();
        let err = t.render(&[msg("system", "x")], true).unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn templates_that_read_tools_render_them() {
        let plain = ChatTemplate::new(CHATML.into(), String::new(), String::new()).unwrap();
        assert!(!plain.supports_tools());
        let src = "{% if tools %}{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% endif %}\
                   {% for m in messages %}{{ m.role }}:{{ m.content }}{% for c in m.tool_calls or [] %}\
                   ({{ c.function.name }} {{ c.function.arguments.city }}){% endfor %};{% endfor %}";
        let t = ChatTemplate::new(src.into(), String::new(), String::new()).unwrap();
        assert!(t.supports_tools());
        let messages = [
            serde_json::json!({"role": "user", "content": "weather?"}),
            serde_json::json!({"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": {"city": "Paris"}}}]}),
        ];
        let tools = serde_json::json!([{"type": "function", "function": {"name": "w"}}]);
        let out = t.render_with_tools(&messages, &tools, false).unwrap();
        assert_eq!(out, "[w]user:weather?;assistant:(w Paris);");
    }

    #[test]
    fn broken_template_is_refused_at_load() {
        assert!(ChatTemplate::new("{% for %}".into(), String::new(), String::new()).is_err());
    }
}
