//! ComfyUI: a workflow template in API format (the file "Save (API)" / "Export (API)"
//! writes), `POST /prompt`, polling `GET /history/{prompt_id}`, and `GET /view` for each
//! image, as ComfyUI 0.3.64 answers (tests/fixtures/comfyui).
//!
//! The template's positive prompt is found the way `prip serve` finds it: the
//! prompt-bearing inputs and their polarity come from prip-protocols' ComfyUI adapter
//! (the polarity walk back from the samplers), so the trainer renders exactly the text
//! the proxy would refine. A template must have one positive text node (a node may
//! hold several positive inputs, like SDXL's `text_g`/`text_l`; all are filled); none,
//! or two candidates, is refused with a message naming the nodes.
//!
//! Each seed is one queued prompt with every literal `seed`/`noise_seed` input set to
//! it and every literal `batch_size` set to 1: ComfyUI draws a batch's noise from one
//! seed, so image k of a batch could not be rendered again from a seed alone.

use std::time::Duration;

use serde_json::{json, Map, Value};

use prip_protocols::{comfyui::ComfyUi as Protocol, Polarity, Protocol as _, Request};

use super::{json_answer, Backend, BoxFuture, Endpoint, RenderError};
use crate::net::query_escape;

/// Input names that hold a sampler's image seed (KSampler `seed`; KSamplerAdvanced,
/// SamplerCustom and RandomNoise `noise_seed`), and custom samplers that follow them.
const SEED_INPUTS: [&str; 2] = ["seed", "noise_seed"];

/// A ComfyUI workflow ready to be filled in.
#[derive(Debug, Clone)]
pub struct ComfyUi {
    graph: Map<String, Value>,
    positive: Vec<(String, String)>,
    seeds: Vec<(String, String)>,
    batches: Vec<(String, String)>,
    poll: Duration,
    client_id: String,
}

fn template_error(msg: String) -> RenderError {
    RenderError::Config(format!("ComfyUI template: {msg}"))
}

impl ComfyUi {
    /// Reads an API-format workflow (`{"3": {"class_type": ..., "inputs": ...}, ...}`,
    /// or a `/prompt` body with it under `"prompt"`). `poll` is the wait between
    /// `/history` requests.
    pub fn from_template(template: &Value, poll: Duration) -> Result<Self, RenderError> {
        let graph = match template {
            Value::Object(m) if m.get("nodes").is_some_and(Value::is_array) => {
                return Err(template_error(
                    "this is the UI format (it has \"nodes\"); export the workflow with \
                     \"Save (API)\""
                        .into(),
                ))
            }
            Value::Object(m) => match m.get("prompt") {
                Some(Value::Object(g)) => g.clone(),
                _ => m.clone(),
            },
            _ => return Err(template_error("not a JSON object".into())),
        };
        if graph.is_empty() {
            return Err(template_error("no nodes".into()));
        }
        for (id, node) in &graph {
            if node.get("class_type").and_then(Value::as_str).is_none() {
                return Err(template_error(format!(
                    "node {id:?} has no class_type (API format expected)"
                )));
            }
        }
        let positive = positive_inputs(&graph)?;
        let seeds = literal_inputs(&graph, &SEED_INPUTS);
        if seeds.is_empty() {
            return Err(template_error(
                "no sampler seed to set (a literal seed or noise_seed input)".into(),
            ));
        }
        let batches = literal_inputs(&graph, &["batch_size"]);
        Ok(Self {
            graph,
            positive,
            seeds,
            batches,
            poll,
            client_id: "prip-trainer".into(),
        })
    }

