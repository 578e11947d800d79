//! The HTTP client the image backends and the HTTP scorer share: hyper over http or
//! https (the web PKI roots, as `prip serve` verifies its upstream), one timeout per
//! request, answers buffered. Failures come back as [`NetError`], which says whether
//! trying again (later, or on another server) can help.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why an HTTP exchange failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    /// No connection, or it broke before a whole answer came.
    #[error("{url}: {reason}")]
    Connect {
        /// What was asked.
        url: String,
        /// Why.
        reason: String,
    },
    /// No whole answer within the time allowed.
    #[error("{url}: no answer within {secs:.1} s")]
    Timeout {
        /// What was asked.
        url: String,
        /// The limit, seconds.
        secs: f64,
    },
    /// An answer with a status other than 2xx.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// What was asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body (at most 300 bytes, lossy UTF-8).
        body: String,
    },
}

impl NetError {
    /// Whether the same request may succeed later or elsewhere: connection failures,
    /// timeouts, 5xx, 408 and 429. Other 4xx answers say the request itself is wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            NetError::Connect { .. } | NetError::Timeout { .. } => true,
            NetError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
        }
    }

    /// A short cause for counters and logs.
    pub fn cause(&self) -> &'static str {
        match self {
            NetError::Connect { .. } => "connection",
            NetError::Timeout { .. } => "timeout",
            NetError::Status { status, .. } if *status >= 500 => "server_error",
            NetError::Status { .. } => "refused",
        }
    }
}

/// One server's base URL with a client for it. Cheap to clone (the client is shared).
#[derive(Clone, Debug)]
pub struct Endpoint {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    url: Arc<str>,
    timeout: Duration,
}

impl Endpoint {
    /// `url` is `http://host:port[/prefix]` or `https://...`; `timeout` bounds each
    /// request. Needs no runtime; the requests run on whichever tokio runtime awaits
    /// them.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|_| format!("{url:?} is not a URL"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{url:?} needs http:// or https://"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!("{url:?}: the scheme must be http or https"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{url:?} needs a host"))?;
        if uri.query().is_some() {
            return Err(format!("{url:?} must not have a query string"));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            url: format!("{scheme}://{authority}{base_path}").into(),
            scheme,
            authority,
            base_path,
            timeout,
        })
    }

    /// The base URL as given (without a trailing slash): how images and logs name the
    /// server.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// GET `path_and_query` (starting with `/`) under the base URL.
    pub async fn get(&self, path_and_query: &str) -> Result<Bytes, NetError> {
        let uri = self.uri(path_and_query)?;
        self.send(Method::GET, uri, None).await
    }

    /// GET an absolute URL a server handed out (an OpenAI-style `url` answer), with
    /// this endpoint's client and timeout.
    pub async fn get_absolute(&self, url: &str) -> Result<Bytes, NetError> {
        let uri: Uri = url.parse().map_err(|_| NetError::Connect {
            url: url.to_string(),
            reason: "not a URL".into(),
        })?;
        self.send(Method::GET, uri, None).await
    }

    /// POST a JSON body to `path` under the base URL.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<Bytes, NetError> {
        let uri = self.uri(path)?;
        self.send(
            Method::POST,
            uri,
            Some(serde_json::to_vec(body).unwrap_or_default()),
        )
        .await
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, NetError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path_and_query}", self.base_path))
            .build()
            .map_err(|e| NetError::Connect {
                url: format!("{}{path_and_query}", self.url),
                reason: e.to_string(),
            })
    }

    async fn send(
        &self,
        method: Method,
        uri: Uri,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, NetError> {
        let url = uri.to_string();
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| NetError::Connect {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| NetError::Connect {
                    url: url.clone(),
                    reason: error_chain(&e),
                })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| NetError::Connect {
                    url: url.clone(),
                    reason: format!("answer broke off: {e}"),
                })?
                .to_bytes();
            Ok::<_, NetError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| NetError::Timeout {
                url: url.clone(),
                secs: self.timeout.as_secs_f64(),
            })??;
        if !status.is_success() {
            let end = bytes.len().min(300);
            return Err(NetError::Status {
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..end]).replace('\n', " "),
            });
        }
        Ok(bytes)
    }
}

/// An error and its sources on one line (hyper's top-level message alone is vague).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters kept).
pub fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_escape("a b/c&d.png"), "a%20b%2Fc%26d.png");
        assert_eq!(query_escape("ComfyUI_00001_.png"), "ComfyUI_00001_.png");
    }

    #[test]
    fn urls_are_checked() {
        assert!(Endpoint::new("ftp://x", Duration::from_secs(1)).is_err());
        assert!(Endpoint::new("127.0.0.1:80", Duration::from_secs(1)).is_err());
        assert!(Endpoint::new("http://h/?a=1", Duration::from_secs(1)).is_err());
        let e = Endpoint::new("http://127.0.0.1:8188/", Duration::from_secs(1)).unwrap();
        assert_eq!(e.url(), "http://127.0.0.1:8188");
        let e = Endpoint::new("https://h.example/comfy/", Duration::from_secs(1)).unwrap();
        assert_eq!(e.url(), "https://h.example/comfy");
    }

    #[test]
    fn transient_failures_are_told_apart() {
        let status = |s| NetError::Status {
            url: "u".into(),
            status: s,
            body: String::new(),
        };
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(400).is_transient());
        assert_eq!(status(422).cause(), "refused");
    }
}
