//! One file, `hf://owner/repo[@revision]/file`: a generated 3 MB file with Range
//! support, dropped half way, ignored ranges, a wrong digest, a 404, local paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tenzro_models::download::{DownloadError, FetchOptions, ModelSource, fetch};

use crate::TempDir;
use crate::hub::{self, Faults, Hub, HubFile, Repo, sha256};

const SOURCE: &str = "hf://owner/repo/weights.gguf";
const FILE: &str = "weights.gguf";
const SIZE: usize = 3 * 1024 * 1024 + 12_345;
const COMMIT: &str = "1111111111111111111111111111111111111111";

/// Deterministic bytes that do not compress or repeat.
fn generated() -> Arc<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data = (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    Arc::new(data)
}

fn serve(data: &Arc<Vec<u8>>, faults: Faults) -> Hub {
    let mut files = BTreeMap::new();
    files.insert(
        FILE.to_owned(),
        HubFile {
            bytes: Arc::clone(data),
            lfs: true,
        },
    );
    let repo = Repo {
        commit: COMMIT.into(),
        files,
    };
    hub::serve(BTreeMap::from([("owner/repo".to_owned(), repo)]), faults)
}

pub fn options(endpoint: &str, expected: Option<String>) -> FetchOptions {
    FetchOptions {
        endpoint: Some(endpoint.to_owned()),
        expected_sha256: expected,
        progress: false,
        max_retries: 3,
        initial_backoff: Duration::from_millis(10),
        read_timeout: Duration::from_secs(10),
        token: None,
        offline: Some(false),
        ..FetchOptions::default()
    }
}

fn source() -> ModelSource {
    SOURCE.parse().unwrap()
}

fn snapshot(cache: &Path) -> PathBuf {
    cache.join(format!("models--owner--repo/snapshots/{COMMIT}/{FILE}"))
}

fn drop_first() -> Faults {
    Faults {
        drop_first: [FILE.to_owned()].into(),
        ..Faults::default()
    }
}

#[test]
fn dropped_connection_resumes_with_range_and_verifies() {
    let data = generated();
    let digest = sha256(&data);
    let hub = serve(&data, drop_first());
    let dir = TempDir::new("resume");
    let mut opts = options(&hub.endpoint, Some(digest.clone()));
    opts.progress = true;

    let path = fetch(&source(), &dir.0, &opts).unwrap();
    assert_eq!(path, snapshot(&dir.0));
    assert_eq!(sha256(&std::fs::read(&path).unwrap()), digest);
    // The Hugging Face layout: a relative link to the blob named by the etag, a ref.
    assert_eq!(
        std::fs::read_link(&path).unwrap(),
        Path::new("../../blobs").join(&digest)
    );
    let refs = dir.0.join("models--owner--repo/refs/main");
    assert_eq!(std::fs::read_to_string(refs).unwrap(), COMMIT);
    assert!(
        !dir.0
            .join(format!("models--owner--repo/blobs/{digest}.incomplete"))
            .exists()
    );

    let gets = hub.file_gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    let resumed_at: usize = gets[1]
        .range
        .as_deref()
        .unwrap()
        .strip_prefix("bytes=")
        .unwrap()
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(
        resumed_at > 0 && resumed_at <= SIZE / 2,
        "resumed at {resumed_at}"
    );
    assert_eq!(gets[1].status, 206);

    // A cached file with the right digest is not downloaded again.
    assert_eq!(fetch(&source(), &dir.0, &opts).unwrap(), path);
    assert_eq!(hub.file_gets().len(), 2);

    // A corrupted cached file is fetched again.
    std::fs::write(&path, b"not the weights").unwrap();
    assert_eq!(fetch(&source(), &dir.0, &opts).unwrap(), path);
    assert_eq!(sha256(&std::fs::read(&path).unwrap()), digest);
    assert_eq!(hub.file_gets().len(), 3);

    // Pinned to the commit it is in the cache: no request at all.
    let before = hub.seen().len();
    let pinned: ModelSource = format!("hf://owner/repo@{COMMIT}/{FILE}").parse().unwrap();
    assert_eq!(fetch(&pinned, &dir.0, &opts).unwrap(), path);
    assert_eq!(hub.seen().len(), before);
}

