//! Streamed answers offered for audit. Whether a stream is audited is drawn when it
//! starts (at `[attestation] audit_rate`, like a whole answer), so only a picked
//! stream keeps a copy of its text: choice 0's pieces, at most `[audit]
//! max_answer_bytes`. When the stream ends normally (`[DONE]`, no fraud) the tap
//! becomes a [`Sample`] whose response is the answer in its non-streamed shape, so
//! the worker judges it exactly like a whole answer. A stream cut or abandoned
//! offers nothing; nothing here waits.
//!
//! A provider honest only when not streamed is caught the same way: the statistic
//! sees the same tokens whichever way they were delivered.

use bytes::Bytes;
use serde_json::json;

use super::Audits;
use super::sample::{Sample, cut};
use crate::providers::entry::ProviderEntry;

/// A picked stream's copy of its answer.
pub struct Tap {
    audits: Audits,
    sample: Sample,
    text: String,
    /// The answer carried a tool call (the worker skips such answers).
    tool_calls: bool,
    /// Bytes kept at most.
    max: usize,
}

impl Audits {
    /// Draws whether this stream is audited; `Some` keeps its text for the audit.
    /// Requests larger than `[audit] max_request_bytes` are never picked (they
    /// would be skipped).
    pub fn tap(
        &self,
        request_id: &str,
        entry: &ProviderEntry,
        model: &str,
        path: &str,
        request: &Bytes,
    ) -> Option<Tap> {
        if request.len() > self.config.max_request_bytes || !self.pick() {
            return None;
        }
        let mut sample = Sample::new(
            request_id,
            entry,
            model,
            path,
            request.clone(),
            Bytes::new(),
        );
        sample.streamed = true;
        Some(Tap {
            audits: self.clone(),
            sample,
            text: String::new(),
            tool_calls: false,
            max: self.config.max_answer_bytes,
        })
    }
}

impl Tap {
    /// One chunk's piece of choice `index`: its text (`delta.content` or `text`)
    /// and whether it carries a tool call. Other choices are not kept.
    pub fn push(&mut self, index: u64, text: Option<&str>, tool_call: bool) {
        if index != 0 {
            return;
        }
        self.tool_calls |= tool_call;
        if let Some(t) = text {
            let room = self.max.saturating_sub(self.text.len());
            self.text.push_str(cut(t, room));
        }
    }

    /// The stream ended normally: the answer goes to the audit queue (a full queue
    /// drops it). Never waits.
    pub fn finish(self) {
        let Tap {
            audits,
            mut sample,
            text,
            tool_calls,
            ..
        } = self;
        let choice = if sample.chat {
            let mut message = json!({"role": "assistant", "content": text});
            if tool_calls {
                message["tool_calls"] = json!([{"type": "function"}]);
            }
            json!({"index": 0, "message": message})
        } else {
            json!({"index": 0, "text": text})
        };
        let body = json!({"choices": [choice]});
        sample.response = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        audits.queue(sample);
    }
}
