//! The audits' background task: takes samples off the bounded queue, scores at most
//! `max_concurrent` at a time on the auditor, judges them and acts on the verdict.
//! Nothing here runs on a request's path.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Audits;
use super::peer::{self, Funding};
use super::sample::{self, Prompt, Sample};
use super::score;
use super::stat::{AuditFinding, judge};
use crate::money::slashing::Slash;
use crate::providers::entry::ProviderEntry;
use crate::providers::registry::Registry;

/// What one audit came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not auditable (never the provider's fault).
    Skipped(String),
    /// The auditor failed (never the provider's fault).
    Error(String),
    Passed(AuditFinding),
    /// Implausible under the registered model; the slash when this offence had none.
    Failed(AuditFinding, Option<Slash>),
}

/// Runs until `cancel` fires or the queue closes; `funding` pays TEE-verified peer
/// auditors (none: only the reference audits).
pub async fn run(
    audits: Audits,
    registry: Arc<Registry>,
    funding: Option<Funding>,
    cancel: CancellationToken,
) {
    let Some(mut rx) = audits.take_receiver() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_millis(audits.config.timeout_ms))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "audits: no HTTP client; audits are off");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(audits.config.max_concurrent.max(1)));
    let mut running = JoinSet::new();
    loop {
        let sample = tokio::select! {
            _ = cancel.cancelled() => break,
            s = rx.recv() => match s {
                Some(s) => s,
                None => break,
            },
        };
        // Waiting for a slot here lets the queue fill, so further samples drop.
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        while running.try_join_next().is_some() {}
        let (a, r, c) = (audits.clone(), registry.clone(), client.clone());
        let f = funding.clone();
        running.spawn(async move {
            let _slot = permit;
            let verdict = audit(&a, &r, &c, &sample, f.as_ref()).await;
            count(&a, &sample, &verdict);
        });
    }
    running.shutdown().await;
}

fn count(a: &Audits, s: &Sample, v: &Verdict) {
    let c = &a.counters;
    match v {
        Verdict::Skipped(why) => {
            c.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(provider = %s.provider, request_id = %s.request_id, why = %why, "audit skipped");
        }
        Verdict::Error(e) => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(provider = %s.provider, request_id = %s.request_id, error = %e, "audit failed on the auditor's side");
        }
        Verdict::Passed(f) => {
            c.passed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(provider = %s.provider, request_id = %s.request_id, detail = %f.detail, "audit passed");
        }
        Verdict::Failed(f, slash) => {
            c.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(provider = %s.provider, model = %s.model, request_id = %s.request_id,
                detail = %f.detail, slashed = slash.is_some(), "audit: answer implausible under the registered model");
        }
    }
}

/// Audits one sample: on a TEE-verified peer when one is eligible and can be paid
/// ([`peer`]), else on the operator's reference.
pub async fn audit(
    a: &Audits,
    registry: &Registry,
    client: &reqwest::Client,
    s: &Sample,
    funding: Option<&Funding>,
) -> Verdict {
    let cfg = &a.config;
    let peer = funding.and_then(|f| peer::pick(registry, &f.book, &a.flags, s, super::rand_seed()));
    let reference = cfg.reference.trim_end_matches('/');
    let base = match &peer {
        Some(p) => p.info.endpoint.trim_end_matches('/'),
        None => reference,
    };
    if base.is_empty() {
        return Verdict::Skipped("no auditor configured".into());
    }
    if base == s.endpoint.trim_end_matches('/') {
        return Verdict::Skipped("the auditor is the audited provider".into());
    }
    let case = match sample::case(s, cfg.max_request_bytes, cfg.max_answer_bytes) {
        Ok(c) => c,
        Err(why) => return Verdict::Skipped(why),
    };
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let prompt = match case.prompt {
        Prompt::Text(p) => p,
        Prompt::Chat(messages) => {
            // `/tokenize` is free on a provider: rendering needs no payment.
            let body = json!({"model": s.model, "messages": messages});
            let url = format!("{base}/tokenize");
            match score::post_json(client, &url, &body, timeout, cfg.max_auditor_bytes).await {
                Ok(v) => match v.get("text").and_then(|t| t.as_str()) {
                    Some(t) => t.to_owned(),
                    None => return Verdict::Error(format!("{url} answered no rendered `text`")),
                },
                Err(e) => return Verdict::Error(e),
            }
        }
    };
    let text = format!("{prompt}{}", case.answer);
    let body = score::scoring_body(&s.model, &text, cfg.top_logprobs);
    let resp = match (&peer, funding) {
        (Some(p), Some(f)) => scored_by_peer(a, client, f, p, s, &body).await,
        _ => {
            let url = format!("{reference}/v1/completions");
            score::post_json(client, &url, &body, timeout, cfg.max_auditor_bytes).await
        }
    };
    let resp = match resp {
        Ok(v) => v,
        Err(e) => return Verdict::Error(e),
    };
    let tokens = match score::scored_tokens(&resp, prompt.chars().count()) {
        Ok(t) => t,
        Err(e) => return Verdict::Error(e),
    };
    let mut finding = judge(&tokens, case.temperature, &cfg.rule());
    if let Some(p) = &peer {
        a.counters.by_peer.fetch_add(1, Ordering::Relaxed);
        finding.detail = format!(
            "{} (auditor: TEE-verified peer {})",
            finding.detail, p.info.id
        );
    }
    if finding.tokens < cfg.min_tokens {
        return Verdict::Skipped(finding.detail);
    }
    if finding.mismatch {
        let slash = a.flags.record(registry, s, &finding);
        Verdict::Failed(finding, slash)
    } else {
        Verdict::Passed(finding)
    }
}

/// The scoring on a peer, paid from the operator's account.
async fn scored_by_peer(
    a: &Audits,
    client: &reqwest::Client,
    f: &Funding,
    p: &ProviderEntry,
    s: &Sample,
    body: &Value,
) -> Result<Value, String> {
    let cfg = &a.config;
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let paid = f.hold(p, &s.model, &bytes, registry_now(f)).await?;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let resp = peer::post_paid(client, p, &paid, bytes, timeout, cfg.max_auditor_bytes).await;
    let audit_id = format!("audit-{}", s.request_id);
    f.settle(
        paid,
        &p.info.id,
        &audit_id,
        resp.as_ref().ok(),
        registry_now(f),
    );
    resp
}

fn registry_now(f: &Funding) -> u64 {
    f.clock.unix()
}
