//! Image preference of prompts: render a prompt's images on the user's image servers
//! and score them with preference models, the paper's reward (Section 3.4: the mean
//! ImageReward + HPSv2 of the refined prompt's images minus the original prompt's, under
//! the same seeds) and the measure of `prip eval images`.
//!
//! One [`ImagesConfig`] (the `[images]` table of a PPO or evaluation config) opens one
//! [`ImagePreference`]: a render [`Pool`] over the configured servers and the
//! configured scorers with their weights. [`ImagePreference::judge`] renders every
//! item of a batch in one pool call (concurrently over all servers), scores each
//! item's images per scorer in one call ([`score_checked`]), and returns per item the
//! mean score per scorer, the weighted sum, the images kept and the samples dropped
//! with their causes. A failing or hanging server costs only the samples it held: the
//! pool retries elsewhere and every finished image is kept (and cached, when a cache
//! is configured).
//!
//! Seeds: image `k` of every prompt uses seed `seed + k`, so an original and a refined
//! prompt are always compared under the same seeds, and a rerun renders the same images.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use serde::Deserialize;

use crate::image::Picture;
use crate::render::a1111::{A1111Settings, A1111};
use crate::render::comfyui::ComfyUi;
use crate::render::openai::{OpenAiImages, OpenAiSettings};
use crate::render::{Backend, Cache, Pool, PoolConfig, RenderJob};
use crate::score::{score_checked, AestheticScorer, ClipScorer, HttpScorer, ScoreError, Scorer};
use crate::tally::FailureTally;
use crate::TrainError;

/// Why image preference could not be set up or cannot keep up.
#[derive(Debug, thiserror::Error)]
pub enum PreferenceError {
    /// A bad `[images]` configuration (the message names the file and line when known).
    #[error("{0}")]
    Config(String),
    /// A scorer could not be loaded or reached at start.
    #[error("scorer {scorer}: {error}")]
    Scorer {
        /// The scorer's entry (`http http://host:port`, `clip /path`, ...).
        scorer: String,
        /// Why (in the message, not a `source`: the CLI prints error chains).
        error: ScoreError,
    },
    /// A server rendered no probe image at start.
    #[error("preflight: {server} rendered no probe image: {reason}")]
    Probe {
        /// The server's base URL.
        server: String,
        /// The render error.
        reason: String,
    },
    /// The servers cannot render a step's images within the step timeout.
    #[error("{0}")]
    Capacity(String),
    /// Setting up the pool or the cache failed.
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// Result with [`PreferenceError`].
pub type Result<T> = std::result::Result<T, PreferenceError>;

/// The image server protocol of `[images] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BackendKind {
    /// AUTOMATIC1111 / Forge (`/sdapi/v1/txt2img`), settings in `[images.a1111]`.
    #[serde(rename = "a1111")]
    A1111,
    /// ComfyUI (`/prompt`), the workflow in `[images.comfyui]`.
    #[serde(rename = "comfyui")]
    ComfyUi,
    /// OpenAI-style `/v1/images/generations`, settings in `[images.openai]`.
    #[serde(rename = "openai-images")]
    OpenAiImages,
}

/// `[images.comfyui]`: the workflow every prompt is rendered with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComfyUiConfig {
    /// An API-format workflow file ("Save (API)"), relative to the config file.
    pub workflow: PathBuf,
    /// Wait between `/history` polls, milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

fn default_poll_ms() -> u64 {
    250
}

/// Which preference model a `[[images.scorers]]` entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScorerKind {
    /// A scoring service (`prip-score/1`, e.g. adapters/scoring-service for ImageReward
    /// and HPSv2): `url`, optional `name`.
    Http,
    /// CLIP score on candle: `path` is a Hugging Face CLIPModel directory.
    Clip,
    /// The LAION aesthetic predictor on candle: `path` (CLIP directory) and `mlp`.
    Aesthetic,
}

