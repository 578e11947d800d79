//! AUTOMATIC1111 / Forge: `POST /sdapi/v1/txt2img` and `/sdapi/v1/img2img`.
//!
//! Prompts are `prompt`, `negative_prompt`, `hr_prompt` and `hr_negative_prompt`. The
//! server fills every field the request leaves unset from `infotext` (the text stored in
//! a PNG), so a prompt may live only there: then it is read from the infotext and the
//! refined text is written as an explicit field, which the server prefers to the
//! infotext. Styles are applied by the server to the (refined) prompt, so what it
//! renders and stores in the image is the refined prompt with the styles. Scripts
//! (`alwayson_scripts`, `script_args`) are left alone, but for PRIP's own extension.
//!
//! The seed is the request's `seed` unless it is `-1` (random). A refined body is
//! marked for the PRIP extension ([`EXTENSION`]) when the request names it in
//! `alwayson_scripts`: its `enabled` argument is set to `false`, so the extension does
//! not refine the proxy's output again, and the entry gets `"prip_refined": true`,
//! which `extract` reports as refined (A1111 reads only `args` of a script entry).
//! A request that does not name the extension is not given an entry: the server
//! answers 422 "always on script ... not found" for a script it does not have, and the
//! extension, run with its UI defaults, is off unless the user turned it on there.

use serde_json::{Map, Value};

use crate::fields::{self, Field};
use crate::{json, Extraction, Info, Polarity, Protocol, Replacement, Request, Route};

/// The title of PRIP's A1111 extension (`adapters/plugins/a1111/scripts/prip_refiner.py`),
/// its key in `alwayson_scripts`; the server matches the key without regard to case.
/// Its positional arguments are `[enabled, system, max_new_tokens, creativity, seed,
/// hires]`.
pub const EXTENSION: &str = "prip prompt refiner";

/// The key in the extension's `alwayson_scripts` entry that marks a refined body.
pub const REFINED_KEY: &str = "prip_refined";

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
            dialect: crate::Dialect::A1111,
        }
    }

    fn extract(&self, req: &Request) -> Result<Extraction, String> {
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
        let refined = extension_entry(&map)
            .and_then(|e| e.get(REFINED_KEY))
            .and_then(Value::as_bool)
            == Some(true);
        Ok(Extraction {
            slots,
            seed: json::seed(map.get("seed")),
            refined,
        })
    }

    fn apply(&self, req: &Request, replacements: &[Replacement]) -> Result<Vec<u8>, String> {
        let mut map: Map<String, Value> = json::object(&req.body)?;
        mark_refined(&mut map)?;
        fields::apply(map, replacements, &FIELDS)
    }
}

/// The key under which `alwayson_scripts` names the PRIP extension, if it does.
fn extension_key(scripts: &Map<String, Value>) -> Option<String> {
    scripts
        .keys()
        .find(|k| k.to_lowercase() == EXTENSION)
        .cloned()
}

/// The PRIP extension's `alwayson_scripts` entry.
fn extension_entry(map: &Map<String, Value>) -> Option<&Map<String, Value>> {
    let scripts = map.get("alwayson_scripts")?.as_object()?;
    scripts.get(&extension_key(scripts)?)?.as_object()
}

/// Turns the PRIP extension off for this request and marks it refined, when the
/// request names the extension (see the module notes for why only then).
fn mark_refined(map: &mut Map<String, Value>) -> Result<(), String> {
    let Some(Value::Object(scripts)) = map.get_mut("alwayson_scripts") else {
        return Ok(());
    };
    let Some(key) = extension_key(scripts) else {
        return Ok(());
    };
    let entry = match scripts.get_mut(&key) {
        Some(Value::Object(entry)) => entry,
        Some(other) => {
            return Err(format!(
                "alwayson_scripts[{key:?}] is {}, not an object",
                json::kind(other)
            ))
        }
        None => return Ok(()),
    };
    match entry.get_mut("args") {
        Some(Value::Array(args)) if args.is_empty() => args.push(Value::Bool(false)),
        Some(Value::Array(args)) => args[0] = Value::Bool(false),
        Some(Value::Null) | None => {
            entry.insert("args".into(), Value::Array(vec![Value::Bool(false)]));
        }
        Some(other) => {
            return Err(format!(
                "alwayson_scripts[{key:?}].args is {}, not a list",
                json::kind(other)
            ))
        }
    }
    entry.insert(REFINED_KEY.into(), Value::Bool(true));
    Ok(())
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
