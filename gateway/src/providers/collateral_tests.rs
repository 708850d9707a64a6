//! Collateral against a local mock PCCS and KDS on 127.0.0.1 serving the recorded
//! vectors (gateway/tests/vectors, see PROVENANCE.md): fetch, cache, refresh before
//! expiry, offline files, an expired CRL, an unreachable service, and the bounds.
//! Times are the vectors' (no sleeps, no wall clock).
#![expect(clippy::unwrap_used, reason = "tests")]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tenzro_attest::Policy;
use tenzro_attest::evidence::{VerifyContext, sev_snp, tdx};

use super::*;

const TDX_QUOTE: &[u8] = include_bytes!("../../tests/vectors/tdx_quote");
const TDX_COLLATERAL: &str = include_str!("../../tests/vectors/tdx_quote_collateral.json");
const MILAN_HEX: &[u8] = include_bytes!("../../tests/vectors/report_milan.hex");
const MILAN_VCEK: &[u8] = include_bytes!("../../tests/vectors/vcek_milan.der");
const MILAN_CHAIN: &[u8] = include_bytes!("../../tests/vectors/cert_chain_milan");
/// The PCK CRL's nextUpdate (2025-07-19T10:00:35Z): the collateral's end.
const CRL_END: u64 = 1_752_919_235;
/// Inside the window, more than a day before its end.
const EARLY: u64 = 1_750_400_000;
const SNP_NOW: u64 = 1_790_000_000;

#[derive(Default)]
struct Mock {
    down: AtomicBool,
    hits: AtomicUsize,
}

fn enc(pem: &str) -> HeaderValue {
    let mut out = String::new();
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap()
}

async fn serve(mock: Arc<Mock>, uri: Uri) -> Response {
    mock.hits.fetch_add(1, Ordering::SeqCst);
    if mock.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let (file, f) = intel::disassemble(TDX_COLLATERAL).unwrap();
    let mut h = HeaderMap::new();
    let path = uri.path();
    let body: Vec<u8> = match path {
        "/sgx/certification/v4/pckcrl" => {
            h.insert("SGX-PCK-CRL-Issuer-Chain", enc(&file.pck_crl_issuer_chain));
            f.pck_crl
        }
        "/tdx/certification/v4/tcb" => {
            assert_eq!(uri.query(), Some("fmspc=B0C06F000000"));
            h.insert("TCB-Info-Issuer-Chain", enc(&file.tcb_info_issuer_chain));
            f.tcb_info_body.into_bytes()
        }
        "/tdx/certification/v4/qe/identity" => {
            h.insert(
                "SGX-Enclave-Identity-Issuer-Chain",
                enc(&file.qe_identity_issuer_chain),
            );
            f.qe_identity_body.into_bytes()
        }
        // A PCCS answers the root CA CRL as hex text.
        "/sgx/certification/v4/rootcacrl" => file.root_ca_crl.into_bytes(),
        "/vcek/v1/Milan/cert_chain" => MILAN_CHAIN.to_vec(),
        p if p.starts_with("/vcek/v1/Milan/") => {
            assert_eq!(uri.query(), Some("blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115"));
            MILAN_VCEK.to_vec()
        }
        "/big" => vec![b'x'; intel::MAX_ITEM_BYTES + 1],
        "/redirect" => {
            h.insert("location", HeaderValue::from_static("http://127.0.0.1:1/"));
            return (StatusCode::FOUND, h).into_response();
        }
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (h, body).into_response()
}

async fn start_mock() -> (Arc<Mock>, String) {
    let mock = Arc::new(Mock::default());
    let m = mock.clone();
    let app = axum::Router::new().fallback(move |uri: Uri| serve(m.clone(), uri));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (mock, url)
}

/// A base URL nothing listens on.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn store(dir: &Path, pccs: &str, kds: &str) -> CollateralStore {
    let cfg = AttestationSection {
        pccs_url: pccs.into(),
        kds_url: kds.into(),
        collateral_dir: Some(dir.to_path_buf()),
        allow_private_collateral: true,
        ..AttestationSection::default()
    };
    CollateralStore::new(&cfg, dir).unwrap()
}

