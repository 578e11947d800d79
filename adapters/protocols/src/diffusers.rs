//! The diffusers example servers: `examples/server` (OpenAI-style
//! `/v1/images/generations`) and `examples/server-async` (`/api/diffusers/inference`).
//! Both take `prompt` and an optional `negative_prompt`.

use crate::fields::{self, Field};
use crate::{json, Info, Polarity, Protocol, Replacement, Request, Route, Slot};

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
        }
    }

    fn extract(&self, req: &Request) -> Result<Vec<Slot>, String> {
        Ok(fields::extract(&json::object(&req.body)?, &FIELDS))
    }

    fn apply(&self, req: &Request, replacements: &[Replacement]) -> Result<Vec<u8>, String> {
        fields::apply(json::object(&req.body)?, replacements, &FIELDS)
    }
}
