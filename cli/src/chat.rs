//! The chat loop: read inputs, run commands, stream answers, sum their costs.

use std::collections::BTreeMap;
use std::io::Write;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::client::{Client, Message, Options};
use crate::input::{Assembler, Command, Fed, HELP, Input};
use crate::sse::{Event, Lines};
use crate::stdin::Line;

/// Most answer bytes kept in the conversation; the rest is printed, not kept.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Most messages the conversation keeps; the oldest turns go first.
const MAX_HISTORY: usize = 1000;

/// Prints and flushes; a closed stdout is not an error worth dying for.
pub fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// Whole tokens from 18-decimal base units, without trailing zeros.
pub fn whole(units: u128) -> String {
    const ONE: u128 = 1_000_000_000_000_000_000;
    let (int, frac) = (units / ONE, units % ONE);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:018}");
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// Costs by asset, in base units.
#[derive(Debug, Default, Clone)]
struct Costs {
    by_asset: BTreeMap<String, u128>,
    answers: u32,
}

impl Costs {
    fn add(&mut self, asset: &str, cost: u128) {
        let e = self.by_asset.entry(asset.to_owned()).or_default();
        *e = e.saturating_add(cost);
        self.answers += 1;
    }

    fn describe(&self) -> String {
        if self.by_asset.is_empty() {
            return "nothing reported".into();
        }
        let parts: Vec<String> = self
            .by_asset
            .iter()
            .map(|(asset, units)| format!("{} {asset} ({units} base units)", whole(*units)))
            .collect();
        format!("{} over {} answers", parts.join(" + "), self.answers)
    }
}

/// An interrupt source: SIGINT (Ctrl-C), kept for the whole run so none is lost.
pub struct Interrupts(tokio::signal::unix::Signal);

impl Interrupts {
    pub fn new() -> std::io::Result<Self> {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map(Interrupts)
    }

    async fn next(&mut self) {
        self.0.recv().await;
    }
}

pub struct Chat {
    client: Client,
    opts: Options,
    system: Option<String>,
    history: Vec<Message>,
    /// This conversation's cost (since the start or the last `/reset`).
    conversation: Costs,
    /// Since the program started.
    total: Costs,
}

/// How one answer ended.
enum End {
    Finished,
    Cancelled,
    Failed(String),
}

impl Chat {
    pub fn new(client: Client, opts: Options, system: Option<String>) -> Self {
        Chat {
            client,
            opts,
            system,
            history: Vec::new(),
            conversation: Costs::default(),
            total: Costs::default(),
        }
    }

