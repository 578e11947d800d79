//! `prip serve`: a reverse proxy that refines prompts in flight.
//!
//! Requests on a route an adapter claims are buffered, their positive prompts refined
//! and the rewritten body sent upstream ([`intercept`]); everything else streams
//! through unchanged ([`forward`]), WebSocket upgrades included ([`upgrade`]). The proxy
//! fails open: whatever goes wrong in refinement, the original request goes upstream.
//! Every answer carries `X-PRIP: refined|unchanged|skipped|error`, and unless refined an
//! `X-PRIP-Reason` that says why (`model_stopped`, `already_refined`, ...); a client sends
//! `X-PRIP: off` to opt out.

mod forward;
mod intercept;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prip_protocols::Polarity;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::metrics::{Metrics, Outcome, Verdict};
use crate::refine::RefineQueue;
use crate::sandbox::AdapterHost;

/// Any body error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and answer the proxy builds.
pub type Body = BoxBody<Bytes, BoxError>;

/// The header that says what the proxy did, and lets a client opt out.
pub const X_PRIP: &str = "x-prip";
/// The header naming the adapter that handled a refined request.
pub const X_PRIP_ADAPTER: &str = "x-prip-adapter";
/// Why a request was not refined (absent when it was, or when no route claimed it).
pub const X_PRIP_REASON: &str = "x-prip-reason";
/// Sent upstream with a request the proxy refined, so a second `prip serve` behind it
/// forwards it untouched even when the body carries no mark of its own.
pub const X_PRIP_REFINED: &str = "x-prip-refined";

/// Which adapters may claim requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterChoice {
    /// Any loaded adapter, the first that claims the route and finds prompts.
    Auto,
    /// Only the adapter with this name.
    Named(String),
}

/// What `prip serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// `http[s]://host:port[/base]` of the image server.
    pub upstream: String,
    /// Extra CA certificates (PEM) to trust for an https upstream.
    pub upstream_ca: Option<std::path::PathBuf>,
    /// Which adapters are used.
    pub adapter: AdapterChoice,
    /// Bearer token clients must send; `None` for none.
    pub token: Option<String>,
    /// Allow a non-loopback listen address without a token.
    pub allow_public: bool,
    /// How long a request waits for its refinement before it goes upstream unchanged.
    pub refine_timeout: Duration,
    /// How long the upstream may take to start answering.
    pub upstream_timeout: Duration,
    /// Largest body accepted on an intercepted route (413 above).
    pub max_body_bytes: usize,
    /// Which prompt slots are refined.
    pub polarities: Vec<Polarity>,
    /// Generation system (decoder adapter) to refine for.
    pub system: Option<String>,
    /// Sampling seed for every prompt (reproducible refinements); random when `None`.
    pub seed: Option<u64>,
}

impl ServeConfig {
    /// The mistakes a config can hold before anything is loaded: an unusable upstream
    /// URL, or a public `listen` address without a token.
    pub fn check(&self, listen: SocketAddr) -> Result<(), ServeError> {
        forward::Upstream::parse(&self.upstream, self.upstream_ca.as_deref())?;
        if !listen.ip().is_loopback() && self.token.is_none() && !self.allow_public {
            return Err(ServeError::PublicWithoutToken(listen));
        }
        Ok(())
    }

