//! Each protocol against the recorded fixtures (tests/fixtures).

use prip_protocols::{
    a1111::A1111, comfyui::ComfyUi, diffusers::Diffusers, openai_images::OpenAiImages, Extraction,
    Polarity, Protocol, Replacement, Request, Response, Slot,
};
use prip_test_support::{cases, fixture};
use serde_json::{json, Value};

fn extraction(p: &dyn Protocol, path: &str, body: &Value) -> Extraction {
    p.extract(&Request::post(path, serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn slots(p: &dyn Protocol, path: &str, body: &Value) -> Vec<Slot> {
    extraction(p, path, body).slots
}

fn ids(slots: &[Slot]) -> Vec<(&str, Polarity)> {
    slots.iter().map(|s| (s.id.as_str(), s.polarity)).collect()
}

/// Extract, refine the positive slots, apply: the new body as JSON.
fn refined(p: &dyn Protocol, path: &str, body: &Value) -> Value {
    let req = Request::post(path, serde_json::to_vec(body).unwrap());
    let reps = cases::refine_positive(&p.extract(&req).unwrap().slots);
    serde_json::from_slice(&p.apply(&req, &reps).unwrap()).unwrap()
}

const MORE: &str = ", golden hour, highly detailed";

#[test]
fn a1111_refines_the_prompt_and_keeps_everything_else() {
    let req = cases::a1111_txt2img();
    assert_eq!(
        ids(&slots(&A1111, "/sdapi/v1/txt2img", &req)),
        [
            ("prompt", Polarity::Positive),
            ("negative_prompt", Polarity::Negative)
        ]
    );
    let out = refined(&A1111, "/sdapi/v1/txt2img", &req);
    let mut expected = req.clone();
    expected["prompt"] = json!(format!("{}{MORE}", req["prompt"].as_str().unwrap()));
    assert_eq!(
        out, expected,
        "only the prompt changes; negative and scripts untouched"
    );
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&out), keys(&req), "key order is the client's");
}

#[test]
fn a1111_hires_prompt_is_its_own_slot() {
    let req = fixture("a1111/txt2img_hires_response.json")["parameters"].clone();
    let s = slots(&A1111, "/sdapi/v1/txt2img", &req);
    assert_eq!(
        ids(&s),
        [
            ("prompt", Polarity::Positive),
            ("negative_prompt", Polarity::Negative),
            ("hr_prompt", Polarity::Positive)
        ]
    );
    assert_eq!(s[2].role, "hires");
    let out = refined(&A1111, "/sdapi/v1/txt2img", &req);
    assert_eq!(out["hr_prompt"], json!(format!("a fox, detailed{MORE}")));
}

#[test]
fn a1111_prompt_only_in_infotext_becomes_an_explicit_field() {
    let info: Value = serde_json::from_str(
        fixture("a1111/txt2img_response.json")["info"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let req = json!({"infotext": info["infotexts"][0], "steps": 2});
    let s = slots(&A1111, "/sdapi/v1/txt2img", &req);
    assert_eq!(
        ids(&s),
        [
            ("prompt", Polarity::Positive),
            ("negative_prompt", Polarity::Negative)
        ]
    );
    assert_eq!(
        s[0].text,
        "a (red:1.2) fox <lora:x:0.8> BREAK forest, refined"
    );
    let out = refined(&A1111, "/sdapi/v1/txt2img", &req);
    assert_eq!(out["prompt"], json!(format!("{}{MORE}", s[0].text)));
    assert_eq!(
        out["infotext"], req["infotext"],
        "the infotext itself is kept"
    );
    assert!(
        out.get("negative_prompt").is_none(),
        "the negative still comes from the infotext"
    );
}

#[test]
fn a1111_explicit_prompt_wins_over_infotext() {
    let req = json!({"prompt": "a dog", "infotext": "a cat\nSteps: 2, Sampler: Euler, Seed: 1"});
    assert_eq!(
        slots(&A1111, "/sdapi/v1/txt2img", &req)
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>(),
        ["a dog"]
    );
}

#[test]
fn a1111_styles_and_scripts_are_left_to_the_server() {
    let mut req = cases::a1111_txt2img();
    req["styles"] = json!(["cinematic"]);
    let out = refined(&A1111, "/sdapi/v1/img2img", &req);
    assert_eq!(out["styles"], req["styles"]);
    assert_eq!(out["alwayson_scripts"], req["alwayson_scripts"]);
}

#[test]
fn comfyui_polarity_from_the_sampler() {
    let req = fixture("comfyui/prompt_request_txt2img_api.json");
    let s = slots(&ComfyUi, "/prompt", &req);
    assert_eq!(
        ids(&s),
        [
            ("6/text", Polarity::Positive),
            ("7/text", Polarity::Negative)
        ]
    );
    let out = refined(&ComfyUi, "/prompt", &req);
    assert_eq!(
        out["prompt"]["6"]["inputs"]["text"],
        json!(format!("a (red:1.2) fox, embedding:foo{MORE}"))
    );
    assert_eq!(out["prompt"]["7"], req["prompt"]["7"]);
    assert_eq!(out["prompt"]["3"], req["prompt"]["3"]);
    assert_eq!(out["client_id"], req["client_id"]);
}

#[test]
fn comfyui_rewrites_the_ui_copy_consistently() {
    let req = cases::comfyui_with_workflow();
    let out = refined(&ComfyUi, "/api/prompt", &req);
    let wf = &out["extra_data"]["extra_pnginfo"]["workflow"];
    let text = out["prompt"]["6"]["inputs"]["text"].clone();
    assert_eq!(wf["nodes"][0]["widgets_values"][0], text);
    assert_eq!(
        wf["nodes"][1]["widgets_values"][0],
        json!("blurry"),
        "negative untouched"
    );
    assert_eq!(wf["nodes"][2]["widgets_values"][0], json!("blurry"));
    assert_eq!(
        wf["links"],
        req["extra_data"]["extra_pnginfo"]["workflow"]["links"]
    );
}

#[test]
fn comfyui_ui_primitive_feeding_a_refined_widget_is_rewritten() {
    let mut req = cases::comfyui_with_workflow();
    // Make the primitive-fed node the positive one.
    req["prompt"]["3"]["inputs"]["positive"] = json!(["7", 0]);
    req["prompt"]["3"]["inputs"]["negative"] = json!(["6", 0]);
    let out = refined(&ComfyUi, "/prompt", &req);
    let wf = &out["extra_data"]["extra_pnginfo"]["workflow"];
    let want = json!(format!("blurry{MORE}"));
    assert_eq!(out["prompt"]["7"]["inputs"]["text"], want);
    assert_eq!(wf["nodes"][1]["widgets_values"][0], want);
    assert_eq!(
        wf["nodes"][2]["widgets_values"][0], want,
        "the UI PrimitiveNode too"
    );
}

#[test]
fn comfyui_follows_guiders_pass_throughs_and_primitives() {
    let s = slots(&ComfyUi, "/prompt", &cases::comfyui_flux_guider());
    assert_eq!(
        ids(&s),
        [
            ("10/value", Polarity::Positive),
            ("14/text", Polarity::Unknown)
        ]
    );
    assert_eq!(s[0].encoder.as_deref(), Some("clip_l"));
    let out = refined(&ComfyUi, "/prompt", &cases::comfyui_flux_guider());
    assert_eq!(
        out["prompt"]["10"]["inputs"]["value"],
        json!(format!("a lighthouse at dusk{MORE}"))
    );
    assert_eq!(
        out["prompt"]["11"]["inputs"]["clip_l"],
        json!(["10", 0]),
        "links kept"
    );
}

#[test]
fn comfyui_controlnet_combine_and_shared_nodes() {
    let s = slots(&ComfyUi, "/prompt", &cases::comfyui_controlnet());
    assert_eq!(
        ids(&s),
        [
            ("1/text", Polarity::Positive),
            ("2/text", Polarity::Positive),
            ("4/text", Polarity::Negative),
            ("12/text_g", Polarity::Unknown),
            ("12/text_l", Polarity::Unknown),
        ],
        "in the client's node order; a node read as both is unknown"
    );
    assert_eq!(s[3].encoder.as_deref(), Some("clip_g"));
}

#[test]
fn comfyui_custom_text_encoders_are_found_by_name() {
    let req = json!({"prompt": {
        "1": {"class_type": "BNK_CLIPTextEncodeAdvanced", "inputs": {"text": "a bird", "clip": ["5", 1]}},
        "2": {"class_type": "SamplerCustom", "inputs": {"positive": ["1", 0], "negative": ["1", 0]}}
    }});
    assert_eq!(
        ids(&slots(&ComfyUi, "/prompt", &req)),
        [("1/text", Polarity::Unknown)]
    );
}

#[test]
fn diffusers_both_servers() {
    let gen = fixture("diffusers/generations_request.json");
    assert_eq!(
        ids(&slots(&Diffusers, "/v1/images/generations", &gen)),
        [("prompt", Polarity::Positive)]
    );
    let inf = fixture("diffusers/async_inference_request.json");
    assert_eq!(
        ids(&slots(&Diffusers, "/api/diffusers/inference", &inf)),
        [
            ("prompt", Polarity::Positive),
            ("negative_prompt", Polarity::Negative)
        ]
    );
    let out = refined(&Diffusers, "/api/diffusers/inference", &inf);
    assert_eq!(out["negative_prompt"], inf["negative_prompt"]);
    assert_eq!(out["model"], inf["model"]);
}

#[test]
fn openai_answer_gets_revised_prompt() {
    let req = Request::post(
        "/v1/images/generations",
        serde_json::to_vec(&fixture("diffusers/generations_request.json")).unwrap(),
    );
    let reps = cases::refine_positive(&OpenAiImages.extract(&req).unwrap().slots);
    let resp = Response {
        status: 200,
        headers: vec![],
        body: serde_json::to_vec(&fixture("diffusers/generations_response.json")).unwrap(),
    };
    let out: Value =
        serde_json::from_slice(&OpenAiImages.annotate(&req, &reps, &resp).unwrap().unwrap())
            .unwrap();
    assert_eq!(out["data"][0]["revised_prompt"], json!(reps[0].text));
    assert_eq!(
        out["data"][0]["url"],
        fixture("diffusers/generations_response.json")["data"][0]["url"]
    );
    let error = Response {
        status: 500,
        ..resp
    };
    assert_eq!(OpenAiImages.annotate(&req, &reps, &error).unwrap(), None);
}

#[test]
fn bad_bodies_are_one_line_errors() {
    for p in prip_protocols::builtin() {
        let route = &p.describe().routes[0].path;
        for body in [&b"{\"prompt\": \"a"[..], b"\xff\xfe", b"[1]", b""] {
            let err = p.extract(&Request::post(route, body)).unwrap_err();
            assert!(!err.contains('\n') && !err.is_empty(), "{err:?}");
        }
    }
}

#[test]
fn a_replacement_for_another_body_is_refused() {
    let req = Request::post("/sdapi/v1/txt2img", &br#"{"prompt": "a dog"}"#[..]);
    let stale = Replacement {
        id: "prompt".into(),
        original: "a cat".into(),
        text: "a cat, x".into(),
    };
    assert!(A1111.apply(&req, std::slice::from_ref(&stale)).is_err());
    let unknown = Replacement {
        id: "steps".into(),
        ..stale
    };
    assert!(A1111.apply(&req, &[unknown]).is_err());
    let comfy = Request::post(
        "/prompt",
        serde_json::to_vec(&fixture("comfyui/prompt_request_txt2img_api.json")).unwrap(),
    );
    let missing = Replacement {
        id: "99/text".into(),
        original: "x".into(),
        text: "y".into(),
    };
    assert!(ComfyUi.apply(&comfy, &[missing]).is_err());
}

#[test]
fn every_case_runs_and_refines_only_positive_slots() {
    let protocols = prip_protocols::builtin();
    for case in cases::all() {
        let p = protocols
            .iter()
            .find(|p| p.describe().name == case.protocol)
            .unwrap();
        let out = cases::native_outcome(p.as_ref(), &case);
        if let (Ok(first), Some(Ok(body))) = (&out.extraction, &out.body) {
            let (slots, again) = (
                &first.slots,
                p.extract(&Request {
                    body: body.clone(),
                    ..case.request.clone()
                })
                .unwrap(),
            );
            assert_eq!(again.seed, first.seed, "{}: {}", case.protocol, case.name);
            let marked = match case.protocol {
                "comfyui" => true,
                "a1111" => case.name == "the PRIP extension named",
                _ => false,
            };
            assert_eq!(again.refined, marked, "{}: {}", case.protocol, case.name);
            assert!(!first.refined, "{}: {}", case.protocol, case.name);
            let again = again.slots;
            assert_eq!(again.len(), slots.len(), "{}: {}", case.protocol, case.name);
            for (before, after) in slots.iter().zip(&again) {
                assert_eq!(before.id, after.id);
                if before.polarity == Polarity::Positive {
                    assert_eq!(after.text, format!("{}{MORE}", before.text));
                } else {
                    assert_eq!(after.text, before.text, "{} {}", case.name, before.id);
                }
            }
        }
    }
}

fn body_of(v: &Value) -> Request {
    Request::post("/prompt", serde_json::to_vec(v).unwrap())
}

#[test]
fn comfyui_marks_a_refined_body_and_reads_the_mark() {
    let req = fixture("comfyui/prompt_request_txt2img_api.json");
    assert!(req.get("extra_data").is_none());
    assert!(!extraction(&ComfyUi, "/prompt", &req).refined);
    let out = refined(&ComfyUi, "/prompt", &req);
    assert_eq!(out["extra_data"], json!({"prip": {"refined": true}}));
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&out),
        ["client_id", "prompt", "extra_data"],
        "extra_data created last, the client's keys in their order"
    );
    let again = extraction(&ComfyUi, "/prompt", &out);
    assert!(again.refined);
    assert_eq!(again.slots.len(), 2, "slots still reported");

    // An existing extra_data keeps its keys and order; prip comes last.
    let req = cases::comfyui_with_workflow();
    let out = refined(&ComfyUi, "/api/prompt", &req);
    assert_eq!(keys(&out["extra_data"]), ["extra_pnginfo", "prip"]);
    assert_eq!(out["extra_data"]["prip"], json!({"refined": true}));
    // Even with nothing to replace, apply marks the body.
    let req = body_of(&cases::comfyui_controlnet());
    let out: Value = serde_json::from_slice(&ComfyUi.apply(&req, &[]).unwrap()).unwrap();
    assert!(ComfyUi.extract(&body_of(&out)).unwrap().refined);
    // A mark that says otherwise is no mark.
    let mut req = cases::comfyui_controlnet();
    req["extra_data"] = json!({"prip": {"refined": false}});
    assert!(!extraction(&ComfyUi, "/prompt", &req).refined);
}

#[test]
fn comfyui_seed_is_the_first_literal_sampler_seed() {
    let req = fixture("comfyui/prompt_request_txt2img_api.json");
    assert_eq!(extraction(&ComfyUi, "/prompt", &req).seed, Some(1));
    let seed = |graph: Value| extraction(&ComfyUi, "/prompt", &json!({ "prompt": graph })).seed;
    assert_eq!(
        seed(json!({
            "1": {"class_type": "KSampler", "inputs": {"seed": ["9", 0]}},
            "2": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 42}},
            "3": {"class_type": "RandomNoise", "inputs": {"noise_seed": 43}}
        })),
        Some(42),
        "links are not read; the first literal in node order wins"
    );
    assert_eq!(
        seed(json!({
            "3": {"class_type": "RandomNoise", "inputs": {"noise_seed": 18446744073709551615_u64}},
            "2": {"class_type": "SamplerCustom", "inputs": {"noise_seed": 5}}
        })),
        Some(u64::MAX)
    );
    assert_eq!(
        seed(json!({"2": {"class_type": "SamplerCustom", "inputs": {"noise_seed": 5}}})),
        Some(5)
    );
    assert_eq!(
        seed(
            json!({"2": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["3", 0]}},
                    "4": {"class_type": "ImageAddNoise", "inputs": {"seed": 9}}})
        ),
        None,
        "only the samplers' seeds count"
    );
}

