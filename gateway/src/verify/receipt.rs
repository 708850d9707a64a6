//! The provider's signed receipt: the response digest, the expected fields and
//! the check, and the sampling of responses to verify.

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tenzro_attest::{PublicKey, Receipt};

/// Longest receipt text kept in a slash record's evidence.
const EVIDENCE_MAX: usize = 2048;

/// SHA-256 over `items` in order, each written as its byte length (u64 big-endian)
/// then its bytes: the receipt's `response_sha256` (README "Identity, attestation
/// and receipts").
pub fn items_digest<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for item in items {
        h.update((item.len() as u64).to_be_bytes());
        h.update(item);
    }
    h.finalize().into()
}

/// Each choice's text of a stream as the client assembles it, for the response
/// digest. Choice indices at or above `choices` are not kept (a receipt over them
/// cannot match), so memory is bounded by the bytes relayed.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    texts: Vec<Vec<u8>>,
    /// A piece arrived for a choice the request did not ask for.
    pub stray: bool,
}

impl Texts {
    pub fn new(choices: u64) -> Self {
        // One slot per choice (at most 4096; requests ask for at most 128).
        let n = usize::try_from(choices.min(4096)).unwrap_or(0);
        Texts {
            texts: vec![Vec::new(); n],
            stray: false,
        }
    }

    /// Appends a piece of choice `index`'s text.
    pub fn push(&mut self, index: u64, piece: &str, choices: u64) {
        if index >= choices {
            self.stray = true;
            return;
        }
        // Never grows on the provider's word: a choice without a slot is stray
        // (the gateway refuses more than `routes::MAX_CHOICES` choices at parse).
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| self.texts.get_mut(i));
        let Some(slot) = slot else {
            self.stray = true;
            return;
        };
        slot.extend_from_slice(piece.as_bytes());
    }

    pub fn digest(&self) -> [u8; 32] {
        items_digest(self.texts.iter().map(Vec::as_slice))
    }
}

/// What a receipt must say, from what the gateway sent, relayed and was told.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The provider's registered key.
    pub key: &'a PublicKey,
    pub model: &'a str,
    /// The weight digest the provider registered for the model, when it did.
    pub weight_sha256: Option<[u8; 32]>,
    pub request_sha256: [u8; 32],
    pub response_sha256: [u8; 32],
    /// The provider's `usage`, when it sent one.
    pub usage: Option<(u64, u64)>,
}

/// Checks a response's receipt (the JSON under `tenzro.receipt`); the error is the
/// evidence of the fraud, ready for a slash record.
pub fn check_receipt(raw: Option<&serde_json::Value>, e: &Expected<'_>) -> Result<(), String> {
    let raw = raw.ok_or_else(|| "the response carries no receipt".to_owned())?;
    let quoted = || evidence_text(raw);
    let r: Receipt = Receipt::deserialize(raw)
        .map_err(|err| format!("unreadable receipt ({err}): {}", quoted()))?;
    r.verify(Some(e.key))
        .map_err(|err| format!("receipt refused ({err}): {}", quoted()))?;
    let mut wrong = Vec::new();
    if r.model != e.model {
        wrong.push(format!("model '{}' (asked '{}')", r.model, e.model));
    }
    if let Some(w) = e.weight_sha256
        && w != r.weight_sha256
    {
        wrong.push(format!(
            "weight_sha256 {} (registered {})",
            hex::encode(r.weight_sha256),
            hex::encode(w)
        ));
    }
    if r.request_sha256 != e.request_sha256 {
        wrong.push(format!(
            "request_sha256 {} (sent {})",
            hex::encode(r.request_sha256),
            hex::encode(e.request_sha256)
        ));
    }
    if r.response_sha256 != e.response_sha256 {
        wrong.push(format!(
            "response_sha256 {} (relayed {})",
            hex::encode(r.response_sha256),
            hex::encode(e.response_sha256)
        ));
    }
    if let Some((p, c)) = e.usage
        && (r.prompt_tokens, r.completion_tokens) != (p, c)
    {
        wrong.push(format!(
            "tokens {}+{} (usage said {p}+{c})",
            r.prompt_tokens, r.completion_tokens
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "receipt differs from the response: {}; receipt: {}",
            wrong.join(", "),
            quoted()
        ))
    }
}

fn evidence_text(v: &serde_json::Value) -> String {
    let mut s = v.to_string();
    if s.len() > EVIDENCE_MAX {
        let mut cut = EVIDENCE_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Whether a response is sampled for receipt verification, from a uniform random
/// `draw`, at `ppm` parts per million (1,000,000: every response).
pub fn sampled(ppm: u32, draw: u64) -> bool {
    draw % 1_000_000 < u64::from(ppm)
}
