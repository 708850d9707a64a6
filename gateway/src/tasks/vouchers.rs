//! Vouchers travel to providers in the background, never on a client's path.
//!
//! Only durable channel states are signed (the committer has written them), so a
//! crash can never leave a signed nonce that the store does not know: after a
//! restart the channel resumes at or above every nonce ever signed, and no nonce is
//! signed twice with different content. Each round signs the due states
//! (`(channel, nonce, cumulative spent)` with the gateway's payer key), posts them
//! to each provider's `POST /v1/channels/vouchers` in one batch, checks the
//! countersignatures and stores them. At start, [`reconcile`] asks each provider
//! for the latest voucher it holds and adopts any higher state. Both requests carry
//! `x-tenzro-payer-auth` (`tenzro_attest::payer`), signed with the payer key: a
//! provider takes vouchers from, and shows its channels to, its trusted payer only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenzro_attest::ProviderKey;
use tenzro_attest::payer::{PAYER_AUTH_HEADER, PaidRequest};
use tenzro_attest::voucher::{Voucher, VoucherBody};
use tokio_util::sync::CancellationToken;

use crate::money::book::{Book, DueVoucher};
use crate::providers::registry::Registry;
use crate::store::Store;

/// Where a provider takes voucher batches.
const VOUCHERS_PATH: &str = "/v1/channels/vouchers";

#[derive(Serialize)]
struct Batch<'a> {
    vouchers: &'a [Voucher],
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    vouchers: Vec<Voucher>,
    #[serde(default)]
    rejected: Vec<Rejected>,
}

#[derive(Deserialize, Debug)]
struct Rejected {
    channel_id: String,
    nonce: u64,
    reason: String,
}

/// Everything the voucher rounds need.
#[derive(Clone)]
pub struct Courier {
    pub book: Arc<Book>,
    pub store: Store,
    pub registry: Arc<Registry>,
    pub client: reqwest::Client,
    pub key: Arc<ProviderKey>,
}

impl Courier {
    pub fn sign(&self, d: &DueVoucher) -> Voucher {
        VoucherBody {
            channel_id: d.channel.clone(),
            nonce: d.nonce,
            cumulative_spent: d.spent,
            asset: d.asset.as_str().to_owned(),
        }
        .sign(&self.key)
    }

    /// The `x-tenzro-payer-auth` value of one request to a provider, signed now.
    fn authorize(
        &self,
        method: &str,
        path_and_query: &str,
        channel_id: &str,
        body: &[u8],
    ) -> String {
        PaidRequest {
            method,
            path_and_query,
            channel_id,
            body,
        }
        .sign(&self.key, crate::clock::unix_now())
    }

    /// One round: signs and sends what is due; returns how many were countersigned.
    pub async fn round(&self, checkpoint: bool) -> usize {
        let due = self.book.due_vouchers(checkpoint);
        if due.is_empty() {
            return 0;
        }
        let mut by_provider: BTreeMap<String, Vec<Voucher>> = BTreeMap::new();
        for d in &due {
            by_provider
                .entry(d.provider.clone())
                .or_default()
                .push(self.sign(d));
        }
        let mut done = 0;
        for (provider, vouchers) in by_provider {
            let Some(entry) = self.registry.get(&provider) else {
                tracing::debug!(%provider, "provider gone; its vouchers wait");
                continue;
            };
            let url = format!("{}{VOUCHERS_PATH}", entry.info.endpoint);
            let body = match serde_json::to_vec(&Batch {
                vouchers: &vouchers,
            }) {
                Ok(body) => body,
                Err(e) => {
                    tracing::error!(%provider, error = %e, "encoding a voucher batch");
                    continue;
                }
            };
            // The provider accepts vouchers only from its trusted payer: sign the
            // batch (no channel: it names many).
            let auth = self.authorize("POST", VOUCHERS_PATH, "", &body);
            let sent = self
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(PAYER_AUTH_HEADER, auth)
                .body(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let answer = match sent {
                Ok(r) if r.status().is_success() => r.json::<Answer>().await,
                Ok(r) => {
                    tracing::warn!(%provider, status = r.status().as_u16(), "provider refused a voucher batch");
                    continue;
                }
                Err(e) => Err(e),
            };
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(%provider, error = %e, "sending vouchers failed; retrying next round");
                    continue;
                }
            };
            for r in answer.rejected {
                tracing::warn!(%provider, channel = %r.channel_id, nonce = r.nonce, reason = %r.reason, "provider rejected a voucher");
            }
            let payer = self.key.public_key();
            for v in answer.vouchers {
                if let Err(e) = v.verify(Some(&payer), entry.info.public_key.as_ref()) {
                    tracing::warn!(%provider, error = %e, "bad countersignature; ignored");
                    continue;
                }
                if let Err(e) = self.store.put_voucher(&v).await {
                    tracing::error!(error = %e, "storing a countersigned voucher failed");
                    continue;
                }
                self.book.vouchered(&v.channel_id.clone(), v.nonce, Some(v));
                done += 1;
            }
        }
        done
    }

    /// Runs rounds until `cancel`: every `interval` for ended requests, and a
    /// checkpoint of every changed channel each `checkpoint` interval.
    pub async fn run(self, interval: Duration, checkpoint: Duration, cancel: CancellationToken) {
        let every = (checkpoint.as_millis() / interval.as_millis().max(1)).max(1);
        let mut ticks = 0u128;
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = cancel.cancelled() => break,
            }
            ticks += 1;
            self.round(ticks.is_multiple_of(every)).await;
        }
    }

    /// After a restart: adopts any provider-held voucher above the book's state.
    pub async fn reconcile(&self) {
        let payer = self.key.public_key();
        for entry in self.registry.all() {
            for view in self.book.channels_of_provider(&entry.info.id) {
                let path = format!("/v1/channels/{}/voucher", view.id);
                let url = format!("{}{path}", entry.info.endpoint);
                // The provider shows a channel's voucher only to its payer.
                let auth = self.authorize("GET", &path, &view.id, b"");
                let Ok(resp) = self
                    .client
                    .get(&url)
                    .header(PAYER_AUTH_HEADER, auth)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                else {
                    continue;
                };
                if !resp.status().is_success() {
                    continue;
                }
                let Ok(v) = resp.json::<Voucher>().await else {
                    continue;
                };
                if v.channel_id != view.id
                    || v.verify(Some(&payer), entry.info.public_key.as_ref())
                        .is_err()
                {
                    tracing::warn!(channel = %view.id, "provider's voucher does not verify; ignored");
                    continue;
                }
                match self.book.reconcile(&view.id, &v) {
                    Ok(0) => {}
                    Ok(extra) => {
                        tracing::warn!(channel = %view.id, extra, "adopted a higher state from the provider's voucher")
                    }
                    Err(e) => tracing::warn!(channel = %view.id, error = %e, "reconciling"),
                }
                if let Err(e) = self.store.put_voucher(&v).await {
                    tracing::warn!(error = %e, "storing a reconciled voucher");
                }
            }
        }
    }
}
