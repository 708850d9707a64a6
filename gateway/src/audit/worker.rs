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
use super::seq;
use super::stat::{AuditFinding, ScoredToken, judge};
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

/// Audits one sample: on a TEE-verified peer when one is eligible, within the
/// price cap and the hour's spend, and can be paid ([`peer`]), else on the
/// operator's reference (also when the peer fails). A peer's failing score slashes
/// only once confirmed: by the reference when one is configured, else by a second
/// peer of another owner. Sampled answers also feed the provider's sequential
/// statistic ([`super::seq`]).
pub async fn audit(
    a: &Audits,
    registry: &Registry,
    client: &reqwest::Client,
    s: &Sample,
    funding: Option<&Funding>,
) -> Verdict {
    let cfg = &a.config;
    let reference = cfg.reference.trim_end_matches('/');
    let peer = funding.and_then(|f| choose_peer(a, registry, f, s, &[]));
    if peer.is_none() && reference.is_empty() {
        return Verdict::Skipped("no auditor configured".into());
    }
    if peer.is_none() && reference == s.endpoint.trim_end_matches('/') {
        return Verdict::Skipped("the auditor is the audited provider".into());
    }
    let case = match sample::case(s, cfg.max_request_bytes, cfg.max_answer_bytes) {
        Ok(c) => c,
        Err(why) => return Verdict::Skipped(why),
    };
    let mut scored = None;
    if let (Some(p), Some(f)) = (&peer, funding) {
        match score_on(a, client, Some((p, f)), s, &case).await {
            Ok(t) => scored = Some((t, p.info.id.clone())),
            Err(e) if reference.is_empty() => {
                // No reference: one other peer (another owner) is asked, so a
                // peer that drops audit traffic cannot turn audits off.
                tracing::info!(peer = %p.info.id, error = %e, "audit: the peer did not score; another is asked");
                let Some(q) = choose_peer(a, registry, f, s, &[p.info.id.as_str()]) else {
                    return Verdict::Error(e);
                };
                match score_on(a, client, Some((&q, f)), s, &case).await {
                    Ok(t) => scored = Some((t, q.info.id.clone())),
                    Err(e) => return Verdict::Error(e),
                }
            }
            Err(e) => {
                tracing::info!(peer = %p.info.id, error = %e, "audit: the peer did not score; the reference does")
            }
        }
    }
    let (tokens, by) = match scored {
        Some(x) => x,
        None => match score_on(a, client, None, s, &case).await {
            Ok(t) => (t, REFERENCE.to_owned()),
            Err(e) => return Verdict::Error(e),
        },
    };
    let mut finding = judge(&tokens, case.temperature, &cfg.rule());
    if by != REFERENCE {
        a.counters.by_peer.fetch_add(1, Ordering::Relaxed);
        finding.detail = format!("{} (auditor: TEE-verified peer {by})", finding.detail);
    }
    if finding.tokens < cfg.min_tokens {
        return Verdict::Skipped(finding.detail);
    }
    // What the sequential statistic is fed: the reference's scoring when there
    // is a reference, else the peers'.
    let mut trusted = (by == REFERENCE || reference.is_empty()).then(|| (tokens, by.clone()));
    if finding.mismatch && by != REFERENCE {
        match confirm(a, registry, client, funding, &by, s, &case).await {
            Confirmation::Agreed(who, t) => {
                finding.detail = format!("{}; confirmed by {who}", finding.detail);
                if who == REFERENCE {
                    trusted = Some((t, who));
                }
            }
            Confirmation::Disputed(who, t, theirs) => {
                a.counters.disputed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(provider = %s.provider, request_id = %s.request_id, peer = %by,
                    confirmer = %who, "audit: a peer's failing score was not confirmed; no slash");
                // Two peers disagree: neither scoring feeds the statistic.
                trusted = (who == REFERENCE).then_some((t, who));
                finding = theirs;
                finding.mismatch = false;
            }
            Confirmation::Unavailable(e) => {
                a.counters.disputed.fetch_add(1, Ordering::Relaxed);
                return Verdict::Error(format!(
                    "a peer's failing score could not be confirmed: {e}"
                ));
            }
        }
    }
    if finding.mismatch {
        let slash = a.flags.record(registry, s, &finding);
        return Verdict::Failed(finding, slash);
    }
    if let Some((t, who)) = trusted
        && let Some(v) = sequential(
            a,
            registry,
            funding,
            s,
            case.temperature,
            &t,
            &who,
            &finding,
        )
    {
        return v;
    }
    Verdict::Passed(finding)
}

/// Who scored, in the sequential evidence, when the reference did.
const REFERENCE: &str = "reference";

/// The peer to ask: one drawn at random among the eligible within the price cap,
/// while the hour's peer spend is under its limit; `None`: the reference.
fn choose_peer(
    a: &Audits,
    registry: &Registry,
    f: &Funding,
    s: &Sample,
    exclude: &[&str],
) -> Option<Arc<ProviderEntry>> {
    let cfg = &a.config;
    let limit = cfg.spend_limit().ok().flatten();
    if limit.is_some_and(|l| a.spend.spent() >= l) {
        return None;
    }
    let configured = cfg.price_cap().ok().flatten();
    let cap = peer::price_cap(registry, &cfg.reference, &s.model, &f.rates, configured);
    peer::draw(
        registry,
        &f.book,
        &a.flags,
        s,
        &f.rates,
        cap,
        exclude,
        super::rand_seed(),
    )
}

