//! A TEE-verified peer as the auditor (issue 16: "a second provider that is
//! TEE-verified for the same weight digest, or the gateway operator's own reference
//! provider").
//!
//! Who may audit a sample ([`pick`]): an admitted provider other than the audited
//! one (another id and endpoint, and not bonded by the same owner account: a
//! provider never vouches for its operator's other keys), whose attestation verdict
//! is trusted and fresh now (the TEE ran the attested code, which loaded the
//! weights whose digest it declared), that declares the sample's model with the
//! same weight digest, is routable (reached, healthy, not unbonding) and not itself
//! flagged by an audit. One is drawn at random among them; with none, the operator's
//! reference (`[audit] reference`) scores, as before.
//!
//! How the peer is paid ([`Funding`]): a provider attached to a gateway serves only
//! requests its payer signed for an open channel, and a scoring request costs it
//! the prefill of prompt + answer. The gateway pays it like any request, from the
//! operator's account `[audit] account`: it holds the worst case (every byte a
//! token, at the peer's TEE price) on that account, binds the hold to its channel
//! with the peer, signs the request as the payer (`tenzro_attest::payer`), and
//! settles the prompt tokens the peer reports (at most the hold). The scoring then
//! flows to the peer through the channel's vouchers like any other earning. No
//! account configured: peers are never asked (their scoring would be unpaid work
//! they are right to refuse), only the reference. A peer that fails or refuses is
//! an auditor error, never a verdict on the audited provider.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tenzro_attest::ProviderKey;
use tenzro_attest::payer::{PAYER_AUTH_HEADER, PaidRequest};

use super::flags::Flags;
use super::sample::Sample;
use super::spend::Spend;
use crate::money::book::{Book, Charge};
use crate::pricing::{Asset, Rates};
use crate::providers::entry::ProviderEntry;
use crate::providers::registry::Registry;
use crate::store::Store;
use crate::store::lease::Leases;

/// The scoring path on a provider.
const SCORING_PATH: &str = "/v1/completions";
/// Tokens allowed beyond one per byte of the scored text (special tokens).
const TOKEN_SLACK: u64 = 64;

/// Draws a TEE-verified peer to audit `s` (see the module's rules); `None`: the
/// reference audits. `seed` picks among the eligible.
pub fn pick(
    registry: &Registry,
    book: &Book,
    flags: &Flags,
    s: &Sample,
    seed: u64,
) -> Option<Arc<ProviderEntry>> {
    let eligible = eligible(registry, book, flags, s, &[]);
    let i = usize::try_from(seed % eligible.len().max(1) as u64).unwrap_or(0);
    eligible.get(i).cloned()
}

/// An eligible peer drawn by `seed` among those whose TEE price for `s`'s model
/// is at most `cap` (TNZO base units per token; `None`: no cap), not one of
/// `exclude` nor bonded by their owners. At random, not the cheapest: a peer that
/// undercuts every other would otherwise audit all of a model's samples (and
/// could pass its accomplices' answers). `None`: no peer, the reference audits.
#[expect(clippy::too_many_arguments, reason = "the pick's whole context")]
pub fn draw(
    registry: &Registry,
    book: &Book,
    flags: &Flags,
    s: &Sample,
    rates: &Rates,
    cap: Option<u128>,
    exclude: &[&str],
    seed: u64,
) -> Option<Arc<ProviderEntry>> {
    let within: Vec<Arc<ProviderEntry>> = eligible(registry, book, flags, s, exclude)
        .into_iter()
        .filter(|e| {
            per_million(e, &s.model, rates)
                .is_some_and(|p| cap.is_none_or(|c| p <= c.saturating_mul(1_000_000)))
        })
        .collect();
    let i = usize::try_from(seed % within.len().max(1) as u64).unwrap_or(0);
    within.get(i).cloned()
}