    /// Defaults for `upstream`: positive prompts only, 30 s to refine, 10 min for the
    /// upstream (a generation can take that long), 32 MiB bodies.
    pub fn new(upstream: impl Into<String>) -> Self {
        Self {
            upstream: upstream.into(),
            upstream_ca: None,
            adapter: AdapterChoice::Auto,
            token: None,
            allow_public: false,
            refine_timeout: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(600),
            max_body_bytes: 32 << 20,
            polarities: vec![Polarity::Positive],
            system: None,
            seed: None,
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The upstream URL is not usable.
    #[error("upstream {url:?}: {reason}")]
    Upstream {
        /// As given.
        url: String,
        /// Why.
        reason: String,
    },
    /// `--adapter NAME` names no loaded adapter.
    #[error("no adapter named {0:?} (loaded: {1})")]
    NoSuchAdapter(String, String),
    /// A public address without a token.
    #[error("refusing to listen on {0} without a token: set one, or pass --allow-public")]
    PublicWithoutToken(SocketAddr),
    /// Binding failed.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Everything a request handler needs.
struct State {
    cfg: ServeConfig,
    upstream: forward::Upstream,
    host: Arc<AdapterHost>,
    candidates: Vec<usize>,
    queue: RefineQueue,
    metrics: Arc<Metrics>,
}

/// A configured proxy, not yet listening.
pub struct Proxy {
    state: Arc<State>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("cfg", &self.state.cfg)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Checks the config against the loaded adapters.
    pub fn new(
        cfg: ServeConfig,
        host: Arc<AdapterHost>,
        queue: RefineQueue,
    ) -> Result<Self, ServeError> {
        let upstream = forward::Upstream::parse(&cfg.upstream, cfg.upstream_ca.as_deref())?;
        let candidates = match &cfg.adapter {
            AdapterChoice::Auto => (0..host.adapters().len()).collect(),
            AdapterChoice::Named(name) => vec![host.find(name).ok_or_else(|| {
                let names: Vec<_> = host
                    .adapters()
                    .iter()
                    .map(|a| a.info.name.as_str())
                    .collect();
                ServeError::NoSuchAdapter(name.clone(), names.join(", "))
            })?],
        };
        Ok(Self {
            state: Arc::new(State {
                cfg,
                upstream,
                host,
                candidates,
                queue,
                metrics: Arc::new(Metrics::default()),
            }),
        })
    }

    /// The proxy's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Binds `addr` and serves until the returned handle is shut down or dropped.
    pub async fn bind(self, addr: SocketAddr) -> Result<Running, ServeError> {
        self.state.cfg.check(addr)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let state = self.state;
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    if let Err(e) = conn.await {
                        tracing::debug!("client connection: {e}");
                    }
                });
            }
        });
        Ok(Running {
            addr: local,
            stop: Some(stop),
            task,
        })
    }
}

/// A listening proxy. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the task ends (it does not, unless stopped).
    pub async fn wait(mut self) {
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = task.await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn handle(state: Arc<State>, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path == "/prip/healthz" {
        return health(&state);
    }
    if let Some(refusal) = authorize(&state, &mut req) {
        return refusal;
    }
    if req.uri().path() == "/prip/metrics" {
        let mut resp = Response::new(full(state.metrics.render()));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return resp;
    }
    let opted_out = req
        .headers_mut()
        .remove(X_PRIP)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"off"));
    let claimed = if opted_out || upgrade::is_upgrade(&req) {
        None
    } else {
        route(&state, req.method().as_str(), req.uri().path())
    };
    let passed = |reason| Verdict {
        outcome: Outcome::Skipped,
        reason,
    };
    let (verdict, mut resp) = if upgrade::is_upgrade(&req) {
        (passed(None), upgrade::relay(&state, req).await)
    } else if let Some(candidates) = claimed {
        intercept::refine(&state, candidates, req).await
    } else {
        let reason = opted_out.then_some("opted_out");
        let req = req.map(|b| b.map_err(BoxError::from).boxed());
        (passed(reason), forward::send(&state, req).await)
    };
    state.metrics.request(verdict);
    let headers = resp.headers_mut();
    headers.insert(X_PRIP, HeaderValue::from_static(verdict.outcome.as_str()));
    if let Some(reason) = verdict.reason {
        headers.insert(X_PRIP_REASON, HeaderValue::from_static(reason));
    }
    resp
}

/// The adapters claiming `method path`, in trying order.
fn route(state: &State, method: &str, path: &str) -> Option<Vec<usize>> {
    let claim: Vec<usize> = state
        .candidates
        .iter()
        .copied()
        .filter(|&i| {
            state.host.adapters()[i]
                .info
                .routes
                .iter()
                .any(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
        })
        .collect();
    (!claim.is_empty()).then_some(claim)
}

/// 401 unless the request carries the token; our `Authorization` header is not
/// forwarded (the upstream has its own).
fn authorize(state: &State, req: &mut Request<Incoming>) -> Option<Response<Body>> {
    let token = state.cfg.token.as_deref()?;
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        req.headers_mut().remove(AUTHORIZATION);
        None
    } else {
        state.metrics.failure("unauthorized");
        let mut resp = json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"prip\""),
        );
        Some(resp)
    }
}

/// Token comparison that does not stop at the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn health(state: &State) -> Response<Body> {
    let adapters: Vec<_> = state
        .candidates
        .iter()
        .map(|&i| {
            let a = &state.host.adapters()[i];
            serde_json::json!({"name": a.info.name, "version": a.info.version, "origin": a.origin})
        })
        .collect();
    json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "ok", "upstream": state.cfg.upstream, "adapters": adapters}),
    )
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `{"error": message, "source": "prip"}` with `status`.
fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &serde_json::json!({"error": message, "source": "prip"}),
    )
}
