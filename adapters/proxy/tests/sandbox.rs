//! The WASM adapters: the same cases as prip-protocols' native tests give the same
//! outcome through the components, and misbehaving adapters are contained.

use std::time::{Duration, Instant};

use prip_protocols::Request;
use prip_proxy::sandbox::{AdapterHost, FailureKind, Limits};
use prip_test_support::artifacts::faulty_component;
use prip_test_support::cases;

#[test]
fn every_case_gives_the_native_outcome_through_wasm() {
    let host = AdapterHost::with_builtin(Limits::default()).unwrap();
    let natives = prip_protocols::builtin();
    let all = cases::all();
    assert!(all.len() > 20);
    for case in &all {
        let idx = host.find(case.protocol).unwrap();
        let native = natives
            .iter()
            .find(|p| p.describe().name == case.protocol)
            .unwrap();
        let wasm = cases::outcome(
            case,
            |r| host.extract(idx, r).map_err(|e| e.message),
            |r, reps| host.apply(idx, r, reps).map_err(|e| e.message),
            |r, reps, resp| host.annotate(idx, r, reps, resp).map_err(|e| e.message),
        );
        assert_eq!(
            wasm,
            cases::native_outcome(native.as_ref(), case),
            "{}: {}",
            case.protocol,
            case.name
        );
    }
}

#[test]
fn a_body_the_component_refined_reads_as_refined_through_it() {
    let host = AdapterHost::with_builtin(Limits::default()).unwrap();
    let comfy = host.find("comfyui").unwrap();
    let req = Request::post(
        "/prompt",
        serde_json::to_vec(&cases::comfyui_flux_zero_out()).unwrap(),
    );
    let first = host.extract(comfy, &req).unwrap();
    assert_eq!(first.seed, Some(7));
    assert!(!first.refined);
    let reps = cases::refine_positive(&first.slots);
    assert_eq!(reps.len(), 1, "the Flux positive is refined");
    let body = host.apply(comfy, &req, &reps).unwrap();
    let again = host.extract(comfy, &Request { body, ..req }).unwrap();
    assert!(again.refined);
    assert_eq!(
        host.adapters()[comfy].info.dialect,
        prip_protocols::Dialect::ComfyUi
    );
}

#[test]
fn builtin_adapters_describe_themselves_like_the_native_code() {
    let host = AdapterHost::with_builtin(Limits::default()).unwrap();
    let wasm: Vec<_> = host.adapters().iter().map(|a| a.info.clone()).collect();
    let native: Vec<_> = prip_protocols::builtin()
        .iter()
        .map(|p| p.describe())
        .collect();
    assert_eq!(wasm, native);
}

fn faulty_host(limits: Limits) -> (AdapterHost, usize) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(faulty_component(), dir.path().join("faulty.wasm")).unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm not really").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let mut host = AdapterHost::with_builtin(limits).unwrap();
    let errors = host.load_dir(dir.path()).unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].to_string().contains("broken.wasm"));
    let idx = host
        .find("faulty")
        .expect("faulty adapter loaded from the directory");
    (host, idx)
}

fn ask(host: &AdapterHost, idx: usize, what: &str) -> FailureKind {
    let req = Request::post(
        "/faulty",
        format!(r#"{{"prompt": "a cat", "do": "{what}"}}"#),
    );
    host.extract(idx, &req).unwrap_err().kind
}

#[test]
fn misbehaving_adapters_fail_their_call_only() {
    let (host, idx) = faulty_host(Limits {
        fuel: 2_000_000_000,
        deadline: Duration::from_secs(20),
        memory_bytes: 64 << 20,
    });
    assert_eq!(ask(&host, idx, "trap"), FailureKind::Trap);
    assert_eq!(ask(&host, idx, "loop"), FailureKind::Fuel);
    assert_eq!(ask(&host, idx, "oom"), FailureKind::Memory);
    assert_eq!(ask(&host, idx, "garbage"), FailureKind::Garbage);
    let apply = host
        .apply(
            idx,
            &Request::post("/faulty", r#"{"prompt": "a", "do": "garbage"}"#),
            &[],
        )
        .unwrap_err();
    assert_eq!(apply.kind, FailureKind::Garbage);
    // The same host still serves well-behaved calls, its own and the others'.
    let ok = host
        .extract(idx, &Request::post("/faulty", r#"{"prompt": "a cat"}"#))
        .unwrap();
    assert_eq!(ok.slots[0].text, "a cat");
    let comfy = host.find("comfyui").unwrap();
    let req = Request::post(
        "/prompt",
        serde_json::to_vec(&prip_test_support::fixture(
            "comfyui/prompt_request_txt2img_api.json",
        ))
        .unwrap(),
    );
    let found = host.extract(comfy, &req).unwrap();
    assert_eq!(found.slots.len(), 2);
    assert_eq!(found.seed, Some(1));
    assert!(!found.refined);
}

#[test]
fn a_loop_is_stopped_by_the_deadline_when_fuel_would_last() {
    let (host, idx) = faulty_host(Limits {
        fuel: u64::MAX / 2,
        deadline: Duration::from_millis(200),
        memory_bytes: 64 << 20,
    });
    let t = Instant::now();
    assert_eq!(ask(&host, idx, "loop"), FailureKind::Deadline);
    // Not a timing assertion on speed: only that the guest was stopped at all.
    assert!(t.elapsed() < Duration::from_secs(60));
}

#[test]
fn adapters_that_are_not_components_are_refused_with_a_reason() {
    let mut host = AdapterHost::new(Limits::default()).unwrap();
    let err = host.load_bytes("junk", b"hello").unwrap_err().to_string();
    assert!(err.starts_with("adapter junk:"), "{err}");
    host.load_bytes("one", prip_proxy::builtin::COMPONENTS[0].1)
        .unwrap();
    let dup = host
        .load_bytes("two", prip_proxy::builtin::COMPONENTS[0].1)
        .unwrap_err()
        .to_string();
    assert!(dup.contains("taken by one"), "{dup}");
}
