//! Turns a tool-calling request's engine events into tool calls: each choice's text
//! goes through a `CallSplitter`; whole calls become `Event::ToolCall`, plain text
//! stays `Event::Text`, and a choice that called a tool and stopped finishes with
//! `tool_calls`. Tokens are never lost: text held back while a call is incomplete
//! hands its tokens to the next event of that choice.

use futures::{StreamExt, stream};
use tenzro_models::api::FinishReason;
use tenzro_models::engine::Event;
use tenzro_models::tools::{CallSplitter, Piece};

use crate::generate::EventStream;

/// Per choice: its splitter and the tokens not yet handed to an event.
struct Split {
    splitters: Vec<CallSplitter>,
    pending: Vec<u32>,
    /// Calls emitted per choice (the next call's index).
    emitted: Vec<u32>,
}

impl Split {
    fn pieces(&mut self, choice: u32, pieces: Vec<Piece>, out: &mut Vec<Event>) {
        let i = choice as usize;
        for piece in pieces {
            let tokens = self.pending.get_mut(i).map_or(0, std::mem::take);
            match piece {
                Piece::Text(text) if text.is_empty() => {
                    if let Some(p) = self.pending.get_mut(i) {
                        *p += tokens;
                    }
                }
                Piece::Text(text) => out.push(Event::Text {
                    choice,
                    text,
                    tokens,
                }),
                Piece::Call(call) => {
                    let index = self.emitted.get(i).copied().unwrap_or(0);
                    if let Some(e) = self.emitted.get_mut(i) {
                        *e += 1;
                    }
                    out.push(Event::ToolCall {
                        choice,
                        index,
                        name: call.name,
                        arguments: call.arguments,
                        tokens,
                    });
                }
            }
        }
    }

    fn step(&mut self, event: Event) -> Vec<Event> {
        let mut out = Vec::new();
        match event {
            Event::Text {
                choice,
                text,
                tokens,
            } => {
                let Some(s) = self.splitters.get_mut(choice as usize) else {
                    return vec![Event::Text {
                        choice,
                        text,
                        tokens,
                    }];
                };
                let pieces = s.push(&text);
                if let Some(p) = self.pending.get_mut(choice as usize) {
                    *p += tokens;
                }
                self.pieces(choice, pieces, &mut out);
            }
            Event::Finished {
                choice,
                reason,
                text,
                tokens,
            } => {
                let i = choice as usize;
                let (mut pieces, called) = match self.splitters.get_mut(i) {
                    Some(s) => {
                        let mut p = s.push(&text);
                        p.extend(s.finish());
                        (p, s.calls > 0)
                    }
                    None => (vec![Piece::Text(text)], false),
                };
                if let Some(p) = self.pending.get_mut(i) {
                    *p += tokens;
                }
                // The last text rides on the finishing event, as the engine sends it.
                let last = match pieces.last() {
                    Some(Piece::Text(_)) => match pieces.pop() {
                        Some(Piece::Text(t)) => t,
                        _ => String::new(),
                    },
                    _ => String::new(),
                };
                self.pieces(choice, pieces, &mut out);
                let reason = match reason {
                    FinishReason::Stop if called => FinishReason::ToolCalls,
                    r => r,
                };
                out.push(Event::Finished {
                    choice,
                    reason,
                    text: last,
                    tokens: self.pending.get_mut(i).map_or(0, std::mem::take),
                });
            }
            other => out.push(other),
        }
        out
    }
}

/// Split the tool calls out of `choices` choices' events.
pub fn split(events: EventStream, choices: u32) -> EventStream {
    let mut state = Split {
        splitters: (0..choices).map(|_| CallSplitter::default()).collect(),
        pending: vec![0; choices as usize],
        emitted: vec![0; choices as usize],
    };
    Box::pin(events.flat_map(move |e| stream::iter(state.step(e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: Vec<Event>) -> Vec<Event> {
        let mut s = Split {
            splitters: vec![CallSplitter::default()],
            pending: vec![0],
            emitted: vec![0],
        };
        events.into_iter().flat_map(|e| s.step(e)).collect()
    }

    fn text(t: &str, tokens: u32) -> Event {
        Event::Text {
            choice: 0,
            text: t.into(),
            tokens,
        }
    }

    fn finished(reason: FinishReason, t: &str, tokens: u32) -> Event {
        Event::Finished {
            choice: 0,
            reason,
            text: t.into(),
            tokens,
        }
    }

    #[test]
    fn calls_come_out_whole_with_every_token() {
        let out = run(vec![
            text("<tool_call>\n{\"name\": \"f\", ", 5),
            text("\"arguments\": {\"a\": 1}}\n</tool_call>", 7),
            finished(FinishReason::Stop, "", 1),
        ]);
        assert_eq!(
            out,
            vec![
                Event::ToolCall {
                    choice: 0,
                    index: 0,
                    name: "f".into(),
                    arguments: "{\"a\": 1}".into(),
                    tokens: 12,
                },
                finished(FinishReason::ToolCalls, "", 1),
            ]
        );
    }

    #[test]
    fn text_passes_and_a_cut_call_finishes_as_text_by_length() {
        let out = run(vec![text("Hi", 1), finished(FinishReason::Stop, "!", 1)]);
        assert_eq!(
            out,
            vec![text("Hi", 1), finished(FinishReason::Stop, "!", 1)]
        );
        let out = run(vec![
            text("<tool_call>\n{\"na", 3),
            finished(FinishReason::Length, "", 1),
        ]);
        assert_eq!(
            out,
            vec![finished(FinishReason::Length, "<tool_call>\n{\"na", 4)]
        );
    }
}