/// A second opinion on a peer's failing score.
enum Confirmation {
    /// (who, their scoring)
    Agreed(String, Vec<ScoredToken>),
    /// (who, their scoring, their finding)
    Disputed(String, Vec<ScoredToken>, AuditFinding),
    Unavailable(String),
}

/// Re-scores a sample `first` (a peer) failed: on the reference when configured,
/// else on another eligible peer (another owner).
async fn confirm(
    a: &Audits,
    registry: &Registry,
    client: &reqwest::Client,
    funding: Option<&Funding>,
    first: &str,
    s: &Sample,
    case: &sample::Case,
) -> Confirmation {
    let (who, scored) = if a.config.reference.is_empty() {
        let Some(f) = funding else {
            return Confirmation::Unavailable("no second auditor".into());
        };
        let Some(p) = choose_peer(a, registry, f, s, &[first]) else {
            return Confirmation::Unavailable(
                "no reference and no second eligible peer to confirm it".into(),
            );
        };
        a.counters.by_peer.fetch_add(1, Ordering::Relaxed);
        (
            p.info.id.clone(),
            score_on(a, client, Some((&p, f)), s, case).await,
        )
    } else {
        (
            REFERENCE.to_owned(),
            score_on(a, client, None, s, case).await,
        )
    };
    let tokens = match scored {
        Ok(t) => t,
        Err(e) => return Confirmation::Unavailable(e),
    };
    let f = judge(&tokens, case.temperature, &a.config.rule());
    if f.mismatch {
        Confirmation::Agreed(who, tokens)
    } else {
        Confirmation::Disputed(who.clone(), tokens, f)
    }
}

/// Feeds a sampled answer's score to its provider's running statistic; a crossing
/// slashes (once per offence) when its evidence is trusted: the reference's, or,
/// without a reference, the scorings of at least two owners' peers.
#[expect(clippy::too_many_arguments, reason = "the audit's whole context")]
fn sequential(
    a: &Audits,
    registry: &Registry,
    funding: Option<&Funding>,
    s: &Sample,
    temperature: f64,
    tokens: &[ScoredToken],
    by: &str,
    finding: &AuditFinding,
) -> Option<Verdict> {
    let cfg = &a.config;
    let rule = cfg.seq_rule();
    let z = seq::answer_score(tokens, temperature, rule.cap, cfg.min_tokens)?;
    let key = (
        s.provider.clone(),
        s.model.clone(),
        s.weight_sha256.clone().unwrap_or_default(),
    );
    // Who vouches: peers bonded by one owner are one voice.
    let owner = match funding.and_then(|f| f.book.bond_of_provider(by)) {
        Some(b) if by != REFERENCE => format!("owner {}", b.owner),
        _ => by.to_owned(),
    };
    let scored = seq::Scored {
        request_id: s.request_id.clone(),
        z,
        auditor: by.to_owned(),
        owner,
    };
    let crossed = a
        .sequences
        .add(key.clone(), &rule, scored, registry.unix_now())?;
    if by != REFERENCE && crossed.auditors() < 2 {
        a.sequences.reopen(&key);
        return None;
    }
    a.counters.sequential.fetch_add(1, Ordering::Relaxed);
    let mut f = finding.clone();
    f.mismatch = true;
    f.detail = crossed.describe(&rule);
    let slash = a.flags.record_with(registry, s, &f, &f.detail);
    Some(Verdict::Failed(f, slash))
}

/// Scores the sample's prompt + answer teacher-forced on a peer (paid by its
/// funding) or, with `None`, on the reference.
async fn score_on(
    a: &Audits,
    client: &reqwest::Client,
    peer: Option<(&Arc<ProviderEntry>, &Funding)>,
    s: &Sample,
    case: &sample::Case,
) -> Result<Vec<ScoredToken>, String> {
    let cfg = &a.config;
    let base = match peer {
        Some((p, _)) => p.info.endpoint.trim_end_matches('/'),
        None => cfg.reference.trim_end_matches('/'),
    };
    if base == s.endpoint.trim_end_matches('/') {
        return Err("the auditor is the audited provider".into());
    }
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let prompt = match &case.prompt {
        Prompt::Text(p) => p.clone(),
        Prompt::Chat(messages) => {
            // `/tokenize` is free on a provider: rendering needs no payment.
            let body = json!({"model": s.model, "messages": messages});
            let url = format!("{base}/tokenize");
            let v = score::post_json(client, &url, &body, timeout, cfg.max_auditor_bytes).await?;
            match v.get("text").and_then(|t| t.as_str()) {
                Some(t) => t.to_owned(),
                None => return Err(format!("{url} answered no rendered `text`")),
            }
        }
    };
    let text = format!("{prompt}{}", case.answer);
    let body = score::scoring_body(&s.model, &text, cfg.top_logprobs);
    let resp = match peer {
        Some((p, f)) => scored_by_peer(a, client, f, p, s, &body).await?,
        None => {
            let url = format!("{base}/v1/completions");
            score::post_json(client, &url, &body, timeout, cfg.max_auditor_bytes).await?
        }
    };
    score::scored_tokens(&resp, prompt.chars().count())
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
    let limit = cfg.spend_limit().ok().flatten();
    let now = registry_now(f);
    let paid = f.hold(p, &s.model, &bytes, now, &a.spend, limit).await?;
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
