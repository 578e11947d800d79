//! The three training stages as one entry point: load the checkpoint, build the
//! objective, run the loop.

use prip_core::checkpoint::{Checkpoint, BASE_SYSTEM};
use prip_core::device::DeviceSpec;
use prip_core::store::ModelStore;

use crate::config::TrainConfig;
use crate::image::ImageEncoder;
use crate::objective::{DecoderObjective, EncoderObjective, Parts};
use crate::run::{prepare_out, train, Start, Summary};
use crate::{Result, TrainError};

/// A training stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Encoder warm-up: E(u) regresses the best candidate's pivot (Eq. 6).
    WarmupEncoder,
    /// Decoder warm-up: projection and the base LoRA learn to write s from its pivot (Eq. 7).
    WarmupDecoder,
    /// Per-system adaptation: one LoRA of the decoder for a generation system.
    Adapt {
        /// System name (sd15, sdxl, flux, ...).
        system: String,
    },
}

impl Stage {
    /// Name of the stage's run directory under `<out>/runs/`.
    pub fn run_name(&self) -> String {
        match self {
            Stage::WarmupEncoder => "warmup-encoder".into(),
            Stage::WarmupDecoder => "warmup-decoder".into(),
            Stage::Adapt { system } => format!("adapt-{system}"),
        }
    }
}

/// Runs `stage` as configured, fetching base models through `store`.
pub fn run(
    stage: &Stage,
    cfg: &TrainConfig,
    store: &ModelStore,
    start: Start,
    progress: bool,
) -> Result<Summary> {
    if let Stage::Adapt { system } = stage {
        let ok = !system.is_empty()
            && system
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok || system == BASE_SYSTEM {
            return Err(TrainError::Config(format!(
                "system name {system:?}: use letters, digits, - and _, and not {BASE_SYSTEM:?} (that is the warm-up's LoRA)"
            )));
        }
    }
    let device = cfg.device.parse::<DeviceSpec>()?.open()?;
    let base = Checkpoint::find(&cfg.base, store)?;
    let out = prepare_out(&base, &cfg.out)?;
    let name = stage.run_name();
    let image = cfg
        .image_encoder
        .as_deref()
        .map(|dir| ImageEncoder::load(dir, &device))
        .transpose()?;
    match stage {
        Stage::WarmupEncoder => {
            let mut parts = Parts::open(out.clone(), store, true, None, &device)?;
            parts.image = image.clone();
            let mut obj = EncoderObjective::new(&parts, cfg.encoder.target)?;
            train(
                &mut obj, &out, &name, &cfg.train, &cfg.run, &cfg.optim, start, progress,
            )
        }
        Stage::WarmupDecoder | Stage::Adapt { .. } => {
            let (system, projection) = match stage {
                Stage::Adapt { system } => (system.as_str(), false),
                _ => (BASE_SYSTEM, true),
            };
            let mut parts = Parts::open(out.clone(), store, true, Some(system), &device)?;
            parts.image = image.clone();
            let mut obj = DecoderObjective::new(&parts, system, projection, cfg.decoder.clone())?;
            train(
                &mut obj, &out, &name, &cfg.train, &cfg.run, &cfg.optim, start, progress,
            )
        }
    }
}
