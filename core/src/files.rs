//! Loading the files of a model directory with errors that name the file, and the one
//! sha256 of a file that the model store and checkpoints verify against.

use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// Lower-case hex sha256 of a file's contents (64 characters), read in 1 MiB chunks;
/// `progress` is told the byte count of each chunk (to advance a progress bar).
///
/// # Errors
/// The IO error of opening or reading `path`, for the caller to name the file.
pub fn sha256_file(path: &Path, mut progress: impl FnMut(u64)) -> std::io::Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        progress(n as u64);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_file_is_lower_hex_and_reports_the_bytes_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let mut read = 0;
        let digest = sha256_file(&path, |n| read += n).unwrap();
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(read, 3);
        let missing = sha256_file(&dir.path().join("missing"), |_| {}).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