    /// Reads a template file (see [`ComfyUi::from_template`]).
    pub fn from_file(path: &std::path::Path, poll: Duration) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::TrainError::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| crate::TrainError::Config(format!("{}: {e}", path.display())))?;
        Self::from_template(&value, poll)
            .map_err(|e| crate::TrainError::Config(format!("{}: {e}", path.display())))
    }

    /// The positive prompt inputs filled in, as `(node id, input)`.
    pub fn positive_inputs(&self) -> &[(String, String)] {
        &self.positive
    }

    /// The workflow for one prompt and seed.
    pub fn workflow(&self, prompt: &str, seed: u64) -> Map<String, Value> {
        let mut graph = self.graph.clone();
        let mut set = |(node, input): &(String, String), v: Value| {
            if let Some(inputs) = graph
                .get_mut(node)
                .and_then(|n| n.get_mut("inputs"))
                .and_then(Value::as_object_mut)
            {
                inputs.insert(input.clone(), v);
            }
        };
        for slot in &self.positive {
            set(slot, json!(prompt));
        }
        for slot in &self.seeds {
            set(slot, json!(seed));
        }
        for slot in &self.batches {
            set(slot, json!(1));
        }
        graph
    }

    async fn render_one(
        &self,
        server: &Endpoint,
        prompt: &str,
        seed: u64,
    ) -> Result<Option<Vec<u8>>, RenderError> {
        let bad = |reason: String| RenderError::BadAnswer {
            server: server.url().to_string(),
            reason,
        };
        let body = json!({"prompt": self.workflow(prompt, seed), "client_id": self.client_id});
        let answer = json_answer(server, &server.post_json("/prompt", &body).await?)?;
        let id = answer
            .get("prompt_id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("/prompt answer has no prompt_id: {answer}")))?
            .to_string();
        let entry = loop {
            let history = json_answer(
                server,
                &server
                    .get(&format!("/history/{}", query_escape(&id)))
                    .await?,
            )?;
            // An empty object until the job has run.
            if let Some(entry) = history.get(&id) {
                break entry.clone();
            }
            tokio::time::sleep(self.poll).await;
        };
        let status = entry.get("status");
        if status
            .and_then(|s| s.get("status_str"))
            .and_then(Value::as_str)
            == Some("error")
        {
            return Err(RenderError::JobFailed {
                server: server.url().to_string(),
                reason: execution_error(status.unwrap_or(&Value::Null)),
            });
        }
        let Some(image) = first_image(&entry) else {
            return Ok(None);
        };
        let field = |k: &str| image.get(k).and_then(Value::as_str).unwrap_or("");
        let query = format!(
            "/view?filename={}&subfolder={}&type={}",
            query_escape(field("filename")),
            query_escape(field("subfolder")),
            query_escape(if field("type").is_empty() {
                "output"
            } else {
                field("type")
            }),
        );
        Ok(Some(server.get(&query).await?.to_vec()))
    }
}

impl Backend for ComfyUi {
    fn name(&self) -> &'static str {
        "comfyui"
    }

    fn settings_key(&self) -> String {
        serde_json::to_string(&self.graph).unwrap_or_default()
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
                match self.render_one(server, prompt, seed).await? {
                    Some(image) => out.push(image),
                    None => break,
                }
            }
            Ok(out)
        })
    }
}

