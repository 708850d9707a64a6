//! Standard input on its own thread (a blocking read must not hold the runtime),
//! as bounded lines.

use std::io::BufRead;

use tokio::sync::mpsc;

/// One line read, without its newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// Longer than the bound; skipped to its end.
    TooLong,
}

/// Reads lines of at most `max` bytes from `r` until end of input or the receiver
/// goes away. The thread is never joined: the program exits around it.
pub fn spawn(max: usize) -> mpsc::Receiver<Line> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut r = std::io::stdin().lock();
        while let Some(line) = read_line(&mut r, max) {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// One line, or `None` at end of input (or a read error).
fn read_line(r: &mut impl BufRead, max: usize) -> Option<Line> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        if available.is_empty() {
            // End of input: a last line without a newline still counts.
            return (!buf.is_empty() || too_long).then(|| finish(buf, too_long));
        }
        let (part, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if buf.len() + part.len() > max {
            too_long = true;
            buf.clear();
        } else if !too_long {
            buf.extend_from_slice(part);
        }
        let used = found.unwrap_or(available.len());
        r.consume(used);
        if found.is_some() {
            return Some(finish(buf, too_long));
        }
    }
}

fn finish(buf: Vec<u8>, too_long: bool) -> Line {
    if too_long {
        Line::TooLong
    } else {
        Line::Text(String::from_utf8_lossy(&buf).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lines() {
        let mut r = std::io::BufReader::with_capacity(4, &b"ab\ncdefgh\nij"[..]);
        let got: Vec<Line> = std::iter::from_fn(|| read_line(&mut r, 5)).collect();
        assert_eq!(
            got,
            [
                Line::Text("ab".into()),
                Line::TooLong,
                Line::Text("ij".into())
            ]
        );
    }
}
