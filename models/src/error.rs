use std::path::PathBuf;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error(
        "weights {path} have SHA-256 {actual}, but the config says {expected}; refusing to serve them"
    )]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn format(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        ModelError::Format {
            path: path.to_owned(),
            message: message.to_string(),
        }
    }
}
