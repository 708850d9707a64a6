//! The generation engine: one thread owns every sequence's state and steps them.
//!
//! Requests arrive through a bounded queue, each with its own reply channel. The
//! engine admits up to `max_sequences` sequences at a time (a request with `n`
//! choices takes `n`), prefills the waiting prompts together (one pass through
//! the model for all of them: each weight is read once for the round), then
//! steps every active sequence one token per round as one batch, so concurrent
//! streams advance together and a new request does not wait for a long one to
//! finish. A sequence whose client went away (its reply channel closed) is
//! dropped at the next round.
//!
//! While other sequences are decoding, prompts are prefilled `prefill_chunk`
//! tokens per round in all, between their decode steps, so a long prompt does
//! not stall their streams. A prompt sharing a prefix with a cached KV
//! (`prefix_cache`) starts from a copy of it and prefills only the rest; one
//! sharing a prefix with a prompt of the same round waits a round for it.
//!
//! A burst's first tokens all come at the end of its one pass (later for the
//! first prompt than when each was prefilled alone, sooner for the last), and
//! the burst's streams then decode together from the start.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread;

use tokio::sync::mpsc::UnboundedSender;

use crate::api::FinishReason;
use crate::detok::IncrementalDecoder;
use crate::grammar::{Compiled, Constraint, GrammarError};
use crate::llama::{KvCache, PrefillPart};
use crate::llm::{Llm, logits_vec};
use crate::logprobs::{TokenLogprob, TokenText};
use crate::prefix_cache::PrefixCache;
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::{StopMatcher, StopOutcome};

/// Answer tokens a sequence's KV cache makes room for when it is first
/// allocated (beyond them it grows by doubling): a longer answer is rarer than
/// a short one, and the room is memory held for the request's whole life.
const RESERVE_AHEAD: usize = 256;

/// Positions a sequence's cache makes room for at once: its prompt and its
/// answer up to [`RESERVE_AHEAD`] tokens.
fn room(prompt: usize, params: &GenerationParams) -> usize {
    prompt + params.max_new_tokens.min(RESERVE_AHEAD)
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests waiting beyond the active ones; a full queue refuses new work.
    pub queue_capacity: usize,
    /// Sequences decoded side by side.
    pub max_sequences: usize,
    /// Prompt tokens prefilled per round while other sequences decode (a prompt
    /// arriving when nothing decodes is prefilled whole). At least 1.
    ///
    /// A prompt prefilled in pieces gives bit for bit the logits of one pass
    /// (every row of a step is computed on its own, attention included), so
    /// answers do not depend on what else the engine was doing.
    pub prefill_chunk: usize,
    /// Bytes of KV cache kept for prompts that share a prefix with an earlier
    /// prompt or conversation; 0 turns the prefix cache off. A reused prefix
    /// gives the same logits as a cold prefill (see `prefill_chunk`).
    pub prefix_cache_bytes: usize,
    /// Compute the next step's grammar masks on another thread while the batch's
    /// forward pass runs (on by default; benches/structured compares both).
    pub overlap_masks: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue_capacity: 64,
            max_sequences: 8,
            prefill_chunk: 128,
            prefix_cache_bytes: 64 << 20,
            overlap_masks: true,
        }
    }
}

/// Validated generation settings.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    pub sampling: SamplingParams,
    /// At least 1; prompt + this fits the context (the caller checks). 0 only
    /// with `sampling.prompt_logprobs`: the prompt is scored, nothing generated.
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    /// Number of choices, at least 1.
    pub n: u32,
    /// The grammar each choice's output must match (`response_format`, tool calls).
    pub grammar: Option<Compiled>,
}

pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
    pub reply: UnboundedSender<Event>,
}

