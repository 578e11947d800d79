//! The three training stages as one entry point: load the checkpoint, build the
//! objective, run the loop.

use prip_core::checkpoint::{Checkpoint, BASE_SYSTEM};
use prip_core::device::DeviceSpec;
use prip_core::store::ModelStore;

use crate::config::TrainConfig;
use crate::distributed::{agree, open_sync, World};
use crate::image::ImageEncoder;
use crate::objective::{DecoderObjective, EncoderObjective, Parts};
use crate::run::{prepare_out, train_with, Start, Summary};
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
    let world = World::from_env()?;
    let device = rank_device(cfg.device.parse::<DeviceSpec>()?, &world)?;
    let mut sync = open_sync(&world, &device)?;
    // Rank 0 makes the output checkpoint; the others open it once it is there.
    let made = if world.is_writer() {
        Checkpoint::find(&cfg.base, store)
            .map_err(TrainError::from)
            .and_then(|base| prepare_out(&base, &cfg.out))
            .map(|_| ())
    } else {
        Ok(())
    };
    agree(sync.as_mut(), &device, made)?;
    let out = Checkpoint::open(&cfg.out)?;
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
            train_with(
                &mut obj,
                &out,
                &name,
                &cfg.train,
                &cfg.run,
                &cfg.optim,
                start,
                progress,
                sync.as_mut(),
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
            train_with(
                &mut obj,
                &out,
                &name,
                &cfg.train,
                &cfg.run,
                &cfg.optim,
                start,
                progress,
                sync.as_mut(),
            )
        }
    }
}

/// The device of this process: the configured one for a single process; in a
/// data-parallel run, GPU `LOCAL_RANK` when the config says `auto` or `cuda:N`, the CPU
/// when it says `cpu`.
fn rank_device(spec: DeviceSpec, world: &World) -> Result<candle_core::Device> {
    let spec = match spec {
        DeviceSpec::Cpu => DeviceSpec::Cpu,
        _ if world.is_distributed() => DeviceSpec::Cuda(world.local_rank),
        other => other,
    };
    Ok(spec.open()?)
}
