//! Stop sequences: text is held back while it could still be the start of a stop
//! string, and the stop string itself is never emitted.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What to do after feeding text in.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Release this text (may be empty) and keep going.
    Continue(String),
    /// A stop string matched: release this text, then finish.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher {
            stops,
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_owned());
        }
        self.pending.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let out = self.pending[..at].to_owned();
            self.pending.clear();
            return StopOutcome::Stopped(out);
        }
        let hold = self.holdback();
        let release = self.pending.len() - hold;
        let out = self.pending[..release].to_owned();
        self.pending.drain(..release);
        StopOutcome::Continue(out)
    }

    /// Whatever is still held back, for when generation ends another way.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Bytes at the end of `pending` that are a proper prefix of some stop string.
    fn holdback(&self) -> usize {
        let p = &self.pending;
        p.char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&p[i..])))
            .map_or(0, |i| p.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn check_cases() {
        let check = |stops: &[&str], pieces: &[&str], expect: (&str, bool)| {
            assert_eq!(
                run(stops, pieces),
                (expect.0.to_owned(), expect.1),
                "{stops:?} {pieces:?}"
            );
        };
        check(&[], &["a", "b"], ("ab", false));
        check(&["\n"], &["Paris", " is", "\nnext"], ("Paris is", true));
        check(&["END"], &["abc E", "N", "D tail"], ("abc ", true));
        check(&["END"], &["abc E", "N", "x"], ("abc ENx", false));
        check(&["ab", "b"], &["xab"], ("x", true));
        check(&["é!"], &["caf", "é", "!"], ("caf", true));
        check(&["é!"], &["caf", "é"], ("café", false));
        check(&[""], &["a"], ("a", false));
    }

    #[test]
    fn held_text_is_released_once_it_cannot_match() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("ST"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("x"), StopOutcome::Continue("STx".into()));
    }
}
