//! AUTOMATIC1111 / Forge: `POST /sdapi/v1/txt2img` (the server started with `--api`),
//! as recorded from Forge f2.0.1v1.10.1 (tests/fixtures/a1111).
//!
//! A batch of `batch_size` images from `seed` renders seeds `seed, seed+1, ...` (the
//! server's `all_seeds`), so a run of consecutive seeds is one request; other seed lists
//! are split into runs. The answer's `images` are base64 PNGs; `info` (a JSON string)
//! gives `index_of_first_image` (a grid comes first when the server returns grids) and
//! `all_seeds`, which is checked against the seeds asked for.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{decode_base64, json_answer, Backend, BoxFuture, Endpoint, RenderError};

/// What an A1111 request sets besides prompt and seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct A1111Settings {
    /// `negative_prompt`.
    pub negative_prompt: String,
    /// `steps`.
    pub steps: u32,
    /// `width`, pixels.
    pub width: u32,
    /// `height`, pixels.
    pub height: u32,
    /// `cfg_scale`.
    pub cfg_scale: f32,
    /// `sampler_name` (as the server lists them in `/sdapi/v1/samplers`).
    pub sampler_name: String,
    /// Most seeds per request (`batch_size`); not part of the cache key.
    pub max_batch: usize,
    /// Further txt2img fields sent as given (`override_settings`, `scheduler`, ...);
    /// the fields above win.
    pub extra: Map<String, Value>,
}

impl Default for A1111Settings {
    fn default() -> Self {
        Self {
            negative_prompt: String::new(),
            steps: 20,
            width: 512,
            height: 512,
            cfg_scale: 7.0,
            sampler_name: "Euler a".into(),
            max_batch: 4,
            extra: Map::new(),
        }
    }
}

/// The A1111/Forge backend.
#[derive(Debug, Clone)]
pub struct A1111 {
    settings: A1111Settings,
}

impl A1111 {
    /// A backend sending `settings` with every request.
    pub fn new(settings: A1111Settings) -> Self {
        Self { settings }
    }

    fn body(&self, prompt: &str, seeds: &[u64]) -> Value {
        let s = &self.settings;
        let mut body = s.extra.clone();
        let fields = json!({
            "prompt": prompt,
            "negative_prompt": s.negative_prompt,
            "seed": seeds.first().copied().unwrap_or(0),
            "batch_size": seeds.len(),
            "n_iter": 1,
            "steps": s.steps,
            "width": s.width,
            "height": s.height,
            "cfg_scale": s.cfg_scale,
            "sampler_name": s.sampler_name,
            "send_images": true,
            "save_images": false,
        });
        if let Value::Object(fields) = fields {
            body.extend(fields);
        }
        Value::Object(body)
    }
}

impl Backend for A1111 {
    fn name(&self) -> &'static str {
        "a1111"
    }

    fn settings_key(&self) -> String {
        let mut s = self.settings.clone();
        s.max_batch = 0;
        serde_json::to_string(&s).unwrap_or_default()
    }

    fn chunks(&self, seeds: &[u64]) -> Vec<Vec<u64>> {
        let max = self.settings.max_batch.max(1);
        let mut out: Vec<Vec<u64>> = Vec::new();
        for &seed in seeds {
            match out.last_mut() {
                Some(run)
                    if run.len() < max
                        && run.last().and_then(|s| s.checked_add(1)) == Some(seed) =>
                {
                    run.push(seed)
                }
                _ => out.push(vec![seed]),
            }
        }
        out
    }

    fn render<'a>(
        &'a self,
        server: &'a Endpoint,
        prompt: &'a str,
        seeds: &'a [u64],
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, RenderError>> {
        Box::pin(async move {
            let bytes = server
                .post_json("/sdapi/v1/txt2img", &self.body(prompt, seeds))
                .await?;
            read_answer(server, &json_answer(server, &bytes)?, seeds)
        })
    }
}

fn read_answer(
    server: &Endpoint,
    answer: &Value,
    seeds: &[u64],
) -> Result<Vec<Vec<u8>>, RenderError> {
    let bad = |reason: String| RenderError::BadAnswer {
        server: server.url().to_string(),
        reason,
    };
    let images = answer
        .get("images")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"images\" array".into()))?;
    // `info` is a JSON document inside a string; older servers may leave it out.
    let info: Value = match answer.get("info") {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
        Some(v) => v.clone(),
        None => Value::Null,
    };
    let first = info
        .get("index_of_first_image")
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    if let Some(all) = info.get("all_seeds").and_then(Value::as_array) {
        let got: Vec<u64> = all.iter().filter_map(Value::as_u64).collect();
        if got.len() >= seeds.len() && got[..seeds.len()] != *seeds {
            return Err(bad(format!(
                "rendered seeds {:?}, asked for {seeds:?}",
                &got[..seeds.len()]
            )));
        }
    }
    images
        .iter()
        .skip(first)
        .take(seeds.len())
        .map(|v| {
            let text = v
                .as_str()
                .ok_or_else(|| bad("an image is not a string".into()))?;
            decode_base64(text).map_err(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_seeds_share_a_request() {
        let b = A1111::new(A1111Settings {
            max_batch: 3,
            ..A1111Settings::default()
        });
        assert_eq!(
            b.chunks(&[5, 6, 7, 8, 10, 11, 3]),
            vec![vec![5, 6, 7], vec![8], vec![10, 11], vec![3]]
        );
        assert_eq!(b.chunks(&[u64::MAX, 0]), vec![vec![u64::MAX], vec![0]]);
    }

    #[test]
    fn the_request_sets_the_fields_over_extra() {
        let mut extra = Map::new();
        extra.insert("steps".into(), json!(99));
        extra.insert("scheduler".into(), json!("Karras"));
        let b = A1111::new(A1111Settings {
            extra,
            steps: 2,
            ..A1111Settings::default()
        });
        let body = b.body("a cat", &[7, 8]);
        assert_eq!(body["steps"], 2);
        assert_eq!(body["scheduler"], "Karras");
        assert_eq!(
            (body["seed"].as_u64(), body["batch_size"].as_u64()),
            (Some(7), Some(2))
        );
        let other = A1111::new(A1111Settings {
            max_batch: 9,
            ..A1111Settings::default()
        });
        assert_eq!(
            A1111::new(A1111Settings::default()).settings_key(),
            other.settings_key(),
            "the batch size does not change images"
        );
    }
}