/// One `[[images.scorers]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerConfig {
    /// `http`, `clip` or `aesthetic`.
    pub kind: ScorerKind,
    /// `http`: the service's base URL.
    #[serde(default)]
    pub url: Option<String>,
    /// `http`: the scorer on the service (`imagereward`, `hpsv2`); the service's
    /// default when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// `clip`, `aesthetic`: the CLIP directory, relative to the config file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `aesthetic`: the predictor's weights (`.pth` or `.safetensors`).
    #[serde(default)]
    pub mlp: Option<PathBuf>,
    /// How reports, caches and logs name it; the scorer's own name when absent. Two
    /// scorers may not share a label.
    #[serde(default)]
    pub label: Option<String>,
    /// Weight in the sum of mean scores (the paper sums ImageReward and HPSv2, weight 1
    /// each).
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// The `[images]` table: where and how prompts are rendered, and how images are scored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// `a1111`, `comfyui` or `openai-images`.
    pub backend: BackendKind,
    /// Request settings for `a1111` (size, steps, sampler, ...).
    #[serde(default)]
    pub a1111: Option<A1111Settings>,
    /// The workflow for `comfyui`.
    #[serde(default)]
    pub comfyui: Option<ComfyUiConfig>,
    /// Request settings for `openai-images` (`model` is required).
    #[serde(default)]
    pub openai: Option<OpenAiSettings>,
    /// Base URLs of the servers (`http://host:port`), one per GPU or a fleet.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Calls in flight per server.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Limit for one render call, seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Tries per render call, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Images per prompt (the paper: 4).
    #[serde(default = "default_images_per_prompt")]
    pub images_per_prompt: usize,
    /// Base seed: image `k` of every prompt uses `seed + k`.
    #[serde(default)]
    pub seed: u64,
    /// Image cache directory (relative to the config file); none when absent.
    #[serde(default)]
    pub cache: Option<PathBuf>,
    /// Wait before the first retry of a failed render call, seconds; doubled for each
    /// further one.
    #[serde(default = "default_backoff_s")]
    pub backoff_s: f64,
    /// How long a server that failed 3 calls in a row stays out of rotation, seconds
    /// (with every server out, calls wait for the first to come back).
    #[serde(default = "default_cooldown_s")]
    pub cooldown_s: f64,
    /// The preference models, each with its weight.
    #[serde(default)]
    pub scorers: Vec<ScorerConfig>,
}

fn default_concurrency() -> usize {
    2
}
fn default_timeout_s() -> f64 {
    600.0
}
fn default_attempts() -> u32 {
    4
}
fn default_backoff_s() -> f64 {
    1.0
}
fn default_cooldown_s() -> f64 {
    60.0
}
fn default_images_per_prompt() -> usize {
    4
}

/// A config file holding an `[images]` table among others (a PPO config).
#[derive(Deserialize)]
struct File {
    images: Option<ImagesConfig>,
}

impl ImagesConfig {
    /// Reads the `[images]` table of a TOML file (other tables are left to their
    /// readers); relative paths become relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        // The message carries the cause: the CLI prints error chains, so no `source`.
        let text = std::fs::read_to_string(path)
            .map_err(|e| PreferenceError::Config(format!("{}: {e}", path.display())))?;
        let mut cfg = Self::from_toml(&text, &path.display().to_string())?;
        cfg.rebase(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Parses the `[images]` table of `text` (`origin` names it in errors) and checks it
    /// ([`ImagesConfig::validate`]). Errors are one line: `origin: line N: message`.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let file: File = toml::from_str(text)
            .map_err(|e| PreferenceError::Config(crate::config::toml_error(&e, text, origin)))?;
        let cfg = file
            .images
            .ok_or_else(|| PreferenceError::Config(format!("{origin}: no [images] table")))?;
        cfg.validate()
            .map_err(|e| PreferenceError::Config(format!("{origin}: [images] {e}")))?;
        Ok(cfg)
    }

