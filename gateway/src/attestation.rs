//! Verifying providers' TEE evidence (issue 6): fetch `GET {endpoint}/v1/attestation`
//! with a fresh nonce, check the document against what the provider registered, run
//! `tenzro_attest`'s verifier, and store the verdict on the registry entry.
//!
//! - The document's public key must be the registered key.
//! - The binding is recomputed from the *registered* key and weight digests and the
//!   gateway's nonce (`tenzro_attest::binding::report_data`) and must equal both the
//!   document's `report_data` and the report data inside the evidence.
//! - `none` evidence bound correctly is untrusted but not a fault; TDX evidence is
//!   checked without Intel collateral (the gateway does not fetch it yet), so it is
//!   refused on `collateral`, also without a slash.
//! - A fault the provider is answerable for (wrong key, wrong binding or nonce,
//!   weight digests differing from the registered ones, evidence whose `binding`,
//!   `nonce`, `signature` or `parse` check fails) is *slashable*: the registry
//!   records a slash of [`SLASH_PPM`] of the stake.
//! - A provider that cannot be reached or answers no document gets an untrusted
//!   verdict that is due again at once (no slash).
//!
//! Routing's TEE filter keeps only providers whose stored verdict is trusted and
//! fresh ([`AttestationVerdict::is_fresh`]); the declared TEE kind alone counts for
//! nothing. [`reverify_loop`] renews verdicts before their freshness window ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenzro_attest::binding::{REPORT_DATA_DOMAIN, report_data};
use tenzro_attest::evidence::{self, VerifyContext};
use tenzro_attest::{Evidence, Policy, PublicKey, TeeKind};
use tokio_util::sync::CancellationToken;

use crate::registry::{ModelEntry, Registry};

/// The slash for a failed verification: 10% of the stake, in ppm.
pub const SLASH_PPM: u128 = 100_000;
/// Bytes of the gateway's nonce.
pub const NONCE_BYTES: usize = 32;
/// How long the gateway waits for an attestation document.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest attestation document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// How often [`reverify_loop`] looks for verdicts that are due.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Failed evidence checks the provider is answerable for.
const SLASHABLE_CHECKS: [&str; 4] = ["binding", "nonce", "signature", "parse"];

/// What `GET /v1/attestation` answers (fields the gateway does not use are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct AttestationDocument {
    pub tee_kind: TeeKind,
    /// Kept as text: a malformed key is a key mismatch, not an unreadable document.
    pub public_key: String,
    #[serde(default)]
    pub did: String,
    #[serde(default)]
    pub model_digests: BTreeMap<String, String>,
    #[serde(default)]
    pub nonce: String,
    pub report_data: String,
    pub evidence: Evidence,
    #[serde(default)]
    pub issued_at: u64,
}

/// The gateway's verdict on a provider's evidence, as stored and shown to admins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttestationVerdict {
    /// True only when every check passed and the evidence is a real TEE's.
    pub trusted: bool,
    /// The evidence's kind, when a document was read.
    pub tee_kind: Option<String>,
    /// Why it is not trusted (empty when trusted).
    pub reasons: Vec<String>,
    /// Unix seconds, from the gateway's clock.
    pub verified_at: u64,
    /// Unix seconds after which the verdict no longer counts.
    pub expires_at: u64,
    /// Whether the failure is the provider's fault (a slash was recorded).
    pub slashable: bool,
}

impl AttestationVerdict {
    /// A verdict for a provider whose document could not be had: untrusted, due again
    /// at once, not slashed.
    pub fn unverified(reason: String, now: u64) -> Self {
        AttestationVerdict {
            trusted: false,
            tee_kind: None,
            reasons: vec![reason],
            verified_at: now,
            expires_at: now,
            slashable: false,
        }
    }

    /// Trusted and within its freshness window at `now` (unix seconds).
    pub fn is_fresh(&self, now: u64) -> bool {
        self.trusted && now >= self.verified_at && now < self.expires_at
    }
}