/// What the engine sends back, in order: `Text`/`Finished` per choice, then one
/// `Done` (or one `Error`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text of one choice and the completion tokens it carries.
    Text {
        choice: u32,
        text: String,
        tokens: u32,
    },
    /// The choice ended; `text` is any last text, `tokens` the tokens not yet
    /// reported (so the sum over events equals the choice's completion tokens).
    Finished {
        choice: u32,
        reason: FinishReason,
        text: String,
        tokens: u32,
    },
    Done {
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    Error(String),
    /// Logprobs of a choice's tokens, only when the request asked for them: a
    /// scored prompt's tokens first (`sampling.prompt_logprobs`), then one event
    /// per completion token, sent before the `Text`/`Finished` that counts it.
    Logprobs {
        choice: u32,
        entries: Vec<TokenLogprob>,
    },
    /// One whole tool call of a choice (`index` counts the choice's calls), and the
    /// completion tokens it carries. The engine never sends it: the provider splits
    /// a tool-calling choice's text into these (`tools::CallSplitter`).
    ToolCall {
        choice: u32,
        index: u32,
        name: String,
        arguments: String,
        tokens: u32,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the generation queue is full")]
    QueueFull,
    #[error("the generation engine has stopped")]
    Stopped,
}

/// The handle the server holds; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<GenerateRequest>,
    stats: Arc<Stats>,
    llm: Arc<Llm>,
    prefix: Arc<Mutex<PrefixCache>>,
}

#[derive(Default)]
struct Stats {
    queued: AtomicUsize,
    active: AtomicUsize,
    /// Prompt tokens served from the prefix cache instead of prefilled.
    reused_tokens: AtomicU64,
}

impl Engine {
    pub fn spawn(llm: Arc<Llm>, config: EngineConfig) -> std::io::Result<Engine> {
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity.max(1));
        let stats = Arc::new(Stats::default());
        let prefix = Arc::new(Mutex::new(PrefixCache::new(config.prefix_cache_bytes)));
        let worker = Worker {
            llm: llm.clone(),
            rx,
            stats: stats.clone(),
            max_sequences: config.max_sequences.max(1),
            prefill_chunk: config.prefill_chunk.max(1),
            overlap_masks: config.overlap_masks,
            prefix: prefix.clone(),
            groups: Vec::new(),
        };
        thread::Builder::new()
            .name("tenzro-engine".into())
            .spawn(move || worker.run())?;
        Ok(Engine {
            tx,
            stats,
            llm,
            prefix,
        })
    }

    /// Forget every cached prefix (benchmarks measure a cold first turn with it).
    pub fn clear_prefix_cache(&self) {
        lock(&self.prefix).clear();
    }

    /// Prompt tokens served from the prefix cache since the engine started
    /// (benchmarks check a follow-up turn reused its whole first turn).
    pub fn prefix_tokens_reused(&self) -> u64 {
        self.stats.reused_tokens.load(Ordering::Relaxed)
    }

    /// Bytes the prefix cache holds.
    pub fn prefix_cache_bytes(&self) -> usize {
        lock(&self.prefix).used_bytes()
    }

    pub fn llm(&self) -> &Llm {
        &self.llm
    }

    pub fn submit(&self, request: GenerateRequest) -> Result<(), SubmitError> {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.try_send(request).map_err(|e| {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => SubmitError::QueueFull,
                TrySendError::Disconnected(_) => SubmitError::Stopped,
            }
        })
    }

    /// Requests waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        self.stats.queued.load(Ordering::Relaxed)
    }

    /// Sequences being decoded.
    pub fn active_sequences(&self) -> usize {
        self.stats.active.load(Ordering::Relaxed)
    }
}

struct Worker {
    llm: Arc<Llm>,
    rx: Receiver<GenerateRequest>,
    stats: Arc<Stats>,
    max_sequences: usize,
    prefill_chunk: usize,
    overlap_masks: bool,
    prefix: Arc<Mutex<PrefixCache>>,
    groups: Vec<Group>,
}

/// The prefix cache is only a cache: a panic elsewhere while it was held leaves
/// nothing a later user could misread, so a poisoned lock is taken as is.
fn lock(m: &Mutex<PrefixCache>) -> std::sync::MutexGuard<'_, PrefixCache> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One request: its choices share the prompt and the reply channel.
struct Group {
    reply: UnboundedSender<Event>,
    prompt: Vec<u32>,
    prompt_tokens: u32,
    max_new_tokens: usize,
    /// Set until the whole prompt is in the cache; the choices start after it.
    pending: Option<Pending>,
    choices: Vec<Choice>,
    ended: bool,
    /// Set when the request asked for logprobs.
    token_text: Option<TokenText>,
}

