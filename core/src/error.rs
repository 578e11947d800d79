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
    /// A request names a system the checkpoint has no configuration for.
    #[error("unknown system {name:?} (this model has: {})", known.join(", "))]
    UnknownSystem {
        /// The name requested.
        name: String,
        /// The systems the checkpoint has, `base` first.
        known: Vec<String>,
    },
    /// The failure of a batch decoded together, given to each of its requests: the same
    /// error (and message) as the batch's own.
    #[error(transparent)]
    Batch(std::sync::Arc<Error>),
    /// A broken invariant of prip-core itself (a bug to report), never a user's mistake.
    #[error("internal error: {0}")]
    Internal(String),
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

/// Whether an error's text says a device ran out of memory: CUDA's
/// `CUDA_ERROR_OUT_OF_MEMORY` (as candle and cudarc print it), cuBLAS's failed
/// allocation, or an allocator's "out of memory".
pub fn is_out_of_memory(text: &str) -> bool {
    text.contains("CUDA_ERROR_OUT_OF_MEMORY")
        || text.contains("CUBLAS_STATUS_ALLOC_FAILED")
        || text.to_ascii_lowercase().contains("out of memory")
}

impl Error {
    /// For the code that chose a batch's size: an out-of-memory error becomes one line
    /// naming the batch that was tried (`batch` of `what`, e.g. "prompts") and what to
    /// lower; any other error is returned as it is.
    pub fn with_batch_hint(self, batch: usize, what: &str, lower: &str) -> Error {
        if !is_out_of_memory(&self.to_string()) {
            return self;
        }
        Error::Device(format!(
            "out of device memory with a batch of {batch} {what}; lower {lower}"
        ))
    }
}

/// Error text as one line, for a terminal, a log field, a JSON reply or a C string: the
/// lines of `text`, trimmed and joined by one space, without empty lines, without the
/// frames of a Rust backtrace (which candle attaches to its errors under
/// `RUST_BACKTRACE`: `N: function` lines and their `at file:line:column` lines), and
/// with each NUL byte made a space.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_backtrace_line(l))
        .collect::<Vec<_>>()
        .join(" ")
        .replace('\0', " ")
}

/// A trimmed line that is a backtrace frame (`12: name`) or a frame's source location
/// (`at path:line` or `at path:line:column`).
fn is_backtrace_line(line: &str) -> bool {
    let frame = line.split_once(':').is_some_and(|(n, rest)| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && rest.starts_with(char::is_whitespace)
    });
    let location = line.strip_prefix("at ").is_some_and(|place| {
        !place.contains(char::is_whitespace)
            && place
                .rsplit(':')
                .next()
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    frame || location
}

#[cfg(test)]
mod tests {
    use super::{one_line, Error};

    #[test]
    fn a_batch_failure_reads_as_its_own_error() {
        let e = Error::Batch(std::sync::Arc::new(Error::Device(
            "cuda:0: out of memory".into(),
        )));
        assert_eq!(e.to_string(), "device: cuda:0: out of memory");
        let unknown = Error::UnknownSystem {
            name: "nope".into(),
            known: vec!["base".into(), "sdxl".into()],
        };
        assert_eq!(
            unknown.to_string(),
            "unknown system \"nope\" (this model has: base, sdxl)"
        );
    }

    #[test]
    fn out_of_memory_names_the_batch() {
        // As candle 0.11 prints a cudarc driver error.
        let oom = Error::Candle(candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        ));
        assert_eq!(
            oom.with_batch_hint(32, "prompts", "the number of prompts per call")
                .to_string(),
            "device: out of device memory with a batch of 32 prompts; lower the number of prompts per call"
        );
        let other = Error::Config("x".into()).with_batch_hint(32, "prompts", "it");
        assert_eq!(other.to_string(), "invalid config: x");
        assert!(super::is_out_of_memory("CUBLAS_STATUS_ALLOC_FAILED"));
        assert!(!super::is_out_of_memory("shape mismatch"));
    }

    #[test]
    fn one_line_joins_lines_and_drops_backtraces() {
        assert_eq!(
            one_line("  shape mismatch \n\n  in matmul\n"),
            "shape mismatch in matmul"
        );
        let candle = "cannot open x\n   0: candle_core::error::Error::bt\n             at \
                      /src/error.rs:264:25\n   1: main\n             at ./src/main.rs:3";
        assert_eq!(one_line(candle), "cannot open x");
        // A message after a backtrace (anyhow's `{e:#}` runs the next one onto the last
        // location line) stays.
        let chained = "tensor error: no such op\n   0: candle_core::error::Error::bt\n      \
                       at ./src/error.rs:264:25: no such op";
        assert_eq!(
            one_line(chained),
            "tensor error: no such op at ./src/error.rs:264:25: no such op"
        );
        assert_eq!(one_line("bad\0byte"), "bad byte");
        // Ordinary lines that merely start with a number or with "at" stay.
        assert_eq!(one_line("a\n3:2 ratio\nat most 4"), "a 3:2 ratio at most 4");
    }
}
