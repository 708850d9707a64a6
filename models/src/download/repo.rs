//! What a repository holds and which of its files a source needs: the hub's listing
//! (`GET /api/models/{repo}/revision/{rev}?blobs=true`), the files of a safetensors
//! checkpoint (shards from `model.safetensors.index.json`), and the GGUF file of a
//! quantisation. Everything a hub sends is bounded: the listing's size and length,
//! every name (plain, listed), the index's size and shard count.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::DownloadError;
use super::cache::{is_blob_name, is_commit};
use super::source::{plain_path, plain_segment};

/// Largest listing accepted, in bytes.
pub const MAX_LISTING_BYTES: u64 = 32 << 20;
/// Most files a listing may name.
pub const MAX_LISTED_FILES: usize = 100_000;
/// Largest `model.safetensors.index.json` accepted, in bytes.
pub const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Most weight shards one checkpoint may have.
pub const MAX_SHARDS: usize = 4096;

/// The files of a checkpoint besides its weights; all but `config.json` optional.
pub const CONFIG: &str = "config.json";
pub const OPTIONAL: [&str; 4] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];
pub const INDEX: &str = "model.safetensors.index.json";
pub const SINGLE: &str = "model.safetensors";

/// One file the hub lists, with what checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: String,
    /// The blob's name in the cache: the LFS SHA-256, else the git blob SHA-1.
    pub etag: String,
    pub size: Option<u64>,
    /// The LFS SHA-256, when the file is in LFS.
    pub sha256: Option<String>,
    /// The git blob SHA-1 (of `blob {len}\0{bytes}`), for a file kept in git.
    pub git_sha1: Option<String>,
}

impl RemoteFile {
    /// A file known only by the etag a `HEAD` gave: 64 hex digits are a SHA-256,
    /// 40 a git SHA-1; anything else is a name the content cannot be checked by.
    pub fn from_etag(name: &str, etag: String, size: Option<u64>) -> RemoteFile {
        let hex = etag.bytes().all(|b| b.is_ascii_hexdigit());
        RemoteFile {
            name: name.to_owned(),
            sha256: (hex && etag.len() == 64).then(|| etag.to_ascii_lowercase()),
            git_sha1: (hex && etag.len() == 40).then(|| etag.to_ascii_lowercase()),
            etag,
            size,
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawListing {
    sha: String,
    #[serde(default)]
    siblings: Vec<RawSibling>,
}

#[derive(Debug, Deserialize)]
struct RawSibling {
    rfilename: String,
    #[serde(rename = "blobId", default)]
    blob_id: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<RawLfs>,
}

#[derive(Debug, Deserialize)]
struct RawLfs {
    sha256: String,
    size: u64,
}

/// A revision's commit and files, checked.
#[derive(Debug, Clone)]
pub struct Listing {
    pub commit: String,
    pub files: Vec<RemoteFile>,
}

impl Listing {
    /// Parse and check the API's answer. Files with names we would not store, or
    /// without an etag to store them by, are dropped (and so cannot be asked for).
    pub fn parse(bytes: &[u8], url: &str) -> Result<Listing, DownloadError> {
        let bad = |reason: String| DownloadError::BadHub {
            url: url.to_owned(),
            reason,
        };
        let raw: RawListing =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a model listing: {e}")))?;
        if !is_commit(&raw.sha) {
            return Err(bad(format!("`sha` {:?} is not a commit id", raw.sha)));
        }
        if raw.siblings.len() > MAX_LISTED_FILES {
            return Err(bad(format!(
                "it lists {} files (at most {MAX_LISTED_FILES})",
                raw.siblings.len()
            )));
        }
        let files = raw
            .siblings
            .into_iter()
            .filter(|s| plain_path(&s.rfilename))
            .filter_map(|s| {
                let file = match s.lfs {
                    Some(lfs) => RemoteFile {
                        name: s.rfilename,
                        etag: lfs.sha256.to_ascii_lowercase(),
                        size: Some(lfs.size),
                        sha256: Some(lfs.sha256.to_ascii_lowercase()),
                        git_sha1: None,
                    },
                    None => RemoteFile::from_etag(&s.rfilename, s.blob_id?, s.size),
                };
                let checked = file.sha256.as_ref().is_none_or(|h| h.len() == 64);
                (checked && is_blob_name(&file.etag)).then_some(file)
            })
            .collect();
        Ok(Listing {
            commit: raw.sha,
            files,
        })
    }

    pub fn get(&self, name: &str) -> Option<&RemoteFile> {
        self.files.iter().find(|f| f.name == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|f| f.name.as_str())
    }
}

#[derive(Debug, Deserialize)]
struct RawIndex {
    weight_map: std::collections::HashMap<String, String>,
}

/// The shard names `model.safetensors.index.json` maps tensors to, sorted and
/// deduplicated; each must be a plain file name ending in `.safetensors`.
pub fn shards_from_index(bytes: &[u8], what: &str) -> Result<Vec<String>, String> {
    let index: RawIndex = serde_json::from_slice(bytes)
        .map_err(|e| format!("{what}: not a safetensors index: {e}"))?;
    let shards: BTreeSet<String> = index.weight_map.into_values().collect();
    if shards.is_empty() {
        return Err(format!("{what}: the index names no shards"));
    }
    if shards.len() > MAX_SHARDS {
        return Err(format!(
            "{what}: the index names {} shards (at most {MAX_SHARDS})",
            shards.len()
        ));
    }
    if let Some(bad) = shards
        .iter()
        .find(|s| !plain_segment(s) || !s.ends_with(".safetensors"))
    {
        return Err(format!(
            "{what}: shard name {bad:?} is not a plain *.safetensors file name"
        ));
    }
    Ok(shards.into_iter().collect())
}

/// The GGUF file among `names` whose name carries the quantisation `quant`
/// (case-insensitive, as a whole `-`/`.`/`_`-delimited part: `Q4_K` does not pick
/// `Q4_K_M`); `mmproj` projector files are never picked. Ambiguous or missing:
/// the error lists the GGUF files there are.
pub fn pick_quant<'a>(names: impl Iterator<Item = &'a str>, quant: &str) -> Result<String, String> {
    let ggufs: Vec<&str> = names
        .filter(|n| n.to_ascii_lowercase().ends_with(".gguf"))
        .filter(|n| !n.to_ascii_lowercase().contains("mmproj"))
        .collect();
    let tag = quant.to_ascii_lowercase();
    let matches: Vec<&str> = ggufs
        .iter()
        .copied()
        .filter(|n| carries(&n.to_ascii_lowercase(), &tag))
        .collect();
    let listed = |files: &[&str]| {
        let mut shown: Vec<&str> = files.iter().copied().take(50).collect();
        shown.sort_unstable();
        let more = files.len().saturating_sub(shown.len());
        let mut text = shown.join(", ");
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        text
    };
    match matches.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] if ggufs.is_empty() => Err(format!(
            "no GGUF file for {quant}: the repository has no .gguf files"
        )),
        [] => Err(format!(
            "no GGUF file for {quant}; the GGUF files are: {}",
            listed(&ggufs)
        )),
        many => Err(format!(
            "{quant} names {} files (split GGUFs are not supported; name one file \
             with hf://owner/repo/FILE): {}",
            many.len(),
            listed(many)
        )),
    }
}

