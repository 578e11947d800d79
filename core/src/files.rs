//! Loading the files of a model directory with errors that name the file.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// Reads and parses a JSON file, naming it in the error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, e))
}

/// Loads a safetensors file fully into memory (no mmap: a file truncated under us must be
/// an error, not a SIGBUS) as a var builder.
pub(crate) fn safetensors_vb(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    VarBuilder::from_buffered_safetensors(bytes, dtype, device)
        .map_err(|e| Error::bad_file(path, e))
}

/// Loads a tokenizer.json.
pub(crate) fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(Error::io(path, std::io::ErrorKind::NotFound.into()));
    }
    Tokenizer::from_file(path).map_err(|e| Error::bad_file(path, e))
}