/// A prompt being prefilled chunk by chunk.
struct Pending {
    cache: KvCache,
    /// Prompt tokens already in `cache` (reused from the prefix cache or prefilled).
    done: usize,
    /// `PrefixCache::added` when the prompt last looked there.
    looked: u64,
    params: GenerationParams,
}

struct Choice {
    index: u32,
    cache: KvCache,
    sampler: Sampler,
    detok: IncrementalDecoder,
    stop: StopMatcher,
    /// The token to feed next and its position.
    next: u32,
    /// Tokens fed to the model after the prompt (the cache holds prompt + these).
    fed: Vec<u32>,
    pos: usize,
    generated: u32,
    unreported: u32,
    done: bool,
    /// Set when the last batch gave this choice a new token to account for.
    stepped: bool,
    /// Where the choice is in its request's grammar, if any.
    constraint: Option<Constraint>,
    /// A grammar failure from the last sampling step, reported by `accept`.
    grammar_error: Option<GrammarError>,
}

/// Sample under the choice's grammar, if any: mask the logits, sample, then
/// advance the grammar past the token (end-of-sequence tokens end it instead).
/// Unconstrained choices pay nothing here.
fn pick(
    sampler: &mut Sampler,
    constraint: Option<&mut Constraint>,
    logits: &mut [f32],
    eos_ids: &[u32],
) -> Result<u32, GrammarError> {
    let Some(constraint) = constraint else {
        return Ok(sampler.sample(logits));
    };
    constraint.mask(logits)?;
    let token = sampler.sample(logits);
    constraint.commit(token, eos_ids.contains(&token))?;
    Ok(token)
}

/// `pick`, keeping a failure for `accept` to report; the choice then feeds an
/// end-of-sequence token it never uses.
fn pick_or_fail(c: &mut Choice, logits: &mut [f32], eos_ids: &[u32]) -> u32 {
    match pick(&mut c.sampler, c.constraint.as_mut(), logits, eos_ids) {
        Ok(t) => t,
        Err(e) => {
            c.grammar_error = Some(e);
            eos_ids.first().copied().unwrap_or(0)
        }
    }
}

