//! Image backends: the trainer renders prompts on the image servers people already run.
//!
//! A [`Backend`] speaks one server protocol ([`a1111`], [`comfyui`], [`openai`]); a
//! [`Pool`] spreads the work of a batch over several servers of that protocol (one per
//! GPU, or a fleet behind a balancer) with bounded concurrency, retries transient
//! failures with exponential backoff, takes a server that keeps failing out of rotation
//! for a while, and keeps every image it got in an on-disk [`Cache`] keyed by (backend,
//! settings, prompt, seed), so the original prompt's images, which PPO and evaluation
//! need again and again, are rendered once, and a stopped run resumes where it was.
//!
//! Every request carries its seed list, so an original and a refined prompt are rendered
//! under the same seeds, and every image comes back with its prompt, seed and server.
//! A sample (one prompt and seed) that fails for good is dropped with its cause
//! ([`Dropped`]); the caller counts drops in a [`crate::tally::FailureTally`], which stops
//! the run past the share it allows.
//!
//! Design choice: the pool is async inside (hyper, tokio) and blocking outside
//! ([`Pool::render`]), because the training loop around it is synchronous candle code;
//! it owns a small runtime of its own rather than asking the caller for one.

pub mod a1111;
mod cache;
pub mod comfyui;
pub mod openai;
mod pool;

use std::future::Future;
use std::pin::Pin;

pub use cache::Cache;
pub use pool::{Pool, PoolConfig};

use crate::image::{ImageError, Picture};
pub use crate::net::{Endpoint, NetError};

/// A boxed future, as [`Backend::render`] returns (object-safe async).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One image server protocol.
///
/// Implementations are stateless clients: the same backend renders on any number of
/// servers, each given as an [`Endpoint`].
pub trait Backend: Send + Sync + 'static {
    /// The protocol's short name (`a1111`, `comfyui`, `openai-images`), part of the
    /// cache key and of every image's record.
    fn name(&self) -> &'static str;

    /// Everything besides prompt and seed that decides the image (size, steps,
    /// sampler, model, the workflow template), as canonical text: part of the cache key.
    fn settings_key(&self) -> String;

    /// How a seed list is split into calls; each call renders its seeds in one
    /// request where the protocol allows. Default: one call per seed.
    fn chunks(&self, seeds: &[u64]) -> Vec<Vec<u64>> {
        seeds.iter().map(|s| vec![*s]).collect()
    }

    /// Renders `prompt` once per seed of `seeds` on `server` and returns the encoded
    /// images in the order of `seeds`. Fewer images than seeds is an error
    /// ([`RenderError::FewerImages`]); decoding is the pool's job.
    fn render<'a>(
        &'a self,
        server: &'a Endpoint,
        prompt: &'a str,
        seeds: &'a [u64],
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>, RenderError>>;
}

/// Why a render call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RenderError {
    /// The HTTP exchange failed (connection, timeout, an error status).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The server answered 2xx with something this protocol does not read.
    #[error("{server}: unexpected answer: {reason}")]
    BadAnswer {
        /// The server's base URL.
        server: String,
        /// What was wrong.
        reason: String,
    },
    /// The server ran the job and reported a failure (ComfyUI's execution error).
    #[error("{server}: the job failed: {reason}")]
    JobFailed {
        /// The server's base URL.
        server: String,
        /// The server's message.
        reason: String,
    },
    /// The answer held fewer images than seeds asked for.
    #[error("{server}: {got} images for {asked} seeds")]
    FewerImages {
        /// The server's base URL.
        server: String,
        /// Seeds asked for.
        asked: usize,
        /// Images received.
        got: usize,
    },
    /// The whole call (all its requests, polling included) ran past its limit.
    #[error("{server}: no images within {secs:.1} s")]
    Timeout {
        /// The server's base URL.
        server: String,
        /// The limit, seconds.
        secs: f64,
    },
    /// An image that the server sent does not decode or is out of limits.
    #[error("{server}: {source}")]
    Image {
        /// The server's base URL.
        server: String,
        /// Why.
        source: ImageError,
    },
    /// A configuration error (bad URL, bad template): nothing was sent.
    #[error("{0}")]
    Config(String),
}

impl RenderError {
    /// Whether another attempt (later, or on another server) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RenderError::Net(e) => e.is_transient(),
            RenderError::JobFailed { .. } | RenderError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// A short cause for counters and logs (`timeout`, `server_error`, `fewer_images`,
    /// `undecodable`, ...).
    pub fn cause(&self) -> &'static str {
        match self {
            RenderError::Net(e) => e.cause(),
            RenderError::BadAnswer { .. } => "bad_answer",
            RenderError::JobFailed { .. } => "job_failed",
            RenderError::FewerImages { .. } => "fewer_images",
            RenderError::Timeout { .. } => "timeout",
            RenderError::Image {
                source: ImageError::Size { .. },
                ..
            } => "image_size",
            RenderError::Image { .. } => "undecodable",
            RenderError::Config(_) => "config",
        }
    }
}

/// One prompt to render under a list of seeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderJob {
    /// The text the server renders.
    pub prompt: String,
    /// One image per seed.
    pub seeds: Vec<u64>,
}

/// One rendered image with where it came from.
#[derive(Debug, Clone)]
pub struct RenderedImage {
    /// The prompt it was rendered from.
    pub prompt: String,
    /// Its seed.
    pub seed: u64,
    /// The server's base URL (as recorded when it came from the cache).
    pub server: String,
    /// Whether it came from the cache instead of a server.
    pub cached: bool,
    /// The image.
    pub picture: Picture,
}

/// A sample (prompt, seed) that could not be rendered.
#[derive(Debug, Clone)]
pub struct Dropped {
    /// The prompt.
    pub prompt: String,
    /// The seed.
    pub seed: u64,
    /// [`RenderError::cause`].
    pub cause: &'static str,
    /// The one-line message.
    pub message: String,
}

/// What a batch gave: the images, and the samples dropped with their causes.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    /// Images in job order, then seed order.
    pub images: Vec<RenderedImage>,
    /// Samples that failed for good.
    pub dropped: Vec<Dropped>,
}

impl Rendered {
    /// The image of `prompt` under `seed`, if it was rendered.
    pub fn get(&self, prompt: &str, seed: u64) -> Option<&RenderedImage> {
        self.images
            .iter()
            .find(|i| i.seed == seed && i.prompt == prompt)
    }
}

/// Base64 (standard alphabet, padding optional) as image servers send images; a
/// `data:image/png;base64,` prefix is accepted too.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let text = match text.split_once(";base64,") {
        Some((head, rest)) if head.starts_with("data:") => rest,
        _ => text,
    };
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    engine
        .decode(compact)
        .map_err(|e| format!("bad base64: {e}"))
}

/// Reads a 2xx answer as JSON, or says what it was.
pub(crate) fn json_answer(
    server: &Endpoint,
    bytes: &[u8],
) -> Result<serde_json::Value, RenderError> {
    serde_json::from_slice(bytes).map_err(|e| RenderError::BadAnswer {
        server: server.url().to_string(),
        reason: format!("not JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_accepts_what_servers_send() {
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aGk").unwrap(), b"hi");
        assert_eq!(decode_base64("data:image/png;base64,aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aG\nk=").unwrap(), b"hi");
        assert!(decode_base64("!!").is_err());
    }
}