    /// Reads inputs until `/quit`, end of input or a second Ctrl-C at the prompt.
    pub async fn run(&mut self, mut lines: mpsc::Receiver<Line>, mut sig: Interrupts) {
        let mut asm = Assembler::default();
        let mut interrupted = false;
        loop {
            say(if asm.pending() { "... " } else { "> " });
            let line = tokio::select! {
                l = lines.recv() => l,
                () = sig.next() => {
                    if interrupted && !asm.pending() {
                        say("\n");
                        return;
                    }
                    interrupted = true;
                    asm.clear();
                    say("\n(Ctrl-C again to quit, or /quit)\n");
                    continue;
                }
            };
            interrupted = false;
            let fed = match line {
                None => {
                    say("\n");
                    return;
                }
                Some(Line::TooLong) => Fed::TooLong,
                Some(Line::Text(l)) => asm.feed(&l),
            };
            match fed {
                Fed::More | Fed::Empty => {}
                Fed::TooLong => say(&format!(
                    "error: that message is longer than {} bytes; not sent\n",
                    crate::input::MAX_MESSAGE_BYTES
                )),
                Fed::Done(Input::Command(Command::Quit)) => return,
                Fed::Done(Input::Command(c)) => self.command(c).await,
                Fed::Done(Input::Message(m)) => self.ask(m, &mut sig).await,
            }
        }
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Help => say(&format!("{HELP}\n")),
            Command::Models(filter) => self.list_models(filter.as_deref()).await,
            Command::Model(None) => say(&format!("model: {}\n", self.model_label())),
            Command::Model(Some(name)) => self.pick_model(name).await,
            Command::System(text) => {
                say(match &text {
                    Some(_) => "system prompt set\n",
                    None => "system prompt removed\n",
                });
                self.system = text;
            }
            Command::Reset => {
                self.history.clear();
                self.conversation = Costs::default();
                say("conversation cleared (the system prompt stays)\n");
            }
            Command::Cost => say(&format!(
                "cost of this conversation: {}\nsince the chat started: {}\n",
                self.conversation.describe(),
                self.total.describe()
            )),
            Command::Unknown(name) => {
                say(&format!("unknown command /{name}; /help lists them\n"));
            }
            Command::Quit => {}
        }
    }

    pub fn model_label(&self) -> &str {
        if self.opts.model.is_empty() {
            "(none: pick one with /model NAME)"
        } else {
            &self.opts.model
        }
    }

    async fn list_models(&self, filter: Option<&str>) {
        let models = match self.client.models().await {
            Ok(m) => m,
            Err(e) => return say(&format!("error: {e}\n")),
        };
        let needle = filter.unwrap_or("").to_lowercase();
        let mut shown = 0;
        for m in models
            .iter()
            .filter(|m| m.id.to_lowercase().contains(&needle))
        {
            let mark = if m.id == self.opts.model { '*' } else { ' ' };
            let price = m
                .price
                .as_deref()
                .and_then(|p| p.parse::<u128>().ok())
                .map(|p| format!("  from {} per token", whole(p)))
                .unwrap_or_default();
            say(&format!("{mark} {}{price}\n", m.id));
            shown += 1;
        }
        if shown == 0 {
            say("no model matches\n");
        }
    }

    async fn pick_model(&mut self, name: String) {
        match self.client.models().await {
            Ok(models) if !models.iter().any(|m| m.id == name) => {
                return say(&format!("no model {name} here; /models lists them\n"));
            }
            Ok(_) => {}
            Err(e) => say(&format!("(could not check the models list: {e})\n")),
        }
        say(&format!("model: {name}\n"));
        self.opts.model = name;
    }

    /// Picks the first model the server lists when none was given.
    pub async fn default_model(&mut self) {
        if !self.opts.model.is_empty() {
            return;
        }
        match self.client.models().await {
            Ok(models) => match models.iter().find(|m| m.chats()) {
                Some(m) => self.opts.model = m.id.clone(),
                None => say("the server lists no chat model yet; pick one with /model NAME\n"),
            },
            Err(e) => say(&format!("error: {e}\n")),
        }
    }

    async fn ask(&mut self, text: String, sig: &mut Interrupts) {
        if self.opts.model.is_empty() {
            return say("no model chosen: /models lists them, /model NAME picks one\n");
        }
        self.history.push(Message {
            role: "user",
            content: text,
        });
        let mut messages: Vec<Message> = self
            .system
            .iter()
            .map(|s| Message {
                role: "system",
                content: s.clone(),
            })
            .collect();
        messages.extend(self.history.iter().cloned());
        let mut answer = String::new();
        match self.stream(&messages, &mut answer, sig).await {
            End::Finished => {
                self.history.push(Message {
                    role: "assistant",
                    content: answer,
                });
                if self.history.len() > MAX_HISTORY {
                    let extra = self.history.len() - MAX_HISTORY;
                    self.history.drain(..extra);
                }
            }
            End::Cancelled => {
                // The turn is forgotten: the next question does not see it.
                self.history.pop();
                say("\n[cancelled; this turn is not kept]\n");
            }
            End::Failed(e) => {
                self.history.pop();
                say(&format!("\nerror: {e}\n"));
            }
        }
    }

    /// Streams one answer, printing its text as it comes; Ctrl-C stops it.
    async fn stream(
        &mut self,
        messages: &[Message],
        answer: &mut String,
        sig: &mut Interrupts,
    ) -> End {
        let started = tokio::select! {
            r = self.client.chat(&self.opts, messages) => r,
            () = sig.next() => return End::Cancelled,
        };
        let mut resp = match started {
            Ok(r) => r,
            Err(e) => return End::Failed(e.to_string()),
        };
        let mut lines = Lines::default();
        let mut facts = Facts::default();
        loop {
            let chunk = tokio::select! {
                c = resp.body.next() => c,
                () = sig.next() => return End::Cancelled,
            };
            let bytes = match chunk {
                None => break,
                Some(Ok(b)) => b,
                Some(Err(e)) => return End::Failed(format!("the stream broke: {e}")),
            };
            let got = match lines.push(&bytes) {
                Ok(l) => l,
                Err(e) => return End::Failed(e.to_string()),
            };
            for event in got.iter().flat_map(|l| crate::sse::events(l)) {
                match event {
                    Event::Text(t) => {
                        say(&t);
                        if answer.len() + t.len() <= MAX_ANSWER_BYTES {
                            answer.push_str(&t);
                        }
                    }
                    Event::Error(m) => return End::Failed(m),
                    other => facts.note(other),
                }
            }
            if facts.done {
                break;
            }
        }
        let asset = facts.asset.clone().or(resp.asset.take());
        if let (Some(cost), Some(asset)) = (facts.cost, asset.as_deref()) {
            self.conversation.add(asset, cost);
            self.total.add(asset, cost);
        }
        say(&format!(
            "\n{}\n",
            facts.footer(asset.as_deref(), resp.provider.as_deref())
        ));
        End::Finished
    }
}

