//! In-process fakes of the image servers, answering from the recorded fixtures
//! (tests/fixtures), and a proxy wired to the real tiny refiner.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prip_proxy::metrics::Metrics;
use prip_proxy::proxy::{Proxy, Running, ServeConfig};
use prip_proxy::refine::RefineQueue;
use prip_proxy::sandbox::{AdapterHost, Limits};
use prip_test_support::{fixture, fixtures_dir};
use serde_json::{json, Value};
use std::convert::Infallible;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{self, Message};

/// Which server a fake plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ComfyUi,
    A1111,
    Diffusers,
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Seen {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("upstream got JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running fake server.
pub struct Fake {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// `GET /stream` sends its second chunk only after this is notified.
    pub gate: Arc<tokio::sync::Notify>,
    scheme: &'static str,
}

impl Fake {
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().last().cloned().expect("the fake saw a request")
    }
}

/// Bytes an image route serves: not UTF-8, not JSON.
pub fn image_bytes() -> Bytes {
    let mut x: u32 = 0x1234_5678;
    (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

pub async fn start_fake(kind: Kind) -> Fake {
    start_fake_on(kind, None).await
}

/// A fake speaking https with a fresh self-signed certificate for 127.0.0.1; returns
/// the certificate (PEM) to trust.
pub async fn start_fake_tls(kind: Kind) -> (Fake, String) {
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let pem = key.cert.pem();
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![key.cert.der().clone()], der)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    (start_fake_on(kind, Some(acceptor)).await, pem)
}

async fn start_fake_on(kind: Kind, tls: Option<tokio_rustls::TlsAcceptor>) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let gate = Arc::new(tokio::sync::Notify::new());
    let gate_for_server = gate.clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (log, tls, gate) = (log.clone(), tls.clone(), gate_for_server.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(kind, log.clone(), gate.clone(), req));
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(tls) => match tls.accept(stream).await {
                        Ok(s) => {
                            http.serve_connection(TokioIo::new(s), svc)
                                .with_upgrades()
                                .await
                        }
                        Err(_) => return,
                    },
                    None => {
                        http.serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades()
                            .await
                    }
                };
            });
        }
    });
    Fake {
        addr,
        seen,
        gate,
        scheme,
    }
}

type Answer = Response<BoxBody<Bytes, Infallible>>;

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Answer {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

fn json_reply(status: u16, v: &Value) -> Answer {
    reply(status, "application/json", v.to_string())
}

async fn answer(
    kind: Kind,
    log: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<tokio::sync::Notify>,
    mut req: Request<Incoming>,
) -> Result<Answer, std::io::Error> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if path == "/ws" && kind == Kind::ComfyUi {
        return Ok(websocket(&mut req));
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    log.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers,
        body: body.clone(),
    });
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    Ok(match (kind, method.as_str(), path.as_str()) {
        (_, "GET", "/slow") => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            reply(200, "text/plain", "late")
        }
        // Closes the connection without an answer.
        (_, _, "/reset") => return Err(std::io::Error::other("reset by the fake")),
        (_, "GET", "/stream") => {
            let chunks = futures_util::stream::unfold(0, move |step| {
                let gate = gate.clone();
                async move {
                    let chunk = match step {
                        0 => "first chunk\n",
                        1 => {
                            gate.notified().await;
                            "second chunk\n"
                        }
                        _ => return None,
                    };
                    Some((Ok(hyper::body::Frame::data(Bytes::from(chunk))), step + 1))
                }
            });
            Response::builder()
                .header("content-type", "text/plain")
                .body(BodyExt::boxed(StreamBody::new(chunks)))
                .unwrap()
        }
        (_, "GET", "/view") => reply(200, "image/png", image_bytes()),
        (_, "POST", "/upload/image") => reply(200, "application/octet-stream", body),
        (Kind::ComfyUi, "GET", "/object_info") => reply(
            200,
            "application/json",
            std::fs::read(fixtures_dir().join("comfyui/object_info.json")).unwrap(),
        ),
        (Kind::ComfyUi, "POST", "/prompt" | "/api/prompt") => match parsed {
            Some(v) if v.get("prompt").is_some_and(Value::is_object) => {
                json_reply(200, &fixture("comfyui/prompt_response_200.json"))
            }
            _ => json_reply(
                400,
                &fixture("comfyui/prompt_response_400_missing_checkpoint.json"),
            ),
        },
        (Kind::A1111, "POST", "/sdapi/v1/txt2img" | "/sdapi/v1/img2img") => match parsed {
            Some(v) if v.is_object() => json_reply(200, &a1111_answer(&v)),
            _ => json_reply(422, &json!({"detail": [{"msg": "JSON decode error"}]})),
        },
        (Kind::Diffusers, "POST", "/v1/images/generations") => match parsed {
            Some(v) if v.get("model").is_some() => {
                json_reply(200, &fixture("diffusers/generations_response.json"))
            }
            _ => json_reply(422, &json!({"detail": "model is required"})),
        },
        (Kind::Diffusers, "POST", "/api/diffusers/inference") => {
            json_reply(200, &fixture("diffusers/async_inference_response.json"))
        }
        _ => json_reply(404, &json!({"detail": "Not Found"})),
    })
}

