//! `prip eval text`: the text-only quality report (see prip_trainer::eval).
//! `prip eval images`: the paper's image evaluation (see prip_trainer::eval_images).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use prip_core::device::DeviceSpec;
use prip_core::store::ModelStore;
use prip_trainer::eval::{evaluate, markdown, EvalOptions, Report, PRIP};
use prip_trainer::eval_images::{self, evaluate_images, ImagesEvalOptions, System};
use prip_trainer::preference::ImagesConfig;

/// Evaluations.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Score a model's refinements of held-out prompts against baselines and ablations.
    Text(TextArgs),
    /// The paper's image evaluation: render every system's prompts on image servers,
    /// score them, and write a Table 1 report with paired tests against PRIP.
    Images(ImagesArgs),
}

/// Flags of `prip eval images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Prompt set: a directory in the HPSv2 benchmark layout (anime.json,
    /// concept-art.json, paintings.json, photo.json), or a .txt / .jsonl file.
    #[arg(long)]
    pub prompts: PathBuf,
    /// A TOML file with an [images] table: backend, servers, images_per_prompt, seed and
    /// [[images.scorers]] (a PPO config works as it is).
    #[arg(long)]
    pub images: PathBuf,
    /// Output directory: the caches (resume by running the same command again) and
    /// report.md, report.json, scores.svg.
    #[arg(long)]
    pub out: PathBuf,
    /// A PRIP checkpoint, `[LABEL=]NAME_OR_DIR` (label PRIP when absent); repeatable.
    #[arg(long = "model", value_name = "[LABEL=]MODEL")]
    pub models: Vec<String>,
    /// A baseline refiner, `NAME=COMMAND`: run with `sh -c`, a category's prompts on
    /// stdin one per line, one refined prompt per line on stdout; repeatable.
    #[arg(long = "baseline", value_name = "NAME=COMMAND")]
    pub baselines: Vec<String>,
    /// The system every other is compared with (default: the first --model, else none).
    #[arg(long)]
    pub reference: Option<String>,
    /// Only the first N prompts of each category.
    #[arg(long)]
    pub limit: Option<usize>,
    /// PRIP's sampling seed (each prompt refines under this seed plus a hash of it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts rendered and scored per batch (and saved to the score cache together).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Bootstrap resamples behind the intervals.
    #[arg(long, default_value_t = NonZeroUsize::new(2000).expect("non-zero"))]
    pub resamples: NonZeroUsize,
    /// Share of failed samples (renders or scores) that stops the run, 0..1.
    #[arg(long, default_value_t = 0.2)]
    pub max_failed_share: f64,
    /// Device of the PRIP refiners and candle scorers (auto, cpu, cuda:N).
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Flags of `prip eval text`.
#[derive(Debug, Args)]
pub struct TextArgs {
    /// Held-out prompts, one per line (the default recipe writes target/prip-default/data/heldout.txt).
    #[arg(long)]
    pub prompts: PathBuf,
    /// The PRIP model to evaluate.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// A model trained by the "decoder without pivot" ablation.
    #[arg(long)]
    pub no_pivot_model: Option<String>,
    /// A model whose encoder was trained on random instead of best-scored targets.
    #[arg(long)]
    pub random_target_model: Option<String>,
    /// Another PRIP checkpoint as a row compared with --model, `LABEL=MODEL` (e.g.
    /// `"without RL=default"` beside a PPO-trained --model); repeatable.
    #[arg(long, value_name = "LABEL=MODEL", value_parser = parse_labelled)]
    pub compare: Vec<(String, String)>,
    /// Only the first N prompts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Sampling seed of the first prompt (prompt i uses seed + i).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Bootstrap resamples behind the intervals of the differences from PRIP (checked
    /// here, before a half-hour evaluation, rather than after it).
    #[arg(long, default_value_t = NonZeroUsize::new(2000).expect("non-zero"))]
    pub resamples: NonZeroUsize,
    /// Also write the report (scores, sample outputs, differences) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `LABEL=MODEL`, both non-empty.
fn parse_labelled(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((l, m)) if !l.trim().is_empty() && !m.trim().is_empty() => {
            Ok((l.trim().to_string(), m.trim().to_string()))
        }
        _ => Err(format!("{s:?}: expected LABEL=MODEL")),
    }
}

/// Runs `prip eval ...`.
pub fn run(cmd: EvalCommand) -> anyhow::Result<ExitCode> {
    let a = match cmd {
        EvalCommand::Text(a) => a,
        EvalCommand::Images(a) => return run_images(a),
    };
    let opts = EvalOptions {
        prompts: a.prompts,
        model: a.model,
        no_pivot_model: a.no_pivot_model,
        random_target_model: a.random_target_model,
        compare: a.compare,
        limit: a.limit,
        seed: a.seed,
        batch: a.batch,
    };
    let scores = evaluate(&opts, &ModelStore::from_env()?)?;
    let report = Report::new(scores, PRIP, a.resamples.get(), a.seed)?;
    print!("{}", markdown(&report));
    if let Some(path) = a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_images(a: ImagesArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&a.max_failed_share) {
        anyhow::bail!(
            "--max-failed-share {} is not a share between 0 and 1",
            a.max_failed_share
        );
    }
    let mut systems = Vec::new();
    for m in &a.models {
        systems.push(System::model(m)?);
    }
    for b in &a.baselines {
        systems.push(System::baseline(b)?);
    }
    let opts = ImagesEvalOptions {
        prompts: a.prompts,
        images: ImagesConfig::load(&a.images)?,
        out: a.out,
        systems,
        reference: a.reference,
        limit: a.limit,
        seed: a.seed,
        batch: a.batch.max(1),
        resamples: a.resamples.get(),
        max_failed_share: a.max_failed_share,
        device: a.device.parse::<DeviceSpec>()?,
        progress: true,
    };
    let report = evaluate_images(&opts, &ModelStore::from_env()?)?;
    print!("{}", eval_images::markdown(&report));
    eprintln!(
        "wrote {}, report.json and scores.svg",
        opts.out.join("report.md").display()
    );
    Ok(ExitCode::SUCCESS)
}
