//! The UI copy of a workflow (`extra_data.extra_pnginfo.workflow`), which ComfyUI saves
//! into the image: rewritten so the saved workflow shows what was rendered.
//!
//! A node inside a subgraph has an API id that is its path through the subgraph
//! instances, `instance:inner` ("56:51", "48:35:42" when nested), as the frontend's
//! `ExecutableNodeDTO` writes it. In the UI copy the node lives in the subgraph's
//! definition (`definitions.subgraphs[].nodes`), and when its widget is linked to one
//! of the subgraph's inputs, the value the frontend rendered is the one shown on the
//! subgraph's instance node one level up: an entry of the instance's `widgets_values`
//! (one per instance input promoted from an inner widget, in input order; frontends
//! from 1.24 on) or, when that list is empty (the `proxyWidgets` format), the inner
//! widget itself. Both are rewritten, up through nested instances, and so is a UI
//! `PrimitiveNode` feeding the widget through a link.

use serde_json::Value;

/// Sets the widget of `input` on the UI node of API id `node_id` from `original` to
/// `new`, and every value that shows it: the subgraph instance widgets and UI
/// primitive nodes it is linked from. A UI copy that does not hold `original` where
/// expected is left as it is.
pub(crate) fn rewrite(workflow: &mut Value, node_id: &str, input: &str, original: &str, new: &str) {
    let edits = match resolve(workflow, node_id) {
        Some(chain) => plan(workflow, &chain, input),
        None => legacy_plan(workflow, node_id, input),
    };
    for edit in edits {
        let Some(node) = workflow.pointer_mut(&edit.node) else {
            continue;
        };
        match edit.slot {
            Some(hint) => set_instance_widget(node, &edit.input, hint, original, new),
            None => set_widget(node, &edit.input, original, new),
        }
    }
}

/// One widget to rewrite: the node (a JSON pointer into the workflow) and input.
#[derive(Debug, PartialEq)]
struct Edit {
    node: String,
    input: String,
    /// For a subgraph instance: where its widget is expected in `widgets_values`.
    slot: Option<usize>,
}

/// A node on the path of an API id: the graph that holds it (a JSON pointer, "" for
/// the top level) and the node itself.
#[derive(Debug)]
struct Level {
    graph: String,
    node: String,
}

/// The UI nodes an API id goes through, top level first, or `None` when the UI copy
/// has no such path.
fn resolve(workflow: &Value, node_id: &str) -> Option<Vec<Level>> {
    let parts: Vec<&str> = node_id.split(':').collect();
    let mut graph = String::new();
    let mut chain = Vec::with_capacity(parts.len());
    for (depth, part) in parts.iter().enumerate() {
        let nodes = workflow.pointer(&format!("{graph}/nodes"))?.as_array()?;
        let index = nodes.iter().position(|n| id_matches(n.get("id"), part))?;
        chain.push(Level {
            graph: graph.clone(),
            node: format!("{graph}/nodes/{index}"),
        });
        if depth + 1 < parts.len() {
            let subgraph = nodes[index].get("type")?.as_str()?;
            graph = definition(workflow, &graph, subgraph)?;
        }
    }
    Some(chain)
}

/// The pointer of the definition of subgraph `id`: in the top level's
/// `definitions.subgraphs`, where the frontend keeps them all, else in the enclosing
/// graph's own.
fn definition(workflow: &Value, enclosing: &str, id: &str) -> Option<String> {
    [String::new(), enclosing.to_string()]
        .into_iter()
        .find_map(|holder| {
            let list = workflow.pointer(&format!("{holder}/definitions/subgraphs"))?;
            let index = list
                .as_array()?
                .iter()
                .position(|sg| sg.get("id").and_then(Value::as_str) == Some(id))?;
            Some(format!("{holder}/definitions/subgraphs/{index}"))
        })
}

