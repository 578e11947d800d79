//! The C and Python examples (examples/c, examples/python) built and run against the
//! libprip_abi of this build and a tiny checkpoint.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use prip_test_support::artifacts::{cdylib as library, profile_dir as lib_dir};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn tiny_config(dir: &Path) -> String {
    prip_test_support::models::write_tiny_checkpoint(dir, "\n[generation]\nmax_new_tokens = 6\n")
        .unwrap();
    json!({"model": dir, "home": dir.join("store"), "fetch": false, "device": "cpu"}).to_string()
}

#[test]
fn c_example_compiles_and_refines() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("refine");
    library();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .arg(root().join("examples/c/refine.c"))
        .arg("-I")
        .arg(root().join("plugin-abi/include"))
        .arg("-L")
        .arg(lib_dir())
        .args(["-lprip_abi", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("running the C compiler {cc}: {e}"));
    assert!(status.success());
    let model = dir.path().join("model");
    let out = Command::new(&exe)
        .arg(tiny_config(&model))
        .args(["a \"quoted\" cat", "a dog"])
        .env("LD_LIBRARY_PATH", lib_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["refined"]
        .as_str()
        .unwrap()
        .starts_with("a \"quoted\" cat"));
    assert_eq!(lines[1]["seed"], 7);

    let bad = Command::new(&exe)
        .args([r#"{"model": "/no/such/model", "fetch": false}"#, "a cat"])
        .env("LD_LIBRARY_PATH", lib_dir())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("open: "));
}

#[test]
fn python_example_refines_through_ctypes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(root().join("examples/python/refine.py"))
        .arg(library())
        .arg(tiny_config(dir.path()))
        .args(["a cat", "a lighthouse at dusk"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("a cat"));
    assert!(lines[1].starts_with("a lighthouse at dusk"));
}
