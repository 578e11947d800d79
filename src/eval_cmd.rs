//! `prip eval text`: the text-only quality report (see prip_trainer::eval).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use prip_core::store::ModelStore;
use prip_trainer::eval::{evaluate, markdown, EvalOptions, Report, PRIP};

/// Evaluations.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Score a model's refinements of held-out prompts against baselines and ablations.
    Text(TextArgs),
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

/// Runs `prip eval ...`.
pub fn run(cmd: EvalCommand) -> anyhow::Result<ExitCode> {
    let EvalCommand::Text(a) = cmd;
    let opts = EvalOptions {
        prompts: a.prompts,
        model: a.model,
        no_pivot_model: a.no_pivot_model,
        random_target_model: a.random_target_model,
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
