//! Sending requests upstream (http or https) and answers back, byte for byte; hop-by-hop headers are
//! the only thing dropped. Upstream failures become JSON errors: 502 when it refuses or
//! breaks the connection, 504 when it does not answer in time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::{HeaderName, CONNECTION, UPGRADE};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{HeaderMap, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::{json_error, Body, BoxError, ServeError, State};

/// The image server behind the proxy.
pub(super) struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
}

impl Upstream {
    /// `url` is `http://` or `https://`; https upstreams are verified against the
    /// bundled web PKI roots plus the PEM certificates in `extra_ca` (a private CA or a
    /// self-signed server).
    pub(super) fn parse(url: &str, extra_ca: Option<&Path>) -> Result<Self, ServeError> {
        let bad = |reason: &str| ServeError::Upstream {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| bad("needs http:// or https://"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(bad("scheme must be http or https"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("needs a host"))?;
        if uri.query().is_some() {
            return Err(bad("must not have a query string"));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(&format!("CA file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(bad(&format!("CA file {}: no certificates", path.display())));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| bad(&format!("CA file {}: {e}", path.display())))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The upstream URI for a request's path and query.
    fn uri_for(&self, pq: Option<&PathAndQuery>) -> Result<Uri, hyper::http::Error> {
        let pq = pq.map(PathAndQuery::as_str).unwrap_or("/");
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{pq}", self.base_path))
            .build()
    }
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Drops hop-by-hop headers and those the `Connection` header names; an upgrade keeps
/// `Connection` and `Upgrade`, which are the point of it.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == UPGRADE) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        if !(upgrade && (name == "connection" || name == "upgrade")) {
            headers.remove(name);
        }
    }
}

/// Sends `req` upstream and returns its answer, or a JSON error answer.
pub(super) async fn send(state: &State, req: Request<Body>) -> Response<Body> {
    match send_raw(state, req, false).await {
        Ok(resp) => resp.map(|b| b.map_err(BoxError::from).boxed()),
        Err(error) => error,
    }
}

/// Sends `req` upstream; the answer's body is still the upstream's stream.
pub(super) async fn send_raw(
    state: &State,
    mut req: Request<Body>,
    upgrade: bool,
) -> Result<Response<hyper::body::Incoming>, Response<Body>> {
    let upstream = &state.upstream;
    *req.uri_mut() = upstream.uri_for(req.uri().path_and_query()).map_err(|e| {
        state.metrics.failure("bad_request");
        json_error(StatusCode::BAD_REQUEST, &format!("request target: {e}"))
    })?;
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let timeout = state.cfg.upstream_timeout;
    match tokio::time::timeout(timeout, upstream.client.request(req)).await {
        Ok(Ok(mut resp)) => {
            strip_hop_by_hop(resp.headers_mut(), upgrade);
            Ok(resp)
        }
        Ok(Err(e)) if e.is_connect() => {
            state.metrics.failure("upstream_connect");
            Err(json_error(
                StatusCode::BAD_GATEWAY,
                &format!("upstream {} refused the connection", upstream.authority),
            ))
        }
        Ok(Err(e)) => {
            state.metrics.failure("upstream_broken");
            let cause = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            Err(json_error(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "upstream {} closed the connection: {cause}",
                    upstream.authority
                ),
            ))
        }
        Err(_) => {
            state.metrics.failure("upstream_timeout");
            Err(json_error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "upstream {} did not answer within {} s",
                    upstream.authority,
                    timeout.as_secs_f64()
                ),
            ))
        }
    }
}
