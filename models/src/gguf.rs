//! GGUF files: metadata access and the tokenizer built from it.
//!
//! candle's own `TokenizerFromGguf` treats `tokenizer.ggml.pre = smollm` as plain
//! GPT-2 with a prefix space, which mis-tokenises SmolLM2. We build the tokenizer by
//! hand the way llama.cpp does for that pre-tokenizer: BPE over the GGUF's tokens
//! and merges, pre-tokenizer Digits(individual) + ByteLevel(no prefix space), a
//! ByteLevel decoder, and every control token (token type 3) as a special token.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::ModelError;

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`...).
const TOKEN_TYPE_CONTROL: i32 = 3;

pub fn read_content(path: &Path) -> Result<(Content, std::fs::File), ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let content = Content::read(&mut file).map_err(|e| ModelError::format(path, e))?;
    Ok((content, file))
}

pub fn md_string(ct: &Content, key: &str) -> Option<String> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

pub fn md_u32(ct: &Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| v.to_u32().ok())
}

fn md_array<'a>(ct: &'a Content, key: &str) -> Result<&'a Vec<Value>, ModelError> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(|| ModelError::Tokenizer(format!("GGUF has no array `{key}`")))
}

/// Build the tokenizer from `tokenizer.ggml.*` metadata (BPE / `gpt2` models).
pub fn tokenizer_from_gguf(ct: &Content) -> Result<Tokenizer, ModelError> {
    let model = md_string(ct, "tokenizer.ggml.model").unwrap_or_default();
    if model != "gpt2" {
        return Err(ModelError::Tokenizer(format!(
            "GGUF tokenizer model `{model}` is not supported yet (only byte-level BPE, `gpt2`); \
             put a tokenizer.json beside the weights"
        )));
    }
    let tokens = md_array(ct, "tokenizer.ggml.tokens")?;
    let merges = md_array(ct, "tokenizer.ggml.merges")?;
    let types = ct
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok());

    let mut vocab = Vocab::default();
    let mut names = Vec::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let token = token
            .to_string()
            .map_err(|e| ModelError::Tokenizer(format!("token {id}: {e}")))?;
        let id = u32::try_from(id).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        vocab.insert(token.clone(), id);
        names.push(token.clone());
    }
    let merges = merges
        .iter()
        .map(|m| {
            let m = m
                .to_string()
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| ModelError::Tokenizer(format!("merge `{m}` has no space")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre: Vec<PreTokenizerWrapper> = vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ];
    tokenizer.with_pre_tokenizer(Some(Sequence::new(pre)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    if let Some(types) = types {
        let specials: Vec<AddedToken> = types
            .iter()
            .zip(&names)
            .filter(|(t, _)| t.to_i32().ok() == Some(TOKEN_TYPE_CONTROL))
            .map(|(_, name)| AddedToken::from(name.clone(), true))
            .collect();
        tokenizer
            .add_special_tokens(specials)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    }
    Ok(tokenizer)
}
