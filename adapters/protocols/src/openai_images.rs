//! OpenAI-style image generation: `POST /v1/images/generations` with `prompt`. The
//! answer's `data[].revised_prompt` is set to the prompt that was rendered, as OpenAI's
//! own API does when it rewrites a prompt. A numeric `seed`, which some compatible
//! servers take, is the image seed.
//!
//! No marker is written into a refined body: no PRIP layer runs inside these servers,
//! and OpenAI's API refuses unknown fields.

use serde_json::Value;

use crate::fields::{self, Field};
use crate::{json, Extraction, Info, Polarity, Protocol, Replacement, Request, Response, Route};

const FIELDS: [Field; 1] = [Field::new("prompt", Polarity::Positive, "main")];

/// The OpenAI images protocol.
pub struct OpenAiImages;

impl Protocol for OpenAiImages {
    fn describe(&self) -> Info {
        Info {
            name: "openai-images".into(),
            version: crate::VERSION.into(),
            routes: vec![Route::post("/v1/images/generations")],
            annotates: true,
            dialect: crate::Dialect::Plain,
        }
    }

    fn extract(&self, req: &Request) -> Result<Extraction, String> {
        fields::extraction(&json::object(&req.body)?, &FIELDS)
    }

    fn apply(&self, req: &Request, replacements: &[Replacement]) -> Result<Vec<u8>, String> {
        fields::apply(json::object(&req.body)?, replacements, &FIELDS)
    }

    fn annotate(
        &self,
        _req: &Request,
        replacements: &[Replacement],
        resp: &Response,
    ) -> Result<Option<Vec<u8>>, String> {
        let Some(refined) = replacements.iter().find(|r| r.id == "prompt") else {
            return Ok(None);
        };
        if !(200..300).contains(&resp.status) {
            return Ok(None);
        }
        // An answer we do not understand is passed on untouched, not refused.
        let Ok(mut map) = json::object(&resp.body) else {
            return Ok(None);
        };
        let Some(Value::Array(items)) = map.get_mut("data") else {
            return Ok(None);
        };
        for item in items.iter_mut() {
            if let Value::Object(item) = item {
                item.insert("revised_prompt".into(), Value::String(refined.text.clone()));
            }
        }
        Ok(Some(json::bytes(&map)))
    }
}
