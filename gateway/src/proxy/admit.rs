//! Planning and admission: route the candidates for the model, price each for the
//! request's worst case (one that cannot be priced is skipped), then hold the most
//! expensive one the balance and the key's scope allow.

use std::sync::Arc;
use std::time::Duration;

use crate::accounts::KeyEntry;
use crate::http::error::ApiError;
use crate::money::book::{BookError, Reservation};
use crate::money::scope::ScopeRefusal;
use crate::pricing::Quote;
use crate::providers::registry::ProviderEntry;
use crate::providers::routing::{self, Filter, NoProvider, RouteRequest, Weights};
use crate::state::AppState;
use crate::verify::Bounds;

use super::{Inference, rand_seed};

/// One provider we may call, priced for this request's worst case.
pub(super) struct Priced {
    pub entry: Arc<ProviderEntry>,
    pub quote: Quote,
    pub bounds: Bounds,
    /// The worst case's cost on this provider.
    pub worst: u128,
}

/// The candidates in routing order, priced; and why others were skipped.
pub(super) struct Plan {
    pub priced: Vec<Priced>,
    pub skipped: Vec<String>,
}

/// Routes and prices the candidates of `req` (no money moves yet).
pub(super) fn plan(state: &AppState, key: &KeyEntry, req: &Inference) -> Result<Plan, ApiError> {
    check_scope(key, req)?;
    let rates = &state.rates;
    let pool = state
        .registry
        .candidates_for(&req.model, key.asset, rates, req.ext.tee);
    if !pool.iter().any(|(_, c, _)| c.serves_model) {
        return Err(ApiError::ModelNotFound(req.model.clone()));
    }
    let cfg = &state.config;
    let prefs = key.record.scope.routing.clone().unwrap_or_default();
    let weights = req
        .ext
        .weights
        .or(prefs.weights)
        .map(|w| Weights::from_f64(w[0], w[1], w[2]))
        .unwrap_or(cfg.routing.weights());
    let route_req = RouteRequest {
        model: &req.model,
        tee_required: req.ext.tee,
        strategy: req
            .ext
            .strategy
            .or(prefs.strategy)
            .unwrap_or(cfg.routing.strategy),
        weights,
        degraded_penalty: cfg.routing.penalty_ppm(),
        seed: rand_seed(),
    };
    let cands: Vec<routing::Candidate> = pool.iter().map(|(_, c, _)| c.clone()).collect();
    let order = routing::route(&cands, &route_req, &state.registry.config.stakes)
        .map_err(ApiError::NoProvider)?;
    let mut plan = Plan {
        priced: Vec::new(),
        skipped: Vec::new(),
    };
    for i in order {
        let (e, _, q) = &pool[i];
        let Some(quote) = *q else { continue };
        let context = e.info.model(&req.model).and_then(|m| m.info.max_context);
        let bounds = bounds_for(req, context, cfg.limits.default_max_tokens);
        match quote.cost(bounds.worst_tokens()) {
            Ok(worst) => plan.priced.push(Priced {
                entry: e.clone(),
                quote,
                bounds,
                worst,
            }),
            Err(err) => plan.skipped.push(format!(
                "{}: cannot price {} tokens: {err}",
                e.info.id,
                bounds.worst_tokens()
            )),
        }
    }
    Ok(plan)
}

/// Holds the worst case of the most expensive candidate we may try; when the
/// balance or the scope refuses it, drops the candidates it refuses and tries the
/// rest. Then the key's rate limits. Returns the candidates to try, in order.
pub(super) async fn admit(
    state: &AppState,
    key: &KeyEntry,
    req: &Inference,
    mut plan: Plan,
) -> Result<(Vec<Priced>, Reservation), ApiError> {
    state.lease(&key.record.account).await?;
    let max_attempts = state.config.upstream.max_attempts;
    let reservation = match reserve(state, key, max_attempts, &mut plan)? {
        (Some(r), _) => r,
        (None, refusal) => return Err(refused(req, refusal, &plan.skipped)),
    };
    let mut priced = plan.priced;
    priced.truncate(max_attempts);
    if !plan.skipped.is_empty() {
        tracing::info!(model = %req.model, skipped = ?plan.skipped, "candidates skipped at admission");
    }
    let worst_tokens = priced
        .iter()
        .map(|p| p.bounds.worst_tokens())
        .max()
        .unwrap_or(req.prompt_estimate);
    if let Err(limited) = key.limiters.check(worst_tokens) {
        state.book.release(reservation);
        return Err(rate_limited(limited));
    }
    Ok((priced, reservation))
}

/// The reservation loop: a reservation, or none with the last refusal.
fn reserve(
    state: &AppState,
    key: &KeyEntry,
    max_attempts: usize,
    plan: &mut Plan,
) -> Result<(Option<Reservation>, Option<ApiError>), ApiError> {
    let mut refusal: Option<ApiError> = None;
    loop {
        let priced = &mut plan.priced;
        let window = &priced[..priced.len().min(max_attempts)];
        let Some(top) = window.iter().max_by_key(|p| p.worst) else {
            return Ok((None, refusal));
        };
        let (amount, top_bounds) = (top.worst, top.bounds);
        let room = match state.book.reserve(
            &key.record.account,
            key.asset,
            amount,
            Some((&key.record.id, &key.limits)),
            state.clock.unix(),
        ) {
            Ok(r) => return Ok((Some(r), None)),
            Err(e @ BookError::Insufficient { available, .. }) => {
                refusal = Some(payment_error(e, &top_bounds));
                (available, false)
            }
            Err(BookError::Scope(r)) => {
                // Only a limit on the amount can admit a cheaper candidate.
                let Some(room) = scope_room(&r) else {
                    return Err(payment_error(BookError::Scope(r), &top_bounds));
                };
                refusal = Some(payment_error(BookError::Scope(r), &top_bounds));
                (room, true)
            }
            Err(e) => return Err(payment_error(e, &top_bounds)),
        };
        let (limit, by_scope) = room;
        for p in priced.iter().filter(|p| p.worst > limit) {
            let (id, worst) = (&p.entry.info.id, p.worst);
            plan.skipped.push(if by_scope {
                format!("{id}: may cost up to {worst}, over what the key's scope allows ({limit})")
            } else {
                format!("{id}: may cost up to {worst} and {limit} are available")
            });
        }
        priced.retain(|p| p.worst <= limit);
    }
}

