//! OpenAI-style `POST /v1/images/generations`, as the diffusers example server
//! (`examples/server`, tests/fixtures/diffusers) and other compatible servers answer it.
//!
//! One request per seed (`n` = 1) with `response_format: "b64_json"`; the seed goes in
//! a numeric `seed` field, which diffusers-based servers read (OpenAI's own API has no
//! seed and refuses unknown fields: set `send_seed = false` there, and the images are
//! then not reproducible). An answer's `data[0]` is read as `b64_json`, or, from
//! servers that only hand out links (the diffusers example), fetched from its `url`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{decode_base64, json_answer, Backend, BoxFuture, Endpoint, RenderError};

/// What an images request sets besides prompt and seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiSettings {
    /// `model` (the diffusers server refuses a request without one, 422).
    pub model: String,
    /// `size`, `"WIDTHxHEIGHT"`.
    pub size: Option<String>,
    /// `negative_prompt`, sent when set (diffusers reads it; OpenAI refuses it).
    pub negative_prompt: Option<String>,
    /// Whether to send `seed`.
    pub send_seed: bool,
    /// The route, for servers that mount it elsewhere.
    pub path: String,
    /// Further fields sent as given (`num_inference_steps`, `guidance_scale`, ...).
    pub extra: Map<String, Value>,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        Self {
            model: String::new(),
            size: Some("512x512".into()),
            negative_prompt: None,
            send_seed: true,
            path: "/v1/images/generations".into(),
            extra: Map::new(),
        }
    }
}

/// The OpenAI-style images backend.
#[derive(Debug, Clone)]
pub struct OpenAiImages {
    settings: OpenAiSettings,
}

impl OpenAiImages {
    /// A backend sending `settings` with every request; `model` must be set.
    pub fn new(settings: OpenAiSettings) -> Result<Self, RenderError> {
        if settings.model.trim().is_empty() {
            return Err(RenderError::Config(
                "openai-images backend: `model` is required (servers refuse requests without it)"
                    .into(),
            ));
        }
        if !settings.path.starts_with('/') {
            return Err(RenderError::Config(format!(
                "openai-images backend: path {:?} must start with /",
                settings.path
            )));
        }
        Ok(Self { settings })
    }

    fn body(&self, prompt: &str, seed: u64) -> Value {
        let s = &self.settings;
        let mut body = s.extra.clone();
        body.insert("model".into(), json!(s.model));
        body.insert("prompt".into(), json!(prompt));
        body.insert("n".into(), json!(1));
        body.insert("response_format".into(), json!("b64_json"));
        if let Some(size) = &s.size {
            body.insert("size".into(), json!(size));
        }
        if let Some(neg) = &s.negative_prompt {
            body.insert("negative_prompt".into(), json!(neg));
        }
        if s.send_seed {
            body.insert("seed".into(), json!(seed));
        }
        Value::Object(body)
    }
}

impl Backend for OpenAiImages {
    fn name(&self) -> &'static str {
        "openai-images"
    }

    fn settings_key(&self) -> String {
        serde_json::to_string(&self.settings).unwrap_or_default()
    }

    fn render<'a>(
        &'a self,
        server: &'a Endpoint,
        prompt: &'a str,
        seeds: &'a [u64],
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, RenderError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(seeds.len());
            for &seed in seeds {
                let bytes = server
                    .post_json(&self.settings.path, &self.body(prompt, seed))
                    .await?;
                let answer = json_answer(server, &bytes)?;
                let bad = |reason: &str| RenderError::BadAnswer {
                    server: server.url().to_string(),
                    reason: reason.to_string(),
                };
                let Some(item) = answer
                    .get("data")
                    .and_then(Value::as_array)
                    .and_then(|d| d.first())
                else {
                    // An empty `data` is a short answer, not a malformed one.
                    return Ok(out);
                };
                if let Some(b64) = item.get("b64_json").and_then(Value::as_str) {
                    out.push(decode_base64(b64).map_err(|e| bad(&e))?);
                } else if let Some(url) = item.get("url").and_then(Value::as_str) {
                    out.push(server.get_absolute(url).await?.to_vec());
                } else {
                    return Err(bad("data[0] has neither b64_json nor url"));
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_is_required() {
        assert!(OpenAiImages::new(OpenAiSettings::default()).is_err());
        let b = OpenAiImages::new(OpenAiSettings {
            model: "sd3".into(),
            ..OpenAiSettings::default()
        })
        .unwrap();
        let body = b.body("a fox", 9);
        assert_eq!(body["seed"], 9);
        assert_eq!(body["response_format"], "b64_json");
        assert!(body.get("negative_prompt").is_none());
    }
}