    /// Makes relative paths (cache, workflow, scorer files) relative to `dir`.
    pub fn rebase(&mut self, dir: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        if let Some(c) = &mut self.cache {
            join(c);
        }
        if let Some(c) = &mut self.comfyui {
            join(&mut c.workflow);
        }
        for s in &mut self.scorers {
            if let Some(p) = &mut s.path {
                join(p);
            }
            if let Some(p) = &mut s.mlp {
                join(p);
            }
        }
    }

    /// Refuses settings that cannot work, in one line.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.servers.is_empty() {
            return Err("servers: at least one server URL is needed".into());
        }
        if self.concurrency == 0 || self.attempts == 0 || self.images_per_prompt == 0 {
            return Err("concurrency, attempts and images_per_prompt must be at least 1".into());
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            return Err(format!(
                "timeout_s must be positive, not {}",
                self.timeout_s
            ));
        }
        let given = [
            ("a1111", self.a1111.is_some(), BackendKind::A1111),
            ("comfyui", self.comfyui.is_some(), BackendKind::ComfyUi),
            ("openai", self.openai.is_some(), BackendKind::OpenAiImages),
        ];
        for (table, set, kind) in given {
            if set && kind != self.backend {
                return Err(format!(
                    "[images.{table}] is set but backend is {:?}: remove it or change backend",
                    self.backend_name()
                ));
            }
        }
        if self.backend == BackendKind::ComfyUi && self.comfyui.is_none() {
            return Err("backend comfyui needs [images.comfyui] with a workflow file".into());
        }
        if self.scorers.is_empty() {
            return Err("no [[images.scorers]]: at least one scorer is needed".into());
        }
        let mut labels = BTreeSet::new();
        for (i, s) in self.scorers.iter().enumerate() {
            let at = format!("scorers[{i}] ({})", s.describe());
            let need = |field: &str, set: bool| {
                if set {
                    Ok(())
                } else {
                    Err(format!(
                        "{at}: `{field}` is required for kind {:?}",
                        s.kind_name()
                    ))
                }
            };
            let refuse = |field: &str, set: bool| {
                if set {
                    Err(format!(
                        "{at}: `{field}` does not apply to kind {:?}",
                        s.kind_name()
                    ))
                } else {
                    Ok(())
                }
            };
            match s.kind {
                ScorerKind::Http => {
                    need("url", s.url.is_some())?;
                    refuse("path", s.path.is_some())?;
                    refuse("mlp", s.mlp.is_some())?;
                }
                ScorerKind::Clip => {
                    need("path", s.path.is_some())?;
                    refuse("url", s.url.is_some())?;
                    refuse("name", s.name.is_some())?;
                    refuse("mlp", s.mlp.is_some())?;
                }
                ScorerKind::Aesthetic => {
                    need("path", s.path.is_some())?;
                    need("mlp", s.mlp.is_some())?;
                    refuse("url", s.url.is_some())?;
                    refuse("name", s.name.is_some())?;
                }
            }
            if !s.weight.is_finite() {
                return Err(format!("{at}: weight must be a finite number"));
            }
            if let Some(l) = s.label.as_ref().or(s.name.as_ref()) {
                if !labels.insert(l.clone()) {
                    return Err(format!(
                        "{at}: two scorers are named {l:?}; give one a `label`"
                    ));
                }
            }
        }
        Ok(())
    }

    fn backend_name(&self) -> &'static str {
        match self.backend {
            BackendKind::A1111 => "a1111",
            BackendKind::ComfyUi => "comfyui",
            BackendKind::OpenAiImages => "openai-images",
        }
    }

    /// The seeds of every prompt's images: `seed, seed + 1, ...`.
    pub fn seeds(&self) -> Vec<u64> {
        (0..self.images_per_prompt as u64)
            .map(|k| self.seed.wrapping_add(k))
            .collect()
    }

    /// The render pool's settings for these servers.
    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            servers: self.servers.clone(),
            concurrency: self.concurrency,
            timeout: Duration::from_secs_f64(self.timeout_s),
            attempts: self.attempts,
            backoff: Duration::from_secs_f64(self.backoff_s),
            cooldown: Duration::from_secs_f64(self.cooldown_s),
            ..PoolConfig::default()
        }
    }

    fn backend(&self) -> Result<Arc<dyn Backend>> {
        Ok(match self.backend {
            BackendKind::A1111 => Arc::new(A1111::new(self.a1111.clone().unwrap_or_default())),
            BackendKind::ComfyUi => {
                let c = self.comfyui.as_ref().ok_or_else(|| {
                    PreferenceError::Config("backend comfyui needs [images.comfyui]".into())
                })?;
                Arc::new(ComfyUi::from_file(
                    &c.workflow,
                    Duration::from_millis(c.poll_ms),
                )?)
            }
            BackendKind::OpenAiImages => Arc::new(
                OpenAiImages::new(self.openai.clone().unwrap_or_default())
                    .map_err(|e| PreferenceError::Config(format!("[images.openai] {e}")))?,
            ),
        })
    }
}

