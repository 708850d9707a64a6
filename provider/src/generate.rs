//! Submitting validated jobs to the engine and reading their events back as one
//! stream, with choice indices made global (`job * n + choice`).

use std::pin::Pin;
use std::time::Instant;

use futures::{Stream, StreamExt, stream};
use tenzro_models::engine::{Engine, Event, GenerateRequest, SubmitError};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::validate::Job;

pub type EventStream = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// Submit every job; if one is refused, the ones already queued are dropped
/// (their reply channels close, so the engine skips them).
pub fn submit(engine: &Engine, jobs: Vec<Job>, metrics: Metrics) -> Result<EventStream, ApiError> {
    let jobs_len = jobs.len();
    let mut streams = Vec::with_capacity(jobs_len);
    for (k, job) in jobs.into_iter().enumerate() {
        let offset = k as u32 * job.params.n;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        engine
            .submit(GenerateRequest {
                prompt: job.prompt,
                params: job.params,
                reply: tx,
            })
            .map_err(|e| match e {
                SubmitError::QueueFull => ApiError::Overloaded { retry_after: 1 },
                SubmitError::Stopped => ApiError::Unavailable,
            })?;
        streams.push(UnboundedReceiverStream::new(rx).map(move |e| shift(e, offset)));
    }
    let state = Merge {
        all: stream::select_all(streams),
        left: jobs_len,
        prompt_tokens: 0,
        completion_tokens: 0,
        done: false,
        started: Instant::now(),
        first_token: None,
        metrics,
    };
    Ok(Box::pin(stream::unfold(state, Merge::next)))
}

fn shift(event: Event, offset: u32) -> Event {
    match event {
        Event::Text {
            choice,
            text,
            tokens,
        } => Event::Text {
            choice: choice + offset,
            text,
            tokens,
        },
        Event::Finished {
            choice,
            reason,
            text,
            tokens,
        } => Event::Finished {
            choice: choice + offset,
            reason,
            text,
            tokens,
        },
        Event::Logprobs { choice, entries } => Event::Logprobs {
            choice: choice + offset,
            entries,
        },
        other => other,
    }
}

struct Merge<S> {
    all: S,
    left: usize,
    prompt_tokens: u32,
    completion_tokens: u32,
    done: bool,
    started: Instant,
    first_token: Option<Instant>,
    metrics: Metrics,
}

impl<S: Stream<Item = Event> + Unpin> Merge<S> {
    async fn next(mut self) -> Option<(Event, Self)> {
        if self.done {
            return None;
        }
        loop {
            let event = match self.all.next().await {
                Some(e) => e,
                None => {
                    self.done = true;
                    return Some((Event::Error("the generation engine stopped".into()), self));
                }
            };
            match event {
                Event::Done {
                    prompt_tokens,
                    completion_tokens,
                } => {
                    self.prompt_tokens += prompt_tokens;
                    self.completion_tokens += completion_tokens;
                    self.left -= 1;
                    if self.left == 0 {
                        self.done = true;
                        self.record();
                        let done = Event::Done {
                            prompt_tokens: self.prompt_tokens,
                            completion_tokens: self.completion_tokens,
                        };
                        return Some((done, self));
                    }
                }
                Event::Error(e) => {
                    self.done = true;
                    return Some((Event::Error(e), self));
                }
                e => {
                    if self.first_token.is_none() {
                        let now = Instant::now();
                        self.metrics.time_to_first_token(now - self.started);
                        self.first_token = Some(now);
                    }
                    return Some((e, self));
                }
            }
        }
    }

    fn record(&self) {
        self.metrics.tokens(
            u64::from(self.prompt_tokens),
            u64::from(self.completion_tokens),
        );
        if let Some(first) = self.first_token {
            let secs = first.elapsed().as_secs_f64();
            if self.completion_tokens > 1 && secs > 0.0 {
                self.metrics
                    .tokens_per_second(f64::from(self.completion_tokens - 1) / secs);
            }
        }
    }
}
