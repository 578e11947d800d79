//! ComfyUI workflows whose prompt sits inside a subgraph: the API ids are paths
//! (`instance:inner`), and the UI copy saved into the image must show the refined text
//! where the frontend shows it. The UI workflows are real templates (see
//! tests/fixtures/comfyui/templates/README.md); the API graphs are what the frontend
//! sends for them.

use prip_protocols::{comfyui::ComfyUi, Polarity, Protocol, Request};
use prip_test_support::{cases, fixture};
use serde_json::{json, Value};

const MORE: &str = ", golden hour, highly detailed";

fn template(name: &str) -> Value {
    fixture(&format!("comfyui/templates/{name}"))
}

/// Index of the node with `id` in a node list.
fn node_index(nodes: &Value, id: u64) -> usize {
    nodes
        .as_array()
        .unwrap()
        .iter()
        .position(|n| n["id"] == json!(id))
        .unwrap_or_else(|| panic!("no node {id}"))
}

/// Extract, refine the positive slots, apply: the slots and the new body.
fn refine(body: &Value) -> (Vec<(String, Polarity)>, Option<u64>, Value) {
    let req = Request::post("/prompt", serde_json::to_vec(body).unwrap());
    let found = ComfyUi.extract(&req).unwrap();
    let reps = cases::refine_positive(&found.slots);
    let out = serde_json::from_slice(&ComfyUi.apply(&req, &reps).unwrap()).unwrap();
    let slots = found
        .slots
        .into_iter()
        .map(|s| (s.id, s.polarity))
        .collect();
    (slots, found.seed, out)
}

/// image_minimax_h3_t2i: the prompt is a widget promoted to subgraph instance 58
/// (`widgets_values[0]`), which the frontend renders; the inner CLIPTextEncode 12 in
/// the definition still holds the template's older text, which is not rendered.
#[test]
fn a_prompt_promoted_to_the_instance_is_rewritten_on_the_instance() {
    let wf = template("image_minimax_h3_t2i.json");
    let instance = node_index(&wf["nodes"], 58);
    let shown = wf["nodes"][instance]["widgets_values"][0]
        .as_str()
        .unwrap()
        .to_string();
    let def = &wf["definitions"]["subgraphs"][0];
    let inner = node_index(&def["nodes"], 12);
    assert_ne!(def["nodes"][inner]["widgets_values"][0], json!(shown));
    let seed = wf["nodes"][instance]["widgets_values"][5].as_u64().unwrap();

    let body = json!({
        "client_id": "c",
        "prompt": {
            "58:13": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen3vl_32b_minimax_h3_nvfp4_awq.safetensors", "type": "minimax", "device": "default"}},
            "58:12": {"class_type": "CLIPTextEncode", "inputs": {"text": shown, "clip": ["58:13", 0]}},
            "58:6": {"class_type": "UNETLoader", "inputs": {"unet_name": "minimax_h3_fl2va_pruned_int8_convrot.safetensors", "weight_dtype": "default"}},
            "58:16": {"class_type": "BasicGuider", "inputs": {"model": ["58:6", 0], "conditioning": ["58:12", 0]}},
            "58:15": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
            "58:17": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "res_multistep"}},
            "58:9": {"class_type": "BasicScheduler", "inputs": {"model": ["58:6", 0], "scheduler": "simple", "steps": 30, "denoise": 1}},
            "58:46": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
            "58:14": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["58:15", 0], "guider": ["58:16", 0], "sampler": ["58:17", 0], "sigmas": ["58:9", 0], "latent_image": ["58:46", 0]}},
            "48": {"class_type": "SaveImage", "inputs": {"filename_prefix": "MiniMax", "images": ["58:14", 0]}}
        },
        "extra_data": {"extra_pnginfo": {"workflow": wf}}
    });
    let (slots, found_seed, out) = refine(&body);
    assert_eq!(slots, [("58:12/text".to_string(), Polarity::Positive)]);
    assert_eq!(found_seed, Some(seed), "RandomNoise's literal noise_seed");
    let refined = format!("{shown}{MORE}");
    assert_eq!(out["prompt"]["58:12"]["inputs"]["text"], json!(refined));

    let mut expected = wf.clone();
    expected["nodes"][instance]["widgets_values"][0] = json!(refined);
    assert_eq!(
        out["extra_data"]["extra_pnginfo"]["workflow"], expected,
        "the instance's widget shows the rendered text; nothing else in the UI copy changes"
    );
}

