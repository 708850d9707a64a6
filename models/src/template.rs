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
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
        })
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
    fn broken_template_is_refused_at_load() {
        assert!(ChatTemplate::new("{% for %}".into(), String::new(), String::new()).is_err());
    }
}
