//! AUTOMATIC1111 / Forge: `POST /sdapi/v1/txt2img` and `/sdapi/v1/img2img`.
//!
//! Prompts are `prompt`, `negative_prompt`, `hr_prompt` and `hr_negative_prompt`. The
//! server fills every field the request leaves unset from `infotext` (the text stored in
//! a PNG), so a prompt may live only there: then it is read from the infotext and the
//! refined text is written as an explicit field, which the server prefers to the
//! infotext. Styles are applied by the server to the (refined) prompt, so what it
//! renders and stores in the image is the refined prompt with the styles; scripts
//! (`alwayson_scripts`, `script_args`) are never touched.

use serde_json::{Map, Value};

use crate::fields::{self, Field};
use crate::{json, Info, Polarity, Protocol, Replacement, Request, Route, Slot};

const FIELDS: [Field; 4] = [
    Field::new("prompt", Polarity::Positive, "main"),
    Field::new("negative_prompt", Polarity::Negative, "main"),
    Field::new("hr_prompt", Polarity::Positive, "hires"),
    Field::new("hr_negative_prompt", Polarity::Negative, "hires"),
];

/// The A1111 / Forge web API.
pub struct A1111;

impl Protocol for A1111 {
    fn describe(&self) -> Info {
        Info {
            name: "a1111".into(),
            version: crate::VERSION.into(),
            routes: vec![
                Route::post("/sdapi/v1/txt2img"),
                Route::post("/sdapi/v1/img2img"),
            ],
            annotates: false,
        }
    }

    fn extract(&self, req: &Request) -> Result<Vec<Slot>, String> {
        let map = json::object(&req.body)?;
        let mut slots = fields::extract(&map, &FIELDS);
        if let Some(info) = json::text(&map, "infotext") {
            let parsed = Infotext::parse(info);
            let from_info = [
                ("hr_prompt", parsed.param("Hires prompt")),
                ("hr_negative_prompt", parsed.param("Hires negative prompt")),
                ("prompt", parsed.prompt),
                ("negative_prompt", parsed.negative_prompt),
            ];
            for (key, text) in from_info {
                let field = FIELDS.iter().find(|f| f.key == key).expect("listed");
                match text {
                    Some(t) if !map.contains_key(key) && !t.trim().is_empty() => {
                        slots.push(field.slot(&t))
                    }
                    _ => {}
                }
            }
            slots.sort_by_key(|s| FIELDS.iter().position(|f| f.key == s.id));
        }
        Ok(slots)
    }

    fn apply(&self, req: &Request, replacements: &[Replacement]) -> Result<Vec<u8>, String> {
        let map: Map<String, Value> = json::object(&req.body)?;
        fields::apply(map, replacements, &FIELDS)
    }
}

/// The parts of an A1111 infotext that hold prompts, parsed as the server's
/// `parse_generation_parameters` does.
#[derive(Debug, Default, PartialEq)]
pub struct Infotext {
    /// Lines before "Negative prompt:".
    pub prompt: Option<String>,
    /// Lines from "Negative prompt:" up to the parameter line.
    pub negative_prompt: Option<String>,
    /// `Key: value` pairs of the last line, quoted values unquoted.
    pub params: Vec<(String, String)>,
}

impl Infotext {
    /// Parses an infotext. The last line counts as parameters only when it holds at
    /// least three `Key: value` pairs, as on the server.
    pub fn parse(text: &str) -> Self {
        let mut lines: Vec<&str> = text.trim().split('\n').collect();
        let mut params = Vec::new();
        if let Some(last) = lines.last() {
            let p = parse_params(last);
            if p.len() >= 3 {
                params = p;
                lines.pop();
            }
        }
        let (mut prompt, mut negative) = (Vec::new(), Vec::new());
        let mut in_negative = false;
        for line in lines {
            let mut line = line.trim();
            if let Some(rest) = line.strip_prefix("Negative prompt:") {
                in_negative = true;
                line = rest.trim();
            }
            if in_negative {
                negative.push(line);
            } else {
                prompt.push(line);
            }
        }
        let join = |v: Vec<&str>| (!v.is_empty()).then(|| v.join("\n"));
        Self {
            prompt: join(prompt),
            negative_prompt: join(negative),
            params,
        }
    }

    /// The value of parameter `key`.
    pub fn param(&self, key: &str) -> Option<String> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

/// `Key: value, Key: "quoted, value", ...` as the server's `re_param` reads it.
fn parse_params(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let Some(colon) = rest.find(':') else { break };
        let key = rest[..colon].trim();
        let key_ok = key
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
            && key
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | ' ' | '-' | '/'));
        if !key_ok {
            break;
        }
        rest = rest[colon + 1..].trim_start();
        let value;
        if rest.starts_with('"') {
            let end = quoted_end(rest);
            let raw = &rest[..end];
            value = serde_json::from_str::<String>(raw)
                .unwrap_or_else(|_| raw.trim_matches('"').to_string());
            rest = &rest[end..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        out.push((key.to_string(), value));
    }
    out
}

/// Byte index just past the closing quote of a quoted value (or the end).
fn quoted_end(s: &str) -> usize {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return i + 1,
            _ => {}
        }
    }
    s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HIRES: &str = "a fox, refined\nNegative prompt: blurry\nSteps: 1, Sampler: Euler, CFG scale: 7.0, Seed: 3919858964, Hires prompt: \"a fox, detailed, refined\", Hires upscale: 1.5";

    #[test]
    fn infotext_as_the_server_reads_it() {
        let info = Infotext::parse(HIRES);
        assert_eq!(info.prompt.as_deref(), Some("a fox, refined"));
        assert_eq!(info.negative_prompt.as_deref(), Some("blurry"));
        assert_eq!(
            info.param("Hires prompt").as_deref(),
            Some("a fox, detailed, refined")
        );
        assert_eq!(info.param("Hires upscale").as_deref(), Some("1.5"));
    }

    #[test]
    fn a_last_line_with_few_params_is_prompt_text() {
        let info = Infotext::parse("a cat\nby the sea: blue");
        assert_eq!(info.prompt.as_deref(), Some("a cat\nby the sea: blue"));
        assert!(info.params.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn infotext_parsing_never_panics(s in ".{0,200}") {
            let _ = Infotext::parse(&s);
        }
    }
}
