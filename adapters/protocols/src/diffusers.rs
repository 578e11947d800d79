//! The diffusers example servers: `examples/server` (OpenAI-style
//! `/v1/images/generations`) and `examples/server-async` (`/api/diffusers/inference`).
//! Both take `prompt` and an optional `negative_prompt`; a numeric `seed`, when sent,
//! is the image seed.
//!
//! No marker is written into a refined body: no PRIP layer runs inside these servers,
//! so nothing after the proxy could refine the request again, and an unknown field
//! could be refused by a strict server.

use crate::fields::{self, Field};
use crate::{json, Extraction, Info, Polarity, Protocol, Replacement, Request, Route};

const FIELDS: [Field; 2] = [
    Field::new("prompt", Polarity::Positive, "main"),
    Field::new("negative_prompt", Polarity::Negative, "main"),
];

/// The diffusers servers' protocol.
pub struct Diffusers;

impl Protocol for Diffusers {
    fn describe(&self) -> Info {
        Info {
            name: "diffusers".into(),
            version: crate::VERSION.into(),
            routes: vec![
                Route::post("/v1/images/generations"),
                Route::post("/api/diffusers/inference"),
            ],
            annotates: false,
            dialect: crate::Dialect::Plain,
        }
    }

    fn extract(&self, req: &Request) -> Result<Extraction, String> {
        fields::extraction(&json::object(&req.body)?, &FIELDS)
    }

    fn apply(&self, req: &Request, replacements: &[Replacement]) -> Result<Vec<u8>, String> {
        fields::apply(json::object(&req.body)?, replacements, &FIELDS)
    }
}
