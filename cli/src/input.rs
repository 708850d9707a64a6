//! What the person typed: multi-line assembly and the slash commands.
//!
//! A line ending in `\` continues on the next line (the backslash becomes a newline).
//! A line that is exactly `"""` opens a block that the next `"""` line closes; the
//! lines between are sent as they are. `//text` sends `/text` (a message that starts
//! with a slash).

/// Longest message (bytes) one turn may assemble; more is refused, not kept.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// One complete input: a message to send, or a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Message(String),
    Command(Command),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    /// `/models [FILTER]`: list the server's models whose id contains FILTER.
    Models(Option<String>),
    /// `/model [NAME]`: switch to NAME, or show the current model.
    Model(Option<String>),
    /// `/system [TEXT]`: set the system prompt (no TEXT: clear it).
    System(Option<String>),
    Reset,
    Cost,
    Quit,
    Unknown(String),
}

/// Assembles lines into inputs.
#[derive(Debug, Default)]
pub struct Assembler {
    buf: String,
    /// Inside a `"""` block.
    block: bool,
    /// Inside a `\` continuation.
    continued: bool,
    /// The message grew past [`MAX_MESSAGE_BYTES`]; dropped at its end.
    overflow: bool,
}

/// What one line did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fed {
    /// A complete input.
    Done(Input),
    /// More lines are needed (show the continuation prompt).
    More,
    /// Nothing to do (an empty line).
    Empty,
    /// The message was longer than [`MAX_MESSAGE_BYTES`] and was dropped.
    TooLong,
}

impl Assembler {
    /// Whether a multi-line input is open (the prompt shows `...`).
    pub fn pending(&self) -> bool {
        self.block || self.continued
    }

    /// Forgets a half-typed multi-line input (Ctrl-C at the prompt).
    pub fn clear(&mut self) {
        *self = Assembler::default();
    }

    pub fn feed(&mut self, line: &str) -> Fed {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if self.block {
            if line.trim_end() == "\"\"\"" {
                return self.finish();
            }
            self.push(line);
            self.push("\n");
            return Fed::More;
        }
        if !self.continued && line.trim() == "\"\"\"" {
            self.block = true;
            return Fed::More;
        }
        if let Some(head) = line.strip_suffix('\\') {
            self.continued = true;
            self.push(head);
            self.push("\n");
            return Fed::More;
        }
        let first = !self.continued;
        self.push(line);
        if first && !self.overflow {
            let text = std::mem::take(&mut self.buf);
            self.clear();
            return match parse(&text) {
                Some(i) => Fed::Done(i),
                None => Fed::Empty,
            };
        }
        self.finish()
    }

    fn push(&mut self, s: &str) {
        if self.buf.len() + s.len() > MAX_MESSAGE_BYTES {
            self.overflow = true;
            self.buf.clear();
        }
        if !self.overflow {
            self.buf.push_str(s);
        }
    }

    fn finish(&mut self) -> Fed {
        let overflow = self.overflow;
        let text = std::mem::take(&mut self.buf);
        self.clear();
        if overflow {
            return Fed::TooLong;
        }
        // A block or continuation is always a message, even when it starts with `/`.
        let text = text.strip_suffix('\n').unwrap_or(&text);
        if text.trim().is_empty() {
            Fed::Empty
        } else {
            Fed::Done(Input::Message(text.to_owned()))
        }
    }
}

/// One line: a command when it starts with a single `/`, else a message.
fn parse(line: &str) -> Option<Input> {
    if line.trim().is_empty() {
        return None;
    }
    if let Some(rest) = line.strip_prefix("//") {
        return Some(Input::Message(format!("/{rest}")));
    }
    let Some(rest) = line.trim_start().strip_prefix('/') else {
        return Some(Input::Message(line.to_owned()));
    };
    let (name, arg) = match rest.split_once(char::is_whitespace) {
        Some((n, a)) => (n, Some(a.trim()).filter(|a| !a.is_empty())),
        None => (rest.trim(), None),
    };
    let arg = arg.map(str::to_owned);
    Some(Input::Command(match name {
        "help" | "?" => Command::Help,
        "models" => Command::Models(arg),
        "model" => Command::Model(arg),
        "system" => Command::System(arg),
        "reset" | "clear" => Command::Reset,
        "cost" => Command::Cost,
        "quit" | "exit" | "q" => Command::Quit,
        other => Command::Unknown(other.to_owned()),
    }))
}

