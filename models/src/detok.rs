//! Streaming detokenization that never splits a character.
//!
//! Byte-level BPE tokens can end in the middle of a multi-byte UTF-8 character;
//! decoding such a prefix yields U+FFFD. We decode a small window of recent tokens
//! and release text only when the window decodes cleanly, so what a client
//! receives is always valid and concatenates to the full decode.

use tokenizers::Tokenizer;

use crate::ModelError;

#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the window that is decoded for context.
    prefix_offset: usize,
    /// End of what has been released.
    read_offset: usize,
}

impl IncrementalDecoder {
    /// Add a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, ModelError> {
        self.ids.push(id);
        let decode = |ids: &[u32]| {
            tokenizer
                .decode(ids, true)
                .map_err(|e| ModelError::Tokenizer(e.to_string()))
        };
        let prefix = decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = decode(&self.ids[self.prefix_offset..])?;
        if full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_owned(),
            // The window re-decoded differently (rare with byte-level BPE): release
            // what follows the common prefix on a char boundary.
            None => {
                let common = full
                    .char_indices()
                    .zip(prefix.chars())
                    .take_while(|((_, a), b)| a == b)
                    .last()
                    .map(|((i, c), _)| i + c.len_utf8())
                    .unwrap_or(0);
                full[common..].to_owned()
            }
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(new)
    }
}
