//! ComfyUI: `POST /prompt` (and `/api/prompt`) with a workflow in API format.
//!
//! Prompts are the text inputs of text-encoder nodes ([`classes`]), either literal or a
//! link to a string primitive node, whose value is then the slot. Polarity comes from
//! the graph ([`polarity`]). Slot ids are `node/input` ("6/text"). Applying a
//! replacement also rewrites the UI copy of the workflow the browser sends along
//! ([`workflow`]), so the workflow saved in the image matches what was rendered.
//! Nodes inside subgraphs have API ids that are paths, `instance:inner` ("56:51").
//!
//! The seed is the literal seed of the first sampler in node order that has one
//! ([`classes::SEED_INPUTS`]). A refined body is marked `extra_data.prip =
//! {"refined": true}` (ComfyUI ignores keys of `extra_data` it does not know), which
//! ComfyUI's in-server auto mode, calling this same code, sees as already refined.

mod classes;
mod polarity;
mod workflow;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::{json, Extraction, Info, Polarity, Protocol, Replacement, Request, Route, Slot};

/// The ComfyUI server protocol.
pub struct ComfyUi;

impl Protocol for ComfyUi {
    fn describe(&self) -> Info {
        Info {
            name: "comfyui".into(),
            version: crate::VERSION.into(),
            routes: vec![Route::post("/prompt"), Route::post("/api/prompt")],
            annotates: false,
            dialect: crate::Dialect::ComfyUi,
        }
    }

    fn extract(&self, req: &Request) -> Result<Extraction, String> {
        let body = json::object(&req.body)?;
        let graph = graph(&body)?;
        let refined = body
            .get("extra_data")
            .and_then(|e| e.pointer(MARKER_POINTER))
            .and_then(Value::as_bool)
            == Some(true);
        Ok(Extraction {
            slots: slots(graph),
            seed: seed(graph),
            refined,
        })
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
        mark_refined(&mut body)?;
        Ok(json::bytes(&body))
    }
}

const NO_GRAPH: &str = "body has no \"prompt\" object (ComfyUI API format)";

/// Where in `extra_data` a refined body says so.
const MARKER_POINTER: &str = "/prip/refined";

/// Sets `extra_data.prip.refined` to `true`, creating `extra_data` (last) and `prip`
/// when absent and keeping every other key where it was.
fn mark_refined(body: &mut Map<String, Value>) -> Result<(), String> {
    let extra = body
        .entry("extra_data")
        .or_insert_with(|| Value::Object(Map::new()));
    if extra.is_null() {
        *extra = Value::Object(Map::new());
    }
    let Value::Object(extra) = extra else {
        return Err(format!(
            "extra_data is {}, not an object",
            json::kind(extra)
        ));
    };
    let prip = extra
        .entry("prip")
        .or_insert_with(|| Value::Object(Map::new()));
    if !prip.is_object() {
        *prip = Value::Object(Map::new());
    }
    if let Value::Object(prip) = prip {
        prip.insert("refined".into(), Value::Bool(true));
    }
    Ok(())
}

/// The literal seed of the first sampling node, in node order, that has one.
fn seed(graph: &Map<String, Value>) -> Option<u64> {
    graph.values().find_map(|node| {
        let class_type = node.get("class_type").and_then(Value::as_str)?;
        let (_, input) = classes::SEED_INPUTS
            .iter()
            .find(|(c, _)| *c == class_type)?;
        json::seed(node.get("inputs")?.get(*input))
    })
}

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
