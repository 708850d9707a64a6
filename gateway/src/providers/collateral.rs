//! TEE collateral for the gateway's verifier: Intel's for TDX quotes from a PCCS or
//! Intel's PCS, AMD's VCEK/ASK/ARK from the KDS, cached in the collateral directory
//! and usable fully offline from files placed there.
//!
//! - TDX: one file per FMSPC, `DIR/tdx/{fmspc}.json` (the JSON dcap-qvl's samples
//!   use; `tenzro_attest::collateral::intel`). Collateral is used until its
//!   `nextUpdate` (the earliest of TCB info, QE identity and both CRLs) and fetched
//!   again `refresh_before_s` before it; when the service cannot be reached the
//!   cached file is used until its `nextUpdate`, then verification is refused with
//!   that reason. Without a PCCS URL only the files count.
//! - AMD: `DIR/amd/{product}/vcek-{hwid}-{tcb}.der` and
//!   `DIR/amd/{product}/cert_chain.pem`, fetched from the KDS by chip ID and
//!   reported TCB when missing (they do not expire for years; the chain check
//!   still checks validity times).
//!
//! Every fetch is bounded: its own client that never follows redirects, public
//! addresses only unless `allow_private_collateral`, [`FETCH_TIMEOUT`] for the
//! whole exchange, bodies read as streams up to the item's limit. Verification
//! itself stays offline (`tenzro_attest`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tenzro_attest::collateral::{amd, intel};
use tenzro_attest::evidence::Collateral;
use tenzro_attest::{Evidence, TeeKind};

use crate::providers::bounds::read_bounded;
use crate::providers::policy::AttestationSection;

/// The whole exchange of one collateral request.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// FMSPCs kept in memory (each a few tens of KiB).
pub const MAX_CACHED: usize = 256;

/// What the gateway has for one piece of evidence.
#[derive(Debug, Clone)]
pub enum Found {
    /// Nothing needed or nothing configured: the evidence is verified as it came.
    Nothing,
    /// Intel collateral and the time it stops being valid.
    Tdx {
        collateral: Box<Collateral>,
        next_update: u64,
    },
    /// The VCEK (DER) and the ASK/ARK chain (PEM) from the KDS or the cache.
    Snp { vcek: Vec<u8>, chain: Vec<u8> },
    /// Needed and not to be had: the verdict is refused with this reason.
    Missing(String),
}

/// Fetches, caches and reads collateral.
#[derive(Debug)]
pub struct CollateralStore {
    pccs_url: Option<String>,
    kds_url: Option<String>,
    dir: PathBuf,
    refresh_before: u64,
    allow_private: bool,
    client: reqwest::Client,
    tdx: Mutex<BTreeMap<String, (String, intel::Validity)>>,
}

impl CollateralStore {
    /// A store for `cfg` under `data_dir` (the directory is created when written).
    pub fn new(cfg: &AttestationSection, data_dir: &Path) -> Result<Self, reqwest::Error> {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .no_proxy();
        if !cfg.allow_private_collateral {
            b = b.dns_resolver(Arc::new(crate::providers::bounds::PublicOnly));
        }
        let url = |u: &str| (!u.is_empty()).then(|| u.trim_end_matches('/').to_owned());
        Ok(CollateralStore {
            pccs_url: url(&cfg.pccs_url),
            kds_url: url(&cfg.kds_url),
            dir: cfg.collateral_dir(data_dir),
            refresh_before: cfg.refresh_before_s,
            allow_private: cfg.allow_private_collateral,
            client: b.build()?,
            tdx: Mutex::default(),
        })
    }

    /// The collateral `evidence` needs at `now` (unix seconds).
    pub async fn for_evidence(&self, evidence: &Evidence, now: u64) -> Found {
        match evidence.kind {
            TeeKind::Tdx => match self.tdx(&evidence.report, now).await {
                Ok((collateral, next_update)) => Found::Tdx {
                    collateral: Box::new(collateral),
                    next_update,
                },
                Err(reason) => Found::Missing(reason),
            },
            TeeKind::SevSnp => match self.amd(&evidence.report).await {
                Ok((vcek, chain)) => Found::Snp { vcek, chain },
                // The provider's own VCEK still chains to AMD's pinned roots.
                Err(_) if !evidence.certs.is_empty() => Found::Nothing,
                Err(reason) => Found::Missing(reason),
            },
            TeeKind::None | TeeKind::NvidiaCc => Found::Nothing,
        }
    }