/// What the A1111 server answers: the recorded answer with the request echoed in
/// `parameters` and the rendered prompt in `info`, as the real server does.
fn a1111_answer(req: &Value) -> Value {
    let mut answer = fixture("a1111/txt2img_response.json");
    let prompt = req["prompt"].as_str().unwrap_or("");
    let negative = req["negative_prompt"].as_str().unwrap_or("");
    let infotext =
        format!("{prompt}\nNegative prompt: {negative}\nSteps: 2, Sampler: Euler, Seed: 1");
    answer["parameters"] = req.clone();
    answer["info"] = json!(json!({
        "prompt": prompt,
        "all_prompts": [prompt],
        "negative_prompt": negative,
        "infotexts": [infotext],
    })
    .to_string());
    answer
}

/// ComfyUI's /ws: a status message, then every text message echoed back.
fn websocket(req: &mut Request<Incoming>) -> Answer {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .expect("a websocket handshake")
        .as_bytes()
        .to_vec();
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let io = TokioIo::new(upgrade.await.unwrap());
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            io,
            tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let status =
            json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}});
        ws.send(Message::text(status.to_string())).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) => ws.send(Message::text(format!("echo: {t}"))).await.unwrap(),
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header(
            "sec-websocket-accept",
            tungstenite::handshake::derive_accept_key(&key),
        )
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

/// The built-in adapters, compiled once for all tests of a binary.
pub fn host() -> Arc<AdapterHost> {
    static HOST: OnceLock<Arc<AdapterHost>> = OnceLock::new();
    HOST.get_or_init(|| Arc::new(AdapterHost::with_builtin(Limits::default()).unwrap()))
        .clone()
}

/// Decoding settings of the tiny checkpoint.
pub const GENERATION: &str = "
[generation]
max_new_tokens = 12
temperature = 0.8
top_k = 20
top_p = 0.95
";

/// The seed every test proxy refines with, so tests can compute the expected text.
pub const SEED: u64 = 7;

/// A tiny real PRIP checkpoint (written once per test binary).
pub fn tiny_model() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        prip_test_support::models::write_tiny_checkpoint(dir.path(), GENERATION).unwrap();
        dir
    })
    .path()
}

pub fn tiny_refiner() -> prip_core::Refiner {
    prip_core::Refiner::open_with_store(
        &prip_core::RefinerOptions {
            model: tiny_model().to_str().unwrap().into(),
            device: prip_core::device::DeviceSpec::Cpu,
            fetch: false,
        },
        &prip_core::store::ModelStore::new(tiny_model().join("store")),
    )
    .unwrap()
}

/// What the proxy should send upstream for `prompt`.
pub fn expected_refinement(prompt: &str) -> String {
    refinement(prompt, SEED, prip_core::Dialect::default())
}

/// The tiny refiner's refinement of `prompt` with `seed`, read as `dialect`.
pub fn refinement(prompt: &str, seed: u64, dialect: prip_core::Dialect) -> String {
    let req = prip_core::RefineRequest {
        seed: Some(seed),
        dialect,
        ..prip_core::RefineRequest::new(prompt)
    };
    tiny_refiner().refine(&[req]).remove(0).unwrap().refined
}

/// A proxy in front of `upstream` with the tiny refiner; `tune` adjusts the config.
pub async fn start_proxy(
    upstream: &str,
    tune: impl FnOnce(&mut ServeConfig),
) -> (Running, Arc<Metrics>) {
    start_proxy_with(host(), upstream, tune).await
}

pub async fn start_proxy_with(
    host: Arc<AdapterHost>,
    upstream: &str,
    tune: impl FnOnce(&mut ServeConfig),
) -> (Running, Arc<Metrics>) {
    start_proxy_refining(host, Box::new(tiny_refiner()), 64, upstream, tune).await
}

/// A proxy whose queue runs `refiner` in batches of at most `max_batch` requests.
pub async fn start_proxy_refining(
    host: Arc<AdapterHost>,
    refiner: Box<dyn prip_core::Refine>,
    max_batch: usize,
    upstream: &str,
    tune: impl FnOnce(&mut ServeConfig),
) -> (Running, Arc<Metrics>) {
    let mut cfg = ServeConfig::new(upstream);
    cfg.seed = Some(SEED);
    cfg.upstream_timeout = Duration::from_secs(5);
    tune(&mut cfg);
    let queue = RefineQueue::start(refiner, 512, max_batch).unwrap();
    let proxy = Proxy::new(cfg, host, queue).unwrap();
    let metrics = proxy.metrics();
    let running = proxy.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (running, metrics)
}

/// An answer as the client saw it.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    pub fn prip(&self) -> &str {
        self.headers
            .get("x-prip")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

/// Sends one request with a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Got {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .expect("the proxy answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        headers,
        body,
    }
}

pub async fn post_json(addr: SocketAddr, path: &str, v: &Value) -> Got {
    send(
        addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        v.to_string(),
    )
    .await
}
