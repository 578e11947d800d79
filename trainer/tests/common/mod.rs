//! In-process fakes of the image servers and the scoring service, built from the
//! recordings in tests/fixtures: they answer in the recorded shapes and render small
//! deterministic images from the prompt and seed ([`fake_png`]), and can misbehave on
//! purpose (fail after some requests, hang, answer short, send a broken image).

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// A 32x32 PNG that is a pure function of (prompt, seed).
pub fn fake_png(prompt: &str, seed: u64) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h ^= seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let img = image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([
            (h as u8).wrapping_add(x as u8 * 3),
            ((h >> 8) as u8).wrapping_add(y as u8 * 5),
            ((h >> 16) as u8) ^ (x as u8 + y as u8),
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// How a fake misbehaves.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer 500 to every request after this many.
    pub fail_after: Option<usize>,
    /// Never answer (until the test ends).
    pub hang: bool,
    /// Leave the last image out of each answer.
    pub short: bool,
    /// Send a broken image for this seed.
    pub broken_seed: Option<u64>,
}

/// One fake server: its URL, and what it was asked.
pub struct Fake {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
    /// (path, body) of every request, in order.
    pub log: Arc<Mutex<Vec<(String, Value)>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Fake {
    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn bodies(&self, path: &str) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

type Handler = Arc<dyn Fn(&str, &str, &Value) -> (u16, Vec<u8>) + Send + Sync>;

/// Serves `handler(path, query, json body)` on 127.0.0.1 with `faults` applied.
pub fn serve(faults: Faults, handler: Handler) -> Fake {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (requests.clone(), log.clone());
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (handler, faults, count, seen) =
                (handler.clone(), faults.clone(), count.clone(), seen.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (handler, faults, count, seen) =
                        (handler.clone(), faults.clone(), count.clone(), seen.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let query = req.uri().query().unwrap_or("").to_string();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push((path.clone(), body.clone()));
                        if faults.hang {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let (status, bytes) = if faults.fail_after.is_some_and(|k| n >= k) {
                            (500, br#"{"error": "CUDA out of memory"}"#.to_vec())
                        } else {
                            handler(&path, &query, &body)
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(bytes)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Fake {
        url: format!("http://{addr}"),
        requests,
        log,
        _runtime: runtime,
    }
}

/// An image for (prompt, seed) under `faults`: broken for the broken seed.
fn image_for(faults: &Faults, prompt: &str, seed: u64) -> Vec<u8> {
    if faults.broken_seed == Some(seed) {
        b"\x89PNG\r\n\x1a\n this is no image".to_vec()
    } else {
        fake_png(prompt, seed)
    }
}

/// AUTOMATIC1111/Forge: POST /sdapi/v1/txt2img, answered in the recorded shape
/// (tests/fixtures/a1111/txt2img_response.json) with `batch_size` images from `seed`,
/// `seed+1`, ... and `info.all_seeds` saying so.
pub fn a1111(faults: Faults) -> Fake {
    let recorded = prip_test_support::fixture("a1111/txt2img_response.json");
    let f = faults.clone();
    serve(
        faults,
        Arc::new(move |path, _, body| {
            if path != "/sdapi/v1/txt2img" {
                return (404, br#"{"detail": "Not Found"}"#.to_vec());
            }
            let prompt = body["prompt"].as_str().unwrap_or("");
            let seed = body["seed"].as_u64().unwrap_or(0);
            let n = body["batch_size"].as_u64().unwrap_or(1);
            let seeds: Vec<u64> = (seed..seed + n).collect();
            let mut images: Vec<String> = seeds
                .iter()
                .map(|s| b64(&image_for(&f, prompt, *s)))
                .collect();
            if f.short {
                images.pop();
            }
            let mut info: Value = serde_json::from_str(recorded["info"].as_str().unwrap()).unwrap();
            info["prompt"] = json!(prompt);
            info["all_prompts"] = json!(vec![prompt; seeds.len()]);
            info["seed"] = json!(seed);
            info["all_seeds"] = json!(seeds);
            info["batch_size"] = json!(n);
            let mut answer = recorded.clone();
            answer["images"] = json!(images);
            answer["parameters"] = body.clone();
            answer["info"] = json!(info.to_string());
            (200, answer.to_string().into_bytes())
        }),
    )
}

/// ComfyUI 0.3.64: POST /prompt (answered as tests/fixtures/comfyui/prompt_response_200.json,
/// or the recorded 400 when the checkpoint is not `v1-5-pruned-emaonly.safetensors`),
/// GET /history/{id} (empty until the second poll, then the entry in ComfyUI's shape:
/// outputs -> images with filename/subfolder/type, status), GET /view?filename=...
/// The image renders the text of the node the KSampler's positive input links to.
pub fn comfyui(faults: Faults) -> Fake {
    let ok = prip_test_support::fixture("comfyui/prompt_response_200.json");
    let refused = prip_test_support::fixture("comfyui/prompt_response_400_missing_checkpoint.json");
    let f = faults.clone();
    // Queued jobs by prompt id: (positive text, seed, history polls so far).
    type Jobs = Mutex<HashMap<String, (String, u64, usize)>>;
    let jobs: Arc<Jobs> = Arc::default();
    let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    serve(
        faults,
        Arc::new(move |path, query, body| {
            if path == "/prompt" {
                let graph = &body["prompt"];
                if graph["4"]["inputs"]["ckpt_name"] != "v1-5-pruned-emaonly.safetensors" {
                    return (400, refused.to_string().into_bytes());
                }
                let sampler = graph
                    .as_object()
                    .unwrap()
                    .values()
                    .find(|n| n["class_type"] == "KSampler")
                    .unwrap();
                let positive = sampler["inputs"]["positive"][0].as_str().unwrap();
                let text = graph[positive]["inputs"]["text"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let seed = sampler["inputs"]["seed"].as_u64().unwrap();
                let mut jobs = jobs.lock().unwrap();
                let id = format!("job-{}", jobs.len());
                jobs.insert(id.clone(), (text, seed, 0));
                let mut answer = ok.clone();
                answer["prompt_id"] = json!(id);
                answer["number"] = json!(jobs.len());
                return (200, answer.to_string().into_bytes());
            }
            if let Some(id) = path.strip_prefix("/history/") {
                let mut jobs = jobs.lock().unwrap();
                let Some((text, seed, polls)) = jobs.get_mut(id) else {
                    return (200, b"{}".to_vec());
                };
                *polls += 1;
                if *polls < 2 {
                    return (200, b"{}".to_vec());
                }
                let name = format!("ComfyUI_{id}_.png");
                files
                    .lock()
                    .unwrap()
                    .insert(name.clone(), image_for(&f, text, *seed));
                let images = if f.short {
                    json!([])
                } else {
                    json!([{"filename": name, "subfolder": "", "type": "output"}])
                };
                let entry = json!({id: {
                    "prompt": [1, id, {}, {}, ["9"]],
                    "outputs": {"9": {"images": images}},
                    "status": {"status_str": "success", "completed": true, "messages": []},
                    "meta": {"9": {"node_id": "9", "display_node": "9"}}
                }});
                return (200, entry.to_string().into_bytes());
            }
            if path == "/view" {
                let name = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("filename="))
                    .unwrap_or("");
                return match files.lock().unwrap().get(name) {
                    Some(bytes) => (200, bytes.clone()),
                    None => (404, b"{}".to_vec()),
                };
            }
            (404, b"{}".to_vec())
        }),
    )
}

/// The diffusers example server's OpenAI-style POST /v1/images/generations: 422 without
/// `model` (as recorded), `b64_json` answers, or `url` answers (as
/// tests/fixtures/diffusers/generations_response.json) served under /images/.
pub fn openai(faults: Faults, urls: bool) -> Fake {
    let f = faults.clone();
    let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let base: Arc<Mutex<String>> = Arc::default();
    let base2 = base.clone();
    let fake = serve(
        faults,
        Arc::new(move |path, _, body| {
            if path == "/v1/images/generations" {
                if body.get("model").is_none() {
                    return (
                        422,
                        br#"{"detail": [{"loc": ["body", "model"], "msg": "Field required"}]}"#
                            .to_vec(),
                    );
                }
                let prompt = body["prompt"].as_str().unwrap_or("");
                let seed = body["seed"].as_u64().unwrap_or(0);
                let png = image_for(&f, prompt, seed);
                if f.short {
                    return (200, br#"{"data": []}"#.to_vec());
                }
                if urls {
                    let mut files = files.lock().unwrap();
                    let name = format!("draw{}.png", files.len());
                    files.insert(name.clone(), png);
                    let url = format!("{}/images/{name}", base2.lock().unwrap());
                    return (
                        200,
                        json!({"data": [{"url": url}]}).to_string().into_bytes(),
                    );
                }
                return (
                    200,
                    json!({"created": 1, "data": [{"b64_json": b64(&png)}]})
                        .to_string()
                        .into_bytes(),
                );
            }
            if let Some(name) = path.strip_prefix("/images/") {
                if let Some(png) = files.lock().unwrap().get(name) {
                    return (200, png.clone());
                }
            }
            (404, b"{}".to_vec())
        }),
    );
    *base.lock().unwrap() = fake.url.clone();
    fake
}

/// A scoring service (docs/scoring-protocol.md) whose scorer `fake` gives
/// `fake_score(prompt, png)`; the prompts `nan`, `wrong count` and `fail` make it
/// answer null, one score too few, and 500.
pub fn scoring(faults: Faults) -> Fake {
    serve(
        faults,
        Arc::new(|path, _, body| {
            match path {
            "/info" => (
                200,
                json!({"protocol": "prip-score/1", "scorers": [{"name": "fake", "version": "0.1"}], "default": "fake"})
                    .to_string()
                    .into_bytes(),
            ),
            "/score" => {
                let prompt = body["prompt"].as_str().unwrap_or("");
                if prompt == "fail" {
                    return (500, br#"{"error": "fake: RuntimeError: the model broke"}"#.to_vec());
                }
                let mut scores: Vec<Value> = body["images"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| {
                        let png = base64::engine::general_purpose::STANDARD
                            .decode(i.as_str().unwrap())
                            .unwrap();
                        json!(fake_score(prompt, &png))
                    })
                    .collect();
                if prompt == "nan" {
                    scores[0] = Value::Null;
                }
                if prompt == "wrong count" {
                    scores.pop();
                }
                (200, json!({"scorer": "fake", "version": "0.1", "scores": scores}).to_string().into_bytes())
            }
            _ => (404, b"{}".to_vec()),
        }
        }),
    )
}

/// The fake scorer's (and the reference service's stub scorer's) score: byte sum
/// mod 1000 / 1000, plus len(prompt) / 100.
pub fn fake_score(prompt: &str, png: &[u8]) -> f64 {
    let sum: u64 = png.iter().map(|b| *b as u64).sum();
    (sum % 1000) as f64 / 1000.0 + prompt.len() as f64 / 100.0
}
