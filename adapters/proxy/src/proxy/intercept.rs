//! A request on a claimed route: buffer it, let the adapter find the prompts, refine
//! the wanted ones through the queue, let the adapter write them back, send that
//! upstream. Any failure on the way sends the original bytes instead.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Request, Response, StatusCode};
use prip_protocols as native;

use prip_core::{refiner::distinct, RefineRequest};

use super::{forward, full, json_error, Body, State, X_PRIP_ADAPTER, X_PRIP_REFINED};
use crate::metrics::{Outcome, Verdict};
use crate::sandbox::CallError;

/// What the client sent, kept to forward as is when refinement fails.
struct Original {
    parts: hyper::http::request::Parts,
    body: Bytes,
}

impl Original {
    /// A request with the original head and `body`.
    fn with_body(&self, body: Bytes) -> Request<Body> {
        let mut req = Request::builder()
            .method(self.parts.method.clone())
            .uri(self.parts.uri.clone())
            .version(self.parts.version)
            .body(
                Full::new(body.clone())
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .expect("parts of a valid request");
        *req.headers_mut() = self.parts.headers.clone();
        let headers = req.headers_mut();
        headers.remove(TRANSFER_ENCODING);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        req
    }

    fn native(&self) -> native::Request {
        native::Request {
            method: self.parts.method.as_str().to_string(),
            path: self.parts.uri.path().to_string(),
            query: self.parts.uri.query().unwrap_or("").to_string(),
            headers: header_pairs(&self.parts.headers),
            body: self.body.to_vec(),
        }
    }
}

pub(super) async fn refine(
    state: &State,
    candidates: Vec<usize>,
    req: Request<Incoming>,
) -> (Verdict, Response<Body>) {
    let limit = state.cfg.max_body_bytes;
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(state, limit);
    }
    let body = match read_limited(body, limit).await {
        Ok(b) => b,
        Err(ReadError::TooLarge) => return too_large(state, limit),
        Err(ReadError::Body(e)) => {
            state.metrics.failure("client_body");
            let msg = format!("reading the request body: {e}");
            let verdict = Verdict::new(Outcome::Error, "client_body");
            return (verdict, json_error(StatusCode::BAD_REQUEST, &msg));
        }
    };
    let original = Original { parts, body };
    match rewrite(state, &candidates, &original).await {
        Rewrite::Refined {
            adapter,
            body,
            replacements,
            native,
        } => {
            let mut refined = original.with_body(body);
            refined
                .headers_mut()
                .insert(X_PRIP_REFINED, HeaderValue::from_static("1"));
            let mut resp = forward::send(state, refined).await;
            let name = state.host.adapters()[adapter].info.name.clone();
            if state.host.adapters()[adapter].info.annotates {
                resp = annotate(state, adapter, native, replacements, resp).await;
            }
            if let Ok(v) = HeaderValue::from_str(&name) {
                resp.headers_mut().insert(X_PRIP_ADAPTER, v);
            }
            (Verdict::REFINED, resp)
        }
        Rewrite::Unchanged(verdict) => {
            let resp = forward::send(state, original.with_body(original.body.clone())).await;
            (verdict, resp)
        }
    }
}

fn too_large(state: &State, limit: usize) -> (Verdict, Response<Body>) {
    state.metrics.failure("body_too_large");
    let msg = format!("request body is larger than the proxy's limit of {limit} bytes");
    (
        Verdict::new(Outcome::Error, "body_too_large"),
        json_error(StatusCode::PAYLOAD_TOO_LARGE, &msg),
    )
}

enum Rewrite {
    Refined {
        adapter: usize,
        body: Bytes,
        replacements: Vec<native::Replacement>,
        native: native::Request,
    },
    Unchanged(Verdict),
}

