//! Wire requests in, validated generation jobs out. Plain functions, no HTTP:
//! every rule a client can break is checked here and answered with a message
//! that says what to change.

use tenzro_models::api::{
    self as checks, ChatCompletionRequest, CompletionRequest, FieldError, Prompt, Role, Stop,
    seed_bits,
};
use tenzro_models::engine::GenerationParams;
use tenzro_models::llm::Llm;
use tenzro_models::sampler::SamplingParams;
use tenzro_models::template::TemplateMessage;

use crate::config::ServerConfig;
use crate::error::ApiError;

/// Most stop sequences per request (OpenAI's limit).
const MAX_STOPS: usize = 4;

/// One prompt to run with `params.n` choices.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
}

#[derive(Debug, Clone)]
pub struct ValidGeneration {
    pub jobs: Vec<Job>,
    pub stream: bool,
    pub include_usage: bool,
    /// Text to put before each choice's completion (`echo`), per job.
    pub echo: Vec<Option<String>>,
    /// The output may hold tool calls: split them out of the text (`toolcalls`).
    pub tool_calls: bool,
}

/// The sampling fields shared by both endpoints.
struct Sampling {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<i64>,
}

fn sampling(s: Sampling) -> Result<SamplingParams, ApiError> {
    let in_range = |name: &str, v: Option<f32>, lo: f32, hi: f32, default: f32| match v {
        None => Ok(default),
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(x),
        Some(x) => Err(ApiError::bad_param(
            name,
            format!("`{name}` must be between {lo} and {hi}, got {x}"),
        )),
    };
    let temperature = in_range("temperature", s.temperature, 0.0, 2.0, 1.0)?;
    let top_p = in_range("top_p", s.top_p, 0.0, 1.0, 1.0)?;
    if top_p <= 0.0 {
        return Err(ApiError::bad_param(
            "top_p",
            "`top_p` must be greater than 0",
        ));
    }
    let top_k = match s.top_k {
        Some(0) => return Err(ApiError::bad_param("top_k", "`top_k` must be at least 1")),
        k => k.map(|k| k as usize),
    };
    Ok(SamplingParams {
        temperature,
        top_p,
        top_k,
        presence_penalty: in_range("presence_penalty", s.presence_penalty, -2.0, 2.0, 0.0)?,
        frequency_penalty: in_range("frequency_penalty", s.frequency_penalty, -2.0, 2.0, 0.0)?,
        seed: s.seed.map(seed_bits),
        logit_bias: Vec::new(),
        logprobs: None,
        prompt_logprobs: false,
    })
}

