//! ComfyUI: `POST /prompt` (and `/api/prompt`) with a workflow in API format.
//!
//! Prompts are the text inputs of text-encoder nodes ([`classes`]), either literal or a
//! link to a string primitive node, whose value is then the slot. Polarity comes from
//! the graph ([`polarity`]). Slot ids are `node/input` ("6/text"). Applying a
//! replacement also rewrites the UI copy of the workflow the browser sends along
//! ([`workflow`]), so the workflow saved in the image matches what was rendered.

mod classes;
mod polarity;
mod workflow;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::{json, Info, Polarity, Protocol, Replacement, Request, Route, Slot};

/// The ComfyUI server protocol.
pub struct ComfyUi;

impl Protocol for ComfyUi {
    fn describe(&self) -> Info {
        Info {
            name: "comfyui".into(),
            version: crate::VERSION.into(),
            routes: vec![Route::post("/prompt"), Route::post("/api/prompt")],
            annotates: false,
        }
    }

    fn extract(&self, req: &Request) -> Result<Vec<Slot>, String> {
        let body = json::object(&req.body)?;
        Ok(slots(graph(&body)?))
    }

    fn apply(&self, req: &Request, replacements: &[Replacement]) -> Result<Vec<u8>, String> {
        let mut body = json::object(&req.body)?;
        let graph = match body.get_mut("prompt") {
            Some(Value::Object(g)) => g,
            _ => return Err(NO_GRAPH.into()),
        };
        for r in replacements {
            let (node, input) =
                r.id.rsplit_once('/')
                    .ok_or_else(|| format!("slot id {:?} is not node/input", r.id))?;
            let inputs = graph
                .get_mut(node)
                .and_then(|n| n.get_mut("inputs"))
                .and_then(Value::as_object_mut)
                .ok_or_else(|| format!("no node {node:?} with inputs in the workflow"))?;
            if !inputs.contains_key(input) {
                return Err(format!("node {node:?} has no input {input:?}"));
            }
            json::replace_text(inputs, input, &r.original, &r.text)?;
        }
        let ui = body
            .get_mut("extra_data")
            .and_then(|v| v.pointer_mut("/extra_pnginfo/workflow"));
        if let Some(ui) = ui {
            for r in replacements {
                if let Some((node, input)) = r.id.rsplit_once('/') {
                    workflow::rewrite(ui, node, input, &r.original, &r.text);
                }
            }
        }
        Ok(json::bytes(&body))
    }
}

const NO_GRAPH: &str = "body has no \"prompt\" object (ComfyUI API format)";

fn graph(body: &Map<String, Value>) -> Result<&Map<String, Value>, String> {
    match body.get("prompt") {
        Some(Value::Object(g)) => Ok(g),
        _ => Err(NO_GRAPH.into()),
    }
}

/// The prompt slots of a graph in node order, a shared primitive reported once with
/// the polarities of all its readers merged.
fn slots(graph: &Map<String, Value>) -> Vec<Slot> {
    let polarities = polarity::node_polarities(graph);
    let mut found: Vec<Slot> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (id, node) in graph {
        let class_type = node.get("class_type").and_then(Value::as_str).unwrap_or("");
        let pol = polarities.get(id).copied().unwrap_or(Polarity::Unknown);
        for (input, value) in polarity::inputs(node) {
            let Some(encoder) = prompt_input(class_type, input) else {
                continue;
            };
            let (slot_id, text) = match value {
                Value::String(s) => (format!("{id}/{input}"), s.as_str()),
                other => match polarity::link(other).and_then(|src| string_source(graph, src)) {
                    Some((src, key, text)) => (format!("{src}/{key}"), text),
                    None => continue,
                },
            };
            if text.trim().is_empty() {
                continue;
            }
            match index.get(&slot_id) {
                Some(&i) => {
                    if found[i].polarity != pol {
                        found[i].polarity = Polarity::Unknown;
                    }
                }
                None => {
                    index.insert(slot_id.clone(), found.len());
                    found.push(Slot {
                        id: slot_id,
                        text: text.to_string(),
                        polarity: pol,
                        role: classes::role(class_type).into(),
                        encoder: encoder.map(str::to_string),
                    });
                }
            }
        }
    }
    found
}

/// `Some(encoder)` when `input` of `class_type` holds a prompt.
fn prompt_input(class_type: &str, input: &str) -> Option<Option<&'static str>> {
    classes::PROMPT_INPUTS
        .iter()
        .find(|(c, i, _)| *c == class_type && *i == input)
        .map(|(_, _, e)| *e)
        .or_else(|| classes::looks_like_encoder(class_type, input).then_some(None))
}

/// The string a primitive node `src` holds: `(node id, input, text)`.
fn string_source<'a>(
    graph: &'a Map<String, Value>,
    src: &'a str,
) -> Option<(&'a str, &'static str, &'a str)> {
    let node = graph.get(src)?;
    let class_type = node.get("class_type")?.as_str()?;
    let (_, key) = classes::STRING_SOURCES
        .iter()
        .find(|(c, _)| *c == class_type)?;
    let text = node.get("inputs")?.get(*key)?.as_str()?;
    Some((src, key, text))
}
