//! Tables of node classes, from ComfyUI 0.3.64's `/object_info`.
//!
//! [`PROMPT_INPUTS`]: which inputs hold prompts, every STRING input with
//! `dynamicPrompts` on a node that outputs CONDITIONING (audio lyrics left out: they
//! are not image prompts); custom nodes are found by [`looks_like_encoder`].
//! [`CONDITIONING_FLOWS`]: for every class with a CONDITIONING input, whether the text
//! of that input reaches its output, which decides prompt polarity ([`Flow`]).
//! [`SEED_INPUTS`]: where samplers keep the image seed.

use crate::Polarity;

/// `(class_type, input, text encoder that reads it)`.
pub(crate) const PROMPT_INPUTS: &[(&str, &str, Option<&str>)] = &[
    ("CLIPTextEncode", "text", None),
    ("CLIPTextEncodeSDXL", "text_g", Some("clip_g")),
    ("CLIPTextEncodeSDXL", "text_l", Some("clip_l")),
    ("CLIPTextEncodeSDXLRefiner", "text", Some("clip_g")),
    ("CLIPTextEncodeSD3", "clip_l", Some("clip_l")),
    ("CLIPTextEncodeSD3", "clip_g", Some("clip_g")),
    ("CLIPTextEncodeSD3", "t5xxl", Some("t5xxl")),
    ("CLIPTextEncodeFlux", "clip_l", Some("clip_l")),
    ("CLIPTextEncodeFlux", "t5xxl", Some("t5xxl")),
    ("CLIPTextEncodeHiDream", "clip_l", Some("clip_l")),
    ("CLIPTextEncodeHiDream", "clip_g", Some("clip_g")),
    ("CLIPTextEncodeHiDream", "t5xxl", Some("t5xxl")),
    ("CLIPTextEncodeHiDream", "llama", Some("llama")),
    ("CLIPTextEncodeHunyuanDiT", "bert", Some("bert")),
    ("CLIPTextEncodeHunyuanDiT", "mt5xl", Some("mt5xl")),
    ("CLIPTextEncodePixArtAlpha", "text", Some("t5xxl")),
    ("CLIPTextEncodeControlnet", "text", None),
    ("CLIPTextEncodeLumina2", "user_prompt", Some("gemma")),
    ("GLIGENTextBoxApply", "text", None),
    ("PhotoMakerEncode", "text", None),
    (
        "TextEncodeHunyuanVideo_ImageToVideo",
        "prompt",
        Some("llava"),
    ),
    ("TextEncodeQwenImageEdit", "prompt", Some("qwen")),
    ("TextEncodeQwenImageEditPlus", "prompt", Some("qwen")),
];

/// Nodes whose only job is to hold a string that other nodes read through a link.
pub(crate) const STRING_SOURCES: &[(&str, &str)] = &[
    ("PrimitiveString", "value"),
    ("PrimitiveStringMultiline", "value"),
];

/// Input names custom text-encoder nodes use for their prompt.
const CUSTOM_PROMPT_NAMES: &[&str] = &[
    "text", "prompt", "text_g", "text_l", "clip_l", "clip_g", "t5xxl", "positive", "negative",
];

/// A custom node that encodes text: its class says so and the input has a usual name.
pub(crate) fn looks_like_encoder(class_type: &str, input: &str) -> bool {
    let c = class_type.to_ascii_lowercase();
    (c.contains("textencode") || c.contains("cliptext")) && CUSTOM_PROMPT_NAMES.contains(&input)
}

/// Where a node keeps a prompt: the role of that input.
pub(crate) fn role(class_type: &str) -> &'static str {
    match class_type {
        "CLIPTextEncodeSDXLRefiner" => "refiner",
        "GLIGENTextBoxApply" => "region",
        _ => "main",
    }
}

