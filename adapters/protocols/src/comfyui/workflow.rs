//! The UI copy of a workflow (`extra_data.extra_pnginfo.workflow`), which ComfyUI saves
//! into the image: rewritten so the saved workflow shows what was rendered.

use serde_json::Value;

/// Sets the widget of `input` on UI node `node_id` from `original` to `new`, and the
/// widget of the node feeding it through a link (a UI PrimitiveNode) the same way.
/// Nodes inside subgraphs are found by the last part of a `parent:child` id. A UI copy
/// that does not hold `original` where expected is left as it is.
pub(crate) fn rewrite(workflow: &mut Value, node_id: &str, input: &str, original: &str, new: &str) {
    let local_id = node_id.rsplit(':').next().unwrap_or(node_id);
    let mut feeders = Vec::new();
    for_each_node_list(workflow, &mut |nodes, links| {
        for node in nodes.iter_mut() {
            if !id_matches(node.get("id"), local_id) {
                continue;
            }
            set_widget(node, input, original, new);
            if let Some(link_id) = input_link(node, input) {
                if let Some(origin) = links.iter().find_map(|l| link_origin(l, link_id)) {
                    feeders.push(origin);
                }
            }
        }
    });
    for origin in feeders {
        for_each_node_list(workflow, &mut |nodes, _| {
            for node in nodes.iter_mut() {
                if id_matches(node.get("id"), &origin) {
                    set_widget(node, "value", original, new);
                }
            }
        });
    }
}

/// Calls `f` with the top-level nodes and links and those of every subgraph definition.
fn for_each_node_list(workflow: &mut Value, f: &mut dyn FnMut(&mut Vec<Value>, &[Value])) {
    visit(workflow, f);
    if let Some(Value::Array(subgraphs)) = workflow
        .get_mut("definitions")
        .and_then(|d| d.get_mut("subgraphs"))
    {
        for sg in subgraphs {
            visit(sg, f);
        }
    }
}

fn visit(holder: &mut Value, f: &mut dyn FnMut(&mut Vec<Value>, &[Value])) {
    let links = holder
        .get("links")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Array(nodes)) = holder.get_mut("nodes") {
        f(nodes, &links);
    }
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

/// The origin node of link `id`, in the list form `[id, origin, slot, target, slot,
/// type]` or the object form of subgraphs.
fn link_origin(link: &Value, id: u64) -> Option<String> {
    match link {
        Value::Array(l) if l.first().and_then(Value::as_u64) == Some(id) => l.get(1).map(id_string),
        Value::Object(l) if l.get("id").and_then(Value::as_u64) == Some(id) => {
            l.get("origin_id").map(id_string)
        }
        _ => None,
    }
}

fn id_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
