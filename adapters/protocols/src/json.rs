//! Reading and writing request bodies as JSON objects, keeping key order.

use serde_json::{Map, Value};

/// The body as a JSON object, or a one-line reason why not.
pub(crate) fn object(body: &[u8]) -> Result<Map<String, Value>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("body is JSON {}, not an object", kind(&other))),
        Err(e) => Err(format!("body is not JSON: {e}")),
    }
}

/// Serialises a body; `preserve_order` keeps the client's key order.
pub(crate) fn bytes(map: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(map).expect("a serde_json Map always serialises")
}

/// A string field that is present and has visible text.
pub(crate) fn text<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// Sets `key` to `new` after checking it still holds `original` (when present), so a
/// replacement computed for another body is refused instead of misapplied.
pub(crate) fn replace_text(
    map: &mut Map<String, Value>,
    key: &str,
    original: &str,
    new: &str,
) -> Result<(), String> {
    match map.get(key) {
        Some(Value::String(s)) if s != original => Err(format!(
            "slot {key:?} holds other text than the replacement was made for"
        )),
        Some(Value::String(_)) | None => {
            map.insert(key.to_string(), Value::String(new.to_string()));
            Ok(())
        }
        Some(other) => Err(format!("slot {key:?} is {}, not a string", kind(other))),
    }
}

/// A seed the request fixes: a non-negative whole number (`-1`, the servers' "random",
/// and anything that is not a number give `None`).
pub(crate) fn seed(v: Option<&Value>) -> Option<u64> {
    let n = match v? {
        Value::Number(n) => n,
        _ => return None,
    };
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9_007_199_254_740_992.0)
            .map(|f| f as u64)
    })
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