impl ScorerConfig {
    fn kind_name(&self) -> &'static str {
        match self.kind {
            ScorerKind::Http => "http",
            ScorerKind::Clip => "clip",
            ScorerKind::Aesthetic => "aesthetic",
        }
    }

    /// `http URL`, `clip PATH`, ...: how errors name this entry.
    fn describe(&self) -> String {
        let place = self
            .url
            .clone()
            .or_else(|| self.path.as_ref().map(|p| p.display().to_string()))
            .unwrap_or_default();
        format!("{} {place}", self.kind_name()).trim().to_string()
    }

    fn open(&self, timeout: Duration, device: &Device) -> Result<Box<dyn Scorer>> {
        let fail = |error| PreferenceError::Scorer {
            scorer: self.describe(),
            error,
        };
        let missing = |field: &str| {
            PreferenceError::Config(format!("scorer {}: no `{field}`", self.describe()))
        };
        Ok(match self.kind {
            ScorerKind::Http => Box::new(
                HttpScorer::connect(
                    self.url.as_deref().ok_or_else(|| missing("url"))?,
                    self.name.as_deref(),
                    timeout,
                )
                .map_err(fail)?,
            ),
            ScorerKind::Clip => Box::new(
                ClipScorer::load(self.path.as_deref().ok_or_else(|| missing("path"))?, device)
                    .map_err(fail)?,
            ),
            ScorerKind::Aesthetic => Box::new(
                AestheticScorer::load(
                    self.path.as_deref().ok_or_else(|| missing("path"))?,
                    self.mlp.as_deref().ok_or_else(|| missing("mlp"))?,
                    device,
                )
                .map_err(fail)?,
            ),
        })
    }
}

/// One text to judge: rendered as `text`, scored against `prompt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What the image server renders (the refined prompt, or the original).
    pub text: String,
    /// The user's prompt the images are judged against (preference models score an
    /// image given a prompt; a refined prompt is judged by what the user asked for).
    pub prompt: String,
}

/// Where a sample was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Rendering failed for good: no scorer saw the image.
    Render,
    /// The scorer with this label gave no score.
    Score(String),
}

/// One lost sample (an image, or one scorer's score of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleDrop {
    /// The image's seed.
    pub seed: u64,
    /// Rendering or which scorer.
    pub stage: Stage,
    /// A short cause (`timeout`, `server_error`, `not_finite`, ...).
    pub cause: String,
    /// The one-line message.
    pub message: String,
}

/// One image's scores, one per scorer in [`ImagePreference::labels`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageScores {
    /// The image's seed.
    pub seed: u64,
    /// Per scorer: the score, or `None` when that scorer dropped it.
    pub scores: Vec<Option<f32>>,
}

