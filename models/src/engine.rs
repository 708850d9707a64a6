//! The generation engine: one thread owns every sequence's state and steps them.
//!
//! Requests arrive through a bounded queue, each with its own reply channel. The
//! engine admits up to `max_sequences` sequences at a time (a request with `n`
//! choices takes `n`), prefills each prompt as one batch, then steps every active
//! sequence one token per round, so concurrent streams advance together and a new
//! request does not wait for a long one to finish. A sequence whose client went
//! away (its reply channel closed) is dropped at the next round.
//!
//! Batching the decode steps of many sequences into one matmul is the follow-up
//! engine issue; the queue and the per-sequence state here are shaped for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread;

use tokio::sync::mpsc::UnboundedSender;

use crate::api::FinishReason;
use crate::detok::IncrementalDecoder;
use crate::llama::KvCache;
use crate::llm::Llm;
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::{StopMatcher, StopOutcome};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests waiting beyond the active ones; a full queue refuses new work.
    pub queue_capacity: usize,
    /// Sequences decoded side by side.
    pub max_sequences: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue_capacity: 64,
            max_sequences: 8,
        }
    }
}

/// Validated generation settings.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    pub sampling: SamplingParams,
    /// At least 1; prompt + this fits the context (the caller checks).
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    /// Number of choices, at least 1.
    pub n: u32,
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
}

#[derive(Default)]
struct Stats {
    queued: AtomicUsize,
    active: AtomicUsize,
}

impl Engine {
    pub fn spawn(llm: Arc<Llm>, config: EngineConfig) -> std::io::Result<Engine> {
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity.max(1));
        let stats = Arc::new(Stats::default());
        let worker = Worker {
            llm: llm.clone(),
            rx,
            stats: stats.clone(),
            max_sequences: config.max_sequences.max(1),
            groups: Vec::new(),
        };
        thread::Builder::new()
            .name("tenzro-engine".into())
            .spawn(move || worker.run())?;
        Ok(Engine { tx, stats, llm })
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
    groups: Vec<Group>,
}

/// One request: its choices share the prompt and the reply channel.
struct Group {
    reply: UnboundedSender<Event>,
    prompt_tokens: u32,
    max_new_tokens: usize,
    choices: Vec<Choice>,
    ended: bool,
}

struct Choice {
    index: u32,
    cache: KvCache,
    sampler: Sampler,
    detok: IncrementalDecoder,
    stop: StopMatcher,
    /// The token to feed next and its position.
    next: u32,
    pos: usize,
    generated: u32,
    unreported: u32,
    done: bool,
    /// Set when the last batch gave this choice a new token to account for.
    stepped: bool,
}

impl Worker {
    fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            self.step_all();
            self.groups
                .retain(|g| !g.ended && g.choices.iter().any(|c| !c.done));
            let active: usize = self.groups.iter().map(|g| g.choices.len()).sum();
            self.stats.active.store(active, Ordering::Relaxed);
        }
    }

    fn active(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.choices.iter().filter(|c| !c.done).count())
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

    /// Prefill the prompt and sample each choice's first token.
    fn start(&self, request: GenerateRequest) -> Option<Group> {
        let GenerateRequest {
            prompt,
            params,
            reply,
        } = request;
        let (cache, logits) = match self.llm.prefill(&prompt) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "prefill failed");
                let _ = reply.send(Event::Error(e.to_string()));
                return None;
            }
        };
        let mut group = Group {
            reply,
            prompt_tokens: prompt.len() as u32,
            max_new_tokens: params.max_new_tokens.max(1),
            choices: Vec::with_capacity(params.n as usize),
            ended: false,
        };
        for index in 0..params.n.max(1) {
            let mut sampler = Sampler::new(params.sampling.clone(), u64::from(index));
            let first = sampler.sample(&mut logits.clone());
            let cache = match cache.try_clone() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "copying the prompt's cache failed");
                    let _ = group.reply.send(Event::Error(e.to_string()));
                    return None;
                }
            };
            group.choices.push(Choice {
                index,
                cache,
                sampler,
                detok: IncrementalDecoder::default(),
                stop: StopMatcher::new(params.stop.clone()),
                next: first,
                pos: prompt.len(),
                generated: 0,
                unreported: 0,
                done: false,
                stepped: false,
            });
        }
        let llm = &self.llm;
        for i in 0..group.choices.len() {
            group.accept(llm, i);
        }
        group.finish_if_done();
        Some(group)
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
        let result = {
            let mut caches: Vec<&mut KvCache> = active.iter_mut().map(|c| &mut c.cache).collect();
            llm.decode(&tokens, &mut caches)
        };
        match result {
            Ok(rows) => {
                for (c, mut logits) in active.iter_mut().zip(rows) {
                    c.pos += 1;
                    c.next = c.sampler.sample(&mut logits);
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
    /// Account for choice `i`'s newly sampled token (`next`): emit its text or
    /// finish the choice.
    fn accept(&mut self, llm: &Llm, i: usize) {
        let c = &mut self.choices[i];
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

    fn finish_if_done(&mut self) {
        if !self.ended && self.choices.iter().all(|c| c.done) {
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
