//! The common case: prompts are top-level string fields of a JSON object body.

use serde_json::{Map, Value};

use crate::{json, Extraction, Polarity, Replacement, Slot};

/// One top-level prompt field.
pub(crate) struct Field {
    pub key: &'static str,
    pub polarity: Polarity,
    pub role: &'static str,
}

impl Field {
    pub(crate) const fn new(key: &'static str, polarity: Polarity, role: &'static str) -> Self {
        Self {
            key,
            polarity,
            role,
        }
    }

    pub(crate) fn slot(&self, text: &str) -> Slot {
        Slot {
            id: self.key.into(),
            text: text.into(),
            polarity: self.polarity,
            role: self.role.into(),
            encoder: None,
        }
    }
}

/// The fields present with visible text, in `fields` order.
pub(crate) fn extract(map: &Map<String, Value>, fields: &[Field]) -> Vec<Slot> {
    fields
        .iter()
        .filter_map(|f| json::text(map, f.key).map(|t| f.slot(t)))
        .collect()
}

/// The slots of `fields` and the numeric top-level `seed`; such a body carries no
/// refined marker.
pub(crate) fn extraction(map: &Map<String, Value>, fields: &[Field]) -> Result<Extraction, String> {
    Ok(Extraction {
        slots: extract(map, fields),
        seed: json::seed(map.get("seed")),
        refined: false,
    })
}

/// Writes each replacement into its field; ids must name one of `fields`.
pub(crate) fn apply(
    mut map: Map<String, Value>,
    replacements: &[Replacement],
    fields: &[Field],
) -> Result<Vec<u8>, String> {
    for r in replacements {
        if !fields.iter().any(|f| f.key == r.id) {
            return Err(format!("no prompt slot {:?} in this protocol", r.id));
        }
        json::replace_text(&mut map, &r.id, &r.original, &r.text)?;
    }
    Ok(json::bytes(&map))
}