/// The verdict on one [`Item`].
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Every image that rendered (or whose scores were known), in seed order.
    pub images: Vec<ImageScores>,
    /// Per scorer: the mean score over the images it scored, `None` when it scored none.
    pub means: Vec<Option<f64>>,
    /// The weighted sum of `means` (the reward's score); `None` when a scorer has no mean.
    pub total: Option<f64>,
    /// Images scored by every scorer.
    pub kept: usize,
    /// Samples lost, with their causes.
    pub dropped: Vec<SampleDrop>,
}

impl Judgement {
    /// Counts this item's samples: each seed once in `render` (rendered or dropped),
    /// each (image, scorer) once in `score`.
    pub fn tally(&self, render: &mut FailureTally, score: &mut FailureTally) {
        render.ok(self.images.len());
        for d in &self.dropped {
            match d.stage {
                Stage::Render => render.fail(&d.cause, &d.message),
                Stage::Score(_) => score.fail(&d.cause, &d.message),
            }
        }
        score.ok(self
            .images
            .iter()
            .flat_map(|i| &i.scores)
            .filter(|s| s.is_some())
            .count());
    }
}

/// A scorer with its label and weight.
struct Weighted {
    scorer: Box<dyn Scorer>,
    label: String,
    weight: f64,
}

/// Renders and scores prompts: the reward of PPO and the measure of `prip eval images`.
pub struct ImagePreference {
    backend: Arc<dyn Backend>,
    pool: Pool,
    pool_config: PoolConfig,
    scorers: Vec<Weighted>,
    seeds: Vec<u64>,
}

impl std::fmt::Debug for ImagePreference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagePreference")
            .field("pool", &self.pool)
            .field("scorers", &self.labels())
            .field("seeds", &self.seeds)
            .finish()
    }
}

impl ImagePreference {
    /// Opens the pool (and cache) and every scorer of `cfg` (candle scorers on
    /// `device`). A scoring service is asked for its `/info` here, so a wrong URL or
    /// scorer name fails at start.
    pub fn open(cfg: &ImagesConfig, device: &Device) -> Result<Self> {
        cfg.validate()
            .map_err(|e| PreferenceError::Config(format!("[images] {e}")))?;
        let backend = cfg.backend()?;
        let pool_config = cfg.pool_config();
        let cache = match &cfg.cache {
            Some(dir) => Some(Cache::open(dir, pool_config.limits)?),
            None => None,
        };
        let pool = Pool::new(backend.clone(), pool_config.clone(), cache)?;
        let mut scorers: Vec<Weighted> = Vec::new();
        for s in &cfg.scorers {
            let scorer = s.open(pool_config.timeout, device)?;
            let label = s.label.clone().unwrap_or_else(|| scorer.name().to_string());
            if scorers.iter().any(|w| w.label == label) {
                return Err(PreferenceError::Config(format!(
                    "[images] two scorers are named {label:?}; give one a `label`"
                )));
            }
            scorers.push(Weighted {
                scorer,
                label,
                weight: s.weight,
            });
        }
        Ok(Self {
            backend,
            pool,
            pool_config,
            scorers,
            seeds: cfg.seeds(),
        })
    }

    /// The scorers' labels, in the order of every per-scorer list.
    pub fn labels(&self) -> Vec<String> {
        self.scorers.iter().map(|s| s.label.clone()).collect()
    }

    /// The scorers' weights, in [`ImagePreference::labels`] order.
    pub fn weights(&self) -> Vec<f64> {
        self.scorers.iter().map(|s| s.weight).collect()
    }

    /// `(label, version)` of every scorer, for reports.
    pub fn versions(&self) -> Vec<(String, String)> {
        self.scorers
            .iter()
            .map(|s| (s.label.clone(), s.scorer.version().to_string()))
            .collect()
    }

    /// The seeds every prompt is rendered under.
    pub fn seeds(&self) -> &[u64] {
        &self.seeds
    }

    /// The render backend's name and settings key (what decides an image besides
    /// prompt and seed), for caches that depend on the images.
    pub fn render_key(&self) -> (String, String) {
        (self.backend.name().to_string(), self.backend.settings_key())
    }

