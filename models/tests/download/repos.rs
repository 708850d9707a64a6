//! Whole repositories: a sharded checkpoint into the Hugging Face cache (then loaded),
//! a resumed shard, a corrupt shard refused, a second run that downloads nothing,
//! offline mode, GGUF quantisations by name, and hostile listings and indexes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tenzro_models::download::{DownloadError, ModelSource, fetch, resolve};

use crate::TempDir;
use crate::checkpoint::{gguf_repo, tiny_repo};
use crate::hub::{self, Faults, Hub, HubFile, Repo, sha256};
use crate::single::options;

const COMMIT: &str = "2222222222222222222222222222222222222222";
const SHARDS: [&str; 2] = [
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
];

fn serve(repo: Repo, faults: Faults) -> Hub {
    hub::serve(BTreeMap::from([("owner/tiny".to_owned(), repo)]), faults)
}

fn tiny() -> ModelSource {
    "hf://owner/tiny".parse().unwrap()
}

/// The provider's digest of a checkpoint: `sha256sum` of the shards, piped to sha256.
fn listing_digest(repo: &Repo) -> String {
    let listing: String = SHARDS
        .iter()
        .map(|s| format!("{}  {s}\n", sha256(&repo.files[*s].bytes)))
        .collect();
    sha256(listing.as_bytes())
}

#[test]
fn a_sharded_checkpoint_lands_in_the_hf_cache_and_a_second_run_downloads_nothing() {
    let repo = tiny_repo(COMMIT);
    let digest = listing_digest(&repo);
    let hub = serve(repo.clone(), Faults::default());
    let dir = TempDir::new("checkpoint");
    let opts = options(&hub.endpoint, Some(digest.clone()));

    let fetched = resolve(&tiny(), &dir.0, &opts).unwrap();
    let snapshot = dir
        .0
        .join(format!("models--owner--tiny/snapshots/{COMMIT}"));
    assert_eq!(fetched.path, snapshot);
    assert_eq!(fetched.commit.as_deref(), Some(COMMIT));
    assert_eq!(fetched.weights_sha256.as_deref(), Some(digest.as_str()));
    let total: usize = repo
        .files
        .iter()
        .filter(|(n, _)| *n != "README.md")
        .map(|(_, f)| f.bytes.len())
        .sum();
    assert_eq!(fetched.downloaded_bytes, total as u64);
    for (name, file) in &repo.files {
        let path = snapshot.join(name);
        if name == "README.md" {
            assert!(!path.exists(), "only the checkpoint's files are fetched");
            continue;
        }
        assert_eq!(std::fs::read(&path).unwrap(), *file.bytes, "{name}");
        let link = std::fs::read_link(&path).unwrap();
        assert_eq!(link, Path::new("../../blobs").join(file.etag()), "{name}");
    }
    assert!(!snapshot.join("special_tokens_map.json").exists());
    let head = std::fs::read_to_string(dir.0.join("models--owner--tiny/refs/main")).unwrap();
    assert_eq!(head, COMMIT);
    let gets = hub.file_gets();
    assert_eq!(gets.len(), 7, "{gets:?}");
    assert!(
        gets.iter()
            .all(|g| g.path.contains(&format!("/resolve/{COMMIT}/"))),
        "{gets:?}"
    );

    // The snapshot is a checkpoint the loader takes, with the same digest.
    #[cfg(feature = "engine")]
    {
        use tenzro_models::llm::{Llm, LlmConfig, Requantize};
        let cfg = LlmConfig {
            path: snapshot.clone(),
            sha256: Some(digest.clone()),
            tokenizer_json: None,
            requantize: Requantize::None,
        };
        let llm = Llm::load(&cfg, &candle_core::Device::Cpu).unwrap();
        assert_eq!(llm.sha256, digest);
        let (_, logits) = llm.prefill(&llm.encode("w7 w8 w9").unwrap()).unwrap();
        assert_eq!(logits.len(), crate::checkpoint::VOCAB);
    }

    // Again: one listing request, no file downloaded.
    let before = hub.seen().len();
    let again = resolve(&tiny(), &dir.0, &opts).unwrap();
    assert_eq!((again.path, again.downloaded_bytes), (snapshot, 0));
    let seen = hub.seen();
    assert_eq!(seen.len(), before + 1, "{:?}", &seen[before..]);
    assert!(
        seen[before]
            .path
            .starts_with("/api/models/owner/tiny/revision/main")
    );

    // A configured digest the checkpoint does not have is refused.
    let wrong = options(&hub.endpoint, Some("e".repeat(64)));
    let err = fetch(&tiny(), &dir.0, &wrong).unwrap_err();
    assert!(matches!(err, DownloadError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&digest), "{err}");
}