/// The error when no candidate could be held.
fn refused(req: &Inference, refusal: Option<ApiError>, skipped: &[String]) -> ApiError {
    match refusal {
        Some(ApiError::PaymentRequired(m)) => ApiError::PaymentRequired(with_skips(m, skipped)),
        Some(other) => other,
        None if !skipped.is_empty() => ApiError::bad_request(with_skips(
            format!(
                "cannot price this request on any provider of '{}'",
                req.model
            ),
            skipped,
        )),
        None => ApiError::NoProvider(NoProvider {
            model: req.model.clone(),
            filter: Filter::Model,
            removed: 0,
        }),
    }
}

/// The bounds of a request on a provider that declared `context` for the model.
pub(super) fn bounds_for(req: &Inference, context: Option<u32>, default_max_tokens: u32) -> Bounds {
    let (max_new, hard_cap) = if !req.generates {
        (0, true)
    } else {
        match (req.max_tokens, context) {
            (Some(n), _) => (u64::from(n), true),
            (None, Some(c)) => (u64::from(c), true),
            (None, None) => (u64::from(default_max_tokens), false),
        }
    };
    Bounds {
        prompt_estimate: req.prompt_estimate,
        choices: if req.generates { req.choices.max(1) } else { 1 },
        max_new,
        hard_cap,
        generates: req.generates,
    }
}

/// The most a request may cost under a scope that refused a larger amount, when the
/// refusal was about the amount (`None`: no amount would do).
pub(super) fn scope_room(refusal: &ScopeRefusal) -> Option<u128> {
    match refusal {
        ScopeRefusal::Transaction { worst, over, .. }
        | ScopeRefusal::Daily { worst, over, .. }
        | ScopeRefusal::AncestorDaily { worst, over, .. } => Some(worst.saturating_sub(*over)),
        _ => None,
    }
}

/// At most this many skipped candidates are named in an error.
const SKIPS_SHOWN: usize = 5;

fn with_skips(message: String, skipped: &[String]) -> String {
    if skipped.is_empty() {
        return message;
    }
    let shown: Vec<&str> = skipped
        .iter()
        .take(SKIPS_SHOWN)
        .map(String::as_str)
        .collect();
    let more = skipped.len().saturating_sub(SKIPS_SHOWN);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{message} (providers skipped: {}{tail})", shown.join("; "))
}

fn check_scope(key: &KeyEntry, req: &Inference) -> Result<(), ApiError> {
    let scope = &key.record.scope;
    if let Some(ops) = &scope.allowed_operations
        && !ops.contains(&req.op)
    {
        return Err(ApiError::Forbidden(format!(
            "this key may not use the {} operation",
            req.op.as_str()
        )));
    }
    if let Some(models) = &scope.allowed_models
        && !models.iter().any(|m| m == &req.model)
    {
        return Err(ApiError::Forbidden(format!(
            "this key may not use model '{}'",
            req.model
        )));
    }
    Ok(())
}

fn rate_limited(l: crate::ratelimit::Limited) -> ApiError {
    use crate::ratelimit::Limited;
    match l {
        Limited::Requests { retry_after } => ApiError::RateLimited {
            message:
                "requests-per-minute limit of this key reached; retry after the Retry-After delay"
                    .into(),
            retry_after,
        },
        Limited::Tokens { retry_after } => ApiError::RateLimited {
            message:
                "tokens-per-minute limit of this key reached; retry after the Retry-After delay"
                    .into(),
            retry_after,
        },
        Limited::TooLarge { limit } => ApiError::RateLimited {
            message: format!(
                "this request's worst case exceeds the key's {limit} tokens per minute; lower max_tokens"
            ),
            retry_after: Duration::from_secs(60),
        },
    }
}

fn payment_error(e: BookError, b: &Bounds) -> ApiError {
    let (prompt, completion, worst) = (b.prompt_estimate, b.completion_cap(), b.worst_tokens());
    let choices = if b.choices > 1 {
        format!(" for {} choices", b.choices)
    } else {
        String::new()
    };
    match e {
        BookError::Insufficient {
            asset,
            needed,
            available,
        } => ApiError::PaymentRequired(format!(
            "insufficient balance: this request may cost up to {needed} {asset} base units \
             (about {prompt} prompt + {completion} completion tokens{choices} = {worst}), and {available} are available; \
             lower max_tokens or add funds"
        )),
        BookError::UnknownAccount(a) => {
            ApiError::PaymentRequired(format!("account {a} has no balance in its asset"))
        }
        BookError::Scope(refusal) => ApiError::PaymentRequired(format!(
            "delegation scope refuses this request ({prompt} prompt + {completion} completion tokens{choices} at most): {refusal}"
        )),
        other => ApiError::Internal(other.to_string()),
    }
}