/// `tag` occurs in `name` preceded by the start, `/`, `-`, `.` or `_`, and followed
/// by `-` or `.` (the extension always follows eventually).
fn carries(name: &str, tag: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.match_indices(tag).any(|(at, _)| {
        let before = base[..at].chars().next_back();
        let after = base[at + tag.len()..].chars().next();
        before.is_none_or(|c| matches!(c, '-' | '.' | '_'))
            && after.is_some_and(|c| matches!(c, '-' | '.'))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn listing_parses_and_drops_unsafe_names() {
        let sha = "a".repeat(40);
        let lfs = "b".repeat(64);
        let json = format!(
            r#"{{"id":"o/r","sha":"{sha}","siblings":[
                {{"rfilename":"config.json","blobId":"{c}","size":10}},
                {{"rfilename":"model.safetensors","blobId":"{c}","size":132,"lfs":{{"sha256":"{lfs}","size":99,"pointerSize":132}}}},
                {{"rfilename":"../evil","blobId":"{c}","size":1}},
                {{"rfilename":"noetag.json"}}]}}"#,
            c = "c".repeat(40)
        );
        let listing = Listing::parse(json.as_bytes(), "u").unwrap();
        assert_eq!(listing.commit, sha);
        assert_eq!(
            listing.names().collect::<Vec<_>>(),
            ["config.json", "model.safetensors"]
        );
        let model = listing.get("model.safetensors").unwrap();
        assert_eq!((model.etag.as_str(), model.size), (lfs.as_str(), Some(99)));
        assert_eq!(
            listing.get("config.json").unwrap().git_sha1.as_deref(),
            Some("c".repeat(40).as_str())
        );
        let err = Listing::parse(br#"{"sha":"main","siblings":[]}"#, "u").unwrap_err();
        assert!(err.to_string().contains("not a commit id"), "{err}");
    }

    #[test]
    fn index_shards_are_plain_names() {
        let ok = br#"{"metadata":{},"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-1.safetensors"}}"#;
        assert_eq!(
            shards_from_index(ok, "i").unwrap(),
            ["m-1.safetensors", "m-2.safetensors"]
        );
        for bad in [
            &br#"{"weight_map":{"a":"../x.safetensors"}}"#[..],
            br#"{"weight_map":{"a":"sub/x.safetensors"}}"#,
            br#"{"weight_map":{"a":"x.bin"}}"#,
            br#"{"weight_map":{}}"#,
            br#"[]"#,
        ] {
            assert!(
                shards_from_index(bad, "i").is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn quantisations_pick_one_file() {
        let names = [
            "README.md",
            "qwen2.5-0.5b-instruct-q4_k_m.gguf",
            "qwen2.5-0.5b-instruct-q4_k_s.gguf",
            "qwen2.5-0.5b-instruct-q8_0.gguf",
            "Q6_K/model-Q6_K-00001-of-00002.gguf",
            "Q6_K/model-Q6_K-00002-of-00002.gguf",
            "mmproj-model-q8_0.gguf",
        ];
        let pick = |q: &str| pick_quant(names.iter().copied(), q);
        assert_eq!(pick("Q4_K_M").unwrap(), "qwen2.5-0.5b-instruct-q4_k_m.gguf");
        assert_eq!(pick("q8_0").unwrap(), "qwen2.5-0.5b-instruct-q8_0.gguf");
        let err = pick("Q4_K").unwrap_err();
        assert!(
            err.contains("no GGUF file for Q4_K") && err.contains("q4_k_s.gguf"),
            "{err}"
        );
        let err = pick("Q6_K").unwrap_err();
        assert!(
            err.contains("2 files") && err.contains("00002-of-00002"),
            "{err}"
        );
        let err = pick_quant(["config.json"].into_iter(), "Q4_K_M").unwrap_err();
        assert!(err.contains("no .gguf files"), "{err}");
    }
}