#[test]
fn a1111_refined_body_turns_the_extension_off_and_is_marked() {
    let req = cases::a1111_with_extension();
    let first = extraction(&A1111, "/sdapi/v1/txt2img", &req);
    assert!(!first.refined);
    assert_eq!(first.seed, Some(1234));
    let out = refined(&A1111, "/sdapi/v1/txt2img", &req);
    let scripts = &out["alwayson_scripts"];
    assert_eq!(
        scripts["prip prompt refiner"],
        json!({"args": [false, "", 40, 0.7, -1, true], "prip_refined": true}),
        "only the switch changes; the user's other arguments stay"
    );
    assert_eq!(
        scripts["Prompt Refiner Probe"], req["alwayson_scripts"]["Prompt Refiner Probe"],
        "other scripts untouched"
    );
    assert!(extraction(&A1111, "/sdapi/v1/txt2img", &out).refined);

    // The server finds scripts by title whatever the case; an entry without args.
    let mut req = cases::a1111_txt2img();
    req["alwayson_scripts"] = json!({"PRIP Prompt Refiner": {}});
    let out = refined(&A1111, "/sdapi/v1/txt2img", &req);
    assert_eq!(
        out["alwayson_scripts"],
        json!({"PRIP Prompt Refiner": {"args": [false], "prip_refined": true}})
    );
    assert!(extraction(&A1111, "/sdapi/v1/txt2img", &out).refined);
}

