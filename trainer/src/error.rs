//! Trainer errors: one line each, naming the file and line or the step.

use std::path::{Path, PathBuf};

/// Everything that can stop a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// From the refiner's own code (models, checkpoints, store).
    #[error(transparent)]
    Core(#[from] prip_core::Error),
    /// A base model could not be fetched.
    #[error(transparent)]
    Store(#[from] prip_core::store::StoreError),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A bad training configuration.
    #[error("{0}")]
    Config(String),
    /// Too many corpus lines could not be used.
    #[error(
        "{file}: {bad} of {seen} lines unusable, more than allowed (max_bad_share); last: {last}"
    )]
    TooManyBadLines {
        /// The corpus file.
        file: PathBuf,
        /// Bad lines so far.
        bad: usize,
        /// Lines read so far.
        seen: usize,
        /// The last reason.
        last: String,
    },
    /// The device ran out of memory; the message names the batch size and what to lower.
    #[error("{0}")]
    OutOfMemory(String),
    /// A loss or gradient became NaN or infinite.
    #[error("non-finite value: {0}")]
    NonFinite(String),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;