/// The widgets showing `input` of the last node of `chain`: its own, then up the links
/// that feed it, through subgraph inputs to the instances' widgets.
fn plan(workflow: &Value, chain: &[Level], input: &str) -> Vec<Edit> {
    let mut level = chain.len() - 1;
    let mut node = chain[level].node.clone();
    let mut input = input.to_string();
    let mut edits = vec![Edit {
        node: node.clone(),
        input: input.clone(),
        slot: None,
    }];
    // Each step goes one level up or ends, so this ends.
    loop {
        let graph = &chain[level].graph;
        let Some(link_id) = workflow.pointer(&node).and_then(|n| input_link(n, &input)) else {
            break;
        };
        let links = workflow
            .pointer(&format!("{graph}/links"))
            .and_then(Value::as_array);
        let Some((origin, origin_slot)) =
            links.and_then(|l| l.iter().find_map(|l| link_origin(l, link_id)))
        else {
            break;
        };
        if origin == SUBGRAPH_INPUT_NODE && level > 0 {
            let Some(subgraph) = workflow.pointer(graph) else {
                break;
            };
            let Some(name) = subgraph
                .pointer(&format!("/inputs/{origin_slot}/name"))
                .and_then(Value::as_str)
            else {
                break;
            };
            level -= 1;
            node = chain[level].node.clone();
            input = name.to_string();
            edits.push(Edit {
                node: node.clone(),
                input: input.clone(),
                slot: Some(promoted_index(subgraph, origin_slot)),
            });
            continue;
        }
        // A node of the same graph feeding the widget: a UI PrimitiveNode.
        let nodes = workflow
            .pointer(&format!("{graph}/nodes"))
            .and_then(Value::as_array);
        if let Some(index) =
            nodes.and_then(|n| n.iter().position(|n| id_matches(n.get("id"), &origin)))
        {
            edits.push(Edit {
                node: format!("{graph}/nodes/{index}"),
                input: "value".into(),
                slot: None,
            });
        }
        break;
    }
    edits
}

