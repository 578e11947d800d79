//! Training configuration (a TOML file; examples in examples/train/).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::objective::{DecoderSettings, TargetChoice};
use crate::optim::OptimConfig;
use crate::ppo::PpoSettings;
use crate::preference::ImagesConfig;
use crate::reward::RewardConfig;
use crate::{Result, TrainError};

/// One training run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The checkpoint to start from (a name like "default" or a directory); its
    /// manifest and trained parts are copied to `out` when `out` has none yet.
    pub base: String,
    /// Output checkpoint directory (relative paths are relative to the config file).
    pub out: PathBuf,
    /// Corpus files (JSONL), read in order.
    pub train: Vec<PathBuf>,
    /// A Hugging Face CLIP directory (config.json, model.safetensors) whose image
    /// embeddings are the pivots of `image` records; its width must be `d_pivot`.
    #[serde(default)]
    pub image_encoder: Option<PathBuf>,
    /// Device: auto, cpu or cuda:N.
    #[serde(default = "default_device")]
    pub device: String,
    /// Steps, batches, checkpoints.
    #[serde(default)]
    pub run: RunSettings,
    /// Optimiser.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Encoder warm-up.
    #[serde(default)]
    pub encoder: EncoderSettings,
    /// Decoder warm-up and adaptation.
    #[serde(default)]
    pub decoder: DecoderSettings,
    /// PPO (`prip train ppo`; `train` then lists user-prompt files).
    #[serde(default)]
    pub ppo: PpoSettings,
    /// The reward PPO maximises.
    #[serde(default)]
    pub reward: RewardConfig,
    /// Image servers and scorers of the image-preference reward (`[reward] kind =
    /// "images"`).
    #[serde(default)]
    pub images: Option<ImagesConfig>,
}

fn default_device() -> String {
    "cpu".into()
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSettings {
    /// Passes over the corpus (ignored when `steps` is set).
    pub epochs: f64,
    /// Exact number of optimiser steps.
    pub steps: Option<usize>,
    /// Records per step.
    pub batch_size: usize,
    /// Seed of data order, noise and initialisation.
    pub seed: u64,
    /// Write a resumable snapshot every this many steps.
    pub save_every: usize,
    /// Snapshots kept.
    pub keep_snapshots: usize,
    /// Records held for shuffling (memory bound of the streaming reader).
    pub shuffle_buffer: usize,
    /// Share of unusable corpus lines that stops the run.
    pub max_bad_share: f64,
    /// Precision of the exported head and adapters: "f32" or "f16" (half the size;
    /// snapshots for resuming always keep f32).
    pub export_dtype: ExportDtype,
}

/// Precision of exported weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportDtype {
    /// Full precision.
    #[default]
    F32,
    /// Half precision.
    F16,
}

impl ExportDtype {
    /// The candle dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            ExportDtype::F32 => candle_core::DType::F32,
            ExportDtype::F16 => candle_core::DType::F16,
        }
    }
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            epochs: 1.0,
            steps: None,
            batch_size: 8,
            seed: 0,
            save_every: 50,
            keep_snapshots: 2,
            shuffle_buffer: 4096,
            max_bad_share: 0.05,
            export_dtype: ExportDtype::F32,
        }
    }
}

/// `[encoder]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncoderSettings {
    /// Which candidate to regress: "best" (the paper) or "random" (its ablation).
    pub target: TargetChoice,
}

/// A TOML error in one line, with the line it points at: `origin: line N: message`
/// (toml's own rendering spans several lines; its message alone lacks the place).
pub(crate) fn toml_error(e: &toml::de::Error, text: &str, origin: &str) -> String {
    let line = e
        .span()
        .map(|s| {
            format!(
                " line {}:",
                text.get(..s.start).unwrap_or(text).matches('\n').count() + 1
            )
        })
        .unwrap_or_default();
    let msg = e.message().lines().next().unwrap_or("").trim();
    format!("{origin}:{line} {msg}")
}

/// `a/b/../c` -> `a/c`, without touching the file system (the output may not exist yet).
fn tidy(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl TrainConfig {
    /// Reads a config file; relative paths inside become relative to its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let mut cfg: TrainConfig = toml::from_str(&text)
            .map_err(|e| TrainError::Config(toml_error(&e, &text, &path.display().to_string())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        cfg.rebase(dir);
        cfg.validate()
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Makes relative paths relative to `dir`.
    pub fn rebase(&mut self, dir: &Path) {
        self.out = tidy(&dir.join(&self.out));
        if let Some(p) = &mut self.image_encoder {
            *p = tidy(&dir.join(&*p));
        }
        for f in &mut self.train {
            *f = tidy(&dir.join(&*f));
        }
        self.reward.rebase(dir);
        if let Some(images) = &mut self.images {
            images.rebase(dir);
        }
        let base = tidy(&dir.join(&self.base));
        if base.join(prip_core::checkpoint::MANIFEST).is_file() {
            self.base = base.display().to_string();
        }
    }

    /// Refuses settings that cannot train.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let r = &self.run;
        if r.batch_size == 0 || r.save_every == 0 || r.keep_snapshots == 0 {
            return Err("batch_size, save_every and keep_snapshots must be at least 1".into());
        }
        if r.steps == Some(0) || (r.steps.is_none() && (r.epochs.is_nan() || r.epochs <= 0.0)) {
            return Err("train for at least one step (steps or epochs > 0)".into());
        }
        if !(0.0..=1.0).contains(&r.max_bad_share) {
            return Err("max_bad_share must be within 0..1".into());
        }
        if self.optim.lr.is_nan() || self.optim.lr <= 0.0 || !self.optim.lr.is_finite() {
            return Err("optim.lr must be a positive number".into());
        }
        if self.decoder.noise_std.is_nan() || self.decoder.noise_std < 0.0 {
            return Err("decoder.noise_std must be >= 0".into());
        }
        self.ppo.validate()?;
        match (&self.reward, &self.images) {
            (RewardConfig::Images, None) => {
                return Err(
                    "reward kind \"images\" needs an [images] table (servers and scorers)".into(),
                )
            }
            (_, Some(images)) => images.validate().map_err(|e| format!("[images] {e}"))?,
            _ => {}
        }
        if self.train.is_empty() {
            return Err("train lists no corpus files".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_error_names_its_line() {
        let text = "base = \"b\"\nout = \"o\"\ntrain = [\"t\"]\n[ppo]\nepochs = \"two\"\n";
        let e = toml::from_str::<TrainConfig>(text).unwrap_err();
        let line = toml_error(&e, text, "c.toml");
        assert!(line.starts_with("c.toml: line 5:"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn paths_are_relative_to_the_config_and_tidied() {
        assert_eq!(
            tidy(Path::new("examples/train/../../target/x")),
            PathBuf::from("target/x")
        );
        assert_eq!(tidy(Path::new("../a/./b")), PathBuf::from("../a/b"));
        assert_eq!(tidy(Path::new("/a/../b")), PathBuf::from("/b"));
    }
}
