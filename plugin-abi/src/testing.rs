//! Helpers for tests that need `libprip_abi` as a shared library.

use std::path::PathBuf;
use std::process::Command;

/// Builds the cdylib of this crate into the target directory of the running test
/// binary (`cargo test` builds only the rlib) and returns its path. The build is
/// incremental: everything it needs was compiled for the tests already.
pub fn cdylib() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = profile_dir();
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--locked", "-p", "prip-abi", "--lib"]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd
                .arg("--target-dir")
                .arg(dir.parent().expect("target/<profile>"))
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo");
            assert!(status.success(), "building libprip_abi failed");
            dir.join(format!(
                "{}prip_abi{}",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            ))
        })
        .clone()
}

/// target/<profile> of the running test binary (which lives in its deps/).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}
