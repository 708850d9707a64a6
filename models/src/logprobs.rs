//! Log probabilities: the math (log-softmax of the logits the sampler used, the
//! top alternatives) and the bookkeeping the wire needs (each token's text, its
//! UTF-8 bytes, where it starts in the text).
//!
//! Cost is paid only when a request asks for logprobs: one pass over the logits
//! for the normaliser and one for the top k (k at most 20).

use std::collections::HashSet;

use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;

/// OpenAI reports very unlikely tokens (and banned ones) as -9999 rather than
/// -inf, which JSON cannot carry.
pub const FLOOR: f32 = -9999.0;

/// A token's log probability and the k most likely tokens of the same
/// distribution (most likely first, ties to the lower id).
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// `chosen`'s log probability under `softmax(logits)` and the `k` most likely
/// tokens. Non-finite logits have probability 0.
pub fn score(logits: &[f32], chosen: u32, k: usize) -> Scored {
    let lse = log_sum_exp(logits);
    let lp = |l: f32| {
        if l.is_finite() && lse.is_finite() {
            (l - lse).max(FLOOR)
        } else {
            FLOOR
        }
    };
    let logprob = logits.get(chosen as usize).map_or(FLOOR, |&l| lp(l));
    let top = top_k(logits, k)
        .into_iter()
        .map(|(id, l)| (id, lp(l)))
        .collect();
    Scored { logprob, top }
}

/// `ln Σ exp(l)` over the finite logits, computed from the maximum so it does
/// not overflow.
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return f32::NEG_INFINITY;
    }
    let sum: f64 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|&l| f64::from(l - max).exp())
        .sum();
    max + sum.ln() as f32
}

/// The `k` largest finite logits as `(id, logit)`, largest first, the lower id
/// first on a tie (so under greedy decoding the chosen token comes first).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_finite() || (best.len() == k && best.last().is_some_and(|&(_, m)| l <= m)) {
            continue;
        }
        // Later ids lose ties, so the new one goes after every logit >= it.
        let at = best.partition_point(|&(_, m)| m >= l);
        best.insert(at, (i as u32, l));
        best.truncate(k);
    }
    best
}

/// One generated (or prompt) token as the wire reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    /// `None` only for the first token of a scored prompt (nothing precedes it).
    pub logprob: Option<f32>,
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Turns token ids into their bytes and text, for the tokenizer it was made from.
#[derive(Debug, Clone)]
pub struct TokenText {
    /// GPT-2 style byte-level BPE: each char of a token stands for one byte.
    byte_level: bool,
    /// Added (special) tokens are stored as plain text in either scheme.
    added: HashSet<u32>,
}

impl TokenText {
    pub fn new(tokenizer: &Tokenizer) -> Self {
        let byte_level = matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let added = tokenizer.get_added_tokens_decoder().into_keys().collect();
        TokenText { byte_level, added }
    }

    /// The UTF-8 bytes token `id` contributes to the text (possibly part of a
    /// character).
    pub fn bytes(&self, tokenizer: &Tokenizer, id: u32) -> Vec<u8> {
        let Some(piece) = tokenizer.id_to_token(id) else {
            return Vec::new();
        };
        if self.added.contains(&id) {
            return piece.into_bytes();
        }
        if self.byte_level {
            let mut out = Vec::with_capacity(piece.len());
            for c in piece.chars() {
                match byte_level_byte(c) {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            return out;
        }
        // SentencePiece: `▁` is a space and `<0xHH>` a raw byte.
        if let Some(b) = byte_fallback(&piece) {
            return vec![b];
        }
        piece.replace('\u{2581}', " ").into_bytes()
    }

    /// The token's text; a token that is only part of a character is written as
    /// `bytes:\xe2\x80` as OpenAI does.
    pub fn text(bytes: &[u8]) -> String {
        match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                let mut s = String::from("bytes:");
                for b in bytes {
                    s.push_str(&format!("\\x{b:02x}"));
                }
                s
            }
        }
    }

