//! Verifying providers' TEE evidence (issue 6): fetch `GET {endpoint}/v1/attestation`
//! with a fresh nonce, check the document against what the provider registered, run
//! `tenzro_attest`'s verifier, and store the verdict on the registry entry.
//!
//! - The document's public key must be the registered key.
//! - The binding is recomputed from the *registered* key and weight digests and the
//!   gateway's nonce (`tenzro_attest::binding::report_data`) and must equal both the
//!   document's `report_data` and the report data inside the evidence.
//! - `none` evidence bound correctly is untrusted but not a fault; TDX evidence is
//!   checked with Intel collateral from [`crate::providers::collateral`] (a PCCS/PCS, or files
//!   in the collateral directory) and SEV-SNP with the VCEK from AMD's KDS when one
//!   is configured; collateral that cannot be had refuses the verdict with the
//!   reason (`collateral: ...`), without a slash. A TDX verdict lasts no longer
//!   than its collateral's `nextUpdate`.
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
//!
//! Every fetch is bounded ([`Verifier`]): its own client that never follows a
//! redirect, resolves names to public addresses only (unless private endpoints are
//! allowed), gives up after [`FETCH_TIMEOUT`], and reads the body as a stream that
//! stops at [`MAX_DOCUMENT_BYTES`]; at most [`MAX_CONCURRENT`] fetches run at once,
//! so hanging endpoints cannot starve real ones; banned providers are not fetched.
//! A fetched document, or else a 2xx answer to `GET {endpoint}/health`, means the
//! gateway reached the provider: only then does a registration enter routing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use tenzro_attest::binding::{REPORT_DATA_DOMAIN, report_data};
use tenzro_attest::evidence::{self, VerifyContext};
use tenzro_attest::{Evidence, Policy, PublicKey, TeeKind};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::providers::collateral::{CollateralStore, Found};
use crate::providers::registry::{ModelEntry, Registry};
pub use crate::providers::verdict::AttestationVerdict;
use crate::providers::verdict::{Check, Failure};

/// The slash for a failed verification: 10% of the stake, in ppm.
pub const SLASH_PPM: u128 = 100_000;
/// Bytes of the gateway's nonce.
pub const NONCE_BYTES: usize = 32;
/// How long the gateway waits for an attestation document (the whole exchange).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to a provider for a fetch may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Fetches running at once.
pub const MAX_CONCURRENT: usize = 16;
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
/// unix seconds from the gateway's clock. No collateral: TDX is refused on it.
pub fn check(
    doc: &AttestationDocument,
    key: &PublicKey,
    declared_tee: &str,
    models: &[ModelEntry],
    nonce: &[u8],
    policy: &Policy,
    now: u64,
) -> AttestationVerdict {
    check_with(
        doc,
        key,
        declared_tee,
        models,
        nonce,
        policy,
        now,
        &Found::Nothing,
    )
}