pub const HELP: &str = "\
Type a message and press Enter. Multi-line: end a line with \\ to continue it, or
put \"\"\" alone on a line to open a block and again to close it. //text sends /text.
Commands:
  /models [FILTER]  list the server's models (ids containing FILTER)
  /model [NAME]     switch model (no NAME: show the current one)
  /system [TEXT]    set the system prompt (no TEXT: remove it)
  /reset            forget the conversation (the system prompt stays)
  /cost             what this conversation has cost (from x-tenzro-cost)
  /quit             leave (or Ctrl-D; Ctrl-C twice at the prompt)
Ctrl-C while an answer streams stops that answer and returns to the prompt.";

#[cfg(test)]
#[expect(clippy::panic, reason = "tests")]
mod tests {
    use super::*;

    fn feed_all(lines: &[&str]) -> Vec<Fed> {
        let mut a = Assembler::default();
        lines.iter().map(|l| a.feed(l)).collect()
    }

    fn msg(s: &str) -> Fed {
        Fed::Done(Input::Message(s.into()))
    }

    fn cmd(c: Command) -> Fed {
        Fed::Done(Input::Command(c))
    }

    #[test]
    fn lines_commands_and_blocks() {
        let cases: Vec<(Vec<&str>, Vec<Fed>)> = vec![
            (vec!["hello"], vec![msg("hello")]),
            (vec!["", "  "], vec![Fed::Empty, Fed::Empty]),
            (vec!["one\\", "two"], vec![Fed::More, msg("one\ntwo")]),
            (
                vec!["\"\"\"", "a", "", "/b", "\"\"\""],
                vec![Fed::More, Fed::More, Fed::More, Fed::More, msg("a\n\n/b")],
            ),
            (
                vec!["/model x y"],
                vec![cmd(Command::Model(Some("x y".into())))],
            ),
            (vec!["/model"], vec![cmd(Command::Model(None))]),
            (
                vec!["/models smol"],
                vec![cmd(Command::Models(Some("smol".into())))],
            ),
            (
                vec!["/system  be brief "],
                vec![cmd(Command::System(Some("be brief".into())))],
            ),
            (
                vec!["/reset", "/cost", "/quit"],
                vec![cmd(Command::Reset), cmd(Command::Cost), cmd(Command::Quit)],
            ),
            (vec!["/nope"], vec![cmd(Command::Unknown("nope".into()))]),
            (vec!["//etc/passwd"], vec![msg("/etc/passwd")]),
            (vec!["crlf\r"], vec![msg("crlf")]),
        ];
        for (lines, want) in cases {
            assert_eq!(feed_all(&lines), want, "{lines:?}");
        }
    }

    #[test]
    fn a_message_past_the_bound_is_dropped_whole() {
        let mut a = Assembler::default();
        let big = "x".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(a.feed("\"\"\""), Fed::More);
        assert_eq!(a.feed(&big), Fed::More);
        assert_eq!(a.feed("\"\"\""), Fed::TooLong);
        assert!(!a.pending());
        assert_eq!(a.feed("ok"), msg("ok"));
    }

    #[test]
    fn clear_forgets_a_half_typed_block() {
        let mut a = Assembler::default();
        a.feed("\"\"\"");
        assert!(a.pending());
        a.clear();
        match a.feed("/cost") {
            Fed::Done(Input::Command(Command::Cost)) => {}
            other => panic!("{other:?}"),
        }
    }
}