/// What a node does with the text of its CONDITIONING inputs, for the polarity walk
/// from the samplers back to the text encoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Samplers, guiders, trainers: no CONDITIONING output; each listed input says the
    /// polarity of the text reaching it. `None`: the input is an empty-prompt baseline
    /// (PerpNeg's `empty_conditioning`), neither asked for nor avoided.
    Root(&'static [(&'static str, Option<Polarity>)]),
    /// One CONDITIONING output that carries the text of every listed input (area, mask,
    /// combine, concat, timestep range, guidance, style, reference latents, ...).
    PassThrough(&'static [&'static str]),
    /// CONDITIONING outputs in positive/negative pairs (ControlNet, inpaint and video
    /// conditioning, hook pairs): output `k` carries the text of the inputs listed
    /// `k`-th; outputs past the list (latents) carry none.
    TwoWay(&'static [&'static [&'static str]]),
    /// The output carries none of the text of these inputs: `ConditioningZeroOut`
    /// turns the positive into the empty negative of the Flux templates.
    Discard(&'static [&'static str]),
}

const P: Option<Polarity> = Some(Polarity::Positive);
const N: Option<Polarity> = Some(Polarity::Negative);
const POS_NEG: &[&[&str]] = &[&["positive"], &["negative"]];

/// Every ComfyUI 0.3.64 class with a CONDITIONING input and what it does with the text.
/// Classes not listed (custom nodes) are judged by their input names, see
/// `polarity::fallback`.
pub(crate) const CONDITIONING_FLOWS: &[(&str, Flow)] = &[
    // Roots: samplers, guiders, trainers.
    ("KSampler", Flow::Root(&[("positive", P), ("negative", N)])),
    (
        "KSamplerAdvanced",
        Flow::Root(&[("positive", P), ("negative", N)]),
    ),
    (
        "SamplerCustom",
        Flow::Root(&[("positive", P), ("negative", N)]),
    ),
    ("CFGGuider", Flow::Root(&[("positive", P), ("negative", N)])),
    (
        "DualCFGGuider",
        Flow::Root(&[("cond1", P), ("cond2", P), ("negative", N)]),
    ),
    ("BasicGuider", Flow::Root(&[("conditioning", P)])),
    (
        "PerpNegGuider",
        Flow::Root(&[
            ("positive", P),
            ("negative", N),
            ("empty_conditioning", None),
        ]),
    ),
    ("PerpNeg", Flow::Root(&[("empty_conditioning", None)])),
    ("TrainLoraNode", Flow::Root(&[("positive", P)])),
    // Pass-through: one conditioning out, the text of the inputs in it.
    (
        "ConditioningAverage",
        Flow::PassThrough(&["conditioning_to", "conditioning_from"]),
    ),
    (
        "ConditioningCombine",
        Flow::PassThrough(&["conditioning_1", "conditioning_2"]),
    ),
    (
        "ConditioningConcat",
        Flow::PassThrough(&["conditioning_to", "conditioning_from"]),
    ),
    ("ConditioningSetArea", Flow::PassThrough(&["conditioning"])),
    (
        "ConditioningSetAreaPercentage",
        Flow::PassThrough(&["conditioning"]),
    ),
    (
        "ConditioningSetAreaPercentageVideo",
        Flow::PassThrough(&["conditioning"]),
    ),
    (
        "ConditioningSetAreaStrength",
        Flow::PassThrough(&["conditioning"]),
    ),
    ("ConditioningSetMask", Flow::PassThrough(&["conditioning"])),
    (
        "ConditioningSetTimestepRange",
        Flow::PassThrough(&["conditioning"]),
    ),
    (
        "ConditioningSetProperties",
        Flow::PassThrough(&["cond_NEW"]),
    ),
    (
        "ConditioningSetPropertiesAndCombine",
        Flow::PassThrough(&["cond", "cond_NEW"]),
    ),
    (
        "ConditioningSetDefaultCombine",
        Flow::PassThrough(&["cond", "cond_DEFAULT"]),
    ),
    ("StyleModelApply", Flow::PassThrough(&["conditioning"])),
    ("unCLIPConditioning", Flow::PassThrough(&["conditioning"])),
    ("ControlNetApply", Flow::PassThrough(&["conditioning"])),
    (
        "GLIGENTextBoxApply",
        Flow::PassThrough(&["conditioning_to"]),
    ),
    (
        "CLIPTextEncodeControlnet",
        Flow::PassThrough(&["conditioning"]),
    ),
    (
        "StableCascade_StageB_Conditioning",
        Flow::PassThrough(&["conditioning"]),
    ),
    ("FluxGuidance", Flow::PassThrough(&["conditioning"])),
    ("FluxDisableGuidance", Flow::PassThrough(&["conditioning"])),
    (
        "FluxKontextMultiReferenceLatentMethod",
        Flow::PassThrough(&["conditioning"]),
    ),
    ("ReferenceLatent", Flow::PassThrough(&["conditioning"])),
    // Two-way: positive and negative in, positive and negative out.
    ("ControlNetApplyAdvanced", Flow::TwoWay(POS_NEG)),
    ("ControlNetApplySD3", Flow::TwoWay(POS_NEG)),
    ("ControlNetInpaintingAliMamaApply", Flow::TwoWay(POS_NEG)),
    ("InpaintModelConditioning", Flow::TwoWay(POS_NEG)),
    ("InstructPixToPixConditioning", Flow::TwoWay(POS_NEG)),
    ("SD_4XUpscale_Conditioning", Flow::TwoWay(POS_NEG)),
    ("ConditioningStableAudio", Flow::TwoWay(POS_NEG)),
    ("HunyuanImageToVideo", Flow::TwoWay(&[&["positive"]])),
    ("HunyuanRefinerLatent", Flow::TwoWay(POS_NEG)),
    ("LTXVImgToVideo", Flow::TwoWay(POS_NEG)),
    ("LTXVConditioning", Flow::TwoWay(POS_NEG)),
    ("LTXVAddGuide", Flow::TwoWay(POS_NEG)),
    ("LTXVCropGuides", Flow::TwoWay(POS_NEG)),
    ("WanTrackToVideo", Flow::TwoWay(POS_NEG)),
    ("WanImageToVideo", Flow::TwoWay(POS_NEG)),
    ("WanFunControlToVideo", Flow::TwoWay(POS_NEG)),
    ("Wan22FunControlToVideo", Flow::TwoWay(POS_NEG)),
    ("WanFunInpaintToVideo", Flow::TwoWay(POS_NEG)),
    ("WanFirstLastFrameToVideo", Flow::TwoWay(POS_NEG)),
    ("WanVaceToVideo", Flow::TwoWay(POS_NEG)),
    ("WanCameraImageToVideo", Flow::TwoWay(POS_NEG)),
    // negative_text and negative_img_text are both made from the negative.
    (
        "WanPhantomSubjectToVideo",
        Flow::TwoWay(&[&["positive"], &["negative"], &["negative"]]),
    ),
    ("WanSoundImageToVideo", Flow::TwoWay(POS_NEG)),
    ("WanSoundImageToVideoExtend", Flow::TwoWay(POS_NEG)),
    ("WanHuMoImageToVideo", Flow::TwoWay(POS_NEG)),
    ("WanAnimateToVideo", Flow::TwoWay(POS_NEG)),
    (
        "PairConditioningSetProperties",
        Flow::TwoWay(&[&["positive_NEW"], &["negative_NEW"]]),
    ),
    (
        "PairConditioningSetPropertiesAndCombine",
        Flow::TwoWay(&[&["positive", "positive_NEW"], &["negative", "negative_NEW"]]),
    ),
    (
        "PairConditioningSetDefaultCombine",
        Flow::TwoWay(&[
            &["positive", "positive_DEFAULT"],
            &["negative", "negative_DEFAULT"],
        ]),
    ),
    (
        "PairConditioningCombine",
        Flow::TwoWay(&[&["positive_A", "positive_B"], &["negative_A", "negative_B"]]),
    ),
    // Discards: the output holds no text of the input.
    ("ConditioningZeroOut", Flow::Discard(&["conditioning"])),
];