/// The adapter calls and the refinement; never fails, it reports what to forward.
async fn rewrite(state: &State, candidates: &[usize], original: &Original) -> Rewrite {
    if original.parts.headers.contains_key(X_PRIP_REFINED) {
        return Rewrite::Unchanged(Verdict::new(Outcome::Skipped, "already_refined"));
    }
    let native = Arc::new(original.native());
    let mut first_error: Option<CallError> = None;
    let mut found = None;
    for &idx in candidates {
        let host = state.host.clone();
        let req = native.clone();
        match blocking(move || host.extract(idx, &req)).await {
            Ok(ex) if ex.refined => {
                return Rewrite::Unchanged(Verdict::new(Outcome::Skipped, "already_refined"))
            }
            Ok(ex) if !ex.slots.is_empty() => {
                found = Some((idx, ex));
                break;
            }
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let Some((idx, extraction)) = found else {
        return match first_error {
            Some(e) => {
                report(state, &e);
                Rewrite::Unchanged(Verdict::new(Outcome::Error, e.kind.as_str()))
            }
            None => Rewrite::Unchanged(Verdict::new(Outcome::Skipped, "no_prompts")),
        };
    };
    let wanted: Vec<native::Slot> = extraction
        .slots
        .into_iter()
        .filter(|s| state.cfg.polarities.contains(&s.polarity))
        .collect();
    if wanted.is_empty() {
        return Rewrite::Unchanged(Verdict::new(Outcome::Skipped, "no_wanted_prompts"));
    }
    let started = Instant::now();
    // The protocol's dialect names are the refiner's (adapters/wit/adapter.wit).
    let dialect = state.host.adapters()[idx]
        .info
        .dialect
        .as_str()
        .parse()
        .unwrap_or_default();
    // A request that fixes its image seed gets the same refinement every time.
    let seed = state.cfg.seed.or(extraction.seed);
    let requests: Vec<RefineRequest> = wanted
        .iter()
        .map(|s| RefineRequest {
            seed,
            system: state.cfg.system.clone(),
            dialect,
            ..RefineRequest::new(s.text.clone())
        })
        .collect();
    // Equal texts in one request get one refinement, so the encoders that read them agree.
    let (unique, index) = distinct(&requests);
    // Under overload, waiting would only delay the image: go upstream unrefined at once.
    if state
        .queue
        .expected_wait(unique.len())
        .is_some_and(|wait| wait > state.cfg.refine_timeout)
    {
        state.metrics.failure("refine_overloaded");
        return Rewrite::Unchanged(Verdict::new(Outcome::Error, "refine_overloaded"));
    }
    let results =
        match tokio::time::timeout(state.cfg.refine_timeout, state.queue.refine(unique)).await {
            Ok(Ok(results)) => results,
            Ok(Err(e)) => {
                let kind = match e {
                    crate::refine::QueueError::Full => "refine_queue_full",
                    crate::refine::QueueError::Stopped => "refine_stopped",
                };
                state.metrics.failure(kind);
                tracing::warn!("{e}; forwarding the original request");
                return Rewrite::Unchanged(Verdict::new(Outcome::Error, kind));
            }
            Err(_) => {
                state.metrics.failure("refine_timeout");
                tracing::warn!(
                    "refinement took longer than {:?}; forwarding the original request",
                    state.cfg.refine_timeout
                );
                return Rewrite::Unchanged(Verdict::new(Outcome::Error, "refine_timeout"));
            }
        };
    let mut replacements = Vec::new();
    let mut not_refined: Option<&'static str> = None;
    for (slot, &i) in wanted.iter().zip(&index) {
        match results.get(i) {
            Some(Ok(r)) if r.outcome == prip_core::Outcome::Refined => {
                replacements.push(native::Replacement {
                    id: slot.id.clone(),
                    original: slot.text.clone(),
                    text: r.refined.clone(),
                })
            }
            Some(Ok(r)) => {
                not_refined.get_or_insert(r.outcome.as_str());
            }
            Some(Err(e)) => {
                state.metrics.failure("refine_error");
                tracing::warn!("refining slot {}: {e}", slot.id);
            }
            None => {
                state.metrics.failure("refine_error");
                tracing::warn!("refining slot {}: the refiner returned no result", slot.id);
            }
        }
    }
    if replacements.is_empty() {
        return Rewrite::Unchanged(match not_refined {
            Some(reason) => Verdict::new(Outcome::Unchanged, reason),
            None => Verdict::new(Outcome::Error, "refine_error"),
        });
    }
    state.metrics.refined(replacements.len(), started.elapsed());
    let host = state.host.clone();
    let (req, reps) = (native.clone(), replacements.clone());
    match blocking(move || host.apply(idx, &req, &reps)).await {
        Ok(body) => Rewrite::Refined {
            adapter: idx,
            body: body.into(),
            replacements,
            native: Arc::unwrap_or_clone(native),
        },
        Err(e) => {
            report(state, &e);
            Rewrite::Unchanged(Verdict::new(Outcome::Error, e.kind.as_str()))
        }
    }
}

/// Lets the adapter rewrite the upstream's answer; on any failure the answer goes to
/// the client as the upstream sent it.
async fn annotate(
    state: &State,
    idx: usize,
    req: native::Request,
    replacements: Vec<native::Replacement>,
    resp: Response<Body>,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let bytes = match read_limited(body, state.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            state.metrics.failure("upstream_body");
            let msg = format!("reading the upstream's answer: {e}");
            return json_error(StatusCode::BAD_GATEWAY, &msg);
        }
    };
    let answer = native::Response {
        status: parts.status.as_u16(),
        headers: header_pairs(&parts.headers),
        body: bytes.to_vec(),
    };
    let host = state.host.clone();
    let new = match blocking(move || host.annotate(idx, &req, &replacements, &answer)).await {
        Ok(Some(new)) => Bytes::from(new),
        Ok(None) => bytes,
        Err(e) => {
            report(state, &e);
            bytes
        }
    };
    parts.headers.remove(TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(new.len()));
    Response::from_parts(parts, full(new))
}

/// Headers as the adapter contract has them: lower-case names, values as text.
fn header_pairs(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn report(state: &State, e: &CallError) {
    state.metrics.failure(e.kind.as_str());
    tracing::warn!("{e}; forwarding the original request");
}

/// Runs an adapter call on the blocking pool; a panic there is a trap, not a crash.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CallError> + Send + 'static,
) -> Result<T, CallError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(CallError {
            adapter: "host".into(),
            kind: crate::sandbox::FailureKind::Trap,
            message: e.to_string(),
        })
    })
}

enum ReadError {
    TooLarge,
    Body(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::TooLarge => f.write_str("body too large"),
            ReadError::Body(e) => f.write_str(e),
        }
    }
}

/// Buffers a body of at most `limit` bytes. (http-body-util's `Limited` would do, but
/// its boxed error trips the compiler's Send inference in this async fn.)
async fn read_limited<B>(mut body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
