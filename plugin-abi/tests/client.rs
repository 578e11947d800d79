//! prip_abi::client against the real libprip_abi of this build, and against libraries
//! that are not one.

use std::path::{Path, PathBuf};
use std::process::Command;

use prip_abi::client::{LibError, LibRefiner, Library};
use prip_core::device::DeviceSpec;
use prip_core::store::ModelStore;
use prip_core::{RefineRequest, Refiner, RefinerOptions};
use prip_test_support::artifacts::cdylib;
use serde_json::json;

/// Every field of the one request type, so a field the library client drops shows.
fn requests() -> Vec<RefineRequest> {
    let base = |p: &str| RefineRequest {
        seed: Some(7),
        ..RefineRequest::new(p)
    };
    vec![
        base("a cat"),
        RefineRequest {
            dialect: prip_core::Dialect::ComfyUi,
            ..base("a red fox # not a comment in ComfyUI")
        },
        RefineRequest {
            system: Some("base".into()),
            generation: prip_core::sampling::GenerationPatch {
                max_new_tokens: Some(2),
                ..Default::default()
            },
            ..base("a lighthouse at dusk")
        },
    ]
}

#[test]
fn library_refines_like_the_in_process_refiner() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    prip_test_support::models::write_tiny_checkpoint(
        &model,
        "\n[generation]\nmax_new_tokens = 6\n",
    )
    .unwrap();
    let store = dir.path().join("store");

    let lib = Library::load(&cdylib()).unwrap();
    assert_eq!(lib.version().0, prip_abi::PRIP_ABI_VERSION_MAJOR);
    let remote = LibRefiner::open(
        lib.clone(),
        &json!({"model": model, "home": store, "fetch": false, "device": "cpu"}),
    )
    .unwrap();
    let via_lib = remote.refine(&requests(), None).unwrap();

    let opts = RefinerOptions {
        model: model.to_string_lossy().into(),
        device: DeviceSpec::Cpu,
        fetch: false,
    };
    let mut local = Refiner::open_with_store(&opts, &ModelStore::new(store)).unwrap();
    let in_process = local.refine(&requests());
    assert_eq!(via_lib.len(), 3);
    for (a, b) in via_lib.iter().zip(&in_process) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(a.refined, b.refined);
        assert_eq!(a.details, b.details);
        assert_eq!(a.outcome, b.outcome);
        assert_eq!(a.timings.new_tokens, b.timings.new_tokens);
        assert_eq!(a.seed, 7);
    }

    // Generation options travel, and a bad one is the library's one-line error.
    let short = remote
        .refine(&requests()[..1], Some(&json!({"max_new_tokens": 1})))
        .unwrap();
    let mut one_token = local.generation_defaults().clone();
    one_token.max_new_tokens = 1;
    let expected = local.refine_with(&requests()[..1], &one_token);
    assert_eq!(
        short[0].as_ref().unwrap().refined,
        expected[0].as_ref().unwrap().refined
    );
    let err = remote
        .refine(&requests(), Some(&json!({"temperature": "hot"})))
        .unwrap_err();
    assert!(
        matches!(
            err,
            LibError::Call {
                call: "prip_refine_batch",
                status: 3,
                ..
            }
        ),
        "{err}"
    );

    // A prompt the refiner refuses fails alone.
    let mut mixed = requests();
    mixed[1].prompt = "x".repeat(1 << 20);
    let results = remote.refine(&mixed, None).unwrap();
    assert!(results[0].is_ok());
    assert!(!results[1].as_ref().unwrap_err().is_empty());

    let err = LibRefiner::open(
        lib,
        &json!({"model": dir.path().join("nothing"), "fetch": false}),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("prip_open: "), "{err}");
}

/// Compiles `source` into a shared library with the system C compiler.
fn c_library(dir: &Path, source: &str) -> PathBuf {
    let c = dir.join("lib.c");
    std::fs::write(&c, source).unwrap();
    let so = dir.join(format!("libfake{}", std::env::consts::DLL_SUFFIX));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&c)
        .status()
        .unwrap_or_else(|e| panic!("running the C compiler {cc}: {e}"));
    assert!(status.success());
    so
}

#[test]
fn other_major_versions_and_other_libraries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = c_library(
        dir.path(),
        "unsigned prip_abi_version(void) { return (2u << 16) | 3u; }",
    );
    let err = Library::load(&v2).unwrap_err();
    assert!(matches!(
        err,
        LibError::Version {
            major: 2,
            minor: 3,
            expected: 1,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("implements PRIP ABI 2.3, but this prip needs ABI 1.x"),
        "{msg}"
    );

    let dir = tempfile::tempdir().unwrap();
    let partial = c_library(
        dir.path(),
        "unsigned prip_abi_version(void) { return 1u << 16; }",
    );
    let err = Library::load(&partial).unwrap_err();
    assert!(
        matches!(
            err,
            LibError::Symbol {
                symbol: "prip_open",
                ..
            }
        ),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let other = c_library(dir.path(), "int answer(void) { return 42; }");
    let err = Library::load(&other).unwrap_err();
    assert!(err.to_string().contains("has no prip_abi_version"), "{err}");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a library").unwrap();
    let err = Library::load(&text).unwrap_err();
    assert!(matches!(err, LibError::Load { .. }));
    assert!(!err.to_string().contains('\n'));
}
