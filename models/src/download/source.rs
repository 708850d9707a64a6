//! Parsing model sources: a local path, `hf://owner/repo[@revision]/file` (one file),
//! `hf://owner/repo[@revision]` (a whole checkpoint) or `hf://owner/repo[@revision]:QUANT`
//! (the GGUF file of that quantisation).

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use super::DownloadError;

/// The scheme that marks a hub source in a config file.
pub const HUB_SCHEME: &str = "hf://";

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A file or directory on this machine, used as it is.
    Local(PathBuf),
    /// One file of a hub repository.
    Hub(HubFile),
    /// A whole checkpoint, or one GGUF picked by quantisation name.
    Repo(HubRepo),
}

/// One file of one revision of a hub repository. Built by parsing, so every part is
/// non-empty and the file path cannot climb out of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    pub(super) repo: RepoRef,
    pub(super) file: String,
}

/// A repository at a revision, and optionally the quantisation to pick from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    pub(super) repo: RepoRef,
    pub(super) quant: Option<String>,
}

/// `owner/repo@revision`, each part a plain name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub owner: String,
    pub name: String,
    /// The branch, tag or commit; `main` when the source named none.
    pub revision: String,
}

impl RepoRef {
    /// `owner/repo`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// The revision as one URL path segment (`refs/pr/1` -> `refs%2Fpr%2F1`).
    pub(super) fn revision_in_url(&self) -> String {
        self.revision.replace('/', "%2F")
    }

    /// `{endpoint}/{owner}/{repo}/resolve/{revision}/{file}`.
    pub fn resolve_url(&self, endpoint: &str, revision: &str, file: &str) -> String {
        let endpoint = endpoint.trim_end_matches('/');
        let revision = revision.replace('/', "%2F");
        format!(
            "{endpoint}/{}/{}/resolve/{revision}/{file}",
            self.owner, self.name
        )
    }

    /// `{endpoint}/api/models/{owner}/{repo}/revision/{revision}?blobs=true`.
    pub fn api_url(&self, endpoint: &str) -> String {
        let endpoint = endpoint.trim_end_matches('/');
        format!(
            "{endpoint}/api/models/{}/{}/revision/{}?blobs=true",
            self.owner,
            self.name,
            self.revision_in_url()
        )
    }
}

impl HubFile {
    /// `owner/repo`.
    pub fn repo_id(&self) -> String {
        self.repo.id()
    }

    /// The branch, tag or commit; `main` when the source named none.
    pub fn revision(&self) -> &str {
        &self.repo.revision
    }

    /// The file's path inside the repository.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// `{endpoint}/{owner}/{repo}/resolve/{revision}/{file}`.
    pub fn url(&self, endpoint: &str) -> String {
        self.repo
            .resolve_url(endpoint, &self.repo.revision, &self.file)
    }

    /// Where the downloader before the Hugging Face cache kept this file under
    /// `cache_dir` (`{owner}/{repo}/{revision}/{file}`); the provider still reuses
    /// such a file when it has the configured digest.
    pub fn legacy_cache_path(&self, cache_dir: &Path) -> PathBuf {
        // A revision such as `refs/pr/1` must stay one directory.
        let revision = self.repo.revision.replace('/', "--");
        let mut path = cache_dir
            .join(&self.repo.owner)
            .join(&self.repo.name)
            .join(revision);
        path.extend(self.file.split('/'));
        path
    }
}

impl HubRepo {
    pub fn repo(&self) -> &RepoRef {
        &self.repo
    }

    /// The quantisation name after `:`, when the source named one.
    pub fn quant(&self) -> Option<&str> {
        self.quant.as_deref()
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{HUB_SCHEME}{}/{}@{}",
            self.owner, self.name, self.revision
        )
    }
}

impl fmt::Display for HubFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.repo, self.file)
    }
}

impl fmt::Display for HubRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.quant {
            Some(quant) => write!(f, "{}:{quant}", self.repo),
            None => write!(f, "{}", self.repo),
        }
    }
}

/// A name we accept as one path segment: not empty, not `.` or `..`, at most 255
/// bytes, no separators, no control characters.
pub(super) fn plain_segment(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 255
        && part != "."
        && part != ".."
        && !part.contains(['/', '\\', ':'])
        && !part.chars().any(char::is_control)
}

