//! Reuse of attention state across requests that share a token prefix (a system
//! prompt, the earlier turns of a conversation), as vLLM's automatic prefix
//! caching and llama.cpp's `cache_prompt` do.
//!
//! The engine hands in the KV cache of every prompt it prefilled and of every
//! sequence that finished, with the tokens it holds. A new prompt takes a copy of
//! the first positions of the entry sharing its longest prefix and prefills only
//! the rest. Entries are owned here and only ever copied out, so no running
//! sequence can write into a cached KV (each sequence writes its own buffers in
//! place). Memory is bounded by a byte budget, least recently used first out.

use crate::llama::KvCache;

/// Shorter matches are prefilled again: copying the cache is not worth it.
pub const MIN_REUSE_TOKENS: usize = 8;
/// Entries kept at most, whatever their size, so lookups stay cheap.
pub const MAX_ENTRIES: usize = 256;

struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
    bytes: usize,
    last_used: u64,
}

/// An LRU of KV caches keyed by the token sequence each holds.
pub struct PrefixCache {
    entries: Vec<Entry>,
    budget_bytes: usize,
    used_bytes: usize,
    clock: u64,
    /// Entries added so far: a lookup that found nothing finds nothing new
    /// until this moves.
    added: u64,
}

/// What a lookup found: a private copy of the cache for the first `reused` tokens.
#[derive(Debug)]
pub struct Reuse {
    pub cache: KvCache,
    pub reused: usize,
}

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCache")
            .field("entries", &self.entries.len())
            .field("used_bytes", &self.used_bytes)
            .field("budget_bytes", &self.budget_bytes)
            .finish()
    }
}

impl PrefixCache {
    /// A cache holding at most `budget_bytes` of KV buffers; 0 turns it off.
    pub fn new(budget_bytes: usize) -> PrefixCache {
        PrefixCache {
            entries: Vec::new(),
            budget_bytes,
            used_bytes: 0,
            clock: 0,
            added: 0,
        }
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.used_bytes = 0;
    }

    /// Entries added since the cache was made: unchanged, a lookup gives
    /// nothing it did not give before (the engine looks again only when it moved).
    pub fn added(&self) -> u64 {
        self.added
    }

    /// Whether [`PrefixCache::insert`] would consider a cache of `tokens`
    /// positions (the cache is on and the prefix long enough to reuse).
    pub fn accepts(&self, tokens: usize) -> bool {
        self.budget_bytes > 0 && tokens >= MIN_REUSE_TOKENS
    }

    /// A copy of the cached KV sharing the longest prefix with `prompt`, leaving at
    /// least the prompt's last token to prefill (its logits start the answer).
    /// `None` when nothing shares at least [`MIN_REUSE_TOKENS`]. The copy has
    /// room for `want` positions (`KvCache::expect`; 0: no estimate).
    pub fn lookup(&mut self, prompt: &[u32], want: usize) -> Option<Reuse> {
        self.lookup_beyond(prompt, want, 0)
    }

    /// [`PrefixCache::lookup`], but `None` (and no copy) unless the prefix found
    /// is longer than the `done` positions the caller already holds.
    pub fn lookup_beyond(&mut self, prompt: &[u32], want: usize, done: usize) -> Option<Reuse> {
        let limit = prompt.len().saturating_sub(1);
        let (best, reused) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
            .max_by_key(|&(_, n)| n)?;
        if reused < MIN_REUSE_TOKENS || reused <= done {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[best];
        entry.last_used = self.clock;
        match entry.cache.prefix_copy(reused, want) {
            Ok(cache) => Some(Reuse { cache, reused }),
            Err(e) => {
                tracing::warn!(error = %e, "copying a cached prefix failed");
                None
            }
        }
    }

    /// Keep `cache`, which holds exactly the KV of `tokens`. An entry whose tokens
    /// begin this one's is dropped (this one serves every lookup it would); when an
    /// entry already extends `tokens`, nothing is added.
    pub fn insert(&mut self, tokens: Vec<u32>, cache: KvCache) {
        if self.budget_bytes == 0 || tokens.len() < MIN_REUSE_TOKENS || cache.len() != tokens.len()
        {
            return;
        }
        let bytes = cache.bytes();
        if bytes > self.budget_bytes {
            return;
        }
        self.clock += 1;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.starts_with(&tokens))
        {
            e.last_used = self.clock;
            return;
        }
        let mut freed = 0;
        self.entries.retain(|e| {
            let subsumed = tokens.starts_with(&e.tokens);
            if subsumed {
                freed += e.bytes;
            }
            !subsumed
        });
        self.used_bytes -= freed;
        while !self.entries.is_empty()
            && (self.used_bytes + bytes > self.budget_bytes || self.entries.len() >= MAX_ENTRIES)
        {
            self.evict_oldest();
        }
        self.used_bytes += bytes;
        self.added += 1;
        self.entries.push(Entry {
            tokens,
            cache,
            bytes,
            last_used: self.clock,
        });
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.last_used)
            .map(|(i, _)| i);
        if let Some(i) = oldest {
            let e = self.entries.swap_remove(i);
            self.used_bytes -= e.bytes;
        }
    }
}

pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::llm::{Llm, LlmConfig, Requantize, default_model_path, logits_vec};
    use candle_core::Device;
    use std::path::PathBuf;
    use std::sync::{Arc, OnceLock};

    fn llm() -> Arc<Llm> {
        static LLM: OnceLock<Arc<Llm>> = OnceLock::new();
        LLM.get_or_init(|| {
            let dir = std::env::var_os("TENZRO_MODELS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tenzro/models")
                });
            let path = default_model_path(&dir);
            assert!(
                path.exists(),
                "{} is missing: run scripts/fetch-models",
                path.display()
            );
            let cfg = LlmConfig {
                path,
                sha256: None,
                tokenizer_json: None,
                requantize: Requantize::Q8_0,
            };
            Arc::new(Llm::load(&cfg, &Device::Cpu).unwrap())
        })
        .clone()
    }

    fn ids(llm: &Llm, text: &str) -> Vec<u32> {
        llm.encode(text).unwrap()
    }

    const TURN1: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
        <|im_start|>user\nWrite a short story about a lighthouse keeper.<|im_end|>\n\
        <|im_start|>assistant\n";
    const ANSWER_AND_TURN2: &str = "Once upon a time, a keeper named Ada watched the sea \
        from her tower every night.<|im_end|>\n<|im_start|>user\nNow make it shorter.\
        <|im_end|>\n<|im_start|>assistant\n";

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn second_turn_prefills_only_new_tokens_and_matches_a_cold_prefill() {
        let llm = llm();
        let turn1 = ids(&llm, TURN1);
        let full = ids(&llm, &format!("{TURN1}{ANSWER_AND_TURN2}"));
        assert!(full.starts_with(&turn1));
        let mut pc = PrefixCache::new(64 << 20);
        let (cache1, _) = llm.prefill(&turn1).unwrap();
        pc.insert(turn1.clone(), cache1);
        assert_eq!(pc.len(), 1);

        let Reuse { mut cache, reused } = pc.lookup(&full, 0).expect("the first turn is reused");
        assert_eq!(reused, turn1.len());
        assert_eq!(cache.len(), turn1.len());
        let warm = llm.model.prefill(&full[reused..], &mut cache).unwrap();
        assert_eq!(cache.len(), full.len());
        let warm = logits_vec(&warm).unwrap();

        // The cold reference runs the same two passes on a fresh cache. One pass
        // over the whole prompt is not a bitwise reference: activations are
        // quantized to 8 bits per block, so the last-bit differences of other
        // matmul shapes can flip a rounding and move logits by ~1 at some splits
        // (0.78 at this one, 0 at others; token-by-token decode differs as much).
        let cold = cold_two_pass(&llm, &turn1, &full);
        let diff = max_abs_diff(&warm, &cold);
        assert!(diff < 1e-4, "warm and cold logits differ by {diff}");
    }

    fn cold_two_pass(llm: &Llm, turn1: &[u32], full: &[u32]) -> Vec<f32> {
        let mut cache = llm.model.new_cache();
        llm.model.prefill(turn1, &mut cache).unwrap();
        logits_vec(&llm.model.prefill(&full[turn1.len()..], &mut cache).unwrap()).unwrap()
    }

    #[test]
    fn a_reused_prefix_is_never_written_by_the_sequence_that_reused_it() {
        let llm = llm();
        let turn1 = ids(&llm, TURN1);
        let full = ids(&llm, &format!("{TURN1}{ANSWER_AND_TURN2}"));
        let mut pc = PrefixCache::new(64 << 20);
        let (cache1, _) = llm.prefill(&turn1).unwrap();
        pc.insert(turn1.clone(), cache1);
        // A sequence that diverges right after the shared system prompt writes its
        // own tokens over the positions the cached entry holds.
        let system = ids(
            &llm,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        );
        let mut other = system.clone();
        other.extend(ids(
            &llm,
            "<|im_start|>user\nSay something else entirely.<|im_end|>\n",
        ));
        let Reuse { mut cache, reused } = pc.lookup(&other, 0).unwrap();
        assert!(reused >= system.len() && reused < turn1.len(), "{reused}");
        llm.model.prefill(&other[reused..], &mut cache).unwrap();
        // The first turn still continues exactly as a cold prefill does.
        let Reuse { mut cache, reused } = pc.lookup(&full, 0).unwrap();
        assert_eq!(reused, turn1.len());
        let warm = logits_vec(&llm.model.prefill(&full[reused..], &mut cache).unwrap()).unwrap();
        let cold = cold_two_pass(&llm, &turn1, &full);
        assert!(max_abs_diff(&warm, &cold) < 1e-4);
    }

    #[test]
    fn the_budget_bounds_memory_and_evicts_least_recently_used() {
        let llm = llm();
        let prompts: Vec<Vec<u32>> = (0..4)
            .map(|i| {
                ids(
                    &llm,
                    &format!(
                        "<|im_start|>user\nQuestion number {i}: what is {i} plus {i}?<|im_end|>\n"
                    ),
                )
            })
            .collect();
        let one = llm.prefill(&prompts[0]).unwrap().0.bytes();
        // Room for two entries.
        let mut pc = PrefixCache::new(2 * one + one / 2);
        for p in &prompts[..2] {
            pc.insert(p.clone(), llm.prefill(p).unwrap().0);
        }
        assert_eq!(pc.len(), 2);
        // Touch the first, so the second is the least recently used.
        assert!(
            pc.lookup(&[prompts[0].clone(), vec![42]].concat(), 0)
                .is_some()
        );
        pc.insert(prompts[2].clone(), llm.prefill(&prompts[2]).unwrap().0);
        assert_eq!(pc.len(), 2);
        assert!(pc.used_bytes() <= 2 * one + one / 2);
        assert!(
            pc.lookup(&[prompts[1].clone(), vec![42]].concat(), 0)
                .is_none()
        );
        assert!(
            pc.lookup(&[prompts[0].clone(), vec![42]].concat(), 0)
                .is_some()
        );
        // A budget of 0 keeps nothing.
        let mut off = PrefixCache::new(0);
        off.insert(prompts[3].clone(), llm.prefill(&prompts[3]).unwrap().0);
        assert!(off.is_empty());
    }

    #[test]
    fn a_longer_entry_replaces_the_prefix_it_extends() {
        let llm = llm();
        let turn1 = ids(&llm, TURN1);
        let full = ids(&llm, &format!("{TURN1}{ANSWER_AND_TURN2}"));
        let mut pc = PrefixCache::new(64 << 20);
        pc.insert(turn1.clone(), llm.prefill(&turn1).unwrap().0);
        pc.insert(full.clone(), llm.prefill(&full).unwrap().0);
        assert_eq!((pc.len(), pc.added()), (1, 2));
        // And the shorter one is not added back beside it (nothing new to find:
        // `added` stays, so the engine does not look again).
        pc.insert(turn1.clone(), llm.prefill(&turn1).unwrap().0);
        assert_eq!((pc.len(), pc.added()), (1, 2));
        // Only a longer prefix than the caller holds is copied out.
        assert!(pc.lookup_beyond(&full, 0, full.len() - 1).is_none());
        assert!(pc.lookup_beyond(&full, 0, turn1.len()).is_some());
        // A cache that does not hold exactly its tokens is refused.
        pc.clear();
        pc.insert(full.clone(), llm.prefill(&turn1).unwrap().0);
        assert!(pc.is_empty());
        // The whole prompt is never reused: its last token must still be run.
        pc.insert(full.clone(), llm.prefill(&full).unwrap().0);
        assert_eq!(pc.lookup(&full, 0).unwrap().reused, full.len() - 1);
    }
}
