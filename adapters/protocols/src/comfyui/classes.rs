//! Which node inputs hold prompts. From ComfyUI 0.3.64's `/object_info`: every STRING
//! input with `dynamicPrompts` on a node that outputs CONDITIONING (audio lyrics left
//! out: they are not image prompts). Custom nodes are found by [`looks_like_encoder`].

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