/// A repository-relative file path of plain segments (at most 16 deep, 1024 bytes).
pub(super) fn plain_path(path: &str) -> bool {
    path.len() <= 1024
        && path.split('/').count() <= 16
        && path.split('/').all(plain_segment)
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

impl FromStr for ModelSource {
    type Err = DownloadError;

    /// `hf://owner/repo[@revision]/path/to/file` is a hub file,
    /// `hf://owner/repo[@revision][:QUANT]` a repository; anything else a path.
    fn from_str(s: &str) -> Result<Self, DownloadError> {
        let Some(rest) = s.strip_prefix(HUB_SCHEME) else {
            return Ok(ModelSource::Local(PathBuf::from(s)));
        };
        let bad = |reason: &str| DownloadError::BadSource {
            source_text: s.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(owner), Some(repo_rev)) = (parts.next(), parts.next()) else {
            return Err(bad(
                "expected hf://owner/repo[@revision], hf://owner/repo[@revision]:QUANT \
                 or hf://owner/repo[@revision]/file",
            ));
        };
        let file = parts.next();
        let (repo_rev, quant) = match (file, repo_rev.split_once(':')) {
            (None, Some((repo_rev, quant))) => (repo_rev, Some(quant)),
            _ => (repo_rev, None),
        };
        let (name, revision) = repo_rev.split_once('@').unwrap_or((repo_rev, "main"));
        if !plain_segment(owner) || !plain_segment(name) || !plain_segment(revision) {
            return Err(bad(
                "owner, repo and revision must be non-empty plain names",
            ));
        }
        let repo = RepoRef {
            owner: owner.to_owned(),
            name: name.to_owned(),
            revision: revision.to_owned(),
        };
        match (file, quant) {
            (Some(file), _) if plain_path(file) => Ok(ModelSource::Hub(HubFile {
                repo,
                file: file.to_owned(),
            })),
            (Some(_), _) => Err(bad("the file must be a relative path without `.` or `..`")),
            (None, Some(quant)) if plain_segment(quant) && quant.len() <= 64 => {
                Ok(ModelSource::Repo(HubRepo {
                    repo,
                    quant: Some(quant.to_owned()),
                }))
            }
            (None, Some(_)) => Err(bad("the quantisation after `:` must be a plain name")),
            (None, None) => Ok(ModelSource::Repo(HubRepo { repo, quant: None })),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn hub(s: &str) -> HubFile {
        match s.parse::<ModelSource>().unwrap() {
            ModelSource::Hub(file) => file,
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    fn repo(s: &str) -> HubRepo {
        match s.parse::<ModelSource>().unwrap() {
            ModelSource::Repo(repo) => repo,
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    #[test]
    fn sources_parse() {
        let f = hub("hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf");
        assert_eq!(f.repo_id(), "Qwen/Qwen2.5-0.5B-Instruct-GGUF");
        assert_eq!(f.revision(), "main");
        assert_eq!(
            f.url("https://huggingface.co/"),
            "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q4_k_m.gguf"
        );
        let f = hub("hf://o/r@refs/pr/1/sub/w.gguf");
        // `splitn(3)` keeps the revision before the first `/`; a slash in a revision
        // belongs in the file part, so `refs` is the revision here.
        assert_eq!((f.revision(), f.file()), ("refs", "pr/1/sub/w.gguf"));
        let f = hub("hf://o/r@abc123/dir/w.gguf");
        assert_eq!(
            f.legacy_cache_path(Path::new("/c")),
            Path::new("/c/o/r/abc123/dir/w.gguf")
        );
        assert_eq!(
            "models/x.gguf".parse::<ModelSource>().unwrap(),
            ModelSource::Local("models/x.gguf".into())
        );
        let r = repo("hf://HuggingFaceTB/SmolLM2-135M-Instruct");
        assert_eq!(
            (
                r.repo().id().as_str(),
                r.repo().revision.as_str(),
                r.quant()
            ),
            ("HuggingFaceTB/SmolLM2-135M-Instruct", "main", None)
        );
        assert_eq!(
            r.repo().api_url("http://h/"),
            "http://h/api/models/HuggingFaceTB/SmolLM2-135M-Instruct/revision/main?blobs=true"
        );
        let r = repo("hf://o/r@v2:Q4_K_M");
        assert_eq!(
            (r.repo().revision.as_str(), r.quant()),
            ("v2", Some("Q4_K_M"))
        );
        assert_eq!(repo("hf://o/r:q8_0").to_string(), "hf://o/r@main:q8_0");
        for bad in [
            "hf://o",
            "hf://o//f",
            "hf:///r/f",
            "hf://o/r@/f",
            "hf://o/r@",
            "hf://o/r:",
            "hf://o/r:a:b",
            "hf://o/r/../x",
            "hf://../r/f",
            "hf://o/r/a//b",
            "hf://o/r/a\\b",
            "hf://o/..",
        ] {
            assert!(
                bad.parse::<ModelSource>().is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn plain_names_only() {
        for ok in [
            "config.json",
            "a/b.safetensors",
            "model-00001-of-00002.safetensors",
        ] {
            assert!(plain_path(ok), "{ok}");
        }
        let long = "a".repeat(300);
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "./a",
            "a\\b",
            "a\nb",
            long.as_str(),
            "c:x",
        ] {
            assert!(!plain_path(bad), "{bad:?}");
        }
    }
}