impl Worker {
    fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            self.prefill_round();
            self.step_all();
            self.keep_finished();
            self.groups
                .retain(|g| !g.ended && (g.pending.is_some() || g.choices.iter().any(|c| !c.done)));
            self.stats.active.store(self.active(), Ordering::Relaxed);
        }
    }

    /// Sequences admitted: decoding, or waiting for their prompt's prefill.
    fn active(&self) -> usize {
        self.groups
            .iter()
            .map(|g| match &g.pending {
                Some(p) => p.params.n.max(1) as usize,
                None => g.choices.iter().filter(|c| !c.done).count(),
            })
            .sum()
    }

    /// Take new requests while there is room. Blocks when idle; returns false
    /// once every sender is gone and nothing is left to do.
    fn admit(&mut self) -> bool {
        while self.groups.is_empty() || self.active() < self.max_sequences {
            let request = if self.groups.is_empty() {
                match self.rx.recv() {
                    Ok(r) => r,
                    Err(_) => return false,
                }
            } else {
                match self.rx.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty) => return true,
                    Err(TryRecvError::Disconnected) => return true,
                }
            };
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            if request.reply.is_closed() {
                continue;
            }
            if let Some(group) = self.start(request) {
                self.groups.push(group);
            }
        }
        true
    }

    /// Admit a request: its prompt starts from the longest cached prefix and is
    /// prefilled by [`Worker::prefill_round`].
    fn start(&self, request: GenerateRequest) -> Option<Group> {
        let GenerateRequest {
            prompt,
            params,
            reply,
        } = request;
        let token_text = params
            .sampling
            .logprobs
            .map(|_| TokenText::new(&self.llm.tokenizer));
        let want = room(prompt.len(), &params);
        // A scored prompt needs every position's logits: no cached prefix.
        let (cached, looked) = {
            let mut prefix = lock(&self.prefix);
            let cached = match params.sampling.prompt_logprobs {
                true => None,
                false => prefix.lookup(&prompt, want),
            };
            (cached, prefix.added())
        };
        let (cache, done) = match cached {
            Some(r) => {
                self.stats
                    .reused_tokens
                    .fetch_add(r.reused as u64, Ordering::Relaxed);
                (r.cache, r.reused)
            }
            None => {
                let mut cache = self.llm.model.new_cache();
                cache.expect(want);
                (cache, 0)
            }
        };
        Some(Group {
            reply,
            prompt_tokens: prompt.len() as u32,
            prompt,
            max_new_tokens: params.max_new_tokens.max(1),
            pending: Some(Pending {
                cache,
                done,
                looked,
                params,
            }),
            choices: Vec::new(),
            ended: false,
            token_text,
        })
    }

    /// Prefill pending prompts, oldest first: up to a full-length prompt's
    /// tokens when nothing decodes, else `prefill_chunk` tokens in all, so the
    /// decoders step again soon. The
    /// round's prompts go through the model in one pass ([`Llama::prefill_many`]:
    /// each weight read once for all of them), except a prompt sharing a prefix
    /// with one already in the pass, which waits for that one's cache to reach
    /// the prefix cache (a burst with one system prompt prefills it once).
    ///
    /// [`Llama::prefill_many`]: crate::llama::Llama::prefill_many
    fn prefill_round(&mut self) {
        let decoding = self
            .groups
            .iter()
            .any(|g| !g.ended && g.choices.iter().any(|c| !c.done));
        // A pass holds at most the rows of one full-length prompt, the most
        // one prompt prefilled alone took before prompts shared a pass: a
        // burst of long prompts cannot make one pass's activations any larger.
        let mut budget = if decoding {
            self.prefill_chunk
        } else {
            crate::llama::MAX_SEQ_LEN
        };
        // (group, tokens it prefills to) of this round's pass.
        let mut pass: Vec<(usize, usize)> = Vec::new();
        for gi in 0..self.groups.len() {
            if budget == 0 {
                break;
            }
            let group = &mut self.groups[gi];
            if group.ended {
                continue;
            }
            let Some(p) = group.pending.as_mut() else {
                continue;
            };
            if p.params.sampling.prompt_logprobs {
                budget = budget.saturating_sub(group.prompt.len());
                group.prefill_scored(&self.llm, &self.prefix);
                continue;
            }
            // A prompt admitted beside others sharing its prefix finds the
            // prefix an earlier one prefilled: it looks again whenever an entry
            // was added since it last looked.
            let want = room(group.prompt.len(), &p.params);
            let reuse = {
                let mut prefix = lock(&self.prefix);
                let moved = prefix.added() != p.looked;
                p.looked = prefix.added();
                moved
                    .then(|| prefix.lookup_beyond(&group.prompt, want, p.done))
                    .flatten()
            };
            if let Some(r) = reuse {
                self.stats
                    .reused_tokens
                    .fetch_add((r.reused - p.done) as u64, Ordering::Relaxed);
                (p.cache, p.done) = (r.cache, r.reused);
            }
            let done = p.done;
            if self.waits_for_shared_prefix(&pass, gi, done) {
                continue;
            }
            let group = &self.groups[gi];
            let take = (group.prompt.len() - done).min(budget);
            budget -= take;
            pass.push((gi, done + take));
        }
        self.prefill_pass(&pass);
    }

    /// Whether group `gi`'s prompt (`done` tokens of it cached) should wait for
    /// a prompt in `pass` that shares a longer prefix with it and will offer
    /// its cache to the prefix cache when its prefill ends.
    fn waits_for_shared_prefix(&self, pass: &[(usize, usize)], gi: usize, done: usize) -> bool {
        let prompt = &self.groups[gi].prompt;
        let prefix = lock(&self.prefix);
        pass.iter().any(|&(other, _)| {
            let theirs = &self.groups[other].prompt;
            prefix.accepts(theirs.len()) && {
                let shared = crate::prefix_cache::common_prefix(theirs, prompt)
                    .min(prompt.len().saturating_sub(1));
                shared >= crate::prefix_cache::MIN_REUSE_TOKENS && shared > done
            }
        })
    }

    /// Prefill each `(group, end)` of `pass` (in group order) up to `end` in one
    /// pass; a prompt that ends starts its answer, one that fails ends in an
    /// error (the others of the pass go on: [`Llama::prefill_many`] runs them
    /// alone when the joint pass fails).
    ///
    /// [`Llama::prefill_many`]: crate::llama::Llama::prefill_many
    fn prefill_pass(&mut self, pass: &[(usize, usize)]) {
        if pass.is_empty() {
            return;
        }
        let llm = Arc::clone(&self.llm);
        let results = {
            let mut parts = Vec::with_capacity(pass.len());
            let mut rest = pass.iter().peekable();
            for (gi, group) in self.groups.iter_mut().enumerate() {
                let Some(&&(_, end)) = rest.peek().filter(|(g, _)| *g == gi) else {
                    continue;
                };
                rest.next();
                let Some(p) = group.pending.as_mut() else {
                    break;
                };
                parts.push(PrefillPart {
                    tokens: &group.prompt[p.done..end],
                    cache: &mut p.cache,
                    logits: end == group.prompt.len(),
                });
            }
            // Every group of the pass is pending (`prefill_round` chose them so).
            (parts.len() == pass.len()).then(|| llm.model.prefill_many(&mut parts))
        };
        let results = results.unwrap_or_else(|| {
            let lost = || {
                Err(candle_core::Error::Msg(
                    "a prefill pass lost a prompt".into(),
                ))
            };
            pass.iter().map(|_| lost()).collect()
        });
        for (&(gi, end), result) in pass.iter().zip(results) {
            let group = &mut self.groups[gi];
            let logits = result
                .map_err(crate::ModelError::from)
                .and_then(|l| l.as_ref().map(logits_vec).transpose());
            match logits {
                Ok(None) => {
                    if let Some(p) = group.pending.as_mut() {
                        p.done = end;
                    }
                }
                Ok(Some(logits)) => group.begin(&llm, logits, &self.prefix),
                Err(e) => {
                    tracing::error!(error = %e, "prefill failed");
                    let _ = group.reply.send(Event::Error(e.to_string()));
                    group.ended = true;
                }
            }
        }
    }

    /// Offer the caches of sequences that finished to the prefix cache (a later
    /// turn of the same conversation starts with their tokens).
    fn keep_finished(&mut self) {
        let mut prefix = lock(&self.prefix);
        for group in &mut self.groups {
            for c in group
                .choices
                .iter_mut()
                .filter(|c| c.done && !c.cache.is_empty())
            {
                let cache = std::mem::replace(&mut c.cache, self.llm.model.new_cache());
                let mut tokens = Vec::with_capacity(group.prompt.len() + c.fed.len());
                tokens.extend_from_slice(&group.prompt);
                tokens.extend_from_slice(&c.fed);
                prefix.insert(tokens, cache);
            }
        }
    }

    /// One decode step for every active sequence, as one batch.
    fn step_all(&mut self) {
        for group in &mut self.groups {
            if group.reply.is_closed() {
                group.ended = true;
            }
        }
        let llm = &self.llm;
        let mut active: Vec<&mut Choice> = self
            .groups
            .iter_mut()
            .filter(|g| !g.ended)
            .flat_map(|g| g.choices.iter_mut().filter(|c| !c.done))
            .collect();
        if active.is_empty() {
            return;
        }
        let tokens: Vec<u32> = active.iter().map(|c| c.next).collect();
        let overlap = self.overlap_masks;
        let result = {
            let mut caches: Vec<&mut KvCache> = Vec::with_capacity(active.len());
            let mut constraints: Vec<&mut Constraint> = Vec::new();
            for c in active.iter_mut() {
                caches.push(&mut c.cache);
                constraints.extend(c.constraint.as_mut());
            }
            if overlap && !constraints.is_empty() {
                // The masks depend on the grammars alone: computed while the
                // forward pass runs, they only need applying after it.
                thread::scope(|s| {
                    s.spawn(|| constraints.into_iter().for_each(Constraint::prepare));
                    llm.decode(&tokens, &mut caches)
                })
            } else {
                llm.decode(&tokens, &mut caches)
            }
        };
        match result {
            Ok(rows) => {
                for ((c, mut logits), &token) in active.iter_mut().zip(rows).zip(&tokens) {
                    c.pos += 1;
                    c.fed.push(token);
                    c.next = pick_or_fail(c, &mut logits, &llm.eos_ids);
                    c.stepped = true;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "decode step failed");
                for group in self.groups.iter_mut().filter(|g| !g.ended) {
                    let _ = group.reply.send(Event::Error(e.to_string()));
                    group.ended = true;
                }
                return;
            }
        }
        for group in self.groups.iter_mut().filter(|g| !g.ended) {
            for i in 0..group.choices.len() {
                if std::mem::take(&mut group.choices[i].stepped) {
                    group.accept(llm, i);
                }
            }
            group.finish_if_done();
        }
    }
}

