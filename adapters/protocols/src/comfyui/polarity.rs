//! Polarity by walking the graph back from the inputs that say it: `positive*` and
//! `negative*` anywhere (samplers, guiders, ControlNet appliers), and the conditioning
//! inputs of guiders with a single one (`BasicGuider.conditioning`, `DualCFGGuider`'s
//! `cond1`/`cond2`). From there the walk follows conditioning links through
//! pass-through nodes (area, combine, concat, timestep range, ...) to the text nodes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::Polarity;

/// A link in API format: `[source node id, output index]`.
pub(crate) fn link(v: &Value) -> Option<&str> {
    match v.as_array()?.as_slice() {
        [Value::String(id), Value::Number(_)] => Some(id),
        _ => None,
    }
}

fn named_polarity(class_type: &str, input: &str) -> Option<Polarity> {
    if input.starts_with("positive") {
        Some(Polarity::Positive)
    } else if input.starts_with("negative") {
        Some(Polarity::Negative)
    } else if class_type.contains("Guider") && is_conditioning_name(input) {
        Some(Polarity::Positive)
    } else {
        None
    }
}

fn is_conditioning_name(input: &str) -> bool {
    input.starts_with("cond")
}

/// The polarity of every node reachable from a polarity-bearing input; a node reached
/// as both positive and negative is `Unknown`.
pub(crate) fn node_polarities(graph: &Map<String, Value>) -> BTreeMap<String, Polarity> {
    let mut seen: BTreeSet<(String, Polarity)> = BTreeSet::new();
    let mut stack: Vec<(String, Polarity)> = Vec::new();
    for node in graph.values() {
        let class_type = node.get("class_type").and_then(Value::as_str).unwrap_or("");
        for (name, value) in inputs(node) {
            if let (Some(p), Some(src)) = (named_polarity(class_type, name), link(value)) {
                stack.push((src.to_string(), p));
            }
        }
    }
    while let Some((id, p)) = stack.pop() {
        if !seen.insert((id.clone(), p)) {
            continue;
        }
        let Some(node) = graph.get(&id) else { continue };
        let two_way =
            inputs(node).any(|(n, _)| n.starts_with("positive") || n.starts_with("negative"));
        if two_way {
            // Its positive/negative inputs were roots already; what flows out of output
            // k is input k's polarity, not the one we arrived with.
            continue;
        }
        for (name, value) in inputs(node) {
            if is_conditioning_name(name) {
                if let Some(src) = link(value) {
                    stack.push((src.to_string(), p));
                }
            }
        }
    }
    let mut out: BTreeMap<String, Polarity> = BTreeMap::new();
    for (id, p) in seen {
        out.entry(id)
            .and_modify(|q| {
                if *q != p {
                    *q = Polarity::Unknown
                }
            })
            .or_insert(p);
    }
    out
}

/// A node's inputs as `(name, value)`.
pub(crate) fn inputs(node: &Value) -> impl Iterator<Item = (&str, &Value)> {
    node.get("inputs")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v)))
}