#[test]
fn a_dropped_shard_resumes_where_it_stopped() {
    let repo = tiny_repo(COMMIT);
    let hub = serve(
        repo.clone(),
        Faults {
            drop_first: [SHARDS[1].to_owned()].into(),
            ..Faults::default()
        },
    );
    let dir = TempDir::new("checkpoint-resume");
    let fetched = resolve(&tiny(), &dir.0, &options(&hub.endpoint, None)).unwrap();
    assert_eq!(
        fetched.weights_sha256.as_deref(),
        Some(listing_digest(&repo).as_str())
    );
    let shard = fetched.path.join(SHARDS[1]);
    assert_eq!(std::fs::read(&shard).unwrap(), *repo.files[SHARDS[1]].bytes);
    let gets: Vec<_> = hub
        .file_gets()
        .into_iter()
        .filter(|g| g.path.ends_with(SHARDS[1]))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    let size = repo.files[SHARDS[1]].bytes.len();
    let at: usize = gets[1]
        .range
        .as_deref()
        .unwrap()
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(at > 0 && at <= size / 2, "resumed at {at} of {size}");
    assert_eq!(gets[1].status, 206);
}

#[test]
fn a_shard_that_is_not_what_the_hub_listed_is_refused() {
    let repo = tiny_repo(COMMIT);
    let hub = serve(
        repo.clone(),
        Faults {
            corrupt: [SHARDS[0].to_owned()].into(),
            ..Faults::default()
        },
    );
    let dir = TempDir::new("checkpoint-corrupt");
    let err = fetch(&tiny(), &dir.0, &options(&hub.endpoint, None)).unwrap_err();
    assert!(matches!(err, DownloadError::DigestMismatch { .. }), "{err}");
    let listed = sha256(&repo.files[SHARDS[0]].bytes);
    assert!(err.to_string().contains(&listed), "{err}");
    let root = dir.0.join("models--owner--tiny");
    assert!(
        !root
            .join(format!("snapshots/{COMMIT}/{}", SHARDS[0]))
            .exists()
    );
    assert!(!root.join(format!("blobs/{listed}")).exists());
    assert!(!root.join(format!("blobs/{listed}.incomplete")).exists());
}

#[test]
fn offline_mode_serves_the_cache_or_names_what_is_missing() {
    let repo = tiny_repo(COMMIT);
    let hub = serve(repo, Faults::default());
    let dir = TempDir::new("checkpoint-offline");
    let mut offline = options("http://127.0.0.1:9", None);
    offline.offline = Some(true);

    let err = fetch(&tiny(), &dir.0, &offline).unwrap_err();
    assert!(matches!(err, DownloadError::Offline { .. }), "{err}");
    assert!(err.to_string().contains("refs/main"), "{err}");

    let online = fetch(&tiny(), &dir.0, &options(&hub.endpoint, None)).unwrap();
    let before = hub.seen().len();
    assert_eq!(fetch(&tiny(), &dir.0, &offline).unwrap(), online);
    assert_eq!(hub.seen().len(), before, "offline asks nothing");

    std::fs::remove_file(online.join(SHARDS[1])).unwrap();
    let err = fetch(&tiny(), &dir.0, &offline).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(SHARDS[1]) && message.contains("HF_HUB_OFFLINE"),
        "{message}"
    );
    // Online, the missing link is made again from the blob still there: no download.
    let gets = hub.file_gets().len();
    fetch(&tiny(), &dir.0, &options(&hub.endpoint, None)).unwrap();
    assert_eq!(hub.file_gets().len(), gets);
    assert!(online.join(SHARDS[1]).is_file());
}