/// 10% of `stake` (rounded down).
pub fn slash_amount(stake: u128) -> u128 {
    stake / 1_000_000 * SLASH_PPM + stake % 1_000_000 * SLASH_PPM / 1_000_000
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

/// Checks a document against the registration: `key`, the declared TEE kind, the
/// registered `models` (their `weight_sha256`) and the gateway's `nonce`; `now` in
/// unix seconds from the gateway's clock.
pub fn check(
    doc: &AttestationDocument,
    key: &PublicKey,
    declared_tee: &str,
    models: &[ModelEntry],
    nonce: &[u8],
    policy: &Policy,
    now: u64,
) -> AttestationVerdict {
    let mut reasons = Vec::new();
    let mut slashable = false;
    let kind = Some(doc.evidence.kind.as_str().to_owned());
    if PublicKey::from_hex(&doc.public_key).ok().as_ref() != Some(key) {
        reasons.push(format!(
            "public_key: the document's key `{}` is not the registered key {}",
            doc.public_key,
            key.to_hex()
        ));
        slashable = true;
    }
    let mut digests = Vec::with_capacity(models.len());
    for m in models {
        let id = &m.info.id;
        let Some(d) = m.info.weight_sha256.as_deref().and_then(parse_digest) else {
            reasons.push(format!(
                "weights: model {id} was registered without a valid weight_sha256; the binding cannot be checked"
            ));
            return AttestationVerdict {
                trusted: false,
                tee_kind: kind,
                reasons,
                verified_at: now,
                expires_at: now,
                slashable,
            };
        };
        digests.push(d);
        if let Some(attested) = doc.model_digests.get(id)
            && parse_digest(attested) != Some(d)
        {
            reasons.push(format!(
                "weights: model {id} is attested with digest {attested}, registered with {}",
                hex::encode(d)
            ));
            slashable = true;
        }
    }
    if !doc.nonce.eq_ignore_ascii_case(&hex::encode(nonce)) {
        reasons.push("nonce: the document does not echo the gateway's nonce".to_owned());
        slashable = true;
    }
    let expected = report_data(REPORT_DATA_DOMAIN, key, &digests, nonce);
    if !doc.report_data.eq_ignore_ascii_case(&hex::encode(expected)) {
        reasons.push(
            "binding: report_data is not report_data(domain, registered key, registered weight digests, nonce)".to_owned(),
        );
        slashable = true;
    }
    if doc.tee_kind != doc.evidence.kind || declared_tee != doc.evidence.kind.as_str() {
        reasons.push(format!(
            "tee_kind: declared `{declared_tee}`, document says `{}`, evidence is `{}`",
            doc.tee_kind, doc.evidence.kind
        ));
    }
    let ctx = VerifyContext {
        now,
        policy,
        report_data: Some(expected),
        tdx_collateral: None,
    };
    let v = evidence::verify(&doc.evidence, &ctx);
    if v.checks
        .iter()
        .any(|c| !c.ok && SLASHABLE_CHECKS.contains(&c.name.as_str()))
    {
        slashable = true;
    }
    reasons.extend(v.reasons.iter().map(|r| format!("evidence: {r}")));
    let trusted = reasons.is_empty() && v.trusted;
    AttestationVerdict {
        trusted,
        tee_kind: kind,
        reasons,
        verified_at: now,
        expires_at: now.saturating_add(policy.freshness_secs),
        slashable,
    }
}

/// A fresh random nonce.
pub fn fresh_nonce() -> Result<[u8; NONCE_BYTES], String> {
    let mut b = [0u8; NONCE_BYTES];
    getrandom::fill(&mut b).map_err(|e| format!("random nonce: {e}"))?;
    Ok(b)
}

/// `GET {endpoint}/v1/attestation?nonce=HEX`, parsed.
pub async fn fetch(
    client: &reqwest::Client,
    endpoint: &str,
    nonce: &[u8],
) -> Result<AttestationDocument, String> {
    let url = format!("{endpoint}/v1/attestation?nonce={}", hex::encode(nonce));
    let resp = client
        .get(&url)
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("fetch: GET {url}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("fetch: GET {url} answered {status}"));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("fetch: GET {url}: {e}"))?;
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "fetch: the attestation document is over {MAX_DOCUMENT_BYTES} bytes"
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| format!("fetch: the attestation document is not valid: {e}"))
}

/// Verifies provider `id` now and stores the verdict (and a slash when it is the
/// provider's fault). `None` when the provider is unknown or has no key (config).
pub async fn verify_provider(
    registry: &Registry,
    client: &reqwest::Client,
    id: &str,
) -> Option<AttestationVerdict> {
    let entry = registry.get(id)?;
    let key = entry.info.public_key?;
    let verdict = match fresh_nonce() {
        Err(e) => AttestationVerdict::unverified(e, registry.unix_now()),
        Ok(nonce) => match fetch(client, &entry.info.endpoint, &nonce).await {
            Ok(doc) => check(
                &doc,
                &key,
                &entry.info.tee,
                &entry.info.models,
                &nonce,
                &registry.attest_policy,
                registry.unix_now(),
            ),
            Err(reason) => AttestationVerdict::unverified(reason, registry.unix_now()),
        },
    };
    registry.record_attestation(&entry, verdict.clone());
    Some(verdict)
}

/// Re-verifies, every [`SWEEP_INTERVAL`], the providers whose verdict is missing or
/// within the last tenth of its freshness window, until `cancel` fires.
pub async fn reverify_loop(
    registry: Arc<Registry>,
    client: reqwest::Client,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(SWEEP_INTERVAL) => {}
        }
        registry.slash_downtime();
        for id in registry.attestation_due() {
            if cancel.is_cancelled() {
                break;
            }
            verify_provider(&registry, &client, &id).await;
        }
    }
}

#[cfg(test)]
#[path = "attestation_tests.rs"]
mod tests;
