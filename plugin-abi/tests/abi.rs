//! The C ABI called as C would call it, on a tiny checkpoint made here.

use std::ffi::{c_char, CStr, CString};
use std::path::Path;
use std::ptr;
use std::sync::OnceLock;

use prip_abi::*;
use serde_json::{json, Value};

fn tiny() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        prip_test_support::models::write_tiny_checkpoint(
            dir.path(),
            "\n[generation]\nmax_new_tokens = 8\ntemperature = 0.8\n",
        )
        .unwrap();
        dir
    })
    .path()
}

fn config() -> String {
    json!({"model": tiny(), "home": tiny().join("store"), "fetch": false, "device": "cpu"})
        .to_string()
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn last_error() -> String {
    // SAFETY: the library returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(prip_last_error()) }
        .to_str()
        .unwrap()
        .to_string()
}

fn open() -> PripHandle {
    let mut h = 0;
    // SAFETY: valid string and out pointer.
    let status = unsafe { prip_open(c(&config()).as_ptr(), &mut h) };
    assert_eq!(status, PripStatus::Ok, "{}", last_error());
    assert_ne!(h, 0);
    h
}

/// Calls `f` with a request string; returns status and the parsed output.
fn call(
    f: unsafe extern "C" fn(PripHandle, *const c_char, *mut *mut c_char) -> PripStatus,
    h: PripHandle,
    request: &[u8],
) -> (PripStatus, Option<Value>) {
    let request = CString::new(request.to_vec()).unwrap();
    let mut out: *mut c_char = ptr::null_mut();
    // SAFETY: valid string and out pointer.
    let status = unsafe { f(h, request.as_ptr(), &mut out) };
    if out.is_null() {
        return (status, None);
    }
    // SAFETY: the library returned a string; freed once below.
    let text = unsafe { CStr::from_ptr(out) }.to_str().unwrap().to_string();
    // SAFETY: `out` came from the library and is not used after this one free.
    unsafe { prip_string_free(out) };
    (status, Some(serde_json::from_str(&text).unwrap()))
}

#[test]
fn version_is_major_minor() {
    assert_eq!(prip_abi_version() >> 16, PRIP_ABI_VERSION_MAJOR);
    assert_eq!(prip_abi_version() & 0xffff, PRIP_ABI_VERSION_MINOR);
}

#[test]
fn refine_one_and_a_batch() {
    let h = open();
    let (status, out) = call(prip_refine, h, br#"{"prompt": "a red fox", "seed": 7}"#);
    assert_eq!(status, PripStatus::Ok, "{}", last_error());
    assert_eq!(last_error(), "");
    let out = out.unwrap();
    assert_eq!(out["prompt"], "a red fox");
    assert_eq!(out["seed"], 7);
    let refined = out["refined"].as_str().unwrap();
    assert!(refined.starts_with("a red fox"), "{refined}");
    assert!(out["timings"]["total_ms"].as_f64().unwrap() >= 0.0);
    let (_, again) = call(prip_refine, h, br#"{"prompt": "a red fox", "seed": 7}"#);
    assert_eq!(
        again.unwrap()["refined"],
        out["refined"],
        "same seed, same text"
    );

    let batch =
        br#"[{"prompt": "a cat", "seed": 1}, {"prompt": "", "seed": 2}, {"prompt": "a dog"}]"#;
    let (status, out) = call(prip_refine_batch, h, batch);
    assert_eq!(status, PripStatus::Ok);
    let results = out.unwrap()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    assert!(results[0]["refined"].as_str().unwrap().starts_with("a cat"));
    assert!(
        results[1]["error"].is_string(),
        "the empty prompt fails alone"
    );
    assert!(results[2]["refined"].as_str().unwrap().starts_with("a dog"));

    let object =
        br#"{"requests": [{"prompt": "a cat", "seed": 1}], "generation": {"max_new_tokens": 2}}"#;
    let (status, out) = call(prip_refine_batch, h, object);
    assert_eq!(status, PripStatus::Ok, "{}", last_error());
    assert!(
        out.unwrap()["results"][0]["timings"]["new_tokens"]
            .as_u64()
            .unwrap()
            <= 2
    );
    assert_eq!(prip_close(h), PripStatus::Ok);
}

#[test]
fn bad_input_gets_a_status_and_a_message() {
    let h = open();
    let mut out: *mut c_char = ptr::null_mut();
    let req = c(r#"{"prompt": "a cat"}"#);
    // SAFETY: null pointers are what is being tested; the others are valid.
    unsafe {
        assert_eq!(
            prip_refine(h, ptr::null(), &mut out),
            PripStatus::NullPointer
        );
        assert!(last_error().contains("request_json"));
        assert_eq!(
            prip_refine(h, req.as_ptr(), ptr::null_mut()),
            PripStatus::NullPointer
        );
        let mut handle = 0;
        assert_eq!(prip_open(ptr::null(), &mut handle), PripStatus::NullPointer);
        assert_eq!(
            prip_open(c(&config()).as_ptr(), ptr::null_mut()),
            PripStatus::NullPointer
        );
        prip_string_free(ptr::null_mut());
    }
    assert!(out.is_null());
    let (status, _) = call(prip_refine, h, b"{\"prompt\": \"\xff\xfe\"}");
    assert_eq!(status, PripStatus::InvalidUtf8);
    for bad in [
        &b"{\"prompt\": "[..],
        b"[]",
        b"{\"prompt\": 3}",
        b"{\"prompt\": \"a\", \"colour\": 1}",
    ] {
        let (status, out) = call(prip_refine, h, bad);
        assert_eq!(
            status,
            PripStatus::InvalidJson,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(out.is_none());
        let msg = last_error();
        assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
    }
    let (status, _) = call(
        prip_refine,
        h,
        br#"{"prompt": "a", "generation": {"top_p": 7}}"#,
    );
    assert_eq!(status, PripStatus::InvalidJson);
    let mut handle = 0;
    let bad_model = c(r#"{"model": "/no/such/checkpoint", "fetch": false}"#);
    assert_eq!(
        // SAFETY: a valid C string and a valid out pointer.
        unsafe { prip_open(bad_model.as_ptr(), &mut handle) },
        PripStatus::Open
    );
    assert!(
        last_error().contains("/no/such/checkpoint"),
        "{}",
        last_error()
    );
    assert_eq!(prip_close(h), PripStatus::Ok);
}

#[test]
fn a_huge_prompt_is_refused_not_fatal() {
    let h = open();
    let huge = json!({"prompt": "a cat ".repeat(200_000)}).to_string();
    assert!(huge.len() > 1_000_000);
    let (status, out) = call(prip_refine, h, huge.as_bytes());
    assert_eq!(status, PripStatus::Refine);
    assert!(out.is_none());
    assert!(
        last_error().contains("long") || last_error().contains("bytes"),
        "{}",
        last_error()
    );
    let (status, _) = call(prip_refine, h, br#"{"prompt": "a cat"}"#);
    assert_eq!(status, PripStatus::Ok, "the handle still works");
    assert_eq!(prip_close(h), PripStatus::Ok);
}

#[test]
fn closed_and_unknown_handles_are_refused() {
    let h = open();
    assert_eq!(prip_close(h), PripStatus::Ok);
    let (status, _) = call(prip_refine, h, br#"{"prompt": "a cat"}"#);
    assert_eq!(status, PripStatus::BadHandle);
    assert!(last_error().contains("closed"));
    assert_eq!(prip_close(h), PripStatus::BadHandle);
    assert_eq!(prip_close(0), PripStatus::BadHandle);
    let (status, _) = call(prip_refine_batch, 987_654_321, b"[]");
    assert_eq!(status, PripStatus::BadHandle);
}

#[test]
fn many_threads_share_a_handle_while_another_closes() {
    let shared = open();
    let doomed = open();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                for j in 0..4 {
                    let prompt = format!("prompt {i} {j}");
                    let req = json!({"prompt": prompt, "seed": j}).to_string();
                    let (status, out) = call(prip_refine, shared, req.as_bytes());
                    assert_eq!(status, PripStatus::Ok, "{}", last_error());
                    assert!(out.unwrap()["refined"]
                        .as_str()
                        .unwrap()
                        .starts_with(&prompt));
                    // Errors are per thread: another thread's failure does not show here.
                    assert_eq!(last_error(), "");
                }
                if i == 0 {
                    assert_eq!(prip_close(doomed), PripStatus::Ok);
                } else {
                    let (status, _) = call(prip_refine, doomed, br#"{"prompt": "x"}"#);
                    assert!(matches!(status, PripStatus::Ok | PripStatus::BadHandle));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(prip_close(shared), PripStatus::Ok);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Fuzzing the entry points with arbitrary bytes: every call returns a status and
    /// never panics or crashes.
    #[test]
    fn arbitrary_input_never_panics(bytes in proptest::collection::vec(1u8..=255, 0..200),
                                    json_ish in "[\\[\\]{}\":,a-z0-9 ]{0,80}") {
        let h = fuzz_handle();
        for input in [bytes.clone(), json_ish.clone().into_bytes()] {
            for f in [prip_refine as unsafe extern "C" fn(_, _, _) -> _, prip_refine_batch, prip_rewrite] {
                let (status, _) = call(f, h, &input);
                proptest::prop_assert_ne!(status, PripStatus::Panic, "{}", last_error());
            }
            let cfg = CString::new(input.clone()).unwrap();
            let mut out = 0;
            // SAFETY: valid pointers.
            let status = unsafe { prip_open(cfg.as_ptr(), &mut out) };
            proptest::prop_assert_ne!(status, PripStatus::Panic);
            if status == PripStatus::Ok {
                prip_close(out);
            }
        }
    }
}

fn fuzz_handle() -> PripHandle {
    static H: OnceLock<PripHandle> = OnceLock::new();
    *H.get_or_init(open)
}

#[test]
fn rewrite_refines_the_positive_prompts_of_a_comfyui_workflow() {
    let h = open();
    let body = prip_test_support::cases::comfyui_with_workflow();
    let request = json!({"protocol": "comfyui", "body": body, "seed": 7});
    let (status, out) = call(prip_rewrite, h, request.to_string().as_bytes());
    assert_eq!(status, PripStatus::Ok, "{}", last_error());
    let out = out.unwrap();
    let refined = out["refined"].as_array().unwrap();
    assert_eq!(refined.len(), 1, "{out}");
    assert_eq!(refined[0]["polarity"], "positive");
    assert_eq!(refined[0]["original"], "a (red:1.2) fox, embedding:foo");
    let text = refined[0]["refined"].as_str().unwrap();
    assert!(text.starts_with("a (red:1.2) fox, embedding:foo"));
    assert_eq!(out["errors"], json!([]));
    let new = &out["body"];
    assert_eq!(new["prompt"]["6"]["inputs"]["text"], text);
    assert_eq!(new["prompt"]["7"]["inputs"]["text"], "blurry");
    // The UI copy says the same, and everything else is as it was.
    let nodes = &new["extra_data"]["extra_pnginfo"]["workflow"]["nodes"];
    assert_eq!(nodes[0]["widgets_values"][0], text);
    let mut restored = new.clone();
    restored["prompt"]["6"]["inputs"]["text"] = body["prompt"]["6"]["inputs"]["text"].clone();
    restored["extra_data"]["extra_pnginfo"]["workflow"]["nodes"][0]["widgets_values"][0] =
        body["prompt"]["6"]["inputs"]["text"].clone();
    assert_eq!(
        new["extra_data"]["prip"],
        json!({"refined": true}),
        "marked"
    );
    restored["extra_data"]
        .as_object_mut()
        .unwrap()
        .remove("prip");
    assert_eq!(restored, body);

    // A body PRIP refined already (by prip serve, or by this call) is left alone.
    let again = json!({"protocol": "comfyui", "body": new});
    let (status, out) = call(prip_rewrite, h, again.to_string().as_bytes());
    assert_eq!(status, PripStatus::Ok, "{}", last_error());
    let out = out.unwrap();
    assert_eq!(out["already_refined"], json!(true));
    assert_eq!(out["refined"], json!([]));
    assert_eq!(&out["body"], new);

    // Same seed, same text as prip_refine gives; negatives on request.
    let (_, one) = call(
        prip_refine,
        h,
        br#"{"prompt": "a (red:1.2) fox, embedding:foo", "seed": 7}"#,
    );
    assert_eq!(one.unwrap()["refined"], text);
    let both = json!({"protocol": "comfyui", "body": body, "prompts": ["positive", "negative"]});
    let (_, out) = call(prip_rewrite, h, both.to_string().as_bytes());
    assert_eq!(out.unwrap()["refined"].as_array().unwrap().len(), 2);
    prip_close(h);
}

#[test]
fn rewrite_reports_bad_requests_and_keeps_what_it_cannot_refine() {
    let h = open();
    let cases: [(Value, PripStatus, &str); 3] = [
        (
            json!({"protocol": "midjourney", "body": {}}),
            PripStatus::InvalidJson,
            "unknown protocol \"midjourney\"; known: a1111, comfyui",
        ),
        (
            json!({"protocol": "comfyui", "body": {}, "prompts": ["neutral"]}),
            PripStatus::InvalidJson,
            "\"neutral\" is not positive",
        ),
        (
            json!({"protocol": "comfyui"}),
            PripStatus::InvalidJson,
            "missing field `body`",
        ),
    ];
    for (request, want, msg) in cases {
        let (status, out) = call(prip_rewrite, h, request.to_string().as_bytes());
        assert_eq!(status, want);
        assert!(out.is_none());
        assert!(last_error().contains(msg), "{}", last_error());
    }
    // Nothing to refine: the body comes back as it was.
    let body = json!({"prompt": {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"}}}});
    let (status, out) = call(
        prip_rewrite,
        h,
        json!({"protocol": "comfyui", "body": body})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, PripStatus::Ok, "{}", last_error());
    assert_eq!(
        out.unwrap(),
        json!({"body": body, "refined": [], "unchanged": [], "errors": [], "already_refined": false})
    );
    // A prompt the refiner refuses stays as it was and is listed.
    let mut huge = prip_test_support::cases::a1111_txt2img();
    huge["prompt"] = json!("x".repeat(1 << 20));
    let request = json!({"protocol": "a1111", "path": "/sdapi/v1/txt2img", "body": huge});
    let (status, out) = call(prip_rewrite, h, request.to_string().as_bytes());
    assert_eq!(status, PripStatus::Ok, "{}", last_error());
    let out = out.unwrap();
    assert_eq!(out["body"], huge);
    assert_eq!(out["errors"][0]["id"], "prompt");
    assert!(!out["errors"][0]["error"].as_str().unwrap().is_empty());
    prip_close(h);
}

#[test]
fn rewrite_gives_equal_texts_one_refinement_seeded_by_the_body() {
    let h = open();
    let text = "a castle on a hill at dawn";
    let mut body = prip_test_support::cases::comfyui_with_workflow();
    body["prompt"]["6"]["inputs"]["text"] = json!(text);
    // A second positive encoder with the same text, joined to the first.
    body["prompt"]["3"]["inputs"]["positive"] = json!(["31", 0]);
    body["prompt"]["31"] = json!({"class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["32", 0]}});
    body["prompt"]["32"] = json!({"class_type": "CLIPTextEncode",
        "inputs": {"text": text, "clip": ["4", 1]}});
    body["prompt"]["3"]["inputs"]["seed"] = json!(4242);
    // No seed option: the sampler's seed decides, so the same body refines the same way.
    let request = json!({"protocol": "comfyui", "body": body});
    let (status, out) = call(prip_rewrite, h, request.to_string().as_bytes());
    assert_eq!(status, PripStatus::Ok, "{}", last_error());
    let out = out.unwrap();
    let new = &out["body"]["prompt"];
    assert_eq!(
        new["6"]["inputs"]["text"], new["32"]["inputs"]["text"],
        "{out}"
    );
    let (_, one) = call(
        prip_refine,
        h,
        json!({"prompt": text, "seed": 4242, "dialect": "comfyui"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(new["6"]["inputs"]["text"], one.unwrap()["refined"]);
    prip_close(h);
}

#[test]
fn each_request_of_a_batch_keeps_its_own_generation_settings() {
    let h = open();
    let batch = json!({"requests": [
        {"prompt": "a cat", "seed": 1, "generation": {"max_new_tokens": 1}},
        {"prompt": "a cat", "seed": 1},
    ], "generation": {"max_new_tokens": 6}});
    let (status, out) = call(prip_refine_batch, h, batch.to_string().as_bytes());
    assert_eq!(status, PripStatus::Ok, "{}", last_error());
    let results = out.unwrap()["results"].clone();
    assert!(
        results[0]["timings"]["new_tokens"].as_u64().unwrap() <= 1,
        "{results}"
    );
    assert!(
        results[1]["timings"]["new_tokens"].as_u64().unwrap() > 1,
        "{results}"
    );
    // Unknown keys are refused, in a request as at the top level.
    let bad = json!([{"prompt": "a cat", "sed": 1}]);
    let (status, _) = call(prip_refine_batch, h, bad.to_string().as_bytes());
    assert_eq!(status, PripStatus::InvalidJson);
    assert!(last_error().contains("sed"), "{}", last_error());
    let bad = json!({"prompt": "a cat", "generation": {"temperature": -1.0}});
    let (status, _) = call(prip_refine, h, bad.to_string().as_bytes());
    assert_eq!(status, PripStatus::InvalidJson, "{}", last_error());
    prip_close(h);
}
