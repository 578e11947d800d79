//! `prip train`: the warm-up stages and per-system adaptation.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use prip_core::store::ModelStore;
use prip_trainer::config::TrainConfig;
use prip_trainer::distributed::{launch, without_flag, Gpus, LaunchPlan, World};
use prip_trainer::ppo;
use prip_trainer::recipe::{make_default_data, RecipeOptions};
use prip_trainer::run::Start;
use prip_trainer::stage::{self, Stage};

/// Training stages.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Warm up the Preference Encoder: E(user prompt) regresses the pivot of the best-scored candidate.
    WarmupEncoder(StageArgs),
    /// Warm up the Prompt Decoder: write the system prompt from its pivot (projection + base LoRA).
    WarmupDecoder(StageArgs),
    /// Write the packaged default's training data (preferences, system prompts, held-out prompts).
    MakeData {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the composition.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Convert a DiffusionDB download (metadata.parquet, or the unzipped images/part-NNNNNN
    /// folders) into a system-language corpus.
    ImportDiffusiondb {
        /// The dataset root, its images/ folder, or a .parquet metadata file.
        root: PathBuf,
        /// Output JSONL.
        #[arg(long)]
        out: PathBuf,
        /// Name each record's image (for image pivots); records without an image file are skipped.
        #[arg(long)]
        images: bool,
    },
    /// The third stage: PPO on the Preference Encoder with a reward of its refinements
    /// (text-side stand-in, a keyword, or image preference scores), the decoder frozen.
    Ppo(PpoArgs),
    /// Train one generation system's decoder LoRA (selectable with `prip refine --system NAME`).
    Adapt {
        /// System name, e.g. sd15, sdxl, flux.
        #[arg(long)]
        system: String,
        #[command(flatten)]
        args: StageArgs,
    },
}

/// Flags shared by every stage.
#[derive(Debug, Args)]
pub struct StageArgs {
    /// Training config (TOML; see examples/train/).
    #[arg(value_name = "CONFIG")]
    pub train_config: PathBuf,
    /// Continue the newest snapshot of an interrupted run.
    #[arg(long, conflicts_with = "restart")]
    pub resume: bool,
    /// Discard an interrupted run of this stage and start over.
    #[arg(long)]
    pub restart: bool,
    /// Data-parallel training on this machine's GPUs (all, or the first N): one process
    /// per GPU, gradients averaged with NCCL. Several machines: set NNODES, NODE_RANK,
    /// MASTER_ADDR (and MASTER_PORT) on each, as for torchrun.
    #[arg(long, value_name = "all|N")]
    pub gpus: Option<Gpus>,
}

/// Flags of `prip train ppo`.
#[derive(Debug, Args)]
pub struct PpoArgs {
    /// Training config (TOML with [ppo] and [reward]; see examples/train/default/ppo.toml).
    #[arg(value_name = "CONFIG")]
    pub train_config: PathBuf,
    /// Continue the newest snapshot of an interrupted run.
    #[arg(long, conflicts_with = "restart")]
    pub resume: bool,
    /// Discard an interrupted run and start over.
    #[arg(long)]
    pub restart: bool,
}

/// " (resumed at step N)" for a resumed run.
fn resumed_note(from: Option<usize>) -> String {
    from.map(|r| format!(" (resumed at step {r})"))
        .unwrap_or_default()
}

fn start_of(resume: bool, restart: bool) -> Start {
    match (resume, restart) {
        (true, _) => Start::Resume,
        (_, true) => Start::Restart,
        _ => Start::Fresh,
    }
}

fn run_ppo(args: PpoArgs) -> anyhow::Result<ExitCode> {
    let cfg = TrainConfig::load(&args.train_config)?;
    let store = ModelStore::from_env()?;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut reward = ppo::open_reward(&cfg, &store)?;
    let s = ppo::train(
        &cfg,
        &store,
        reward.as_mut(),
        start_of(args.resume, args.restart),
        progress,
    )?;
    if s.resumed_from == Some(s.steps) {
        println!(
            "ppo: the run had already finished at step {}; nothing to resume (checkpoint: {})",
            s.steps,
            cfg.out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let resumed = resumed_note(s.resumed_from);
    println!(
        "ppo: {} steps{resumed}, {} reward {:.4} -> {:.4}, KL {:.3}, {} steps skipped, {:.0} s",
        s.steps,
        reward.name(),
        s.first_reward,
        s.last_reward,
        s.last_kl,
        s.skipped_steps,
        s.seconds
    );
    println!("checkpoint: {}", cfg.out.display());
    println!(
        "metrics: {}  plots: {}/{{reward,kl,loss}}.svg",
        s.metrics.display(),
        s.run_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `prip train ...`.
pub fn run(cmd: TrainCommand) -> anyhow::Result<ExitCode> {
    let (stage, args) = match cmd {
        TrainCommand::MakeData { out, seed } => {
            let store = ModelStore::from_env()?;
            let mut opts = RecipeOptions::packaged(out.clone());
            opts.seed = seed;
            let r = make_default_data(&store, &opts)?;
            println!(
                "{}: {} preference records, {} system prompts, {} held-out prompts",
                out.display(),
                r.preferences,
                r.system,
                r.heldout
            );
            return Ok(ExitCode::SUCCESS);
        }
        TrainCommand::ImportDiffusiondb { root, out, images } => {
            let r = prip_trainer::diffusiondb::import(&root, &out, images)?;
            println!(
                "{}: {} records from {} images in {} parts ({} repeated prompts, {} unusable, {} unreadable parts skipped)",
                out.display(),
                r.written,
                r.images,
                r.parts,
                r.duplicates,
                r.unusable,
                r.bad_parts
            );
            return Ok(ExitCode::SUCCESS);
        }
        TrainCommand::Ppo(a) => return run_ppo(a),
        TrainCommand::WarmupEncoder(a) => (Stage::WarmupEncoder, a),
        TrainCommand::WarmupDecoder(a) => (Stage::WarmupDecoder, a),
        TrainCommand::Adapt { system, args } => (Stage::Adapt { system }, args),
    };
    let cfg = TrainConfig::load(&args.train_config)?;
    if let Some(gpus) = args.gpus {
        launch_gpus(gpus)?;
        return Ok(ExitCode::SUCCESS);
    }
    let start = start_of(args.resume, args.restart);
    let store = ModelStore::from_env()?;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let s = stage::run(&stage, &cfg, &store, start, progress)?;
    if World::from_env()?.rank != 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let resumed = resumed_note(s.resumed_from);
    println!(
        "{}: {} steps{resumed}, loss {:.4} -> {:.4}, {:.0} tokens/s, {} of {} corpus lines skipped, {:.0} s",
        stage.run_name(),
        s.steps,
        s.first_loss,
        s.last_loss,
        s.tokens_per_s,
        s.bad.bad,
        s.bad.seen,
        s.seconds
    );
    println!("checkpoint: {}", cfg.out.display());
    println!(
        "metrics: {}  plot: {}",
        s.metrics.display(),
        s.plot.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `--gpus`: starts this same command once per GPU (without `--gpus`), with torchrun's
/// variables set, and waits for all of them.
fn launch_gpus(gpus: Gpus) -> anyhow::Result<()> {
    if std::env::var_os("WORLD_SIZE").is_some() {
        anyhow::bail!(
            "--gpus starts one process per GPU itself; with WORLD_SIZE set, start each process without --gpus"
        );
    }
    let have =
        prip_core::device::cuda_device_count().map_err(|e| anyhow::anyhow!("--gpus: {e}"))?;
    let n = match gpus {
        Gpus::All => have,
        Gpus::Count(n) => n,
    };
    if n == 0 || n > have {
        anyhow::bail!("--gpus {n}: this machine has {have} GPU(s)");
    }
    let plan = LaunchPlan::new(n, |k| std::env::var(k).ok())?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let exe = std::env::current_exe()?;
    launch(&exe, &without_flag(&args, "--gpus"), &plan)?;
    Ok(())
}