#[test]
fn a_quantisation_name_picks_one_gguf() {
    const GGUF_COMMIT: &str = "3333333333333333333333333333333333333333";
    let repo = gguf_repo(GGUF_COMMIT);
    let hub = hub::serve(
        BTreeMap::from([("owner/tiny-GGUF".to_owned(), repo.clone())]),
        Faults::default(),
    );
    let dir = TempDir::new("quant");
    let opts = options(&hub.endpoint, None);

    let source: ModelSource = "hf://owner/tiny-GGUF:q4_k_m".parse().unwrap();
    let path = fetch(&source, &dir.0, &opts).unwrap();
    assert!(
        path.ends_with(format!("snapshots/{GGUF_COMMIT}/tiny-Q4_K_M.gguf")),
        "{}",
        path.display()
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        *repo.files["tiny-Q4_K_M.gguf"].bytes
    );
    assert_eq!(hub.file_gets().len(), 1);

    let mut offline = options(&hub.endpoint, None);
    offline.offline = Some(true);
    assert_eq!(fetch(&source, &dir.0, &offline).unwrap(), path);

    let q8: ModelSource = "hf://owner/tiny-GGUF:Q8_0".parse().unwrap();
    assert!(
        fetch(&q8, &dir.0, &opts)
            .unwrap()
            .ends_with("tiny-Q8_0.gguf"),
        "mmproj is never picked"
    );
    for (quant, needle) in [
        ("Q5_K_M", "the GGUF files are"),
        ("Q4_K", "tiny-Q4_K_S.gguf"),
    ] {
        let source: ModelSource = format!("hf://owner/tiny-GGUF:{quant}").parse().unwrap();
        let err = fetch(&source, &dir.0, &opts).unwrap_err();
        assert!(err.to_string().contains(needle), "{quant}: {err}");
    }
    // A GGUF repository without a quantisation is not a checkpoint; the error says what to write.
    let whole: ModelSource = "hf://owner/tiny-GGUF".parse().unwrap();
    let err = fetch(&whole, &dir.0, &opts).unwrap_err();
    assert!(
        err.to_string().contains("hf://owner/repo:Q4_K_M")
            && err.to_string().contains("tiny-Q8_0.gguf"),
        "{err}"
    );
}

#[test]
fn hostile_indexes_and_listings_are_refused() {
    let mut repo = tiny_repo(COMMIT);
    let index = br#"{"weight_map":{"a":"../../escape.safetensors"}}"#.to_vec();
    repo.files.insert(
        "model.safetensors.index.json".into(),
        HubFile {
            bytes: Arc::new(index),
            lfs: false,
        },
    );
    let hub = serve(repo.clone(), Faults::default());
    let dir = TempDir::new("hostile");
    let err = fetch(&tiny(), &dir.0, &options(&hub.endpoint, None)).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a plain *.safetensors file name"),
        "{err}"
    );
    assert!(
        !dir.0
            .join("models--owner--tiny/escape.safetensors")
            .exists()
    );

    // An index naming a shard the repository does not list.
    let index = br#"{"weight_map":{"a":"model-00009-of-00009.safetensors"}}"#.to_vec();
    repo.files.insert(
        "model.safetensors.index.json".into(),
        HubFile {
            bytes: Arc::new(index),
            lfs: false,
        },
    );
    let hub = serve(repo, Faults::default());
    let dir = TempDir::new("hostile-unlisted");
    let err = fetch(&tiny(), &dir.0, &options(&hub.endpoint, None)).unwrap_err();
    assert!(
        err.to_string().contains(
            "model-00009-of-00009.safetensors is named by the index but not in the repository"
        ),
        "{err}"
    );

    // A download bound smaller than the checkpoint.
    let hub = serve(tiny_repo(COMMIT), Faults::default());
    let dir = TempDir::new("hostile-bound");
    let mut small = options(&hub.endpoint, None);
    small.max_total_bytes = 1000;
    let err = fetch(&tiny(), &dir.0, &small).unwrap_err();
    assert!(err.to_string().contains("allowed"), "{err}");
}