/// For a UI copy without the API id's path: the node found by the last part of the id
/// in every node list, and the nodes feeding it through a link in the same list.
fn legacy_plan(workflow: &Value, node_id: &str, input: &str) -> Vec<Edit> {
    let local_id = node_id.rsplit(':').next().unwrap_or(node_id);
    let mut graphs = vec![String::new()];
    if let Some(list) = workflow
        .pointer("/definitions/subgraphs")
        .and_then(Value::as_array)
    {
        graphs.extend((0..list.len()).map(|i| format!("/definitions/subgraphs/{i}")));
    }
    let mut edits = Vec::new();
    let mut origins = Vec::new();
    for graph in &graphs {
        let Some(nodes) = workflow
            .pointer(&format!("{graph}/nodes"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        let links = workflow
            .pointer(&format!("{graph}/links"))
            .and_then(Value::as_array);
        for (i, node) in nodes.iter().enumerate() {
            if !id_matches(node.get("id"), local_id) {
                continue;
            }
            edits.push(Edit {
                node: format!("{graph}/nodes/{i}"),
                input: input.to_string(),
                slot: None,
            });
            let origin = input_link(node, input)
                .and_then(|id| links?.iter().find_map(|l| link_origin(l, id)));
            if let Some((origin, _)) = origin {
                origins.push(origin);
            }
        }
    }
    for graph in &graphs {
        let Some(nodes) = workflow
            .pointer(&format!("{graph}/nodes"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for (i, node) in nodes.iter().enumerate() {
            if origins.iter().any(|o| id_matches(node.get("id"), o)) {
                edits.push(Edit {
                    node: format!("{graph}/nodes/{i}"),
                    input: "value".into(),
                    slot: None,
                });
            }
        }
    }
    edits
}

/// The id of the node a subgraph's inputs come from in its links.
const SUBGRAPH_INPUT_NODE: &str = "-10";

/// Where the instance keeps the value of subgraph input `slot` in `widgets_values`:
/// one entry per input that is linked to a widget inside the subgraph, in input order.
fn promoted_index(subgraph: &Value, slot: usize) -> usize {
    (0..slot).filter(|&s| promotes_widget(subgraph, s)).count()
}

/// Whether subgraph input `slot` is linked to a widget of a node inside.
fn promotes_widget(subgraph: &Value, slot: usize) -> bool {
    let Some(links) = subgraph.get("links").and_then(Value::as_array) else {
        return false;
    };
    let nodes = subgraph.get("nodes").and_then(Value::as_array);
    links.iter().any(|l| {
        let from_slot = l.get("origin_id").map(id_string).as_deref() == Some(SUBGRAPH_INPUT_NODE)
            && l.get("origin_slot").and_then(Value::as_u64) == Some(slot as u64);
        if !from_slot {
            return false;
        }
        let (Some(target), Some(target_slot)) = (
            l.get("target_id").map(id_string),
            l.get("target_slot").and_then(Value::as_u64),
        ) else {
            return false;
        };
        nodes
            .and_then(|n| n.iter().find(|n| id_matches(n.get("id"), &target)))
            .and_then(|n| n.pointer(&format!("/inputs/{target_slot}/widget")))
            .is_some()
    })
}

fn id_matches(id: Option<&Value>, want: &str) -> bool {
    match id {
        Some(Value::Number(n)) => n.to_string() == want,
        Some(Value::String(s)) => s == want,
        _ => false,
    }
}

/// Replaces the first widget value equal to `original`: widgets_values is a list in
/// widget order for core nodes, a map by name for some custom ones.
fn set_widget(node: &mut Value, input: &str, original: &str, new: &str) {
    match node.get_mut("widgets_values") {
        Some(Value::Array(values)) => {
            if let Some(v) = values.iter_mut().find(|v| v.as_str() == Some(original)) {
                *v = Value::String(new.into());
            }
        }
        Some(Value::Object(values)) => {
            if let Some(v) = values
                .get_mut(input)
                .filter(|v| v.as_str() == Some(original))
            {
                *v = Value::String(new.into());
            }
        }
        _ => {}
    }
}

/// Sets the promoted widget `input` of a subgraph instance: the `widgets_values` entry
/// at `hint` when it holds `original`, else the first that does (older frontends also
/// kept a slot for each seed's `control_after_generate`). A value the frontend keeps in
/// quarantine for the input (`properties.proxyWidgetErrorQuarantine`, which it prefers
/// to `widgets_values` on load) is rewritten too.
fn set_instance_widget(node: &mut Value, input: &str, hint: usize, original: &str, new: &str) {
    match node.get_mut("widgets_values") {
        Some(Value::Array(values)) => {
            let at = Some(hint)
                .filter(|&i| values.get(i).and_then(Value::as_str) == Some(original))
                .or_else(|| values.iter().position(|v| v.as_str() == Some(original)));
            if let Some(i) = at {
                values[i] = Value::String(new.into());
            }
        }
        Some(Value::Object(_)) => set_widget(node, input, original, new),
        _ => {}
    }
    if let Some(Value::Array(quarantine)) =
        node.pointer_mut("/properties/proxyWidgetErrorQuarantine")
    {
        for entry in quarantine.iter_mut() {
            let promoted = entry.pointer("/originalEntry/0").and_then(Value::as_str) == Some("-1")
                && entry.pointer("/originalEntry/1").and_then(Value::as_str) == Some(input);
            if let Some(v) = entry
                .get_mut("hostValue")
                .filter(|v| promoted && v.as_str() == Some(original))
            {
                *v = Value::String(new.into());
            }
        }
    }
}

/// The link id feeding a node's input (or its converted widget).
fn input_link(node: &Value, input: &str) -> Option<u64> {
    node.get("inputs")?.as_array()?.iter().find_map(|i| {
        let named = i.get("name").and_then(Value::as_str) == Some(input)
            || i.pointer("/widget/name").and_then(Value::as_str) == Some(input);
        if named {
            i.get("link").and_then(Value::as_u64)
        } else {
            None
        }
    })
}

/// The origin node and output slot of link `id`, in the list form `[id, origin, slot,
/// target, slot, type]` or the object form of subgraphs.
fn link_origin(link: &Value, id: u64) -> Option<(String, usize)> {
    let (origin, slot) = match link {
        Value::Array(l) if l.first().and_then(Value::as_u64) == Some(id) => (l.get(1)?, l.get(2)),
        Value::Object(l) if l.get("id").and_then(Value::as_u64) == Some(id) => {
            (l.get("origin_id")?, l.get("origin_slot"))
        }
        _ => return None,
    };
    let slot = slot
        .and_then(Value::as_u64)
        .and_then(|s| usize::try_from(s).ok())
        .unwrap_or(0);
    Some((id_string(origin), slot))
}

fn id_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_api_path_resolves_through_nested_instances() {
        let wf = json!({
            "nodes": [{"id": 7, "type": "Other"}, {"id": 48, "type": "outer"}],
            "definitions": {"subgraphs": [
                {"id": "inner", "nodes": [{"id": 42, "type": "PrimitiveStringMultiline"}]},
                {"id": "outer", "nodes": [{"id": 35, "type": "inner"}]}
            ]}
        });
        let chain = resolve(&wf, "48:35:42").unwrap();
        let nodes: Vec<&str> = chain.iter().map(|l| l.node.as_str()).collect();
        assert_eq!(
            nodes,
            [
                "/nodes/1",
                "/definitions/subgraphs/1/nodes/0",
                "/definitions/subgraphs/0/nodes/0"
            ]
        );
        assert!(resolve(&wf, "48:99").is_none());
        assert!(resolve(&wf, "7:1").is_none(), "7 is no subgraph instance");
    }
}
