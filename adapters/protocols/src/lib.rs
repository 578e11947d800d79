//! prip-protocols: where prompts sit in the requests of the image servers people run.
//!
//! Each protocol is a [`Protocol`]: it describes the routes it understands, extracts
//! the prompt slots of a request, and writes new texts back without touching anything
//! else. The types mirror the WIT contract in `adapters/wit/adapter.wit` one to one, so
//! the same code runs natively (unit tests, benchmarks) and inside the sandboxed WASM
//! components that `prip serve` loads (the `prip-guest` crate).
//!
//! Nothing here does I/O or keeps state: an adapter is a pure function of the request.

pub mod a1111;
#[doc(hidden)]
pub mod cases;
pub mod comfyui;
pub mod diffusers;
mod fields;
mod json;
pub mod openai_images;

/// A request shape an adapter handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// HTTP method, upper-case.
    pub method: String,
    /// Exact path, no query string.
    pub path: String,
}

impl Route {
    fn post(path: &str) -> Self {
        Self {
            method: "POST".into(),
            path: path.into(),
        }
    }
}

/// What an adapter is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Short protocol name (`--adapter NAME`).
    pub name: String,
    /// The adapter's version.
    pub version: String,
    /// Routes whose requests [`Protocol::extract`] understands.
    pub routes: Vec<Route>,
    /// Whether [`Protocol::annotate`] wants to see the answers.
    pub annotates: bool,
}

/// Whether a prompt asks for something or against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Polarity {
    /// Describes what to render.
    Positive,
    /// Describes what to avoid.
    Negative,
    /// Could not be told.
    Unknown,
}

impl Polarity {
    /// The lower-case name used in configs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Polarity::Positive => "positive",
            Polarity::Negative => "negative",
            Polarity::Unknown => "unknown",
        }
    }
}

impl std::str::FromStr for Polarity {
    type Err = UnknownPolarity;

    /// Reads the names [`Polarity::as_str`] writes, ignoring surrounding blanks.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim() {
            "positive" => Ok(Polarity::Positive),
            "negative" => Ok(Polarity::Negative),
            "unknown" => Ok(Polarity::Unknown),
            other => Err(UnknownPolarity(other.to_string())),
        }
    }
}

/// A polarity name that is none of `positive`, `negative` or `unknown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPolarity(pub String);

impl std::fmt::Display for UnknownPolarity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not positive, negative or unknown", self.0)
    }
}

impl std::error::Error for UnknownPolarity {}

/// One prompt found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Stable within one request.
    pub id: String,
    /// The prompt as the server would read it.
    pub text: String,
    /// Positive, negative or unknown.
    pub polarity: Polarity,
    /// What the prompt is for ("main", "hires", ...).
    pub role: String,
    /// The text encoder that reads it, when known.
    pub encoder: Option<String>,
}

/// An HTTP request with its body buffered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// Upper-case method.
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Query string without '?'.
    pub query: String,
    /// Lower-case header names.
    pub headers: Vec<(String, String)>,
    /// Raw body.
    pub body: Vec<u8>,
}

impl Request {
    /// A POST of `body` to `path`, as the tests and benchmarks send it.
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: "POST".into(),
            path: path.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            ..Self::default()
        }
    }
}

/// New text for one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The slot's id.
    pub id: String,
    /// The slot's text as extracted.
    pub original: String,
    /// The text to render instead.
    pub text: String,
}

/// An upstream answer with its body buffered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Lower-case header names.
    pub headers: Vec<(String, String)>,
    /// Raw body.
    pub body: Vec<u8>,
}

/// One server protocol. Errors are one-line messages; the proxy logs them and forwards
/// the original request.
pub trait Protocol: Send + Sync {
    /// Name, version, routes.
    fn describe(&self) -> Info;
    /// The prompt slots of a request on one of the routes.
    fn extract(&self, req: &Request) -> Result<Vec<Slot>, String>;
    /// The body with the replacements applied.
    fn apply(&self, req: &Request, replacements: &[Replacement]) -> Result<Vec<u8>, String>;
    /// A new answer body, or `None` to keep the upstream's.
    fn annotate(
        &self,
        _req: &Request,
        _replacements: &[Replacement],
        _resp: &Response,
    ) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

/// Every protocol of this crate, in the order `--adapter auto` tries them.
pub fn builtin() -> Vec<Box<dyn Protocol>> {
    vec![
        Box::new(a1111::A1111),
        Box::new(comfyui::ComfyUi),
        Box::new(diffusers::Diffusers),
        Box::new(openai_images::OpenAiImages),
    ]
}

/// The version every built-in adapter reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polarity_names_round_trip() {
        for p in [Polarity::Positive, Polarity::Negative, Polarity::Unknown] {
            assert_eq!(p.as_str().parse::<Polarity>(), Ok(p));
            assert_eq!(format!(" {} ", p.as_str()).parse::<Polarity>(), Ok(p));
        }
        let err = "Positive".parse::<Polarity>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"Positive\" is not positive, negative or unknown"
        );
    }
}