/// What `class_type` does with conditioning text, when it is a core class.
pub(crate) fn flow(class_type: &str) -> Option<Flow> {
    CONDITIONING_FLOWS
        .iter()
        .find(|(c, _)| *c == class_type)
        .map(|(_, f)| *f)
}

/// `(class_type, input)` holding the image seed of the sampling nodes (a literal
/// number; a link to a seed node is not read).
pub(crate) const SEED_INPUTS: &[(&str, &str)] = &[
    ("KSampler", "seed"),
    ("KSamplerAdvanced", "noise_seed"),
    ("SamplerCustom", "noise_seed"),
    ("RandomNoise", "noise_seed"),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    /// `(class, CONDITIONING input names, CONDITIONING output slots)` of every class in
    /// the recorded `/object_info` with a CONDITIONING input.
    fn conditioning_classes() -> Vec<(String, Vec<String>, Vec<usize>)> {
        let info = prip_test_support::fixture("comfyui/object_info.json");
        let is_cond = |v: &Value| v.get(0).and_then(Value::as_str) == Some("CONDITIONING");
        let mut out = Vec::new();
        for (class, def) in info.as_object().expect("object_info is an object") {
            let mut inputs = Vec::new();
            for section in ["required", "optional"] {
                if let Some(map) = def
                    .pointer(&format!("/input/{section}"))
                    .and_then(Value::as_object)
                {
                    inputs.extend(
                        map.iter()
                            .filter(|(_, v)| is_cond(v))
                            .map(|(k, _)| k.clone()),
                    );
                }
            }
            if inputs.is_empty() {
                continue;
            }
            let outputs = def["output"]
                .as_array()
                .expect("output list")
                .iter()
                .enumerate()
                .filter(|(_, t)| t.as_str() == Some("CONDITIONING"))
                .map(|(i, _)| i)
                .collect();
            out.push((class.clone(), inputs, outputs));
        }
        out
    }

    fn flow_inputs(flow: Flow) -> BTreeSet<&'static str> {
        match flow {
            Flow::Root(inputs) => inputs.iter().map(|(i, _)| *i).collect(),
            Flow::PassThrough(inputs) | Flow::Discard(inputs) => inputs.iter().copied().collect(),
            Flow::TwoWay(outputs) => outputs.iter().flat_map(|o| o.iter().copied()).collect(),
        }
    }

    #[test]
    fn every_class_with_a_conditioning_input_is_classified() {
        let classes = conditioning_classes();
        assert!(
            classes.len() >= 60,
            "object_info has {} such classes",
            classes.len()
        );
        let missing: Vec<&str> = classes
            .iter()
            .filter(|(c, _, _)| flow(c).is_none())
            .map(|(c, _, _)| c.as_str())
            .collect();
        assert!(missing.is_empty(), "not in CONDITIONING_FLOWS: {missing:?}");
        let known: BTreeSet<&str> = classes.iter().map(|(c, _, _)| c.as_str()).collect();
        for (class, _) in CONDITIONING_FLOWS {
            assert!(
                known.contains(class),
                "{class} has no CONDITIONING input in object_info"
            );
        }
    }

    #[test]
    fn each_flow_names_exactly_the_conditioning_inputs_and_outputs() {
        for (class, inputs, outputs) in conditioning_classes() {
            let flow = flow(&class).expect("classified");
            let inputs: BTreeSet<&str> = inputs.iter().map(String::as_str).collect();
            assert_eq!(
                flow_inputs(flow),
                inputs,
                "{class}: every CONDITIONING input, once"
            );
            match flow {
                Flow::Root(_) => assert!(
                    outputs.is_empty(),
                    "{class}: a root outputs no conditioning"
                ),
                Flow::PassThrough(_) | Flow::Discard(_) => {
                    assert_eq!(outputs, [0], "{class}: one conditioning output")
                }
                Flow::TwoWay(carried) => assert_eq!(
                    outputs,
                    (0..carried.len()).collect::<Vec<_>>(),
                    "{class}: one list per conditioning output, in output order"
                ),
            }
        }
    }

    #[test]
    fn the_categories_hold_the_classes_they_are_named_for() {
        assert_eq!(
            flow("ConditioningZeroOut"),
            Some(Flow::Discard(&["conditioning"]))
        );
        assert!(matches!(flow("KSampler"), Some(Flow::Root(_))));
        assert!(matches!(flow("BasicGuider"), Some(Flow::Root(_))));
        assert!(matches!(
            flow("ControlNetApplyAdvanced"),
            Some(Flow::TwoWay(_))
        ));
        assert!(matches!(flow("FluxGuidance"), Some(Flow::PassThrough(_))));
        assert_eq!(flow("BNK_CLIPTextEncodeAdvanced"), None);
    }

    #[test]
    fn seed_inputs_are_int_inputs_of_their_classes() {
        let info = prip_test_support::fixture("comfyui/object_info.json");
        for (class, input) in SEED_INPUTS {
            let ty = info
                .pointer(&format!("/{class}/input/required/{input}/0"))
                .and_then(Value::as_str);
            assert_eq!(ty, Some("INT"), "{class}.{input}");
        }
    }
}
