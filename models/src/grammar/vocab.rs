//! The token trie llguidance walks: every token's bytes, taken from the engine's own
//! tokenizer (its serialized vocabulary; byte-level BPE or byte-fallback), with
//! special tokens marked so that no grammar can spell them as text.

use std::sync::Arc;

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use tokenizers::Tokenizer;

use super::GrammarError;

/// The trie plus the tokenizer, for the bytes a grammar forces.
struct Env {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Forced text is tokenized the way the model would see it; bytes that are not
        // UTF-8 (a grammar may force part of a character) fall back to the trie.
        match std::str::from_utf8(s) {
            Ok(text) => match self.tokenizer.encode(text, false) {
                Ok(e) => e.get_ids().to_vec(),
                Err(_) => self.trie.greedy_tokenize(s),
            },
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// Every token's bytes (special tokens prefixed with the trie's marker byte).
pub fn token_bytes(tokenizer: &Tokenizer) -> Result<Vec<Vec<u8>>, GrammarError> {
    let json = serde_json::to_value(tokenizer)
        .map_err(|e| GrammarError::Internal(format!("serializing the tokenizer: {e}")))?;
    llguidance::token_bytes_from_tokenizer_json(&json)
        .map_err(|e| GrammarError::Internal(format!("reading the vocabulary's bytes: {e}")))
}

/// The environment for one model: its trie (ending at any of `eos_ids`) and tokenizer.
pub fn token_env(tokenizer: &Tokenizer, eos_ids: &[u32]) -> Result<TokEnv, GrammarError> {
    let mut words = token_bytes(tokenizer)?;
    let vocab = tokenizer.get_vocab_size(true).max(words.len());
    words.resize(vocab, Vec::new());
    let trie = trie(&words, eos_ids)?;
    Ok(Arc::new(Env {
        trie,
        tokenizer: tokenizer.clone(),
    }))
}

/// A trie over `words` (token id = index) whose end-of-sequence set is `eos_ids`.
pub fn trie(words: &[Vec<u8>], eos_ids: &[u32]) -> Result<TokTrie, GrammarError> {
    let first = *eos_ids
        .first()
        .ok_or_else(|| GrammarError::Internal("the model has no end-of-sequence token".into()))?;
    let info = TokRxInfo::new(words.len() as u32, first);
    Ok(TokTrie::from(&info, words).with_eos_tokens(eos_ids))
}

/// An environment over a trie alone (tests and tools without a tokenizer).
pub fn approximate_env(trie: TokTrie) -> TokEnv {
    Arc::new(llguidance::toktrie::ApproximateTokEnv::new(trie))
}