/// The price cap for peers auditing `model`: the lower of `configured` and the
/// reference's own TEE price when the reference (`reference`, a base URL) is one
/// of the operator's configured providers serving the model (TNZO base units per
/// token). A registered provider claiming the reference's endpoint does not set
/// it (endpoints are not unique: a tiny price there would price out every peer).
pub fn price_cap(
    registry: &Registry,
    reference: &str,
    model: &str,
    rates: &Rates,
    configured: Option<u128>,
) -> Option<u128> {
    let reference = reference.trim_end_matches('/');
    let own = registry
        .all()
        .into_iter()
        .filter(|e| {
            e.info.from_config
                && !reference.is_empty()
                && e.info.endpoint.trim_end_matches('/') == reference
        })
        .filter_map(|e| per_million(&e, model, rates))
        .min()
        .map(|p| p / 1_000_000);
    match (configured, own) {
        (Some(c), Some(o)) => Some(c.min(o)),
        (c, o) => c.or(o),
    }
}

/// A provider's TEE price for `model`, per million tokens.
fn per_million(e: &ProviderEntry, model: &str, rates: &Rates) -> Option<u128> {
    let m = e.info.model(model)?;
    let q = e.quote_tee(m, Asset::Tnzo, rates, true).ok()?;
    q.cost(1_000_000).ok()
}

/// Every peer that may audit `s` (see the module's rules), but those in `exclude`
/// and those bonded by their owners.
fn eligible(
    registry: &Registry,
    book: &Book,
    flags: &Flags,
    s: &Sample,
    exclude: &[&str],
) -> Vec<Arc<ProviderEntry>> {
    let Some(digest) = s.weight_sha256.as_deref() else {
        return Vec::new();
    };
    let owner = |id: &str| book.bond_of_provider(id).map(|b| b.owner);
    let audited_owner = owner(&s.provider);
    let excluded_owners: Vec<_> = exclude.iter().filter_map(|id| owner(id)).collect();
    let endpoint = s.endpoint.trim_end_matches('/');
    registry
        .all()
        .into_iter()
        .filter(|e| e.info.id != s.provider && e.info.endpoint.trim_end_matches('/') != endpoint)
        .filter(|e| !exclude.contains(&e.info.id.as_str()))
        .filter(|e| {
            e.info
                .model(&s.model)
                .and_then(|m| m.info.weight_sha256.as_deref())
                .is_some_and(|d| d.eq_ignore_ascii_case(digest))
        })
        .filter(|e| registry.tee_verified(e) && registry.routable(e))
        .filter(|e| {
            // The kind its trusted verdict was verified as.
            let verified = registry
                .attestation(&e.info.id)
                .and_then(|a| a.tee_kind.as_deref()?.parse().ok());
            verified.is_some_and(|k| code_pinned(&registry.attest_policy, k))
        })
        .filter(|e| !flags.is_flagged(&e.info.id))
        .filter(|e| {
            let o = owner(&e.info.id);
            (audited_owner.is_none() || o != audited_owner)
                && o.as_ref().is_none_or(|o| !excluded_owners.contains(o))
        })
        .collect()
}

/// Whether the policy pins the code a verified `tee` runs (TDX `mrtd`, SEV-SNP
/// `measurements`): a verdict without that proves genuine hardware, not honest
/// software, and a peer running anything could score honest providers into a
/// slash. GPU evidence alone pins no guest code.
pub fn code_pinned(policy: &tenzro_attest::Policy, tee: tenzro_attest::TeeKind) -> bool {
    use tenzro_attest::TeeKind;
    match tee {
        TeeKind::Tdx => !policy.tdx.mrtd.is_empty(),
        TeeKind::SevSnp => !policy.sev_snp.measurements.is_empty(),
        TeeKind::NvidiaCc | TeeKind::None => false,
    }
}

/// What paying a peer auditor needs (built by the gateway at start).
#[derive(Clone)]
pub struct Funding {
    /// The operator's account the scoring is paid from (`[audit] account`).
    pub account: String,
    pub book: Arc<Book>,
    pub store: Store,
    pub leases: Arc<Leases>,
    pub payer_key: Arc<ProviderKey>,
    pub rates: Arc<Rates>,
    pub clock: crate::clock::SharedClock,
}

/// A paid scoring call's hold, bound to the peer's channel (released when dropped
/// unsettled).
pub struct Paid {
    book: Arc<Book>,
    reservation: Option<crate::money::book::Reservation>,
    quote: crate::pricing::Quote,
    bound_tokens: u64,
    /// The hold counted against the hour's peer spend, and when.
    spend: Arc<Spend>,
    committed: u128,
    at: u64,
    pub channel: String,
    pub payer_auth: String,
}