/// What a stream said besides its text.
#[derive(Debug, Default)]
struct Facts {
    completion: Option<u64>,
    prompt: Option<u64>,
    /// The cost comment's, else the usage chunk's.
    cost: Option<u128>,
    comment_cost: bool,
    asset: Option<String>,
    receipt: bool,
    done: bool,
}

impl Facts {
    fn note(&mut self, e: Event) {
        match e {
            Event::Usage {
                prompt,
                completion,
                cost,
                asset,
            } => {
                self.prompt = Some(prompt);
                self.completion = Some(completion);
                if !self.comment_cost {
                    self.cost = cost.or(self.cost);
                }
                self.asset = asset.or(self.asset.take());
            }
            Event::Cost { cost, asset } => {
                self.cost = Some(cost);
                self.comment_cost = true;
                if !asset.is_empty() {
                    self.asset = Some(asset);
                }
            }
            Event::Receipt(_) => self.receipt = true,
            Event::Done => self.done = true,
            Event::Text(_) | Event::Error(_) => {}
        }
    }

    fn footer(&self, asset: Option<&str>, provider: Option<&str>) -> String {
        let mut parts = Vec::new();
        if let (Some(p), Some(c)) = (self.prompt, self.completion) {
            parts.push(format!("{p} prompt + {c} completion tokens"));
        }
        if let Some(cost) = self.cost {
            parts.push(format!(
                "cost {} {} ({cost} base units)",
                whole(cost),
                asset.unwrap_or("")
            ));
        }
        if let Some(p) = provider {
            parts.push(format!("provider {p}"));
        }
        if self.receipt {
            parts.push("signed receipt".into());
        }
        format!("[{}]", parts.join(" · "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_tokens() {
        let cases = [
            (0, "0"),
            (1, "0.000000000000000001"),
            (1_000_000_000_000_000_000, "1"),
            (1_250_000_000_000_000_000, "1.25"),
            (u128::MAX, "340282366920938463463.374607431768211455"),
        ];
        for (units, want) in cases {
            assert_eq!(whole(units), want);
        }
    }

    #[test]
    fn the_cost_comment_wins_over_the_usage_chunk() {
        let mut f = Facts::default();
        f.note(Event::Cost {
            cost: 7,
            asset: "TNZO".into(),
        });
        f.note(Event::Usage {
            prompt: 1,
            completion: 2,
            cost: Some(9),
            asset: None,
        });
        assert_eq!(f.cost, Some(7));
        assert_eq!(f.asset.as_deref(), Some("TNZO"));
        let mut costs = Costs::default();
        assert_eq!(costs.describe(), "nothing reported");
        costs.add("TNZO", 7);
        costs.add("TNZO", 3);
        assert_eq!(
            costs.describe(),
            "0.00000000000000001 TNZO (10 base units) over 2 answers"
        );
    }
}
