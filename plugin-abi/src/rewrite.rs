//! `prip_rewrite`: refine the prompts inside an image server's request body, found by
//! the same protocol logic `prip serve` runs (prip-protocols), so a plugin living inside
//! the server (ComfyUI's on-prompt hook) needs no prompt-finding code of its own.

use prip_core::refiner::{distinct, RefineAnswer};
use prip_core::Outcome;
use prip_core::RefineRequest;
use prip_protocols::{Polarity, Protocol, Replacement};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{Failure, PripStatus};

/// `{"protocol": "comfyui", "path": "/prompt", "body": {...}, "prompts": ["positive"],
/// "seed": 7, "system": "sdxl", "generation": {...}}`; only protocol and body are
/// required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RewriteRequest {
    protocol: String,
    #[serde(default)]
    path: Option<String>,
    body: Value,
    #[serde(default)]
    prompts: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) seed: Option<u64>,
    #[serde(default)]
    pub(crate) system: Option<String>,
    #[serde(default)]
    pub(crate) generation: Option<Value>,
}

/// The prompt slots to refine and what it takes to write them back.
pub(crate) struct Plan {
    protocol: Box<dyn Protocol>,
    request: prip_protocols::Request,
    slots: Vec<prip_protocols::Slot>,
    /// The image seed the body fixes, if any.
    image_seed: Option<u64>,
    /// A PRIP layer (`prip serve`) already refined this body: nothing to do.
    already_refined: bool,
    /// For each slot, its distinct request in [`Plan::requests`].
    index: Vec<usize>,
}

impl RewriteRequest {
    /// Finds the slots of the wanted polarities (positive by default).
    pub(crate) fn plan(&self) -> Result<Plan, Failure> {
        let bad = |msg: String| (PripStatus::InvalidJson, msg);
        let protocol = prip_protocols::builtin()
            .into_iter()
            .find(|p| p.describe().name == self.protocol)
            .ok_or_else(|| {
                let names: Vec<String> = prip_protocols::builtin()
                    .iter()
                    .map(|p| p.describe().name)
                    .collect();
                bad(format!(
                    "unknown protocol {:?}; known: {}",
                    self.protocol,
                    names.join(", ")
                ))
            })?;
        let path = match &self.path {
            Some(p) => p.clone(),
            None => protocol.describe().routes[0].path.clone(),
        };
        let wanted = self
            .prompts
            .as_deref()
            .unwrap_or(&["positive".to_string()])
            .iter()
            .map(|p| {
                p.parse::<Polarity>()
                    .map_err(|e| bad(format!("prompts: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let request = prip_protocols::Request::post(&path, self.body.to_string());
        let extraction = protocol
            .extract(&request)
            .map_err(|e| (PripStatus::Refine, format!("{}: {e}", self.protocol)))?;
        let slots = if extraction.refined {
            Vec::new()
        } else {
            extraction
                .slots
                .into_iter()
                .filter(|s| wanted.contains(&s.polarity))
                .collect()
        };
        Ok(Plan {
            protocol,
            request,
            slots,
            image_seed: extraction.seed,
            already_refined: extraction.refined,
            index: Vec::new(),
        })
    }
}

impl Plan {
    /// One refine request per distinct slot text: equal texts in one body get one
    /// refinement. Without `seed`, the body's own image seed (when it fixes one) seeds
    /// the refinement, so the same body refines the same way every time.
    pub(crate) fn requests(
        &mut self,
        seed: Option<u64>,
        system: Option<&str>,
    ) -> Vec<RefineRequest> {
        // The protocol's dialect names are the refiner's (adapters/wit/adapter.wit).
        let dialect = self
            .protocol
            .describe()
            .dialect
            .as_str()
            .parse()
            .unwrap_or_default();
        let all: Vec<RefineRequest> = self
            .slots
            .iter()
            .map(|s| RefineRequest {
                seed: seed.or(self.image_seed),
                system: system.map(str::to_string),
                dialect,
                ..RefineRequest::new(s.text.clone())
            })
            .collect();
        let (unique, index) = distinct(&all);
        self.index = index;
        unique
    }

    /// Writes the refined texts back: `{"body": ..., "refined": [{"id", "polarity",
    /// "original", "refined", "seed"}], "unchanged": [{"id", "outcome"}], "errors":
    /// [{"id", "error"}], "already_refined": bool}`, `results` answering
    /// [`Plan::requests`]. A slot whose refinement added nothing is listed under
    /// unchanged with the reason; one whose refinement failed keeps its text and is
    /// listed under errors.
    pub(crate) fn finish(self, results: Vec<RefineAnswer>) -> Result<Value, Failure> {
        let mut replacements = Vec::new();
        let mut refined = Vec::new();
        let mut unchanged = Vec::new();
        let mut errors = Vec::new();
        for (slot, &i) in self.slots.iter().zip(&self.index) {
            match results.get(i) {
                Some(RefineAnswer::Refined(r)) if r.outcome != Outcome::Refined => {
                    unchanged.push(json!({"id": slot.id, "outcome": r.outcome}));
                }
                Some(RefineAnswer::Refined(r)) => {
                    replacements.push(Replacement {
                        id: slot.id.clone(),
                        original: slot.text.clone(),
                        text: r.refined.clone(),
                    });
                    refined.push(json!({
                        "id": slot.id,
                        "polarity": slot.polarity.as_str(),
                        "original": slot.text,
                        "refined": r.refined,
                        "seed": r.seed,
                    }));
                }
                Some(RefineAnswer::Failed { error }) => {
                    errors.push(json!({"id": slot.id, "error": error}));
                }
                None => errors.push(json!({"id": slot.id, "error": "the refiner gave no answer"})),
            }
        }
        let body: Value = if replacements.is_empty() {
            serde_json::from_slice(&self.request.body).expect("the body came from JSON")
        } else {
            let bytes = self
                .protocol
                .apply(&self.request, &replacements)
                .map_err(|e| (PripStatus::Refine, e))?;
            serde_json::from_slice(&bytes).map_err(|e| {
                (
                    PripStatus::Refine,
                    format!("adapter wrote invalid JSON: {e}"),
                )
            })?
        };
        Ok(json!({
            "body": body,
            "refined": refined,
            "unchanged": unchanged,
            "errors": errors,
            "already_refined": self.already_refined,
        }))
    }
}