    /// Intel collateral for `quote` valid at `now`, and its `nextUpdate`.
    pub async fn tdx(&self, quote: &[u8], now: u64) -> Result<(Collateral, u64), String> {
        let key = intel::quote_key(quote)?;
        let cached = self.cached_tdx(&key.fmspc);
        if let Some((json, v)) = &cached
            && now.saturating_add(self.refresh_before) < v.next_update
        {
            return parse(json, v);
        }
        let Some(base) = &self.pccs_url else {
            return match cached {
                Some((json, v)) if now < v.next_update => parse(&json, &v),
                Some((_, v)) => Err(format!(
                    "the collateral file for FMSPC {} expired at {} ({} nextUpdate) and no PCCS is configured",
                    key.fmspc, v.next_update, v.item
                )),
                None => Err(format!(
                    "no collateral file {} and no PCCS is configured",
                    self.tdx_path(&key.fmspc).display()
                )),
            };
        };
        let fetched = self.fetch_tdx(base, &key).await.and_then(|json| {
            let v = intel::next_update(&json)?;
            if now < v.next_update {
                Ok((json, v))
            } else {
                Err(format!(
                    "{base} serves collateral whose {} expired at {}",
                    v.item, v.next_update
                ))
            }
        });
        match (fetched, cached) {
            (Ok((json, v)), _) => {
                self.keep_tdx(&key.fmspc, &json, &v);
                parse(&json, &v)
            }
            (Err(e), Some((json, v))) if now < v.next_update => {
                tracing::warn!(fmspc = %key.fmspc, error = %e, next_update = v.next_update, "collateral refresh failed; using the cached collateral");
                parse(&json, &v)
            }
            (Err(e), Some((_, v))) => Err(format!(
                "{e}; the cached collateral for FMSPC {} expired at {} ({} nextUpdate)",
                key.fmspc, v.next_update, v.item
            )),
            (Err(e), None) => Err(format!("{e}; no cached collateral for FMSPC {}", key.fmspc)),
        }
    }

    fn tdx_path(&self, fmspc: &str) -> PathBuf {
        self.dir.join("tdx").join(format!("{fmspc}.json"))
    }

    /// From memory, else from the file (an unreadable file counts as none).
    fn cached_tdx(&self, fmspc: &str) -> Option<(String, intel::Validity)> {
        if let Some(hit) = self.tdx.lock().get(fmspc) {
            return Some(hit.clone());
        }
        let json = read_small(&self.tdx_path(fmspc), 4 * intel::MAX_ITEM_BYTES).ok()?;
        let json = String::from_utf8(json).ok()?;
        let v = intel::next_update(&json).ok()?;
        self.remember(fmspc, &json, &v);
        Some((json, v))
    }

    fn remember(&self, fmspc: &str, json: &str, v: &intel::Validity) {
        {
            let mut m = self.tdx.lock();
            if m.len() >= MAX_CACHED && !m.contains_key(fmspc) {
                m.pop_first();
            }
            m.insert(fmspc.to_owned(), (json.to_owned(), v.clone()));
        }
    }

    fn keep_tdx(&self, fmspc: &str, json: &str, v: &intel::Validity) {
        self.remember(fmspc, json, v);
        if let Err(e) = write_atomic(&self.tdx_path(fmspc), json.as_bytes()) {
            tracing::warn!(fmspc, error = %e, "cannot write the collateral cache");
        }
    }