fn tdx_trusted(c: &Collateral, now: u64) -> bool {
    let p = Policy::default();
    let ctx = VerifyContext {
        now,
        policy: &p,
        report_data: None,
        tdx_collateral: Some(c),
    };
    let v = tdx::verify(TDX_QUOTE, &ctx);
    v.trusted
}

#[test]
fn next_update_is_the_pck_crl() {
    let v = intel::next_update(TDX_COLLATERAL).unwrap();
    assert_eq!((v.next_update, v.item), (CRL_END, "PCK CRL"));
    assert_eq!(intel::quote_key(TDX_QUOTE).unwrap().fmspc, "b0c06f000000");
}

#[tokio::test]
async fn tdx_fetch_cache_refresh_and_offline() {
    let (mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &url, "");
    let (c, next) = s.tdx(TDX_QUOTE, EARLY).await.unwrap();
    assert_eq!(next, CRL_END);
    assert!(
        tdx_trusted(&c, EARLY),
        "assembled collateral verifies the quote"
    );
    assert_eq!(mock.hits.load(Ordering::SeqCst), 4, "four items");
    assert!(dir.path().join("tdx/b0c06f000000.json").is_file());
    // Cached: no new fetch while more than refresh_before_s is left.
    s.tdx(TDX_QUOTE, EARLY + 3600).await.unwrap();
    assert_eq!(mock.hits.load(Ordering::SeqCst), 4);
    // Inside the last day: fetched again before it expires.
    s.tdx(TDX_QUOTE, CRL_END - 3600).await.unwrap();
    assert_eq!(mock.hits.load(Ordering::SeqCst), 8);
    // Offline: a new gateway with no PCCS reads the file the first one wrote.
    let offline = store(dir.path(), "", "");
    let (c, _) = offline.tdx(TDX_QUOTE, CRL_END - 1).await.unwrap();
    assert!(tdx_trusted(&c, CRL_END - 1));
    let e = offline.tdx(TDX_QUOTE, CRL_END).await.unwrap_err();
    assert!(
        e.contains("expired at 1752919235 (PCK CRL nextUpdate)"),
        "{e}"
    );
}

#[tokio::test]
async fn offline_files_placed_by_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "", "");
    let e = s.tdx(TDX_QUOTE, EARLY).await.unwrap_err();
    assert!(
        e.contains("no collateral file") && e.contains("b0c06f000000.json"),
        "{e}"
    );
    std::fs::create_dir_all(dir.path().join("tdx")).unwrap();
    std::fs::write(dir.path().join("tdx/b0c06f000000.json"), TDX_COLLATERAL).unwrap();
    let (c, _) = s.tdx(TDX_QUOTE, EARLY).await.unwrap();
    assert!(tdx_trusted(&c, EARLY));
}

#[tokio::test]
async fn unreachable_service_uses_the_cache_until_next_update() {
    let (mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &url, "");
    s.tdx(TDX_QUOTE, EARLY).await.unwrap();
    mock.down.store(true, Ordering::SeqCst);
    // Due for refresh, the PCCS fails: the cached collateral still counts.
    let (c, _) = s.tdx(TDX_QUOTE, CRL_END - 10).await.unwrap();
    assert!(tdx_trusted(&c, CRL_END - 10));
    // At nextUpdate it no longer does, and the refusal says why.
    let e = s.tdx(TDX_QUOTE, CRL_END).await.unwrap_err();
    assert!(e.contains("503"), "{e}");
    assert!(
        e.contains("expired at 1752919235 (PCK CRL nextUpdate)"),
        "{e}"
    );
    // Nothing listening at all, nothing cached.
    let fresh = tempfile::tempdir().unwrap();
    let dead = store(fresh.path(), &dead_url().await, "");
    let e = dead.tdx(TDX_QUOTE, EARLY).await.unwrap_err();
    assert!(e.contains("no cached collateral"), "{e}");
    // As a verdict: refused on `collateral`, with the reason.
    let ev = tenzro_attest::Evidence {
        kind: TeeKind::Tdx,
        report: TDX_QUOTE.to_vec(),
        certs: vec![],
    };
    match dead.for_evidence(&ev, EARLY).await {
        Found::Missing(r) => assert!(r.contains("no cached collateral"), "{r}"),
        other => panic_found(&other),
    }
}

