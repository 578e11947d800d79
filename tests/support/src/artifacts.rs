//! Build products a test needs that `cargo test` does not make: `libprip_abi` as a
//! shared library, and the misbehaving WASM adapter of the sandbox tests. Each is built
//! on first use by a nested cargo and reused afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds the cdylib of prip-abi into the target directory of the running test
/// binary (`cargo test` builds only the rlib) and returns its path. The build is
/// incremental: everything it needs was compiled for the tests already.
pub fn cdylib() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
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

/// The misbehaving adapter (prip-guest's `faulty` feature: it traps, loops, hoards
/// memory or answers garbage when the body's `do` field asks) as a component file,
/// for the tests that load adapters from a directory. Built for wasm32 into
/// `target/test-guests`, apart from the built-in adapters: prip-proxy's build script
/// never builds it, so no `prip` binary carries it.
pub fn faulty_component() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = profile_dir()
                .parent()
                .expect("target/<profile>")
                .join("test-guests");
            let component = guest::build_component(
                env!("CARGO").as_ref(),
                Path::new(env!("CARGO_MANIFEST_DIR")),
                &target,
                "faulty",
            );
            // Test binaries running at once may each write it: rename a whole file into
            // place so that none reads another's half-written one.
            let file = target.join("faulty.wasm");
            let part = target.join(format!("faulty.wasm.{}", std::process::id()));
            std::fs::write(&part, component).expect("write the faulty component");
            std::fs::rename(&part, &file).expect("move the faulty component into place");
            file
        })
        .clone()
}

mod guest {
    include!("../../../adapters/guest/component.rs");
}