/// [`check`] with the collateral the gateway found for the evidence
/// ([`crate::providers::collateral`]): Intel's for TDX (the verdict then lasts no longer than
/// the collateral), AMD's VCEK and chain for SEV-SNP, or why it is missing (a
/// refusal, not a slash). Also applies `max_evidence_age_secs` to `issued_at`.
#[allow(clippy::too_many_arguments)]
pub fn check_with(
    doc: &AttestationDocument,
    key: &PublicKey,
    declared_tee: &str,
    models: &[ModelEntry],
    nonce: &[u8],
    policy: &Policy,
    now: u64,
    found: &Found,
) -> AttestationVerdict {
    let mut reasons = Vec::new();
    let mut slashable = false;
    let kind = Some(doc.evidence.kind.as_str().to_owned());
    if PublicKey::from_hex(&doc.public_key).ok().as_ref() != Some(key) {
        reasons.push(Failure::new(
            Check::PublicKey,
            format!(
                "the document's key `{}` is not the registered key {}",
                doc.public_key,
                key.to_hex()
            ),
        ));
        slashable = true;
    }
    let mut digests = Vec::with_capacity(models.len());
    for m in models {
        let id = &m.info.id;
        let Some(d) = m.info.weight_sha256.as_deref().and_then(parse_digest) else {
            reasons.push(Failure::new(Check::Weights, format!(
                "model {id} was registered without a valid weight_sha256; the binding cannot be checked"
            )));
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
            reasons.push(Failure::new(
                Check::Weights,
                format!(
                    "model {id} is attested with digest {attested}, registered with {}",
                    hex::encode(d)
                ),
            ));
            slashable = true;
        }
    }
    if !doc.nonce.eq_ignore_ascii_case(&hex::encode(nonce)) {
        reasons.push(Failure::new(
            Check::Nonce,
            "the document does not echo the gateway's nonce",
        ));
        slashable = true;
    }
    let expected = report_data(REPORT_DATA_DOMAIN, key, &digests, nonce);
    if !doc.report_data.eq_ignore_ascii_case(&hex::encode(expected)) {
        reasons.push(Failure::new(
            Check::Binding,
            "report_data is not report_data(domain, registered key, registered weight digests, nonce)",
        ));
        slashable = true;
    }
    if doc.tee_kind != doc.evidence.kind || declared_tee != doc.evidence.kind.as_str() {
        reasons.push(Failure::new(
            Check::TeeKind,
            format!(
                "declared `{declared_tee}`, document says `{}`, evidence is `{}`",
                doc.tee_kind, doc.evidence.kind
            ),
        ));
    }
    // Two clocks read in whole seconds (the provider's when it issued, ours now)
    // can disagree by a second even on one machine; evidence dated a few seconds
    // ahead is skew, not from the future.
    const CLOCK_SKEW_SECS: u64 = 5;
    let max_age = policy.max_evidence_age_secs;
    if max_age > 0
        && (doc.issued_at > now.saturating_add(CLOCK_SKEW_SECS)
            || now.saturating_sub(doc.issued_at) > max_age)
    {
        reasons.push(Failure::new(Check::MaxEvidenceAge, format!(
            "the evidence was issued at {} and is verified at {now} (at most {max_age} s old, not from the future)",
            doc.issued_at
        )));
    }
    let (tdx_collateral, snp_certs, mut expires_at) = match found {
        Found::Tdx {
            collateral,
            next_update,
        } => (Some(collateral.as_ref()), None, *next_update),
        Found::Snp { vcek, chain } => (None, Some((vcek, chain)), u64::MAX),
        Found::Missing(reason) => {
            reasons.push(Failure::new(Check::Collateral, reason.clone()));
            // Due again five minutes after the sweep's margin, not a day later.
            let retry = (policy.freshness_secs / 10).saturating_add(300);
            (None, None, now.saturating_add(retry))
        }
        Found::Nothing => (None, None, u64::MAX),
    };
    expires_at = expires_at.min(now.saturating_add(policy.freshness_secs));
    let ctx = VerifyContext {
        now,
        policy,
        report_data: Some(expected),
        tdx_collateral,
    };
    let v = match snp_certs {
        Some((vcek, chain)) if doc.evidence.kind == TeeKind::SevSnp => {
            evidence::sev_snp::verify(&doc.evidence.report, vcek, Some(chain.as_slice()), &ctx)
        }
        _ => evidence::verify(&doc.evidence, &ctx),
    };
    if v.checks
        .iter()
        .any(|c| !c.ok && SLASHABLE_CHECKS.contains(&c.name.as_str()))
    {
        slashable = true;
    }
    reasons.extend(
        v.reasons
            .iter()
            .map(|r| Failure::new(Check::Evidence, r.clone())),
    );
    let trusted = reasons.is_empty() && v.trusted;
    AttestationVerdict {
        trusted,
        tee_kind: kind,
        reasons,
        verified_at: now,
        expires_at,
        slashable,
    }
}

/// A fresh random nonce.
pub fn fresh_nonce() -> Result<[u8; NONCE_BYTES], String> {
    let mut b = [0u8; NONCE_BYTES];
    getrandom::fill(&mut b).map_err(|e| format!("random nonce: {e}"))?;
    Ok(b)
}

/// The bounded HTTP client of attestation fetches and health probes, and the
/// permits that bound how many run at once.
#[derive(Debug, Clone)]
pub struct Verifier {
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    /// Where TEE collateral comes from; `None`: evidence is verified as it came
    /// (TDX is then refused on `collateral`).
    collateral: Option<Arc<CollateralStore>>,
}