fn stops(stop: Option<&Stop>) -> Result<Vec<String>, ApiError> {
    let stops = stop.cloned().map(Stop::into_vec).unwrap_or_default();
    if stops.len() > MAX_STOPS {
        return Err(ApiError::bad_param(
            "stop",
            format!(
                "At most {MAX_STOPS} stop sequences are allowed, got {}",
                stops.len()
            ),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::bad_param(
            "stop",
            "Stop sequences must not be empty strings",
        ));
    }
    Ok(stops)
}

fn choices(n: Option<u32>, limits: &ServerConfig) -> Result<u32, ApiError> {
    match n.unwrap_or(1) {
        n if n >= 1 && n <= limits.max_n => Ok(n),
        n => Err(ApiError::bad_param(
            "n",
            format!("`n` must be between 1 and {}, got {n}", limits.max_n),
        )),
    }
}

/// How many tokens to generate: what was asked, else what the context leaves.
fn budget(
    param: &str,
    asked: Option<u32>,
    prompt_len: usize,
    context: usize,
) -> Result<usize, ApiError> {
    if asked == Some(0) {
        return Err(ApiError::bad_param(
            param,
            format!("`{param}` must be at least 1"),
        ));
    }
    let room = context.saturating_sub(prompt_len);
    match asked {
        Some(m) if prompt_len + m as usize <= context => Ok(m as usize),
        None if room > 0 => Ok(room),
        _ => {
            let asked = asked.map_or_else(|| "at least 1".to_owned(), |m| m.to_string());
            Err(ApiError::BadRequest {
                message: format!(
                    "This model's maximum context length is {context} tokens. However, you requested \
                     {prompt_len} tokens in the prompt plus {asked} for the completion. Shorten the \
                     prompt or lower `{param}`."
                ),
                param: Some(param.to_owned()),
                code: Some("context_length_exceeded"),
            })
        }
    }
}

pub fn chat(
    req: &ChatCompletionRequest,
    llm: &Llm,
    limits: &ServerConfig,
) -> Result<ValidGeneration, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    req.check_fields().map_err(field_error)?;
    if req.stream_options.is_some() && !req.is_stream() {
        return Err(ApiError::bad_param(
            "stream_options",
            "`stream_options` is only allowed when `stream` is true",
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        if m.has_non_text_parts() {
            return Err(ApiError::bad_param(
                &format!("messages[{i}].content"),
                "Only text content parts are supported by this model",
            ));
        }
        // The template knows system/user/assistant; `developer` is OpenAI's new name for system.
        let role = match m.role {
            Role::Developer => Role::System,
            r => r,
        };
        messages.push(TemplateMessage {
            role: role.as_str().to_owned(),
            content: m.text(),
        });
    }
    let structured = crate::structured::check(req)?;
    let text = crate::structured::render(req, &structured, llm, messages)?;
    let prompt = llm
        .encode(&text)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let param = if req.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let mut params = GenerationParams {
        sampling: sampling(Sampling {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            seed: req.seed,
        })?,
        max_new_tokens: budget(
            param,
            req.max_new_tokens(),
            prompt.len(),
            llm.context_length,
        )?,
        stop: stops(req.stop.as_ref())?,
        n: choices(req.n, limits)?,
        grammar: crate::structured::grammar(&structured, llm)?,
    };
    params.sampling.logprobs = req.logprobs_top();
    params.sampling.logit_bias = logit_bias(req.logit_bias.as_ref(), llm)?;
    Ok(ValidGeneration {
        jobs: vec![Job { prompt, params }],
        stream: req.is_stream(),
        include_usage: req.include_usage(),
        echo: vec![None],
        tool_calls: structured.tool_use != tenzro_models::api::ToolUse::None,
    })
}

pub fn completion(
    req: &CompletionRequest,
    llm: &Llm,
    limits: &ServerConfig,
) -> Result<ValidGeneration, ApiError> {
    req.check_fields().map_err(field_error)?;
    if req.stream_options.is_some() && !req.is_stream() {
        return Err(ApiError::bad_param(
            "stream_options",
            "`stream_options` is only allowed when `stream` is true",
        ));
    }
    let vocab = llm.vocab_size();
    let check_ids = |ids: &[u32]| match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(id) => Err(ApiError::bad_param(
            "prompt",
            format!("Token id {id} is outside the vocabulary of {vocab}"),
        )),
        None => Ok(ids.to_vec()),
    };
    let encode = |t: &str| llm.encode(t).map_err(|e| ApiError::Internal(e.to_string()));
    let prompts: Vec<(Vec<u32>, String)> = match &req.prompt {
        Prompt::Text(t) => vec![(encode(t)?, t.clone())],
        Prompt::Texts(ts) => ts
            .iter()
            .map(|t| Ok((encode(t)?, t.clone())))
            .collect::<Result<_, ApiError>>()?,
        Prompt::Tokens(ids) => vec![(check_ids(ids)?, decode(llm, ids))],
        Prompt::TokenLists(lists) => lists
            .iter()
            .map(|ids| Ok((check_ids(ids)?, decode(llm, ids))))
            .collect::<Result<_, ApiError>>()?,
    };
    if prompts.is_empty() {
        return Err(ApiError::bad_param(
            "prompt",
            "`prompt` must not be an empty list",
        ));
    }
    if prompts.iter().any(|(ids, _)| ids.is_empty()) {
        return Err(ApiError::bad_param("prompt", "`prompt` must not be empty"));
    }
    let mut sampling = sampling(Sampling {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        seed: req.seed,
    })?;
    let stop = stops(req.stop.as_ref())?;
    let n = choices(req.n, limits)?;
    if prompts.len() as u64 * u64::from(n) > u64::from(limits.max_n) {
        return Err(ApiError::bad_param(
            "n",
            format!(
                "{} prompts times n={n} is more than {} choices",
                prompts.len(),
                limits.max_n
            ),
        ));
    }
    let asked = Some(
        req.max_tokens
            .unwrap_or(CompletionRequest::DEFAULT_MAX_TOKENS),
    );
    let echo_on = req.echo.unwrap_or(false);
    sampling.logprobs = req.logprobs.map(|k| k as usize);
    sampling.prompt_logprobs = echo_on && sampling.logprobs.is_some();
    sampling.logit_bias = logit_bias(req.logit_bias.as_ref(), llm)?;
    let mut jobs = Vec::with_capacity(prompts.len());
    let mut echo = Vec::with_capacity(prompts.len());
    for (prompt, text) in prompts {
        let max_new_tokens = match asked {
            // `echo` with `max_tokens: 0` scores the prompt without generating.
            Some(0) if echo_on => scoring_budget(prompt.len(), llm.context_length)?,
            _ => budget("max_tokens", asked, prompt.len(), llm.context_length)?,
        };
        jobs.push(Job {
            prompt,
            params: GenerationParams {
                sampling: sampling.clone(),
                max_new_tokens,
                stop: stop.clone(),
                n,
                grammar: None,
            },
        });
        echo.push(echo_on.then_some(text));
    }
    Ok(ValidGeneration {
        jobs,
        stream: req.is_stream(),
        include_usage: req.include_usage(),
        echo,
        tool_calls: false,
    })
}

/// A refused field from the model-free checks (`tenzro_models::api::checks`).
fn field_error(e: FieldError) -> ApiError {
    ApiError::bad_param(&e.param, e.message)
}

/// `logit_bias` as the sampler takes it, every id in the model's vocabulary.
fn logit_bias(
    map: Option<&std::collections::BTreeMap<String, f32>>,
    llm: &Llm,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let bias = checks::logit_bias(map).map_err(field_error)?;
    checks::check_vocab(&bias, llm.vocab_size()).map_err(field_error)?;
    Ok(bias)
}

/// A prompt scored without generating (0 new tokens) must itself fit the context.
fn scoring_budget(prompt_len: usize, context: usize) -> Result<usize, ApiError> {
    if prompt_len > context {
        return Err(ApiError::BadRequest {
            message: format!(
                "This model's maximum context length is {context} tokens. However, the prompt \
                 has {prompt_len} tokens. Shorten the prompt."
            ),
            param: Some("prompt".to_owned()),
            code: Some("context_length_exceeded"),
        });
    }
    Ok(0)
}

fn decode(llm: &Llm, ids: &[u32]) -> String {
    llm.tokenizer.decode(ids, false).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_rules() {
        assert_eq!(budget("max_tokens", Some(10), 5, 100).ok(), Some(10));
        assert_eq!(budget("max_tokens", None, 5, 100).ok(), Some(95));
        assert_eq!(budget("max_tokens", Some(95), 5, 100).ok(), Some(95));
        let err = budget("max_tokens", Some(96), 5, 100)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("100") && err.contains("5 tokens") && err.contains("96"),
            "{err}"
        );
        assert!(budget("max_tokens", None, 100, 100).is_err());
        assert!(budget("max_tokens", Some(0), 1, 100).is_err());
    }

    #[test]
    fn sampling_ranges() {
        let s = |t: Option<f32>, p: Option<f32>, k: Option<u32>| {
            sampling(Sampling {
                temperature: t,
                top_p: p,
                top_k: k,
                presence_penalty: None,
                frequency_penalty: None,
                seed: None,
            })
        };
        assert!(s(None, None, None).is_ok());
        assert!(s(Some(0.0), Some(1.0), Some(1)).is_ok());
        assert!(s(Some(-0.1), None, None).is_err());
        assert!(s(Some(2.5), None, None).is_err());
        assert!(s(Some(f32::NAN), None, None).is_err());
        assert!(s(None, Some(0.0), None).is_err());
        assert!(s(None, Some(1.5), None).is_err());
        assert!(s(None, None, Some(0)).is_err());
    }

    #[test]
    fn stop_rules() {
        assert_eq!(stops(None).ok(), Some(vec![]));
        assert_eq!(
            stops(Some(&Stop::One("x".into()))).ok(),
            Some(vec!["x".to_owned()])
        );
        assert!(stops(Some(&Stop::Many(vec!["a".into(); 5]))).is_err());
        assert!(stops(Some(&Stop::One(String::new()))).is_err());
    }
}
