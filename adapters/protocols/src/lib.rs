//! prip-protocols: where prompts sit in the requests of the image servers people run.
//!
//! Each protocol is a [`Protocol`]: it describes the routes it understands, extracts
//! the prompt slots of a request, and writes new texts back without touching anything
//! else. The types mirror the WIT contract in `adapters/wit/adapter.wit` one to one, so
//! the same code runs natively (unit tests, benchmarks) and inside the sandboxed WASM
//! components that `prip serve` loads (the `prip-guest` crate).
//!
//! Nothing here does I/O or keeps state: an adapter is a pure function of the request.
//!
//! `apply` marks the body it writes (where the server has room for a mark), so that
//! `extract` on that body reports it as [`Extraction::refined`] and no PRIP layer (the
//! proxy, ComfyUI's in-server auto mode, the A1111 extension) refines a request twice.

pub mod a1111;
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
    /// How the server reads a prompt's text.
    pub dialect: Dialect,
}

/// The prompt syntax a server reads, which decides what a refined prompt may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dialect {
    /// AUTOMATIC1111 / Forge: `#` starts a comment that runs to the end of its line
    /// (also mid-line); attention `(word:1.2)`, `<lora:...>`, `BREAK`.
    A1111,
    /// ComfyUI: no comments; attention `(word:1.2)`, `embedding:name`.
    ComfyUi,
    /// Plain text, read as written.
    Plain,
}

impl Dialect {
    /// The lower-case name used in the WIT contract, configs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::A1111 => "a1111",
            Dialect::ComfyUi => "comfyui",
            Dialect::Plain => "plain",
        }
    }
}

impl std::str::FromStr for Dialect {
    type Err = UnknownDialect;

    /// Reads the names [`Dialect::as_str`] writes, ignoring surrounding blanks.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim() {
            "a1111" => Ok(Dialect::A1111),
            "comfyui" => Ok(Dialect::ComfyUi),
            "plain" => Ok(Dialect::Plain),
            other => Err(UnknownDialect(other.to_string())),
        }
    }
}

/// A dialect name that is none of `a1111`, `comfyui` or `plain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDialect(pub String);

impl std::fmt::Display for UnknownDialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not a1111, comfyui or plain", self.0)
    }
}

impl std::error::Error for UnknownDialect {}

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

/// What [`Protocol::extract`] found in a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extraction {
    /// The prompt slots, in the request's order.
    pub slots: Vec<Slot>,
    /// The image seed the request fixes; `None` when the server picks one at random.
    pub seed: Option<u64>,
    /// A PRIP layer already refined this request (its `apply` marked the body): the
    /// proxy then forwards it untouched.
    pub refined: bool,
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
    /// Name, version, routes, dialect.
    fn describe(&self) -> Info;
    /// The prompt slots of a request on one of the routes, the seed it fixes and
    /// whether a PRIP layer already refined it.
    fn extract(&self, req: &Request) -> Result<Extraction, String>;
    /// The body with the replacements applied, marked as refined where the protocol
    /// has a marker (then [`Protocol::extract`] on it reports [`Extraction::refined`]).
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

    #[test]
    fn dialect_names_round_trip() {
        for d in [Dialect::A1111, Dialect::ComfyUi, Dialect::Plain] {
            assert_eq!(d.as_str().parse::<Dialect>(), Ok(d));
            assert_eq!(format!(" {} ", d.as_str()).parse::<Dialect>(), Ok(d));
        }
        assert_eq!(Dialect::ComfyUi.as_str(), "comfyui");
        let err = "ComfyUI".parse::<Dialect>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"ComfyUI\" is not a1111, comfyui or plain"
        );
    }

    #[test]
    fn each_protocol_names_the_dialect_its_server_reads() {
        let dialects: Vec<(String, Dialect)> = builtin()
            .iter()
            .map(|p| (p.describe().name, p.describe().dialect))
            .collect();
        assert_eq!(
            dialects,
            [
                ("a1111".to_string(), Dialect::A1111),
                ("comfyui".to_string(), Dialect::ComfyUi),
                ("diffusers".to_string(), Dialect::Plain),
                ("openai-images".to_string(), Dialect::Plain),
            ]
        );
    }
}
