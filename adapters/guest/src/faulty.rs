//! A protocol that misbehaves on request, for prip-proxy's sandbox tests: the body's
//! `do` field says how (`trap`, `loop`, `oom`, `garbage`); otherwise it reads a body as
//! the diffusers protocol does (`prompt`, `negative_prompt`), on `POST /faulty`.
//!
//! Compiled for wasm32 only with the `faulty` feature, which prip-test-support's
//! `faulty_component()` enables and prip-proxy's build script never does.

use prip_protocols::diffusers::Diffusers;
use prip_protocols::{
    Dialect, Extraction, Info, Polarity, Protocol, Replacement, Request, Route, Slot,
};
use serde_json::Value;

/// The misbehaving protocol.
pub struct Faulty;

impl Faulty {
    /// Carries out the body's `do`; returns the garbage to answer with, or `None` to
    /// behave.
    fn misbehave(req: &Request) -> Option<Vec<u8>> {
        let body: Value = serde_json::from_slice(&req.body).ok()?;
        match body.get("do").and_then(Value::as_str)? {
            "trap" => panic!("asked to trap"),
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "garbage" => Some(b"\x00\x01 not json".to_vec()),
            _ => None,
        }
    }
}

impl Protocol for Faulty {
    fn describe(&self) -> Info {
        Info {
            name: "faulty".into(),
            version: prip_protocols::VERSION.into(),
            routes: vec![Route {
                method: "POST".into(),
                path: "/faulty".into(),
            }],
            annotates: false,
            dialect: Dialect::Plain,
        }
    }

    fn extract(&self, req: &Request) -> Result<Extraction, String> {
        if let Some(garbage) = Faulty::misbehave(req) {
            // Two slots with one id: nothing a well-formed adapter returns.
            let slot = Slot {
                id: "prompt".into(),
                text: String::from_utf8_lossy(&garbage).into_owned(),
                polarity: Polarity::Positive,
                role: "main".into(),
                encoder: None,
            };
            return Ok(Extraction {
                slots: vec![slot.clone(), slot],
                ..Extraction::default()
            });
        }
        Diffusers.extract(req)
    }

    fn apply(&self, req: &Request, replacements: &[Replacement]) -> Result<Vec<u8>, String> {
        match Faulty::misbehave(req) {
            Some(garbage) => Ok(garbage),
            None => Diffusers.apply(req, replacements),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_unless_asked_and_answers_garbage_when_asked() {
        let fine = Request::post("/faulty", r#"{"prompt": "a cat", "seed": 3}"#);
        let found = Faulty.extract(&fine).unwrap();
        assert_eq!(found.slots.len(), 1);
        assert_eq!(found.slots[0].text, "a cat");
        assert_eq!(found.seed, Some(3));
        let reps = [Replacement {
            id: "prompt".into(),
            original: "a cat".into(),
            text: "a cat, detailed".into(),
        }];
        let body: Value = serde_json::from_slice(&Faulty.apply(&fine, &reps).unwrap()).unwrap();
        assert_eq!(body["prompt"], "a cat, detailed");

        let bad = Request::post("/faulty", r#"{"prompt": "a cat", "do": "garbage"}"#);
        let found = Faulty.extract(&bad).unwrap();
        assert_eq!(found.slots.len(), 2);
        assert_eq!(found.slots[0].id, found.slots[1].id);
        assert!(serde_json::from_slice::<Value>(&Faulty.apply(&bad, &reps).unwrap()).is_err());
        assert_eq!(Faulty.describe().routes[0].path, "/faulty");
    }
}