    async fn fetch_tdx(&self, base: &str, key: &intel::QuoteKey) -> Result<String, String> {
        let [pck, tcb, qe, root] = intel::pccs_paths(key);
        let max = intel::MAX_ITEM_BYTES;
        let (h, pck_crl) = self.get(&format!("{base}{pck}"), max).await?;
        let pck_crl_issuer_chain = header(&h, &["SGX-PCK-CRL-Issuer-Chain"])?;
        let (h, tcb_body) = self.get(&format!("{base}{tcb}"), max).await?;
        let tcb_info_issuer_chain =
            header(&h, &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"])?;
        let (h, qe_body) = self.get(&format!("{base}{qe}"), max).await?;
        let qe_identity_issuer_chain = header(&h, &["SGX-Enclave-Identity-Issuer-Chain"])?;
        let (_, root_ca_crl) = self.get(&format!("{base}{root}"), max).await?;
        let text = |b: Vec<u8>, what: &str| {
            String::from_utf8(b).map_err(|_| format!("the {what} answer is not UTF-8"))
        };
        intel::assemble(&intel::Fetched {
            pck_crl,
            pck_crl_issuer_chain,
            tcb_info_body: text(tcb_body, "TCB info")?,
            tcb_info_issuer_chain,
            qe_identity_body: text(qe_body, "QE identity")?,
            qe_identity_issuer_chain,
            root_ca_crl,
        })
    }

    /// The VCEK and chain of the chip that signed `report`: cached, else from the KDS.
    pub async fn amd(&self, report: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut errors = Vec::new();
        for req in amd::kds_requests(report)? {
            match self.amd_one(&req).await {
                Ok(found) => return Ok(found),
                Err(e) => errors.push(format!("{}: {e}", req.product)),
            }
        }
        Err(format!(
            "no VCEK for the report's chip: {}",
            errors.join("; ")
        ))
    }

    async fn amd_one(&self, req: &amd::KdsRequest) -> Result<(Vec<u8>, Vec<u8>), String> {
        let dir = self.dir.join("amd");
        let max = amd::MAX_CERT_BYTES;
        let mut out = Vec::with_capacity(2);
        for (file, path) in [
            (&req.vcek_file, &req.vcek_path),
            (&req.chain_file, &req.chain_path),
        ] {
            let file = dir.join(file);
            if let Ok(bytes) = read_small(&file, max) {
                out.push(bytes);
                continue;
            }
            let Some(base) = &self.kds_url else {
                return Err(format!("no {} and no KDS is configured", file.display()));
            };
            let (_, bytes) = self.get(&format!("{base}{path}"), max).await?;
            if let Err(e) = write_atomic(&file, &bytes) {
                tracing::warn!(error = %e, "cannot write the AMD collateral cache");
            }
            out.push(bytes);
        }
        let chain = out.pop().unwrap_or_default();
        let vcek = out.pop().unwrap_or_default();
        Ok((vcek, chain))
    }

    /// One bounded GET: 2xx only, body up to `limit` bytes.
    async fn get(
        &self,
        url: &str,
        limit: usize,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>), String> {
        if !self.allow_private {
            // Names resolve through `PublicOnly`; an address literal is checked here.
            let (_, host, _) = crate::providers::bounds::parse_endpoint(url)?;
            if let Ok(ip) = host.parse::<std::net::IpAddr>()
                && !crate::providers::bounds::is_public(ip)
            {
                return Err(format!(
                    "GET {url}: {ip} is not a public address (attestation.allow_private_collateral is off)"
                ));
            }
        }
        let exchange = async {
            let resp = self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("GET {url} answered {}", resp.status()));
            }
            let headers = resp.headers().clone();
            let body = read_bounded(resp, limit)
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            Ok((headers, body))
        };
        tokio::time::timeout(FETCH_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("GET {url}: no answer within {} s", FETCH_TIMEOUT.as_secs()))?
    }
}

fn parse(json: &str, v: &intel::Validity) -> Result<(Collateral, u64), String> {
    Collateral::from_json(json)
        .map(|c| (c, v.next_update))
        .map_err(|e| e.to_string())
}

/// The first of `names` present, URL-decoded (Intel sends PEM chains URL-encoded).
fn header(h: &reqwest::header::HeaderMap, names: &[&str]) -> Result<String, String> {
    let raw = names
        .iter()
        .find_map(|n| h.get(*n))
        .ok_or_else(|| format!("the answer has no {} header", names.join(" or ")))?;
    let raw = raw
        .to_str()
        .map_err(|_| format!("the {} header is not text", names.join("/")))?;
    percent_decode(raw)
        .ok_or_else(|| format!("the {} header is not URL-encoded text", names.join("/")))
}

/// `%XX` decoding (and `+` kept as is, as Intel's chains never contain spaces).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Reads a file of at most `limit` bytes.
fn read_small(path: &Path, limit: usize) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > limit as u64 {
        return Err(format!("{} is over {limit} bytes", path.display()));
    }
    std::fs::read(path).map_err(|e| e.to_string())
}

/// Writes through a temporary file and a rename, so readers never see half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
#[path = "collateral_tests.rs"]
mod tests;
