//! Constrained decoding: a grammar (any JSON object, a JSON Schema, a Lark grammar)
//! compiled once per request with `llguidance`, then per sequence a [`Constraint`]
//! that masks the logits before each sampling step and consumes the chosen token.
//! End-of-sequence tokens stay allowed only where the grammar accepts.
//!
//! Compilation is bounded: the grammar's text ([`MAX_GRAMMAR_BYTES`]) and
//! llguidance's own fuel and size limits ([`limits`]); a grammar over them is the
//! caller's error ([`GrammarError::Invalid`]).

mod vocab;

use std::sync::{Arc, Mutex};

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{SimpleVob, TokEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

pub use vocab::{approximate_env, token_bytes, trie};

/// Largest grammar accepted: a JSON Schema serialized, or a Lark grammar's text.
pub const MAX_GRAMMAR_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GrammarError {
    /// The request's grammar cannot be used (invalid, unsupported or too large).
    #[error("{0}")]
    Invalid(String),
    /// Our side failed (the vocabulary, the matcher).
    #[error("constrained decoding failed: {0}")]
    Internal(String),
}

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object.
    JsonObject,
    /// A JSON Schema; `strict` refuses keywords llguidance cannot enforce, otherwise
    /// they are ignored (the output still parses).
    JsonSchema { schema: Value, strict: bool },
    /// A grammar in llguidance's Lark syntax (which can embed `%json {schema}`).
    Lark(String),
}

/// How JSON is written: one space after `,` and `:`, no other whitespace, so a
/// small model cannot wander into endless blank lines.
fn json_style(lenient: bool) -> Value {
    json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
        "lenient": lenient,
    })
}

/// A schema with our JSON style set on it (any `x-guidance` of the caller's is replaced).
pub fn styled_schema(schema: &Value, strict: bool) -> Result<Value, GrammarError> {
    let mut schema = schema.clone();
    let Some(obj) = schema.as_object_mut() else {
        return Err(GrammarError::Invalid(
            "the schema must be a JSON object".into(),
        ));
    };
    obj.insert("x-guidance".into(), json_style(!strict));
    Ok(schema)
}

impl GrammarSpec {
    fn to_grammar(&self) -> Result<TopLevelGrammar, GrammarError> {
        let too_big = |n: usize| {
            GrammarError::Invalid(format!(
                "the grammar is {n} bytes; at most {MAX_GRAMMAR_BYTES} are allowed"
            ))
        };
        match self {
            GrammarSpec::JsonObject => Ok(TopLevelGrammar::from_json_schema(styled_schema(
                &json!({"type": "object"}),
                true,
            )?)),
            GrammarSpec::JsonSchema { schema, strict } => {
                let size = serde_json::to_vec(schema).map_or(usize::MAX, |v| v.len());
                if size > MAX_GRAMMAR_BYTES {
                    return Err(too_big(size));
                }
                Ok(TopLevelGrammar::from_json_schema(styled_schema(
                    schema, *strict,
                )?))
            }
            GrammarSpec::Lark(text) => {
                if text.len() > MAX_GRAMMAR_BYTES {
                    return Err(too_big(text.len()));
                }
                if text.trim().is_empty() {
                    return Err(GrammarError::Invalid("the grammar is empty".into()));
                }
                Ok(TopLevelGrammar::from_lark(text.clone()))
            }
        }
    }
}

/// llguidance's limits, tightened: compile time and memory per request stay small
/// (a few ms and a few MB for what OpenAI's strict mode accepts).
pub fn limits() -> ParserLimits {
    ParserLimits {
        max_items_in_row: 2_000,
        initial_lexer_fuel: 500_000,
        step_lexer_fuel: 200_000,
        step_max_items: 50_000,
        max_lexer_states: 100_000,
        max_grammar_size: 100_000,
        precompute_large_lexemes: true,
        // Errors go back to the caller; they need not echo the grammar.
        verbose_errors: false,
    }
}

/// One model's grammar compiler: its token trie and llguidance's factory.
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// Build the trie from the tokenizer's vocabulary (tens of milliseconds).
    pub fn new(tokenizer: &Tokenizer, eos_ids: &[u32]) -> Result<Self, GrammarError> {
        Self::from_env(vocab::token_env(tokenizer, eos_ids)?)
    }

    pub fn from_env(env: TokEnv) -> Result<Self, GrammarError> {
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GrammarError::Internal(e.to_string()))?;
        factory.quiet();
        *factory.limits_mut() = limits();
        Ok(Grammars { factory })
    }

    /// Compile `spec`; the result starts any number of sequences.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Compiled, GrammarError> {
        let grammar = spec.to_grammar()?;
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| GrammarError::Invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError::Invalid(e));
        }
        Ok(Compiled {
            proto: Arc::new(Mutex::new(matcher)),
        })
    }
}

/// A compiled grammar, cheap to clone; [`Compiled::start`] gives a fresh matcher.
#[derive(Clone)]
pub struct Compiled {
    proto: Arc<Mutex<Matcher>>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled(..)")
    }
}

impl PartialEq for Compiled {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.proto, &other.proto)
    }
}

impl Compiled {
    pub fn start(&self) -> Result<Constraint, GrammarError> {
        let proto = self
            .proto
            .lock()
            .map_err(|_| GrammarError::Internal("a grammar's lock was poisoned".into()))?;
        Ok(Constraint {
            matcher: proto.deep_clone(),
            prepared: None,
        })
    }
}

/// One sequence's position in its grammar.
pub struct Constraint {
    matcher: Matcher,
    /// The next step's mask, computed ahead by [`Constraint::prepare`].
    prepared: Option<Result<SimpleVob, GrammarError>>,
}

impl Constraint {
    /// Compute the next step's allowed tokens now, so that [`Constraint::mask`]
    /// only applies them. The mask depends on the grammar's state alone, not on the
    /// logits, so the engine calls this on another thread while the batch's
    /// forward pass runs (the mask's cost then leaves the critical path).
    pub fn prepare(&mut self) {
        if self.prepared.is_none() {
            self.prepared = Some(self.compute());
        }
    }

    fn compute(&mut self) -> Result<SimpleVob, GrammarError> {
        self.matcher
            .compute_mask_or_eos()
            .map_err(|e| GrammarError::Internal(e.to_string()))
    }

    /// Set the logit of every token the grammar forbids next to −∞ (tokens past the
    /// trie's vocabulary too). End-of-sequence tokens survive only where the grammar
    /// accepts, or once it has finished. Uses the mask [`Constraint::prepare`]
    /// computed, else computes it here.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), GrammarError> {
        let mask = match self.prepared.take() {
            Some(m) => m?,
            None => self.compute()?,
        };
        if mask.is_zero() {
            return Err(GrammarError::Internal("the grammar allows no token".into()));
        }
        let words = mask.as_slice();
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            let bits = words.get(w).copied().unwrap_or(0);
            if bits == u32::MAX {
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if bits & (1 << b) == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        Ok(())
    }

    /// Advance past the token sampled under [`Constraint::mask`]. An end-of-sequence
    /// token ends the sequence; it is not fed to the grammar.
    pub fn commit(&mut self, token: u32, is_eos: bool) -> Result<(), GrammarError> {
        self.prepared = None;
        if is_eos || self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| GrammarError::Internal(e.to_string()))
    }

    /// True when the output so far is a whole sentence of the grammar.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests;
