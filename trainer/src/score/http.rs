//! The client side of the HTTP scoring protocol (docs/scoring-protocol.md,
//! `prip-score/1`): `GET /info` once to learn the scorer's name and version, then one
//! `POST /score` per prompt with its images as base64 PNG.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::{ScoreError, Scorer};
use crate::image::Picture;
use crate::net::Endpoint;

/// The protocol this client speaks; a service announcing another is refused.
pub const PROTOCOL: &str = "prip-score/1";

/// A scorer behind a scoring service.
pub struct HttpScorer {
    endpoint: Endpoint,
    runtime: tokio::runtime::Runtime,
    name: String,
    version: String,
}

impl std::fmt::Debug for HttpScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpScorer")
            .field("url", &self.endpoint.url())
            .field("name", &self.name)
            .field("version", &self.version)
            .finish()
    }
}

impl HttpScorer {
    /// Connects to the service at `url` and picks `scorer` (or the service's default);
    /// `timeout` bounds each request (a GPU scores a batch in well under a second; the
    /// first request may load weights).
    pub fn connect(url: &str, scorer: Option<&str>, timeout: Duration) -> Result<Self, ScoreError> {
        let endpoint = Endpoint::new(url, timeout).map_err(ScoreError::Load)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ScoreError::Load(format!("scoring client runtime: {e}")))?;
        let bad = |reason: String| ScoreError::BadAnswer {
            url: endpoint.url().to_string(),
            reason,
        };
        let info: Value = serde_json::from_slice(&runtime.block_on(endpoint.get("/info"))?)
            .map_err(|e| bad(format!("/info is not JSON: {e}")))?;
        let protocol = info.get("protocol").and_then(Value::as_str).unwrap_or("");
        if protocol != PROTOCOL {
            return Err(bad(format!("speaks {protocol:?}, not {PROTOCOL:?}")));
        }
        let scorers = info
            .get("scorers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("/info has no scorers".into()))?;
        let wanted = match scorer {
            Some(s) => s.to_string(),
            None => info
                .get("default")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("/info names no default scorer".into()))?
                .to_string(),
        };
        let entry = scorers
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(wanted.as_str()))
            .ok_or_else(|| {
                let names: Vec<&str> = scorers
                    .iter()
                    .filter_map(|s| s.get("name").and_then(Value::as_str))
                    .collect();
                ScoreError::Load(format!(
                    "scoring service {}: no scorer {wanted:?} (it has: {})",
                    endpoint.url(),
                    names.join(", ")
                ))
            })?;
        let version = entry
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Ok(Self {
            endpoint,
            runtime,
            name: wanted,
            version,
        })
    }
}

impl Scorer for HttpScorer {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn score(&self, prompt: &str, images: &[Picture]) -> Result<Vec<f32>, ScoreError> {
        let bad = |reason: String| ScoreError::BadAnswer {
            url: self.endpoint.url().to_string(),
            reason,
        };
        let encoded = images
            .iter()
            .map(|p| {
                p.png()
                    .map(|png| base64::engine::general_purpose::STANDARD.encode(png))
                    .map_err(|e| ScoreError::Model {
                        scorer: self.name.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let body = json!({"scorer": self.name, "prompt": prompt, "images": encoded});
        let bytes = self
            .runtime
            .block_on(self.endpoint.post_json("/score", &body))?;
        let answer: Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let name = answer.get("scorer").and_then(Value::as_str).unwrap_or("");
        if name != self.name {
            return Err(bad(format!(
                "answered for scorer {name:?}, asked {:?}",
                self.name
            )));
        }
        let scores = answer
            .get("scores")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no \"scores\" array".into()))?;
        // JSON has no NaN: the protocol sends null for an image it could not score.
        scores
            .iter()
            .map(|v| match v {
                Value::Null => Ok(f32::NAN),
                Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN) as f32),
                other => Err(bad(format!("a score is {other}, not a number"))),
            })
            .collect()
    }
}