/// flux_dev_checkpoint_example: the official Flux dev template inside a subgraph, in
/// the `proxyWidgets` format (the instance keeps no values; its promoted widget is the
/// inner node's), with the negative made by ConditioningZeroOut of the positive.
#[test]
fn a_proxy_widget_prompt_is_rewritten_in_the_definition() {
    let wf = template("flux_dev_checkpoint_example.json");
    let instance = node_index(&wf["nodes"], 56);
    assert_eq!(
        wf["nodes"][instance]["properties"]["proxyWidgets"][0],
        json!(["51", "text"])
    );
    let def = &wf["definitions"]["subgraphs"][0];
    let inner = node_index(&def["nodes"], 51);
    let shown = def["nodes"][inner]["widgets_values"][0]
        .as_str()
        .unwrap()
        .to_string();

    let body = json!({
        "prompt": {
            "56:49": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors", "type": "flux", "device": "default"}},
            "56:51": {"class_type": "CLIPTextEncode", "inputs": {"text": shown, "clip": ["56:49", 0]}},
            "56:54": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["56:51", 0]}},
            "56:48": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
            "56:50": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
            "56:52": {"class_type": "KSampler", "inputs": {"model": ["56:48", 0], "positive": ["56:51", 0], "negative": ["56:54", 0], "latent_image": ["56:50", 0], "seed": 53943644181156_u64, "steps": 20, "cfg": 1, "sampler_name": "euler", "scheduler": "simple", "denoise": 1}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "Flux.1_Dev", "images": ["56:53", 0]}}
        },
        "extra_data": {"extra_pnginfo": {"workflow": wf}}
    });
    let (slots, seed, out) = refine(&body);
    assert_eq!(slots, [("56:51/text".to_string(), Polarity::Positive)]);
    assert_eq!(seed, Some(53943644181156));

    let mut expected = wf.clone();
    expected["definitions"]["subgraphs"][0]["nodes"][inner]["widgets_values"][0] =
        json!(format!("{shown}{MORE}"));
    assert_eq!(out["extra_data"]["extra_pnginfo"]["workflow"], expected);
}

/// Nested instances (shaped like the templates' nested subgraphs, values made up): the
/// prompt of node 7 in subgraph B, instance 5 of B in subgraph A, instance 1 of A on
/// the top level, fed there by a UI PrimitiveNode. Every value that shows it changes;
/// a node of the same local id elsewhere does not.
#[test]
fn nested_instances_and_their_primitive_are_rewritten_up_the_path() {
    let wf = json!({
        "nodes": [
            {"id": 7, "type": "CLIPTextEncode", "inputs": [{"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": null}], "widgets_values": ["a fox"]},
            {"id": 20, "type": "PrimitiveNode", "outputs": [{"name": "STRING", "links": [30]}], "widgets_values": ["a fox"]},
            {"id": 1, "type": "A", "inputs": [{"name": "prompt", "type": "STRING", "widget": {"name": "prompt"}, "link": 30}], "widgets_values": ["a fox", 7]}
        ],
        "links": [[30, 20, 0, 1, 0, "STRING"]],
        "definitions": {"subgraphs": [
            {"id": "A", "inputs": [{"name": "prompt", "type": "STRING"}],
             "nodes": [{"id": 5, "type": "B", "inputs": [{"name": "image", "type": "IMAGE", "link": null},
                                                         {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 11}],
                        "widgets_values": ["a fox"]}],
             "links": [{"id": 11, "origin_id": -10, "origin_slot": 0, "target_id": 5, "target_slot": 1, "type": "STRING"}]},
            {"id": "B", "inputs": [{"name": "image", "type": "IMAGE"}, {"name": "text", "type": "STRING"}],
             "nodes": [{"id": 9, "type": "VAEEncode", "inputs": [{"name": "pixels", "type": "IMAGE", "link": 12}]},
                       {"id": 7, "type": "CLIPTextEncode", "inputs": [{"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 13}], "widgets_values": ["a fox"]}],
             "links": [{"id": 12, "origin_id": -10, "origin_slot": 0, "target_id": 9, "target_slot": 0, "type": "IMAGE"},
                       {"id": 13, "origin_id": -10, "origin_slot": 1, "target_id": 7, "target_slot": 0, "type": "STRING"}]}
        ]}
    });
    let body = json!({
        "prompt": {
            "1:5:7": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["4", 1]}},
            "3": {"class_type": "KSampler", "inputs": {"positive": ["1:5:7", 0], "negative": ["8", 0], "seed": 5}},
            "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}}
        },
        "extra_data": {"extra_pnginfo": {"workflow": wf}}
    });
    let (slots, _, out) = refine(&body);
    assert_eq!(
        slots,
        [
            ("1:5:7/text".to_string(), Polarity::Positive),
            ("8/text".to_string(), Polarity::Negative)
        ]
    );
    let refined = json!(format!("a fox{MORE}"));
    let mut expected = wf.clone();
    expected["definitions"]["subgraphs"][1]["nodes"][1]["widgets_values"][0] = refined.clone();
    expected["definitions"]["subgraphs"][0]["nodes"][0]["widgets_values"][0] = refined.clone();
    expected["nodes"][2]["widgets_values"][0] = refined.clone();
    expected["nodes"][1]["widgets_values"][0] = refined;
    assert_eq!(
        out["extra_data"]["extra_pnginfo"]["workflow"], expected,
        "top-level node 7, another node with the inner node's id, keeps its text"
    );
}
