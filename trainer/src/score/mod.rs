//! Preference scorers: one score per (prompt, image), the reward of PPO and the measure
//! of `prip eval images`.
//!
//! - [`HttpScorer`]: a client of the scoring protocol (docs/scoring-protocol.md), served
//!   for ImageReward and HPSv2 by the reference service in adapters/scoring-service.
//! - [`ClipScorer`]: CLIP score, the cosine of CLIP's text and image embeddings, on
//!   candle (Hugging Face CLIP safetensors, no Python).
//! - [`AestheticScorer`]: the LAION aesthetic predictor v2, an MLP on L2-normalised CLIP
//!   ViT-L/14 image embeddings, on candle.
//!
//! Scorers are frozen: nothing here trains. [`score_checked`] turns a scorer's answer
//! into one outcome per image, so a NaN, a wrong count or an error drops only the
//! samples it concerns, each with its cause.

mod clip;
mod http;

pub use clip::{AestheticScorer, ClipScorer};
pub use http::HttpScorer;

use crate::image::Picture;
use crate::net::NetError;

/// One preference model.
pub trait Scorer: Send + Sync {
    /// The scorer's name (`imagereward`, `hpsv2`, `clip`, `aesthetic`).
    fn name(&self) -> &str;
    /// Its version (package version, or the weights' file name).
    fn version(&self) -> &str;
    /// One score per image, in order, for images rendered from `prompt`. Higher is
    /// better; the scale is the scorer's own.
    fn score(&self, prompt: &str, images: &[Picture]) -> Result<Vec<f32>, ScoreError>;
}

/// Why a scorer gave no scores.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScoreError {
    /// The scoring service could not be reached or answered an error.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The service answered something the protocol does not allow.
    #[error("scoring service {url}: {reason}")]
    BadAnswer {
        /// The service's base URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// A model computation failed.
    #[error("{scorer}: {reason}")]
    Model {
        /// The scorer.
        scorer: String,
        /// Why.
        reason: String,
    },
    /// A scorer could not be loaded from its files.
    #[error("{0}")]
    Load(String),
}

impl ScoreError {
    /// A short cause for counters and logs.
    pub fn cause(&self) -> &'static str {
        match self {
            ScoreError::Net(e) => e.cause(),
            ScoreError::BadAnswer { .. } => "bad_answer",
            ScoreError::Model { .. } => "model",
            ScoreError::Load(_) => "load",
        }
    }
}

/// Why one image got no score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreDrop {
    /// `wrong_count`, `not_finite`, or [`ScoreError::cause`].
    pub cause: &'static str,
    /// One line.
    pub message: String,
}

/// Scores `images` and checks the answer: one finite score per image. An error or a
/// wrong count drops every image of the call; a NaN or infinite score drops its image.
pub fn score_checked(
    scorer: &dyn Scorer,
    prompt: &str,
    images: &[Picture],
) -> Vec<Result<f32, ScoreDrop>> {
    if images.is_empty() {
        return Vec::new();
    }
    let all = |cause: &'static str, message: String| {
        tracing::warn!(scorer = scorer.name(), cause, "scores dropped: {message}");
        vec![Err(ScoreDrop { cause, message }); images.len()]
    };
    match scorer.score(prompt, images) {
        Err(e) => all(e.cause(), e.to_string()),
        Ok(scores) if scores.len() != images.len() => all(
            "wrong_count",
            format!(
                "{}: {} scores for {} images",
                scorer.name(),
                scores.len(),
                images.len()
            ),
        ),
        Ok(scores) => scores
            .into_iter()
            .map(|s| {
                if s.is_finite() {
                    Ok(s)
                } else {
                    tracing::warn!(scorer = scorer.name(), "score dropped: {s}");
                    Err(ScoreDrop {
                        cause: "not_finite",
                        message: format!("{}: score {s}", scorer.name()),
                    })
                }
            })
            .collect(),
    }
}
