//! The ComfyUI node package and the A1111/Forge extension (adapters/plugins/comfyui,
//! adapters/plugins/a1111): their pytest suites, run against small fakes of the host APIs and
//! the real libprip_abi of this build with a tiny checkpoint.
//!
//! Needs pytest (`python3 -m pip install -r requirements-test.txt`); a missing pytest
//! fails this test rather than skipping it.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn pytest(suite: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    prip_test_support::models::write_tiny_checkpoint(
        &model,
        "\n[generation]\nmax_new_tokens = 8\n",
    )
    .unwrap();
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", suite])
        .current_dir(root())
        .env("PRIP_LIB", prip_test_support::artifacts::cdylib())
        .env("PRIP_MODEL", &model)
        .env("PRIP_HOME", dir.path().join("home"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !report.contains("No module named pytest"),
        "pytest is not installed: python3 -m pip install -r requirements-test.txt"
    );
    // Exit status 5 means no test was collected: a suite that vanished is a failure too.
    assert!(out.status.success(), "pytest {suite} failed:\n{report}");
    eprintln!("{report}");
}

#[test]
fn comfyui_node_package() {
    pytest("adapters/plugins/comfyui/tests");
}

#[test]
fn a1111_extension() {
    pytest("adapters/plugins/a1111/tests");
}