impl Verifier {
    /// A client that never follows redirects and, unless `allow_private`, connects
    /// only to public addresses of the names it resolves.
    pub fn new(allow_private: bool) -> Result<Self, reqwest::Error> {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .pool_max_idle_per_host(1);
        if !allow_private {
            b = b.dns_resolver(Arc::new(crate::providers::bounds::PublicOnly));
        }
        Ok(Verifier {
            client: b.build()?,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT)),
            collateral: None,
        })
    }

    /// Verifies with collateral from `store` ([`crate::providers::collateral`]).
    pub fn with_collateral(mut self, store: Arc<CollateralStore>) -> Self {
        self.collateral = Some(store);
        self
    }
}

/// `GET {endpoint}/v1/attestation?nonce=HEX`, parsed (bounded: see [`Verifier`]).
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
    let body = tokio::time::timeout(
        FETCH_TIMEOUT,
        crate::providers::bounds::read_bounded(resp, MAX_DOCUMENT_BYTES),
    )
    .await
    .map_err(|_| {
        format!(
            "fetch: GET {url}: the body took over {} s",
            FETCH_TIMEOUT.as_secs()
        )
    })?
    .map_err(|e| format!("fetch: GET {url}: {e}"))?;
    serde_json::from_slice(&body)
        .map_err(|e| format!("fetch: the attestation document is not valid: {e}"))
}

/// Whether `GET {endpoint}/health` answers 2xx (its body is not read).
pub async fn probe_health(client: &reqwest::Client, endpoint: &str) -> bool {
    client
        .get(format!("{endpoint}/health"))
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Verifies provider `id` now and stores the verdict (and a slash when it is the
/// provider's fault); marks it reached when it answered. `None` when the provider
/// is unknown, banned or has no key (config).
pub async fn verify_provider(
    registry: &Registry,
    verifier: &Verifier,
    id: &str,
) -> Option<AttestationVerdict> {
    let _permit = verifier.permits.acquire().await.ok()?;
    let entry = registry.get(id)?;
    let key = entry.info.public_key?;
    if registry.is_banned(id) {
        return None;
    }
    let client = &verifier.client;
    let verdict = match fresh_nonce() {
        Err(e) => AttestationVerdict::unverified(e, registry.unix_now()),
        Ok(nonce) => match fetch(client, &entry.info.endpoint, &nonce).await {
            Ok(doc) => {
                registry.mark_reached(&entry);
                let now = registry.unix_now();
                let found = match &verifier.collateral {
                    Some(store) => store.for_evidence(&doc.evidence, now).await,
                    None => Found::Nothing,
                };
                check_with(
                    &doc,
                    &key,
                    entry.info.tee.as_str(),
                    &entry.info.models,
                    &nonce,
                    &registry.attest_policy,
                    now,
                    &found,
                )
            }
            Err(reason) => {
                if probe_health(client, &entry.info.endpoint).await {
                    registry.mark_reached(&entry);
                }
                AttestationVerdict::unverified(reason, registry.unix_now())
            }
        },
    };
    registry.record_attestation(&entry, verdict.clone());
    Some(verdict)
}

/// One sweep: drops stale providers, slashes downtime, then verifies (at most
/// [`MAX_CONCURRENT`] at once) the providers not yet reached and those whose
/// verdict is missing or due.
pub async fn sweep(registry: &Registry, verifier: &Verifier) {
    registry.evict_stale();
    registry.slash_downtime();
    let mut due: std::collections::BTreeSet<String> = registry.unreached().into_iter().collect();
    due.extend(registry.attestation_due());
    futures::stream::iter(due)
        .for_each_concurrent(MAX_CONCURRENT, |id| async move {
            verify_provider(registry, verifier, &id).await;
        })
        .await;
}

/// Sweeps at start and then every [`SWEEP_INTERVAL`] until `cancel` fires.
pub async fn reverify_loop(registry: Arc<Registry>, verifier: Verifier, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = sweep(&registry, &verifier) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(SWEEP_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
#[path = "attestation_tests.rs"]
mod tests;
