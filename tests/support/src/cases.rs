//! Request cases built from the recorded fixtures ([`crate::fixtures_dir`]), run
//! natively by prip-protocols' tests and, unchanged, through the WASM components by
//! prip-proxy's tests, which check both give the same outcome.

use prip_protocols::{Extraction, Polarity, Protocol, Replacement, Request, Response, Slot};
use serde_json::{json, Value};

use crate::fixture;

/// One request for one protocol, with the upstream's answer when the protocol
/// annotates answers.
#[derive(Debug, Clone)]
pub struct Case {
    /// Protocol name.
    pub protocol: &'static str,
    /// What the case is about.
    pub name: &'static str,
    /// The request.
    pub request: Request,
    /// The answer to annotate.
    pub response: Option<Response>,
}

fn case(protocol: &'static str, name: &'static str, path: &str, body: impl Into<Vec<u8>>) -> Case {
    Case {
        protocol,
        name,
        request: Request::post(path, body),
        response: None,
    }
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

/// The A1111 request the fixture's answer echoes in `parameters`.
pub fn a1111_txt2img() -> Value {
    fixture("a1111/txt2img_response.json")["parameters"].clone()
}

/// The ComfyUI fixture request with a UI copy of its workflow, as the browser sends it.
pub fn comfyui_with_workflow() -> Value {
    let mut req = fixture("comfyui/prompt_request_txt2img_api.json");
    req["extra_data"] = json!({"extra_pnginfo": {"workflow": {
        "nodes": [
            {"id": 6, "type": "CLIPTextEncode",
             "inputs": [{"name": "clip", "type": "CLIP", "link": 3},
                        {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": null}],
             "widgets_values": ["a (red:1.2) fox, embedding:foo"]},
            {"id": 7, "type": "CLIPTextEncode",
             "inputs": [{"name": "clip", "type": "CLIP", "link": 5},
                        {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 12}],
             "widgets_values": ["blurry"]},
            {"id": 12, "type": "PrimitiveNode", "widgets_values": ["blurry"]},
            {"id": 3, "type": "KSampler", "widgets_values": [1, "randomize", 20, 8, "euler", "normal", 1]}
        ],
        "links": [[3, 4, 1, 6, 0, "CLIP"], [5, 4, 1, 7, 0, "CLIP"], [12, 12, 0, 7, 1, "STRING"]],
        "version": 0.4
    }}});
    req
}

/// A Flux-style graph: a string primitive read by a dual-encoder node, through a
/// guider and a pass-through conditioning node.
pub fn comfyui_flux_guider() -> Value {
    json!({"prompt": {
        "10": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a lighthouse at dusk"}},
        "11": {"class_type": "CLIPTextEncodeFlux",
               "inputs": {"clip_l": ["10", 0], "t5xxl": ["10", 0], "guidance": 3.5, "clip": ["4", 1]}},
        "12": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["11", 0], "guidance": 3.5}},
        "13": {"class_type": "BasicGuider", "inputs": {"model": ["4", 0], "conditioning": ["12", 0]}},
        "14": {"class_type": "CLIPTextEncode", "inputs": {"text": "unused notes", "clip": ["4", 1]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux.safetensors"}}
    }})
}

/// The Flux dev template's shape: the negative is `ConditioningZeroOut` of the
/// positive's conditioning, so the positive text reaches the sampler from both sides.
pub fn comfyui_flux_zero_out() -> Value {
    json!({"prompt": {
        "30": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red bicycle leaning on a wall", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler",
              "inputs": {"positive": ["6", 0], "negative": ["30", 0], "model": ["4", 0], "seed": 7,
                         "steps": 20, "cfg": 1, "sampler_name": "euler", "scheduler": "simple",
                         "denoise": 1, "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-dev.safetensors"}}
    }})
}

/// An A1111 request naming PRIP's own extension, on, with a fixed seed.
pub fn a1111_with_extension() -> Value {
    let mut req = a1111_txt2img();
    req["seed"] = json!(1234);
    req["alwayson_scripts"][prip_protocols::a1111::EXTENSION] =
        json!({"args": [true, "", 40, 0.7, -1, true]});
    req
}

/// ControlNet between the text nodes and the sampler, and a combined positive.
pub fn comfyui_controlnet() -> Value {
    json!({"prompt": {
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle", "clip": ["9", 1]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a moat", "clip": ["9", 1]}},
        "3": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["1", 0], "conditioning_2": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["9", 1]}},
        "5": {"class_type": "ControlNetApplyAdvanced",
              "inputs": {"positive": ["3", 0], "negative": ["4", 0], "control_net": ["8", 0],
                         "image": ["7", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "6": {"class_type": "KSampler",
              "inputs": {"positive": ["5", 0], "negative": ["5", 1], "model": ["9", 0], "seed": 3,
                         "steps": 20, "cfg": 7, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1, "latent_image": ["10", 0]}},
        "12": {"class_type": "CLIPTextEncodeSDXL",
               "inputs": {"text_g": "same text", "text_l": "same text", "clip": ["9", 1], "width": 1024,
                          "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}},
        "13": {"class_type": "KSampler",
               "inputs": {"positive": ["12", 0], "negative": ["12", 0], "model": ["9", 0], "seed": 3,
                          "steps": 20, "cfg": 7, "sampler_name": "euler", "scheduler": "normal",
                          "denoise": 1, "latent_image": ["10", 0]}}
    }})
}

/// Every case: the fixtures as recorded, variants the servers accept, and bodies they
/// would refuse.
pub fn all() -> Vec<Case> {
    let mut cases = Vec::new();
    let txt2img = a1111_txt2img();
    let hires = fixture("a1111/txt2img_hires_response.json");
    let info = fixture("a1111/txt2img_response.json")["info"].clone();
    let infotext = serde_json::from_str::<Value>(info.as_str().expect("info is a string"))
        .expect("info is JSON")["infotexts"][0]
        .clone();
    let mut styled = txt2img.clone();
    styled["styles"] = json!(["cinematic", "film grain"]);
    cases.push(case(
        "a1111",
        "txt2img as recorded",
        "/sdapi/v1/txt2img",
        body(&txt2img),
    ));
    cases.push(case(
        "a1111",
        "hires fix",
        "/sdapi/v1/txt2img",
        body(&hires["parameters"]),
    ));
    cases.push(case(
        "a1111",
        "img2img with styles",
        "/sdapi/v1/img2img",
        body(&styled),
    ));
    cases.push(case(
        "a1111",
        "the PRIP extension named",
        "/sdapi/v1/txt2img",
        body(&a1111_with_extension()),
    ));
    cases.push(case(
        "a1111",
        "prompt only in the infotext",
        "/sdapi/v1/txt2img",
        body(&json!({"infotext": infotext, "steps": 2})),
    ));
    cases.push(case(
        "a1111",
        "empty prompt",
        "/sdapi/v1/txt2img",
        body(&json!({"prompt": "", "steps": 2})),
    ));
    cases.push(case(
        "a1111",
        "prompt of the wrong type",
        "/sdapi/v1/txt2img",
        body(&json!({"prompt": 3})),
    ));

    let comfy = fixture("comfyui/prompt_request_txt2img_api.json");
    cases.push(case(
        "comfyui",
        "txt2img as recorded",
        "/prompt",
        body(&comfy),
    ));
    cases.push(case(
        "comfyui",
        "through /api/prompt with the UI workflow",
        "/api/prompt",
        body(&comfyui_with_workflow()),
    ));
    cases.push(case(
        "comfyui",
        "flux guider and primitive string",
        "/prompt",
        body(&comfyui_flux_guider()),
    ));
    cases.push(case(
        "comfyui",
        "flux negative zeroed out of the positive",
        "/prompt",
        body(&comfyui_flux_zero_out()),
    ));
    cases.push(case(
        "comfyui",
        "controlnet and combine",
        "/prompt",
        body(&comfyui_controlnet()),
    ));
    cases.push(case(
        "comfyui",
        "no graph",
        "/prompt",
        body(&json!({"client_id": "x"})),
    ));

    cases.push(case(
        "diffusers",
        "generations",
        "/v1/images/generations",
        body(&fixture("diffusers/generations_request.json")),
    ));
    cases.push(case(
        "diffusers",
        "async inference",
        "/api/diffusers/inference",
        body(&fixture("diffusers/async_inference_request.json")),
    ));

    let mut openai = case(
        "openai-images",
        "generations",
        "/v1/images/generations",
        body(&fixture("diffusers/generations_request.json")),
    );
    openai.response = Some(Response {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body(&fixture("diffusers/generations_response.json")),
    });
    cases.push(openai);

    for protocol in ["a1111", "comfyui", "diffusers", "openai-images"] {
        let path = match protocol {
            "a1111" => "/sdapi/v1/txt2img",
            "comfyui" => "/prompt",
            _ => "/v1/images/generations",
        };
        cases.push(case(
            protocol,
            "malformed JSON",
            path,
            &b"{\"prompt\": \"a cat\""[..],
        ));
        cases.push(case(
            protocol,
            "not UTF-8",
            path,
            &b"{\"prompt\": \"\xff\xfe\"}"[..],
        ));
        cases.push(case(protocol, "a JSON array", path, &b"[1, 2]"[..]));
    }
    cases
}

/// The replacements the tests make: every positive slot gets details appended.
pub fn refine_positive(slots: &[Slot]) -> Vec<Replacement> {
    slots
        .iter()
        .filter(|s| s.polarity == Polarity::Positive)
        .map(|s| Replacement {
            id: s.id.clone(),
            original: s.text.clone(),
            text: format!("{}, golden hour, highly detailed", s.text),
        })
        .collect()
}

/// What an adapter made of a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `extract`'s answer.
    pub extraction: Result<Extraction, String>,
    /// `apply`'s answer with [`refine_positive`]'s replacements, when extract worked.
    pub body: Option<Result<Vec<u8>, String>>,
    /// `annotate`'s answer, when the case has a response.
    pub annotated: Option<Result<Option<Vec<u8>>, String>>,
}

/// Runs a case through an adapter given as its three calls.
pub fn outcome(
    case: &Case,
    mut extract: impl FnMut(&Request) -> Result<Extraction, String>,
    mut apply: impl FnMut(&Request, &[Replacement]) -> Result<Vec<u8>, String>,
    mut annotate: impl FnMut(&Request, &[Replacement], &Response) -> Result<Option<Vec<u8>>, String>,
) -> Outcome {
    let extraction = extract(&case.request);
    let reps = extraction
        .as_ref()
        .map(|e| refine_positive(&e.slots))
        .unwrap_or_default();
    let body = extraction.is_ok().then(|| apply(&case.request, &reps));
    let annotated = case
        .response
        .as_ref()
        .map(|resp| annotate(&case.request, &reps, resp));
    Outcome {
        extraction,
        body,
        annotated,
    }
}

/// A case run through a native protocol.
pub fn native_outcome(protocol: &dyn Protocol, case: &Case) -> Outcome {
    outcome(
        case,
        |r| protocol.extract(r),
        |r, reps| protocol.apply(r, reps),
        |r, reps, resp| protocol.annotate(r, reps, resp),
    )
}
