//! Builds the built-in adapters: prip-guest compiled for wasm32 once per protocol,
//! each module made a component, embedded in the binary by `src/builtin.rs`.
//!
//! The guests are built by a nested cargo into their own target directory
//! (`target/wasm-guests`), so it never waits on the outer build's lock and later
//! builds reuse it. Build scripts running at once take turns on it (a file lock).

use std::path::{Path, PathBuf};

const PROTOCOLS: [&str; 4] = ["a1111", "comfyui", "diffusers", "openai-images"];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    for watched in [
        "adapters/wit",
        "adapters/guest/src",
        "adapters/guest/Cargo.toml",
        "adapters/guest/component.rs",
        "adapters/protocols/src",
        "adapters/protocols/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    // A relative CARGO_TARGET_DIR is relative to where cargo ran, not to this script's
    // folder; the workspace root is where it is given in practice.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"))
        .join("wasm-guests");
    let out_dir = PathBuf::from(env("OUT_DIR"));
    // Every protocol's guest is the same crate, written to the same file; two build
    // scripts at once (a dev and a release build, `cargo clippy` beside `cargo test`)
    // would otherwise read each other's module. Hold the directory until all are read.
    std::fs::create_dir_all(&target_dir).expect("create the guests' target directory");
    let lock = std::fs::File::create(target_dir.join("prip-build.lock")).expect("lock file");
    lock.lock().expect("lock the guests' target directory");
    let mut table = String::from("&[\n");
    for protocol in PROTOCOLS {
        let file = build_component(&root, &target_dir, &out_dir, protocol);
        table.push_str(&format!(
            "    ({protocol:?}, include_bytes!({:?})),\n",
            file.display().to_string()
        ));
    }
    table.push(']');
    std::fs::write(out_dir.join("builtin.rs"), table).expect("write builtin.rs");
    drop(lock);
}

/// Builds one protocol's guest and writes it as `OUT_DIR/<protocol>.wasm`, a component.
fn build_component(root: &Path, target_dir: &Path, out_dir: &Path, protocol: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let component = guest::build_component(&cargo, root, target_dir, protocol);
    let file = out_dir.join(format!("{protocol}.wasm"));
    std::fs::write(&file, component).expect("write component");
    file
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("cargo sets {key}"))
}

mod guest {
    include!("../guest/component.rs");
}