impl Funding {
    /// Holds the scoring's worst case on the operator's account and binds it to
    /// the peer's channel; `body` is the exact request body to be signed. The
    /// hold counts against the hour's `spend` up to `limit` (TNZO base units).
    /// `Err` says why the peer cannot be paid (the reference is asked instead).
    pub async fn hold(
        &self,
        peer: &ProviderEntry,
        model: &str,
        body: &[u8],
        now: u64,
        spend: &Arc<Spend>,
        limit: Option<u128>,
    ) -> Result<Paid, String> {
        let entry = peer
            .info
            .model(model)
            .ok_or_else(|| format!("{} does not serve {model}", peer.info.id))?;
        let quote = peer
            .quote_tee(entry, Asset::Tnzo, &self.rates, true)
            .map_err(|e| format!("pricing {}: {e}", peer.info.id))?;
        let bound_tokens = (body.len() as u64).saturating_add(TOKEN_SLACK);
        let amount = quote.cost(bound_tokens).map_err(|e| e.to_string())?;
        if !spend.try_commit(amount, limit, now) {
            return Err("audit.max_spend_per_hour reached: no paid peer this hour".into());
        }
        // Until `Paid` exists, a failure must give the commitment back.
        let uncommit = || spend.settle(amount, 0, now);
        self.leases
            .ensure(&self.store, &self.book, &self.account, now)
            .await
            .map_err(|e| {
                uncommit();
                format!("audit.account: {e}")
            })?;
        let r = self
            .book
            .reserve(&self.account, Asset::Tnzo, amount, None, now)
            .map_err(|e| {
                uncommit();
                format!("audit.account {}: {e}", self.account)
            })?;
        let channel = match self.book.bind(&r, &peer.info.id, now) {
            Ok(c) => c,
            Err(e) => {
                self.book.release(r);
                uncommit();
                return Err(format!("a channel with {}: {e}", peer.info.id));
            }
        };
        let payer_auth = PaidRequest {
            method: "POST",
            path_and_query: SCORING_PATH,
            channel_id: &channel,
            body,
        }
        // Real time: the provider checks it against its own clock.
        .sign(&self.payer_key, crate::clock::unix_now());
        Ok(Paid {
            book: self.book.clone(),
            reservation: Some(r),
            quote,
            bound_tokens,
            spend: spend.clone(),
            committed: amount,
            at: now,
            channel,
            payer_auth,
        })
    }

    /// Settles a scoring call: the prompt tokens the peer reports in `resp`'s
    /// usage (at most the bound), nothing when it failed (`resp` `None`).
    pub fn settle(
        &self,
        mut paid: Paid,
        peer: &str,
        request_id: &str,
        resp: Option<&Value>,
        now: u64,
    ) {
        let Some(r) = paid.reservation.take() else {
            return;
        };
        let tokens = resp
            .and_then(|v| v.pointer("/usage/prompt_tokens"))
            .and_then(Value::as_u64)
            .map(|t| t.min(paid.bound_tokens));
        let Some(tokens) = tokens else {
            self.book.release(r);
            return;
        };
        let amount = paid.quote.cost(tokens).unwrap_or(0);
        paid.spend.settle(paid.committed, amount, paid.at);
        paid.committed = 0;
        let charge = Charge {
            amount,
            provider: peer,
            request_id,
        };
        if let Err(e) = self.book.settle(r, charge, now) {
            tracing::error!(error = %e, provider = %peer, "settling an audit's scoring failed");
        }
    }
}

impl Drop for Paid {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            self.book.release(r);
        }
        if self.committed > 0 {
            self.spend.settle(self.committed, 0, self.at);
        }
    }
}

/// POSTs the paid scoring `body` to the peer; the answer as JSON (bounded).
pub async fn post_paid(
    client: &reqwest::Client,
    peer: &ProviderEntry,
    paid: &Paid,
    body: Vec<u8>,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Value, String> {
    let url = format!("{}{SCORING_PATH}", peer.info.endpoint.trim_end_matches('/'));
    let req = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-tenzro-channel", &paid.channel)
        .header(PAYER_AUTH_HEADER, &paid.payer_auth)
        .body(body);
    super::score::send_json(req, &url, timeout, max_bytes).await
}
