//! The one error type of prip-core.

use std::path::PathBuf;

/// Everything that can go wrong inside the refiner, each variant a one-line message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch, device error, corrupt weights, ...).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A model file exists but is not what it claims to be.
    #[error("{path}: {reason}")]
    BadModelFile {
        /// The offending file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// A config (config.json, prip.toml, generation options) is inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// A tokenizer could not be loaded or failed on input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A user prompt was refused before any model work.
    #[error("{0}")]
    Prompt(String),
    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// The model store could not provide an asset.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// prip-core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an IO error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A model file that failed to parse or validate.
    pub fn bad_file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Error::BadModelFile {
            path: path.into(),
            reason: one_line(&reason.to_string()),
        }
    }
}

/// Collapses a multi-line message (candle errors carry backtraces) into its first line.
pub(crate) fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}