    /// The wire entry for `id` with its score (the alternatives named too).
    pub fn entry(&self, tokenizer: &Tokenizer, id: u32, scored: Option<&Scored>) -> TokenLogprob {
        let bytes = self.bytes(tokenizer, id);
        TokenLogprob {
            id,
            token: Self::text(&bytes),
            logprob: scored.map(|s| s.logprob),
            top: scored
                .map(|s| {
                    s.top
                        .iter()
                        .map(|&(id, logprob)| {
                            let bytes = self.bytes(tokenizer, id);
                            TopLogprob {
                                id,
                                token: Self::text(&bytes),
                                bytes,
                                logprob,
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
            bytes,
        }
    }
}

/// The byte a GPT-2 byte-level char stands for: printable bytes are themselves,
/// the other 68 were moved to U+0100.. in order.
fn byte_level_byte(c: char) -> Option<u8> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let code = c as u32;
    if printable(code) {
        return u8::try_from(code).ok();
    }
    let n = code.checked_sub(256)?;
    (0u32..=255)
        .filter(|&b| !printable(b))
        .nth(n as usize)
        .and_then(|b| u8::try_from(b).ok())
}

fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// Legacy `text_offset`: where each token starts in the choice's text, in
/// characters (a token that continues a character starts after it).
#[derive(Debug, Default, Clone)]
pub struct Offsets {
    chars: usize,
}

impl Offsets {
    /// Start counting after `text` (the echoed prompt, say).
    pub fn after(text: &str) -> Self {
        Offsets {
            chars: text.chars().count(),
        }
    }

    /// The offset of a token with these bytes, then move past it.
    pub fn next(&mut self, bytes: &[u8]) -> usize {
        let at = self.chars;
        // One char starts at every byte that is not a UTF-8 continuation byte.
        self.chars += bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count();
        at
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn score_matches_a_hand_computed_log_softmax() {
        // logits [1, 2, 3]: lse = 3 + ln(e^-2 + e^-1 + 1) = 3.4076059...
        let s = score(&[1.0, 2.0, 3.0], 1, 2);
        assert!(close(s.logprob, 2.0 - 3.407_606), "{s:?}");
        assert_eq!(s.top.len(), 2);
        assert_eq!(s.top[0].0, 2);
        assert!(close(s.top[0].1, 3.0 - 3.407_606));
        assert_eq!(s.top[1].0, 1);
        let total: f32 = [1.0f32, 2.0, 3.0]
            .iter()
            .map(|&l| (l - 3.407_606).exp())
            .sum();
        assert!(close(total, 1.0));
    }

    #[test]
    fn non_finite_logits_have_no_mass_and_floor_at_minus_9999() {
        let s = score(&[f32::NEG_INFINITY, 0.0, f32::NAN, 0.0], 0, 4);
        assert_eq!(s.logprob, FLOOR);
        assert_eq!(s.top.len(), 2);
        assert!(close(s.top[0].1, -(2f32.ln())));
        let s = score(&[0.0, 0.0], 7, 0);
        assert_eq!(s.logprob, FLOOR);
        assert!(s.top.is_empty());
    }

    #[test]
    fn top_k_breaks_ties_to_the_lower_id() {
        assert_eq!(
            top_k(&[1.0, 5.0, 5.0, 3.0, 5.0], 3),
            vec![(1, 5.0), (2, 5.0), (4, 5.0)]
        );
        assert_eq!(
            top_k(&[1.0, 5.0, 5.0, 3.0], 3),
            vec![(1, 5.0), (2, 5.0), (3, 3.0)]
        );
        assert_eq!(top_k(&[2.0, 1.0], 5), vec![(0, 2.0), (1, 1.0)]);
    }

    #[test]
    fn byte_level_chars_map_back_to_bytes() {
        assert_eq!(byte_level_byte('a'), Some(b'a'));
        assert_eq!(byte_level_byte('\u{120}'), Some(b' ')); // `Ġ`
        assert_eq!(byte_level_byte('\u{10A}'), Some(b'\n')); // `Ċ`
        assert_eq!(byte_level_byte('\u{100}'), Some(0));
        assert_eq!(byte_level_byte('\u{143}'), Some(173));
        assert_eq!(byte_level_byte('\u{144}'), None);
        assert_eq!(byte_fallback("<0xE2>"), Some(0xE2));
        assert_eq!(byte_fallback("<0xE>"), None);
    }

    #[test]
    fn partial_characters_are_written_as_bytes() {
        assert_eq!(TokenText::text("é".as_bytes()), "é");
        assert_eq!(TokenText::text(&[0xE2, 0x80]), "bytes:\\xe2\\x80");
    }

    #[test]
    fn offsets_count_characters_and_continuation_bytes_start_nothing() {
        let mut o = Offsets::after("ab");
        assert_eq!(o.next(b" x"), 2);
        // "€" split over two tokens: E2 | 82 AC.
        assert_eq!(o.next(&[0xE2]), 4);
        assert_eq!(o.next(&[0x82, 0xAC]), 5);
        assert_eq!(o.next(b"!"), 5);
        assert_eq!(o.next(b""), 6);
    }
}