    /// Renders and scores every item (see [`ImagePreference::judge_with`], with no
    /// score known in advance).
    pub fn judge(&self, items: &[Item]) -> Vec<Judgement> {
        self.judge_with(items, |_, _, _| None)
    }

    /// Renders every item under every seed in one pool call and scores each item's
    /// images per scorer in one call; returns one [`Judgement`] per item, in order.
    ///
    /// `known(item, seed, label)` gives a score already had (a resumed evaluation's
    /// cache): an image whose every score is known is neither rendered nor scored, and
    /// a scorer whose score is known does not score it again.
    pub fn judge_with(
        &self,
        items: &[Item],
        known: impl Fn(&Item, u64, &str) -> Option<f32>,
    ) -> Vec<Judgement> {
        let n = self.scorers.len();
        // Per item, per seed: the scores known, one per scorer.
        let had: Vec<Vec<Vec<Option<f32>>>> = items
            .iter()
            .map(|item| {
                self.seeds
                    .iter()
                    .map(|&seed| {
                        self.scorers
                            .iter()
                            .map(|s| known(item, seed, &s.label).filter(|v| v.is_finite()))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let jobs: Vec<RenderJob> = items
            .iter()
            .zip(&had)
            .map(|(item, had)| RenderJob {
                prompt: item.text.clone(),
                seeds: self
                    .seeds
                    .iter()
                    .zip(had)
                    .filter(|(_, h)| h.iter().any(Option::is_none))
                    .map(|(s, _)| *s)
                    .collect(),
            })
            .collect();
        let rendered = if jobs.iter().all(|j| j.seeds.is_empty()) {
            Default::default()
        } else {
            self.pool.render(&jobs)
        };
        items
            .iter()
            .zip(&had)
            .zip(&jobs)
            .map(|((item, had), job)| {
                let mut dropped = Vec::new();
                // Images of this item that rendered, and their seeds, in seed order.
                let mut pictures: Vec<(u64, &Picture)> = Vec::new();
                for &seed in &job.seeds {
                    if let Some(img) = rendered.get(&item.text, seed) {
                        pictures.push((seed, &img.picture));
                    } else if let Some(d) = rendered
                        .dropped
                        .iter()
                        .find(|d| d.seed == seed && d.prompt == item.text)
                    {
                        dropped.push(SampleDrop {
                            seed,
                            stage: Stage::Render,
                            cause: d.cause.to_string(),
                            message: d.message.clone(),
                        });
                    }
                }
                let mut images: Vec<ImageScores> = self
                    .seeds
                    .iter()
                    .zip(had)
                    .filter(|(s, h)| {
                        h.iter().all(Option::is_some) || pictures.iter().any(|p| p.0 == **s)
                    })
                    .map(|(&seed, h)| ImageScores {
                        seed,
                        scores: h.clone(),
                    })
                    .collect();
                for (k, w) in self.scorers.iter().enumerate() {
                    let todo: Vec<(u64, &Picture)> = pictures
                        .iter()
                        .filter(|(seed, _)| {
                            images
                                .iter()
                                .any(|i| i.seed == *seed && i.scores[k].is_none())
                        })
                        .copied()
                        .collect();
                    if todo.is_empty() {
                        continue;
                    }
                    let batch: Vec<Picture> = todo.iter().map(|t| t.1.clone()).collect();
                    let outcomes = score_checked(w.scorer.as_ref(), &item.prompt, &batch);
                    for ((seed, _), outcome) in todo.iter().zip(outcomes) {
                        match outcome {
                            Ok(v) => {
                                if let Some(i) = images.iter_mut().find(|i| i.seed == *seed) {
                                    i.scores[k] = Some(v);
                                }
                            }
                            Err(d) => dropped.push(SampleDrop {
                                seed: *seed,
                                stage: Stage::Score(w.label.clone()),
                                cause: d.cause.to_string(),
                                message: d.message,
                            }),
                        }
                    }
                }
                let means: Vec<Option<f64>> = (0..n)
                    .map(|k| {
                        let got: Vec<f64> = images
                            .iter()
                            .filter_map(|i| i.scores[k])
                            .map(f64::from)
                            .collect();
                        (!got.is_empty()).then(|| got.iter().sum::<f64>() / got.len() as f64)
                    })
                    .collect();
                let total = means
                    .iter()
                    .zip(&self.scorers)
                    .map(|(m, w)| m.map(|m| m * w.weight))
                    .sum::<Option<f64>>();
                let kept = images
                    .iter()
                    .filter(|i| i.scores.iter().all(Option::is_some))
                    .count();
                dropped.sort_by_key(|d| d.seed);
                Judgement {
                    images,
                    means,
                    total,
                    kept,
                    dropped,
                }
            })
            .collect()
    }

    /// Preflight for a run that judges `prompts_per_step` prompts per step within
    /// `step_timeout`: renders one probe image on every server (bypassing the cache,
    /// one try each, all servers at once), times it, and refuses, in one line, a batch
    /// that needs more than the step timeout at that speed:
    /// `prompts_per_step x images_per_prompt x per-image seconds / (servers x concurrency)`.
    /// The probe includes any warm-up of the server's first request, so the estimate
    /// errs on the slow side. Returns the mean seconds per probe image.
    pub fn check_capacity(&self, prompts_per_step: usize, step_timeout: Duration) -> Result<f64> {
        let servers = self.pool_config.servers.clone();
        let probe = |url: &String| -> Result<f64> {
            let cfg = PoolConfig {
                servers: vec![url.clone()],
                attempts: 1,
                ..self.pool_config.clone()
            };
            let pool = Pool::new(self.backend.clone(), cfg, None)?;
            let job = RenderJob {
                prompt: "a photograph of an astronaut riding a horse".into(),
                seeds: vec![self.seeds.first().copied().unwrap_or(0)],
            };
            let t = Instant::now();
            let out = pool.render(std::slice::from_ref(&job));
            let secs = t.elapsed().as_secs_f64();
            match out.dropped.first() {
                Some(d) => Err(PreferenceError::Probe {
                    server: url.clone(),
                    reason: d.message.clone(),
                }),
                None if out.images.is_empty() => Err(PreferenceError::Probe {
                    server: url.clone(),
                    reason: "no image".into(),
                }),
                None => Ok(secs),
            }
        };
        let times: Vec<Result<f64>> = std::thread::scope(|s| {
            let handles: Vec<_> = servers.iter().map(|u| s.spawn(move || probe(u))).collect();
            handles
                .into_iter()
                .zip(&servers)
                .map(|(h, u)| {
                    h.join().unwrap_or_else(|_| {
                        Err(PreferenceError::Probe {
                            server: u.clone(),
                            reason: "the probe thread panicked".into(),
                        })
                    })
                })
                .collect()
        });
        let times = times.into_iter().collect::<Result<Vec<f64>>>()?;
        let per_image = times.iter().sum::<f64>() / times.len().max(1) as f64;
        let k = self.seeds.len();
        let lanes = servers.len() * self.pool_config.concurrency;
        let needed = prompts_per_step as f64 * k as f64 * per_image / lanes.max(1) as f64;
        let limit = step_timeout.as_secs_f64();
        tracing::info!(
            per_image_s = per_image,
            needed_s = needed,
            limit_s = limit,
            "image preference preflight"
        );
        if needed > limit {
            return Err(PreferenceError::Capacity(format!(
                "a batch of {prompts_per_step} prompts x {k} images needs about {needed:.0} s on {} \
                 servers ({per_image:.2} s per image, {} calls in flight each); the step timeout is \
                 {limit:.0} s: add servers, lower the prompts per step or images_per_prompt, or \
                 raise the step timeout",
                servers.len(),
                self.pool_config.concurrency
            )));
        }
        Ok(per_image)
    }
}
