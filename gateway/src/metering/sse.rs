//! SSE framing: cutting a byte stream into events, reading an event's data,
//! writing events and the trailing cost comment.

use std::borrow::Cow;

use crate::pricing::Asset;

/// Cuts a byte stream into SSE events at blank lines (`\n\n` or `\r\n\r\n`).
///
/// Scanning resumes where the previous push stopped (less the three bytes a
/// terminator split across reads may need), so a long event costs its length once,
/// not once per read. The caller bounds [`SseSplitter::pending`].
#[derive(Debug, Default)]
pub struct SseSplitter {
    buf: Vec<u8>,
    /// Every position before this one was checked with enough bytes after it.
    scanned: usize,
}

impl SseSplitter {
    /// Appends `bytes` and returns every complete event, each without its
    /// terminating blank line.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
        while i + 1 < self.buf.len() {
            let b = &self.buf[i..];
            let end = if b.starts_with(b"\n\n") {
                Some(2)
            } else if b.starts_with(b"\r\n\r\n") {
                Some(4)
            } else {
                None
            };
            if let Some(n) = end {
                out.push(self.buf[start..i].to_vec());
                i += n;
                start = i;
            } else {
                i += 1;
            }
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len().saturating_sub(3);
        out
    }

    /// Bytes of an event not yet terminated.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The `data` of an SSE event: its `data:` lines joined by `\n`; `None` when the
/// event has none (a comment or a keep-alive). One `data:` line (the usual event)
/// is borrowed, not copied.
pub fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            match &mut data {
                Some(d) => {
                    let d = d.to_mut();
                    d.push(b'\n');
                    d.extend_from_slice(rest);
                }
                None => data = Some(Cow::Borrowed(rest)),
            }
        }
    }
    data
}

/// An SSE event carrying `data`.
pub fn sse(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

/// The trailing SSE comment that tells a stream's cost to clients that did not ask
/// for the usage chunk (SSE comments are ignored by SDKs).
pub fn cost_comment(cost: u128, asset: Asset) -> Vec<u8> {
    format!(": x-tenzro-cost={cost} x-tenzro-asset={asset}\n\n").into_bytes()
}
