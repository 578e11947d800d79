//! ComfyUI prompt polarity, one test per kind of node a conditioning passes through
//! (see `Flow` in src/comfyui/classes.rs): roots, pass-through, two-way, discards, and
//! custom nodes judged by name.

use prip_protocols::{comfyui::ComfyUi, Polarity, Protocol, Request};
use prip_test_support::cases;
use serde_json::{json, Value};

fn polarities(graph: Value) -> Vec<(String, Polarity)> {
    let body = serde_json::to_vec(&json!({ "prompt": graph })).unwrap();
    ComfyUi
        .extract(&Request::post("/prompt", body))
        .unwrap()
        .slots
        .into_iter()
        .map(|s| (s.id, s.polarity))
        .collect()
}

fn text(id: &str, text: &str) -> (String, Value) {
    (
        id.to_string(),
        json!({"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}}),
    )
}

fn graph(nodes: Vec<(String, Value)>) -> Value {
    Value::Object(nodes.into_iter().collect())
}

fn ids(list: &[(&str, Polarity)]) -> Vec<(String, Polarity)> {
    list.iter().map(|(i, p)| (i.to_string(), *p)).collect()
}

#[test]
fn zero_out_of_the_positive_does_not_make_it_negative() {
    // The official Flux dev template: negative = ConditioningZeroOut(positive).
    let flux = cases::comfyui_flux_zero_out();
    assert_eq!(
        polarities(flux["prompt"].clone()),
        ids(&[("6/text", Polarity::Positive)])
    );
    // The same through a guider and FluxGuidance, with the zeroed copy as negative.
    let guided = graph(vec![
        text("6", "a red bicycle leaning on a wall"),
        (
            "35".into(),
            json!({"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": 3.5}}),
        ),
        (
            "30".into(),
            json!({"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}}),
        ),
        (
            "22".into(),
            json!({"class_type": "CFGGuider", "inputs": {"model": ["4", 0], "positive": ["35", 0], "negative": ["30", 0], "cfg": 1}}),
        ),
    ]);
    assert_eq!(polarities(guided), ids(&[("6/text", Polarity::Positive)]));
}

#[test]
fn a_custom_zero_out_node_discards_too() {
    let g = graph(vec![
        text("6", "a lighthouse"),
        (
            "30".into(),
            json!({"class_type": "MyConditioningZeroOutPlus", "inputs": {"conditioning": ["6", 0]}}),
        ),
        (
            "3".into(),
            json!({"class_type": "KSampler", "inputs": {"positive": ["6", 0], "negative": ["30", 0]}}),
        ),
    ]);
    assert_eq!(polarities(g), ids(&[("6/text", Polarity::Positive)]));
    // Any other custom node still passes its cond* inputs through, as before.
    let g = graph(vec![
        text("6", "a lighthouse"),
        (
            "30".into(),
            json!({"class_type": "MyConditioningTweak", "inputs": {"conditioning": ["6", 0]}}),
        ),
        (
            "3".into(),
            json!({"class_type": "KSampler", "inputs": {"positive": ["6", 0], "negative": ["30", 0]}}),
        ),
    ]);
    assert_eq!(polarities(g), ids(&[("6/text", Polarity::Unknown)]));
}

#[test]
fn pass_through_nodes_carry_the_polarity_of_their_output() {
    let g = graph(vec![
        text("1", "a castle"),
        text("2", "a moat"),
        text("7", "lowres"),
        (
            "10".into(),
            json!({"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["1", 0], "start": 0, "end": 0.5}}),
        ),
        (
            "11".into(),
            json!({"class_type": "ConditioningConcat", "inputs": {"conditioning_to": ["10", 0], "conditioning_from": ["2", 0]}}),
        ),
        (
            "12".into(),
            json!({"class_type": "ReferenceLatent", "inputs": {"conditioning": ["11", 0]}}),
        ),
        (
            "13".into(),
            json!({"class_type": "ConditioningSetMask", "inputs": {"conditioning": ["7", 0], "strength": 1}}),
        ),
        (
            "3".into(),
            json!({"class_type": "KSamplerAdvanced", "inputs": {"positive": ["12", 0], "negative": ["13", 0]}}),
        ),
    ]);
    assert_eq!(
        polarities(g),
        ids(&[
            ("1/text", Polarity::Positive),
            ("2/text", Polarity::Positive),
            ("7/text", Polarity::Negative)
        ])
    );
}

#[test]
fn two_way_nodes_map_each_output_to_its_own_inputs() {
    // WanPhantomSubjectToVideo: positive, negative_text, negative_img_text; both
    // negatives are made from the negative input.
    let g = graph(vec![
        text("1", "a dancer on a stage"),
        text("2", "static, blurry"),
        (
            "5".into(),
            json!({"class_type": "WanPhantomSubjectToVideo", "inputs": {"positive": ["1", 0], "negative": ["2", 0], "vae": ["9", 0]}}),
        ),
        (
            "6".into(),
            json!({"class_type": "KSampler", "inputs": {"positive": ["5", 0], "negative": ["5", 2]}}),
        ),
    ]);
    assert_eq!(
        polarities(g),
        ids(&[
            ("1/text", Polarity::Positive),
            ("2/text", Polarity::Negative)
        ])
    );
    // What an output carries is decided by the slot the link leaves from, not by the
    // input's name: a sampler fed the "negative" output as its positive treats that
    // text as positive.
    let g = graph(vec![
        text("1", "a castle"),
        text("2", "a moat"),
        (
            "5".into(),
            json!({"class_type": "PairConditioningCombine",
            "inputs": {"positive_A": ["1", 0], "negative_A": ["2", 0], "positive_B": ["1", 0], "negative_B": ["2", 0]}}),
        ),
        (
            "6".into(),
            json!({"class_type": "SamplerCustom", "inputs": {"positive": ["5", 1], "negative": ["5", 0]}}),
        ),
    ]);
    assert_eq!(
        polarities(g),
        ids(&[
            ("1/text", Polarity::Negative),
            ("2/text", Polarity::Positive)
        ])
    );
}

#[test]
fn roots_say_the_polarity_and_an_empty_baseline_has_none() {
    let g = graph(vec![
        text("1", "a red fox"),
        text("2", "a snowy field"),
        text("3", "blurry"),
        text("4", "neutral baseline"),
        (
            "10".into(),
            json!({"class_type": "DualCFGGuider", "inputs": {"cond1": ["1", 0], "cond2": ["2", 0], "negative": ["3", 0]}}),
        ),
        (
            "11".into(),
            json!({"class_type": "PerpNegGuider", "inputs": {"positive": ["1", 0], "negative": ["3", 0], "empty_conditioning": ["4", 0]}}),
        ),
    ]);
    assert_eq!(
        polarities(g),
        ids(&[
            ("1/text", Polarity::Positive),
            ("2/text", Polarity::Positive),
            ("3/text", Polarity::Negative),
            ("4/text", Polarity::Unknown)
        ])
    );
    let g = graph(vec![
        text("1", "photo of sks dog"),
        (
            "10".into(),
            json!({"class_type": "TrainLoraNode", "inputs": {"positive": ["1", 0]}}),
        ),
    ]);
    assert_eq!(polarities(g), ids(&[("1/text", Polarity::Positive)]));
}