#[test]
fn wrong_digest_is_refused_and_leaves_no_file() {
    let data = generated();
    let hub = serve(&data, Faults::default());
    let dir = TempDir::new("mismatch");
    let wrong = "0".repeat(64);

    let err = fetch(
        &source(),
        &dir.0,
        &options(&hub.endpoint, Some(wrong.clone())),
    )
    .unwrap_err();
    assert!(matches!(err, DownloadError::DigestMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&wrong) && message.contains(&sha256(&data)),
        "{message}"
    );
    assert!(message.contains("refusing to serve"), "{message}");
    assert!(!snapshot(&dir.0).exists());
    let blobs = dir.0.join("models--owner--repo/blobs");
    assert_eq!(
        std::fs::read_dir(blobs).unwrap().count(),
        0,
        "nothing left in blobs/"
    );
}

#[test]
fn bytes_that_differ_from_the_hubs_own_digest_are_refused() {
    let data = generated();
    let hub = serve(
        &data,
        Faults {
            corrupt: [FILE.to_owned()].into(),
            ..Faults::default()
        },
    );
    let dir = TempDir::new("corrupt-single");
    let err = fetch(&source(), &dir.0, &options(&hub.endpoint, None)).unwrap_err();
    assert!(matches!(err, DownloadError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&sha256(&data)), "{err}");
    assert!(!snapshot(&dir.0).exists());
}

#[test]
fn server_ignoring_range_still_yields_the_right_file() {
    let data = generated();
    let digest = sha256(&data);
    let hub = serve(
        &data,
        Faults {
            ignore_range: true,
            ..drop_first()
        },
    );
    let dir = TempDir::new("ignore-range");

    let path = fetch(
        &source(),
        &dir.0,
        &options(&hub.endpoint, Some(digest.clone())),
    )
    .unwrap();
    assert_eq!(sha256(&std::fs::read(&path).unwrap()), digest);
    let gets = hub.file_gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets[1].range.is_some(), "the client asked to resume");
    assert_eq!(
        gets[1].status, 200,
        "the server sent the whole file instead"
    );
}

#[test]
fn missing_file_is_a_clear_404_without_retries() {
    let hub = serve(&generated(), Faults::default());
    let dir = TempDir::new("404");
    let missing: ModelSource = "hf://owner/repo@v1/nope.gguf".parse().unwrap();

    let err = fetch(&missing, &dir.0, &options(&hub.endpoint, None)).unwrap_err();
    assert!(matches!(err, DownloadError::NotFound { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("404") && message.contains("/owner/repo/resolve/v1/nope.gguf"),
        "{message}"
    );
    assert_eq!(hub.seen().len(), 1);
}

#[test]
fn offline_serves_the_cache_or_names_the_missing_file() {
    let data = generated();
    let hub = serve(&data, Faults::default());
    let dir = TempDir::new("offline-single");
    let mut offline = options("http://127.0.0.1:9", None);
    offline.offline = Some(true);

    let err = fetch(&source(), &dir.0, &offline).unwrap_err();
    assert!(matches!(err, DownloadError::Offline { .. }), "{err}");
    assert!(err.to_string().contains("refs/main"), "{err}");

    let path = fetch(&source(), &dir.0, &options(&hub.endpoint, None)).unwrap();
    assert_eq!(fetch(&source(), &dir.0, &offline).unwrap(), path);
    let other: ModelSource = "hf://owner/repo/other.gguf".parse().unwrap();
    let err = fetch(&other, &dir.0, &offline).unwrap_err();
    assert!(err.to_string().contains("missing other.gguf"), "{err}");
}

#[test]
fn local_sources_are_checked_not_copied() {
    let dir = TempDir::new("local");
    let file = dir.0.join("w.gguf");
    std::fs::write(&file, b"abc").unwrap();
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let local = ModelSource::Local(file.clone());
    let opts = |expected: &str| FetchOptions {
        expected_sha256: Some(expected.to_owned()),
        ..FetchOptions::default()
    };

    assert_eq!(fetch(&local, &dir.0, &opts(abc)).unwrap(), file);
    let err = fetch(&local, &dir.0, &opts(&"1".repeat(64))).unwrap_err();
    assert!(matches!(err, DownloadError::DigestMismatch { .. }), "{err}");
    let missing = ModelSource::Local(dir.0.join("absent.gguf"));
    assert!(matches!(
        fetch(&missing, &dir.0, &FetchOptions::default()),
        Err(DownloadError::LocalMissing(_))
    ));
}