#[test]
fn a1111_without_the_extension_named_gets_no_entry() {
    // A1111 answers 422 "always on script ... not found" for a script it lacks.
    let req = cases::a1111_txt2img();
    let out = refined(&A1111, "/sdapi/v1/txt2img", &req);
    assert_eq!(out["alwayson_scripts"], req["alwayson_scripts"]);
    let req = json!({"prompt": "a cat"});
    let out = refined(&A1111, "/sdapi/v1/txt2img", &req);
    assert!(out.get("alwayson_scripts").is_none());
}

#[test]
fn a1111_seed_is_the_requests_unless_random() {
    let seed = |v: Value| extraction(&A1111, "/sdapi/v1/txt2img", &v).seed;
    assert_eq!(
        seed(json!({"prompt": "a", "seed": 3919858964_u64})),
        Some(3919858964)
    );
    assert_eq!(seed(json!({"prompt": "a", "seed": -1})), None);
    assert_eq!(seed(json!({"prompt": "a", "seed": "5"})), None);
    assert_eq!(seed(json!({"prompt": "a", "seed": null})), None);
    assert_eq!(seed(json!({"prompt": "a"})), None);
    assert_eq!(
        seed(cases::a1111_txt2img()),
        None,
        "the fixture asks for -1"
    );
}

#[test]
fn diffusers_and_openai_read_a_numeric_seed_and_write_no_marker() {
    for p in [&Diffusers as &dyn Protocol, &OpenAiImages] {
        let mut req = fixture("diffusers/generations_request.json");
        assert_eq!(extraction(p, "/v1/images/generations", &req).seed, None);
        req["seed"] = json!(77);
        assert_eq!(extraction(p, "/v1/images/generations", &req).seed, Some(77));
        let out = refined(p, "/v1/images/generations", &req);
        let mut expected = req.clone();
        expected["prompt"] = json!(format!("{}{MORE}", req["prompt"].as_str().unwrap()));
        assert_eq!(
            out, expected,
            "no marker: no PRIP layer runs in these servers"
        );
        assert!(!extraction(p, "/v1/images/generations", &out).refined);
        req["seed"] = json!("77");
        assert_eq!(extraction(p, "/v1/images/generations", &req).seed, None);
    }
}
