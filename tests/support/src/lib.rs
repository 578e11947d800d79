//! What the workspace's tests share, kept out of the shipped crates: every crate that
//! uses it lists it under `[dev-dependencies]` only.
//!
//! - [`models`]: tiny random models and PRIP checkpoints in the real on-disk formats.
//! - [`cases`]: image-server requests for the protocols, built from the recordings.
//! - [`artifacts`]: `libprip_abi` as a shared library and the misbehaving WASM adapter.
//! - [`fixtures_dir`] and [`fixture`]: recordings of real image servers, in this
//!   repository's `tests/fixtures` (its README says what each file is).
//!
//! It depends on prip-protocols but not on prip-core, so prip-core's own tests link
//! one copy of prip-core; prip-protocols' unit tests link two copies of
//! prip-protocols and must pass only plain JSON across.

use std::path::{Path, PathBuf};

use serde_json::Value;

pub mod artifacts;
pub mod cases;
pub mod models;

/// `tests/fixtures` of this repository.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/support lies in tests/")
        .join("fixtures")
}

/// Reads a fixture (a path relative to [`fixtures_dir`]) as JSON; panics with the
/// path, as tests want.
pub fn fixture(rel: &str) -> Value {
    let path = fixtures_dir().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}