#[expect(clippy::panic, reason = "tests")]
fn panic_found(f: &Found) -> ! {
    panic!("unexpected {f:?}")
}

#[tokio::test]
async fn an_expired_crl_is_refused() {
    // After the PCK CRL's nextUpdate, before the TCB info's (1752920163): the
    // service still serves the CRL that expired.
    let (_mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &url, "");
    let e = s.tdx(TDX_QUOTE, CRL_END + 60).await.unwrap_err();
    assert!(e.contains("PCK CRL expired at 1752919235"), "{e}");
    assert!(
        !dir.path().join("tdx/b0c06f000000.json").exists(),
        "not cached"
    );
}

#[tokio::test]
async fn amd_vcek_from_the_kds_then_the_cache() {
    let (mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let report = tenzro_attest::input::blob(MILAN_HEX);
    let s = store(dir.path(), "", &url);
    let (vcek, chain) = s.amd(&report).await.unwrap();
    assert_eq!(
        (vcek.as_slice(), chain.as_slice()),
        (MILAN_VCEK, MILAN_CHAIN)
    );
    let p = Policy::default();
    let ctx = VerifyContext {
        now: SNP_NOW,
        policy: &p,
        report_data: None,
        tdx_collateral: None,
    };
    let v = sev_snp::verify(&report, &vcek, Some(&chain), &ctx);
    assert!(v.trusted, "{:?}", v.reasons);
    assert_eq!(mock.hits.load(Ordering::SeqCst), 2);
    mock.down.store(true, Ordering::SeqCst);
    assert!(s.amd(&report).await.is_ok(), "cached");
    assert_eq!(mock.hits.load(Ordering::SeqCst), 2);
    // No cache and no KDS: the provider's own VCEK is used if it sent one.
    let empty = tempfile::tempdir().unwrap();
    let dead = store(empty.path(), "", &dead_url().await);
    let mut ev = tenzro_attest::Evidence {
        kind: TeeKind::SevSnp,
        report,
        certs: vec![],
    };
    assert!(matches!(
        dead.for_evidence(&ev, SNP_NOW).await,
        Found::Missing(_)
    ));
    ev.certs = MILAN_VCEK.to_vec();
    assert!(matches!(
        dead.for_evidence(&ev, SNP_NOW).await,
        Found::Nothing
    ));
}

#[tokio::test]
async fn fetches_are_bounded_and_never_redirected() {
    let (_mock, url) = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &url, "");
    let e = s
        .get(&format!("{url}/big"), intel::MAX_ITEM_BYTES)
        .await
        .unwrap_err();
    assert!(e.contains("over"), "{e}");
    let e = s.get(&format!("{url}/redirect"), 1024).await.unwrap_err();
    assert!(e.contains("302"), "{e}");
    // Without allow_private_collateral a loopback PCCS is not contacted.
    let cfg = AttestationSection {
        pccs_url: url.clone(),
        collateral_dir: Some(dir.path().to_path_buf()),
        ..AttestationSection::default()
    };
    let public_only = CollateralStore::new(&cfg, dir.path()).unwrap();
    assert!(public_only.tdx(TDX_QUOTE, EARLY).await.is_err());
}
