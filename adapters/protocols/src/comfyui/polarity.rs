//! Polarity by walking the graph back from the inputs that say it: the positive and
//! negative inputs of samplers and guiders (and a guider's single `conditioning`,
//! `DualCFGGuider`'s `cond1`/`cond2`). From there the walk follows each node's
//! conditioning inputs as the node's [`Flow`] says: through pass-through nodes (area,
//! combine, concat, timestep range, guidance, ...), through two-way nodes (ControlNet,
//! inpaint and video conditioning) from output `k` to the inputs that make output `k`,
//! and not at all through nodes whose output carries no text of their input
//! (`ConditioningZeroOut`, which makes the Flux templates' negative from the positive).
//!
//! Core classes follow the table in [`classes`](super::classes); custom nodes are
//! judged by their input names ([`fallback`]).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::classes::{self, Flow};
use crate::Polarity;

/// A link in API format: `[source node id, output index]`.
pub(crate) fn link(v: &Value) -> Option<&str> {
    link_slot(v).map(|(id, _)| id)
}

/// A link with its output index.
fn link_slot(v: &Value) -> Option<(&str, u64)> {
    match v.as_array()?.as_slice() {
        [Value::String(id), Value::Number(slot)] => Some((id, slot.as_u64().unwrap_or(0))),
        _ => None,
    }
}

/// How a custom node (one not in [`classes::CONDITIONING_FLOWS`]) is judged, from its
/// class and input names, as before the table existed:
///
/// - inputs named `positive*` / `negative*`, and `cond*` inputs of a class named
///   `*Guider*`, are roots of that polarity;
/// - a node with `positive*` or `negative*` inputs is not walked through (its outputs'
///   polarity is its inputs', which are roots already);
/// - a class whose name contains `ZeroOut` discards its input's text;
/// - any other node passes the text of its `cond*` inputs through.
pub(crate) fn fallback(class_type: &str) -> Fallback<'_> {
    Fallback(class_type)
}

/// The name-based judgement of one custom class; see [`fallback`].
pub(crate) struct Fallback<'a>(&'a str);

impl Fallback<'_> {
    /// The polarity input `input` gives the text reaching it, when it is a root.
    fn root(&self, input: &str) -> Option<Polarity> {
        if input.starts_with("positive") {
            Some(Polarity::Positive)
        } else if input.starts_with("negative") {
            Some(Polarity::Negative)
        } else if self.0.contains("Guider") && is_conditioning_name(input) {
            Some(Polarity::Positive)
        } else {
            None
        }
    }

    /// The inputs whose text reaches the output, for a node reached by the walk.
    fn carried<'n>(&self, node: &'n Value) -> Vec<&'n Value> {
        let two_way =
            inputs(node).any(|(n, _)| n.starts_with("positive") || n.starts_with("negative"));
        if two_way || self.0.contains("ZeroOut") {
            return Vec::new();
        }
        inputs(node)
            .filter(|(name, _)| is_conditioning_name(name))
            .map(|(_, v)| v)
            .collect()
    }
}

fn is_conditioning_name(input: &str) -> bool {
    input.starts_with("cond")
}

/// The polarity of every node reachable from a polarity-bearing input; a node reached
/// as both positive and negative is `Unknown`.
pub(crate) fn node_polarities(graph: &Map<String, Value>) -> BTreeMap<String, Polarity> {
    let mut stack: Vec<(&str, u64, Polarity)> = Vec::new();
    for node in graph.values() {
        let class_type = class_of(node);
        match classes::flow(class_type) {
            Some(Flow::Root(roots)) => {
                for (name, polarity) in roots {
                    let source = node
                        .get("inputs")
                        .and_then(|i| i.get(*name))
                        .and_then(link_slot);
                    if let (Some(p), Some((src, slot))) = (polarity, source) {
                        stack.push((src, slot, *p));
                    }
                }
            }
            Some(_) => {}
            None => {
                let judge = fallback(class_type);
                for (name, value) in inputs(node) {
                    if let (Some(p), Some((src, slot))) = (judge.root(name), link_slot(value)) {
                        stack.push((src, slot, p));
                    }
                }
            }
        }
    }
    let mut seen: BTreeSet<(&str, u64, Polarity)> = BTreeSet::new();
    while let Some((id, slot, p)) = stack.pop() {
        if !seen.insert((id, slot, p)) {
            continue;
        }
        let Some(node) = graph.get(id) else { continue };
        let carried: Vec<&Value> = match classes::flow(class_of(node)) {
            Some(Flow::PassThrough(names)) => named(node, names),
            Some(Flow::TwoWay(outputs)) => usize::try_from(slot)
                .ok()
                .and_then(|k| outputs.get(k))
                .map(|names| named(node, names))
                .unwrap_or_default(),
            Some(Flow::Root(_) | Flow::Discard(_)) => Vec::new(),
            None => fallback(class_of(node)).carried(node),
        };
        for (src, src_slot) in carried.into_iter().filter_map(link_slot) {
            stack.push((src, src_slot, p));
        }
    }
    let mut out: BTreeMap<String, Polarity> = BTreeMap::new();
    for (id, _, p) in seen {
        out.entry(id.to_string())
            .and_modify(|q| {
                if *q != p {
                    *q = Polarity::Unknown
                }
            })
            .or_insert(p);
    }
    out
}

fn class_of(node: &Value) -> &str {
    node.get("class_type").and_then(Value::as_str).unwrap_or("")
}

/// The values of the inputs `names` that the node has.
fn named<'n>(node: &'n Value, names: &[&str]) -> Vec<&'n Value> {
    names
        .iter()
        .filter_map(|n| node.get("inputs")?.get(*n))
        .collect()
}

/// A node's inputs as `(name, value)`.
pub(crate) fn inputs(node: &Value) -> impl Iterator<Item = (&str, &Value)> {
    node.get("inputs")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v)))
}