/// The positive prompt inputs: the prompt slots prip-protocols finds with positive
/// polarity, which must all sit on one node.
fn positive_inputs(graph: &Map<String, Value>) -> Result<Vec<(String, String)>, RenderError> {
    // The adapter skips empty texts (nothing to refine); a template may leave its
    // prompt empty, so empty literals get a stand-in for the search only.
    let mut probe = graph.clone();
    for node in probe.values_mut() {
        if let Some(inputs) = node.get_mut("inputs").and_then(Value::as_object_mut) {
            for v in inputs.values_mut() {
                if v.as_str().is_some_and(|s| s.trim().is_empty()) {
                    *v = json!("prompt");
                }
            }
        }
    }
    let body = serde_json::to_vec(&json!({ "prompt": probe })).unwrap_or_default();
    let extraction = Protocol
        .extract(&Request::post("/prompt", body))
        .map_err(template_error)?;
    let class = |node: &str| {
        graph
            .get(node)
            .and_then(|n| n.get("class_type"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let mut nodes: Vec<String> = Vec::new();
    let mut inputs = Vec::new();
    for slot in &extraction.slots {
        let Some((node, input)) = slot.id.rsplit_once('/') else {
            continue;
        };
        if slot.polarity == Polarity::Positive {
            if !nodes.iter().any(|n| n == node) {
                nodes.push(node.to_string());
            }
            inputs.push((node.to_string(), input.to_string()));
        }
    }
    match nodes.len() {
        1 => Ok(inputs),
        0 => {
            let found: Vec<String> = extraction
                .slots
                .iter()
                .map(|s| {
                    let node = s.id.rsplit_once('/').map_or(s.id.as_str(), |(n, _)| n);
                    format!("{} ({}, {})", s.id, class(node), s.polarity.as_str())
                })
                .collect();
            Err(template_error(format!(
                "no positive text node (a text encoder wired to a sampler's positive input); text inputs found: {}",
                if found.is_empty() { "none".to_string() } else { found.join(", ") }
            )))
        }
        _ => {
            let named: Vec<String> = nodes
                .iter()
                .map(|n| format!("{n} ({})", class(n)))
                .collect();
            Err(template_error(format!(
                "{} candidate positive text nodes: {}; keep one positive prompt node",
                nodes.len(),
                named.join(", ")
            )))
        }
    }
}

/// `(node, input)` of every literal number input named one of `names`.
fn literal_inputs(graph: &Map<String, Value>, names: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (id, node) in graph {
        if let Some(inputs) = node.get("inputs").and_then(Value::as_object) {
            for (name, v) in inputs {
                if names.contains(&name.as_str()) && v.is_number() {
                    out.push((id.clone(), name.clone()));
                }
            }
        }
    }
    out
}

/// The first image of a finished history entry: one saved to `output` if any, else any
/// other (a preview).
fn first_image(entry: &Value) -> Option<&Value> {
    let images: Vec<&Value> = entry
        .get("outputs")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|o| o.values())
        .filter_map(|out| out.get("images").and_then(Value::as_array))
        .flatten()
        .collect();
    images
        .iter()
        .find(|i| i.get("type").and_then(Value::as_str) == Some("output"))
        .or_else(|| images.first())
        .copied()
}

/// ComfyUI's `execution_error` message from a history entry's status, or the status.
fn execution_error(status: &Value) -> String {
    status
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|m| {
            let pair = m.as_array()?;
            (pair.first()?.as_str()? == "execution_error")
                .then(|| {
                    pair.get(1)?
                        .get("exception_message")?
                        .as_str()
                        .map(str::to_string)
                })
                .flatten()
        })
        .unwrap_or_else(|| status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt2img() -> Value {
        json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
            "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 8,
                "positive": ["6", 0], "negative": ["7", 0], "model": ["4", 0], "latent_image": ["5", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "x"}}
        })
    }

    #[test]
    fn prompt_seed_and_batch_are_filled_in() {
        let c = ComfyUi::from_template(&txt2img(), Duration::from_millis(10)).unwrap();
        assert_eq!(c.positive_inputs(), [("6".to_string(), "text".to_string())]);
        let g = c.workflow("a red fox", 42);
        assert_eq!(g["6"]["inputs"]["text"], "a red fox");
        assert_eq!(g["7"]["inputs"]["text"], "blurry");
        assert_eq!(g["3"]["inputs"]["seed"], 42);
        assert_eq!(g["5"]["inputs"]["batch_size"], 1);
        // A /prompt body is accepted as a template too.
        let wrapped = json!({"prompt": txt2img(), "client_id": "x"});
        assert!(ComfyUi::from_template(&wrapped, Duration::ZERO).is_ok());
    }

    #[test]
    fn templates_without_one_positive_node_are_refused_by_name() {
        let mut t = txt2img();
        t["3"]["inputs"]["positive"] = json!(["7", 0]);
        t["3"]["inputs"]["negative"] = json!(["7", 0]);
        let e = ComfyUi::from_template(&t, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no positive text node"), "{e}");
        assert!(e.contains("6/text (CLIPTextEncode"), "{e}");

        let mut t = txt2img();
        t["10"] =
            json!({"class_type": "CLIPTextEncode", "inputs": {"text": "more", "clip": ["4", 1]}});
        t["11"] = json!({"class_type": "ConditioningCombine",
            "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["10", 0]}});
        t["3"]["inputs"]["positive"] = json!(["11", 0]);
        let e = ComfyUi::from_template(&t, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 candidate positive text nodes: 6 (CLIPTextEncode), 10 (CLIPTextEncode)"),
            "{e}"
        );

        let e = ComfyUi::from_template(&json!({"nodes": [], "links": []}), Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Save (API)"), "{e}");
        let mut t = txt2img();
        t["3"]["inputs"]["seed"] = json!(["12", 0]);
        let e = ComfyUi::from_template(&t, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no sampler seed"), "{e}");
    }

    #[test]
    fn sdxl_fills_both_texts_of_its_one_node() {
        let mut t = txt2img();
        t["6"] = json!({"class_type": "CLIPTextEncodeSDXL", "inputs": {"text_g": "x", "text_l": "x",
            "clip": ["4", 1], "width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0,
            "target_width": 1024, "target_height": 1024}});
        let c = ComfyUi::from_template(&t, Duration::ZERO).unwrap();
        let g = c.workflow("a cat", 3);
        assert_eq!(
            (
                g["6"]["inputs"]["text_g"].as_str(),
                g["6"]["inputs"]["text_l"].as_str()
            ),
            (Some("a cat"), Some("a cat"))
        );
    }

    #[test]
    fn execution_errors_are_read() {
        let status = json!({"status_str": "error", "completed": false, "messages": [
            ["execution_start", {"prompt_id": "x"}],
            ["execution_error", {"exception_message": "CUDA out of memory"}]]});
        assert_eq!(execution_error(&status), "CUDA out of memory");
    }
}