impl Group {
    /// The prompt is in `cache`: sample each choice's first token from `logits`,
    /// and offer the prompt's cache to the prefix cache.
    fn begin(&mut self, llm: &Llm, logits: Vec<f32>, prefix: &Mutex<PrefixCache>) {
        let Some(Pending { cache, params, .. }) = self.pending.take() else {
            return;
        };
        self.choices.reserve(params.n as usize);
        let score_only = params.max_new_tokens == 0;
        let n = params.n.max(1);
        // The prefix cache keeps a copy sized to the prompt; the last choice
        // writes on in the original, which has room for its answer.
        let offered = lock(prefix)
            .accepts(self.prompt.len())
            .then(|| cache.prefix_copy(cache.len(), cache.len() + 1));
        let mut original = Some(cache);
        for index in 0..n {
            let sampler = Sampler::new(params.sampling.clone(), u64::from(index));
            let constraint = match params.grammar.as_ref().map(Compiled::start).transpose() {
                Ok(c) => c,
                Err(e) => {
                    let _ = self.reply.send(Event::Error(e.to_string()));
                    self.ended = true;
                    return;
                }
            };
            let cache = match index + 1 < n {
                true => original.as_ref().map(KvCache::try_clone),
                false => original.take().map(Ok),
            };
            let cache = match cache {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "copying the prompt's cache failed");
                    let _ = self.reply.send(Event::Error(e.to_string()));
                    self.ended = true;
                    return;
                }
                None => return,
            };
            self.choices.push(Choice {
                index,
                cache,
                sampler,
                detok: IncrementalDecoder::default(),
                stop: StopMatcher::new(params.stop.clone()),
                next: 0,
                fed: Vec::new(),
                pos: self.prompt.len(),
                generated: 0,
                unreported: 0,
                done: false,
                stepped: false,
                constraint,
                grammar_error: None,
            });
            if score_only {
                continue;
            }
            if let Some(c) = self.choices.last_mut() {
                c.next = pick_or_fail(c, &mut logits.clone(), &llm.eos_ids);
            }
        }
        match offered {
            Some(Ok(copy)) => lock(prefix).insert(self.prompt.clone(), copy),
            Some(Err(e)) => tracing::warn!(error = %e, "copying a prompt's cache failed"),
            None => {}
        }
        for i in 0..self.choices.len() {
            if score_only {
                self.finish_scored(i);
            } else {
                self.accept(llm, i);
            }
        }
        self.finish_if_done();
    }

    /// Prefill a prompt whose tokens are to be scored (legacy `echo` with
    /// `logprobs`) in one pass that keeps every position's logits, send each
    /// choice the prompt's logprobs, then start the choices.
    fn prefill_scored(&mut self, llm: &Llm, prefix: &Mutex<PrefixCache>) {
        let Some((top, n)) = self.pending.as_ref().map(|p| {
            let s = &p.params.sampling;
            (s.logprobs.unwrap_or(0), p.params.n.max(1))
        }) else {
            return;
        };
        let (cache, logits, scored) = match llm.prefill_scored(&self.prompt, top) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "prefill failed");
                let _ = self.reply.send(Event::Error(e.to_string()));
                self.ended = true;
                return;
            }
        };
        if let Some(p) = self.pending.as_mut() {
            p.cache = cache;
        }
        let tt = self
            .token_text
            .get_or_insert_with(|| TokenText::new(&llm.tokenizer));
        let entries: Vec<TokenLogprob> = self
            .prompt
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let s = i.checked_sub(1).and_then(|j| scored.get(j));
                tt.entry(&llm.tokenizer, id, s)
            })
            .collect();
        for choice in 0..n {
            let _ = self.reply.send(Event::Logprobs {
                choice,
                entries: entries.clone(),
            });
        }
        self.begin(llm, logits, prefix);
    }

    /// Finish a choice that generates nothing (`max_new_tokens` 0: the prompt
    /// was only scored).
    fn finish_scored(&mut self, i: usize) {
        let Some(c) = self.choices.get_mut(i) else {
            return;
        };
        c.done = true;
        let _ = self.reply.send(Event::Finished {
            choice: c.index,
            reason: FinishReason::Length,
            text: String::new(),
            tokens: 0,
        });
    }

    /// Account for choice `i`'s newly sampled token (`next`): emit its text or
    /// finish the choice.
    fn accept(&mut self, llm: &Llm, i: usize) {
        let c = &mut self.choices[i];
        if let Some(e) = c.grammar_error.take() {
            tracing::error!(error = %e, "constrained decoding failed");
            let _ = self.reply.send(Event::Error(e.to_string()));
            self.ended = true;
            return;
        }
        let token = c.next;
        let finish = |c: &mut Choice, reply: &UnboundedSender<Event>, reason, text: String| {
            c.done = true;
            let tokens = std::mem::take(&mut c.unreported);
            let _ = reply.send(Event::Finished {
                choice: c.index,
                reason,
                text,
                tokens,
            });
        };
        if llm.eos_ids.contains(&token) {
            let rest = c.stop.flush();
            finish(c, &self.reply, FinishReason::Stop, rest);
            return;
        }
        c.generated += 1;
        c.unreported += 1;
        if let (Some(tt), Some(scored)) = (&self.token_text, c.sampler.take_scored()) {
            let _ = self.reply.send(Event::Logprobs {
                choice: c.index,
                entries: vec![tt.entry(&llm.tokenizer, token, Some(&scored))],
            });
        }
        let text = match c.detok.push(&llm.tokenizer, token) {
            Ok(t) => t,
            Err(e) => {
                let _ = self.reply.send(Event::Error(e.to_string()));
                self.ended = true;
                return;
            }
        };
        match c.stop.push(&text) {
            StopOutcome::Stopped(text) => {
                finish(c, &self.reply, FinishReason::Stop, text);
                return;
            }
            StopOutcome::Continue(text) if !text.is_empty() => {
                let tokens = std::mem::take(&mut c.unreported);
                let _ = self.reply.send(Event::Text {
                    choice: c.index,
                    text,
                    tokens,
                });
            }
            StopOutcome::Continue(_) => {}
        }
        // The next step would write position `pos + 1`; stop at the context end.
        if c.generated as usize >= self.max_new_tokens || c.pos + 1 >= llm.context_length {
            let rest = c.stop.flush();
            finish(c, &self.reply, FinishReason::Length, rest);
        }
    }

    /// Send `Done` once every choice has finished. A group whose prompt is still
    /// being prefilled has no choices yet, which is not finished: without the
    /// `pending` check, a prompt prefilled in chunks while others decode got
    /// `Done` (and no answer) after its first chunk.
    fn finish_if_done(&mut self) {
        if !self.ended && self.pending.is_none() && self.choices.iter().all(|c| c.done) {
            let completion_tokens = self.choices.iter().map(|c| c.generated).sum();
            let _ = self.reply.send(Event::Done {
                prompt_tokens: self.prompt_tokens,
                completion_tokens,
            });
            // Mark so `retain` drops it.
            self.ended = true;
        }
    }
}
