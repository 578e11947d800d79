// How prip-guest becomes a WASM component, shared by the two places that build one:
// prip-proxy's build script (the built-in adapters) and prip-test-support (the sandbox
// tests' misbehaving adapter). Both `include!` this file: a build script cannot depend
// on a library crate of the same workspace without building it for the host first.

/// Builds prip-guest for wasm32 with one `feature` (a protocol, or `faulty`) by a nested
/// `cargo` run in `workspace` into `target_dir`, and returns the module made a
/// component. Panics with the cargo output, and a hint when the wasm32 target is
/// missing, since both callers are build steps with no one to return an error to.
pub fn build_component(
    cargo: &std::ffi::OsStr,
    workspace: &std::path::Path,
    target_dir: &std::path::Path,
    feature: &str,
) -> Vec<u8> {
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--locked", "-p", "prip-guest"])
        .args(["--target", "wasm32-unknown-unknown", "--features", feature])
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's flags and wrappers (clippy-driver under `cargo clippy`) are for
    // the host crates, not for the guest.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run cargo for a wasm adapter");
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("wasm32-unknown-unknown")
            && stderr.contains("target may not be installed")
        {
            "\nThe wasm32 target is missing: run `rustup toolchain install` in the repository \
             (rust-toolchain.toml lists the target)."
        } else {
            ""
        };
        panic!("building the {feature} adapter for wasm32 failed:{hint}\n{stderr}");
    }
    // One crate, one file name: read it before the next feature's build overwrites it.
    let wasm = target_dir.join("wasm32-unknown-unknown/release/prip_guest.wasm");
    let module = std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
    wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|e| e.validate(true).encode())
        .unwrap_or_else(|e| panic!("making the {feature} adapter a component: {e:#}"))
}
