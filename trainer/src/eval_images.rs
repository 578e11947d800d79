//! `prip eval images`: the paper's image evaluation (Table 1) against any image backend
//! and preference scorer.
//!
//! Protocol: a prompt set (the HPSv2 benchmark's four categories, or any prompt file as
//! one category), `images_per_prompt` images per prompt under the fixed seeds of the
//! `[images]` table, and systems compared on the same prompts and seeds: the prompt as
//! typed (`none`), PRIP checkpoints, and baseline refiners given as shell commands
//! (Promptist, MagicPrompt, an LLM: prompts on stdin, refined prompts on stdout). The
//! report is the mean score per category per scorer per system with the average over
//! categories (Table 1's layout), and each system against the reference (PRIP): a
//! paired t-test and a paired bootstrap interval of the mean difference per prompt.
//!
//! Resumable: refinements are cached per system (`<out>/refined/*.jsonl`), images in
//! the pool's image cache (`<out>/images` unless the config names one), and scores in
//! `<out>/scores.jsonl`, keyed by system, prompt, seed and scorer (and checked against
//! the rendered text and the render settings), so a rerun renders, scores and refines
//! nothing it already has. A full run is 3,200 prompts x 4 images x each system.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use indicatif::{ProgressBar, ProgressStyle};
use prip_core::device::DeviceSpec;
use prip_core::store::ModelStore;
use prip_core::{RefineRequest, Refiner, RefinerOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::eval::{bootstrap_draws, paired_interval, Interval};
use crate::plot::{bar_chart, Bars};
use crate::preference::{ImagePreference, ImagesConfig, Item, Judgement, PreferenceError, Stage};
use crate::tally::{FailureTally, TooManyFailures};
use crate::TrainError;

/// The HPSv2 benchmark's categories, in the paper's column order; a prompt directory
/// holds one `<category>.json` (a JSON list of strings) for each.
pub const HPSV2_CATEGORIES: [&str; 4] = ["anime", "concept-art", "paintings", "photo"];

/// The label of the system that renders the prompt as typed.
pub const NONE: &str = "none";

/// The label of a `--model` given without one.
pub const PRIP: &str = "PRIP";

/// Why an image evaluation stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvalImagesError {
    /// The prompt set cannot be read as one.
    #[error("{0}")]
    Prompts(String),
    /// A bad system list (labels, specs, the reference).
    #[error("{0}")]
    Systems(String),
    /// A baseline command failed or answered the wrong number of lines.
    #[error("baseline {name}: {reason}")]
    Baseline {
        /// The baseline's label.
        name: String,
        /// What went wrong, one line.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why (in the message, not a `source`: the CLI prints error chains).
        error: std::io::Error,
    },
    /// Rendering or scoring could not be set up.
    #[error(transparent)]
    Preference(#[from] PreferenceError),
    /// From the trainer (image cache, pool).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// From the refiner (checkpoint, model).
    #[error(transparent)]
    Core(#[from] prip_core::Error),
    /// Too many samples failed to render or score.
    #[error(transparent)]
    TooManyFailures(#[from] TooManyFailures),
}

fn io(path: &Path, error: std::io::Error) -> EvalImagesError {
    EvalImagesError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Result with [`EvalImagesError`].
pub type Result<T> = std::result::Result<T, EvalImagesError>;

/// One category of prompts (a column of the table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    /// Its name (`anime`, ..., or a prompt file's stem).
    pub name: String,
    /// Its prompts, in file order.
    pub prompts: Vec<String>,
}

/// Reads a prompt set: a directory in the HPSv2 benchmark layout (the four
/// [`HPSV2_CATEGORIES`] files, each a JSON list of strings), a `.txt` file (one prompt
/// per line) or a `.jsonl` file (objects with a `"prompt"` string), the last two as one
/// category named after the file. Blank prompts are skipped; `limit` keeps the first
/// prompts of each category.
pub fn load_prompts(path: &Path, limit: Option<usize>) -> Result<Vec<Category>> {
    let bad = |why: String| EvalImagesError::Prompts(format!("{}: {why}", path.display()));
    let mut categories = Vec::new();
    if path.is_dir() {
        let missing: Vec<String> = HPSV2_CATEGORIES
            .iter()
            .map(|c| format!("{c}.json"))
            .filter(|f| !path.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(bad(format!(
                "not a prompt directory in the HPSv2 benchmark layout (missing {})",
                missing.join(", ")
            )));
        }
        for name in HPSV2_CATEGORIES {
            let file = path.join(format!("{name}.json"));
            let text = std::fs::read_to_string(&file).map_err(|e| io(&file, e))?;
            let prompts: Vec<String> = serde_json::from_str(&text).map_err(|e| {
                EvalImagesError::Prompts(format!(
                    "{}: not a JSON list of strings: {e}",
                    file.display()
                ))
            })?;
            categories.push(Category {
                name: name.to_string(),
                prompts,
            });
        }
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "prompts".into());
        let prompts = match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    let v: serde_json::Value = serde_json::from_str(l)
                        .map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
                    v.get("prompt")
                        .and_then(|p| p.as_str())
                        .map(String::from)
                        .ok_or_else(|| bad(format!("line {}: no \"prompt\" string", i + 1)))
                })
                .collect::<Result<Vec<_>>>()?,
            Some("txt") | None => text.lines().map(String::from).collect(),
            Some(other) => {
                return Err(bad(format!(
                    "unknown prompt file type .{other} (a .txt, a .jsonl or an HPSv2 benchmark directory)"
                )))
            }
        };
        categories.push(Category { name, prompts });
    }
    for c in &mut categories {
        c.prompts = c
            .prompts
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
        if let Some(n) = limit {
            c.prompts.truncate(n);
        }
        if c.prompts.is_empty() {
            return Err(bad(format!("category {:?} has no prompts", c.name)));
        }
    }
    Ok(categories)
}

/// A system under evaluation (a row of the table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum System {
    /// The prompt as typed ([`NONE`]).
    None,
    /// A PRIP checkpoint (a name in the model store, or a directory).
    Prip {
        /// Row label.
        label: String,
        /// Checkpoint name or directory.
        model: String,
    },
    /// A refiner run as `sh -c COMMAND`: every prompt of a category on stdin, one per
    /// line; one refined prompt per line on stdout, in order.
    Baseline {
        /// Row label.
        label: String,
        /// The shell command.
        command: String,
    },
}

impl System {
    /// `--model [LABEL=]MODEL`: a PRIP checkpoint, labelled [`PRIP`] when unlabelled.
    pub fn model(spec: &str) -> Result<Self> {
        let (label, model) = match spec.split_once('=') {
            Some((l, m)) if !l.is_empty() && !l.contains(['/', '\\']) => (l, m),
            _ => (PRIP, spec),
        };
        if model.trim().is_empty() {
            return Err(EvalImagesError::Systems(format!(
                "--model {spec:?}: no model (expected [LABEL=]NAME_OR_DIR)"
            )));
        }
        Ok(System::Prip {
            label: label.to_string(),
            model: model.to_string(),
        })
    }

    /// `--baseline NAME=COMMAND`.
    pub fn baseline(spec: &str) -> Result<Self> {
        match spec.split_once('=') {
            Some((name, command)) if !name.trim().is_empty() && !command.trim().is_empty() => {
                Ok(System::Baseline {
                    label: name.trim().to_string(),
                    command: command.to_string(),
                })
            }
            _ => Err(EvalImagesError::Systems(format!(
                "--baseline {spec:?}: expected NAME=COMMAND"
            ))),
        }
    }

    /// Its row label.
    pub fn label(&self) -> &str {
        match self {
            System::None => NONE,
            System::Prip { label, .. } | System::Baseline { label, .. } => label,
        }
    }

    /// What produces its prompts (`prompt as typed`, `model default`, `command ...`):
    /// part of the refinement cache's key, so a changed command refines again.
    pub fn source(&self) -> String {
        match self {
            System::None => "prompt as typed".into(),
            System::Prip { model, .. } => format!("model {model}"),
            System::Baseline { command, .. } => format!("command {command}"),
        }
    }
}

/// Everything `prip eval images` needs.
#[derive(Debug, Clone)]
pub struct ImagesEvalOptions {
    /// The prompt set ([`load_prompts`]).
    pub prompts: PathBuf,
    /// The `[images]` table: backend, servers, seeds, scorers. Without a `cache`, images
    /// are cached in `<out>/images`.
    pub images: ImagesConfig,
    /// Output directory: caches and the report.
    pub out: PathBuf,
    /// Systems besides [`System::None`], which is always evaluated (first).
    pub systems: Vec<System>,
    /// The row every other is compared with; the first PRIP model when `None`, else
    /// `none`.
    pub reference: Option<String>,
    /// Only the first N prompts of each category.
    pub limit: Option<usize>,
    /// PRIP's sampling seed; prompt `p` refines under `seed + hash(p)`.
    pub seed: u64,
    /// Prompts judged per pool call (and written to the score cache together).
    pub batch: usize,
    /// Bootstrap resamples behind each interval.
    pub resamples: usize,
    /// The share of failed samples (render or score, 0..=1) that stops the run.
    pub max_failed_share: f64,
    /// Device of the PRIP refiners and candle scorers.
    pub device: DeviceSpec,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
}

/// A scorer as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScorerInfo {
    /// Its label.
    pub label: String,
    /// Its version.
    pub version: String,
    /// Its weight in the weighted sum.
    pub weight: f64,
}

/// One row of a score table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreRow {
    /// The system.
    pub system: String,
    /// Mean over the category's prompts of each prompt's mean score, per category
    /// (`None` when no prompt of it was scored).
    pub categories: Vec<Option<f64>>,
    /// Mean of the category means (the paper's average column).
    pub average: Option<f64>,
    /// Prompts with a score.
    pub prompts: usize,
}

/// One table: a scorer (or the weighted sum), systems as rows, categories as columns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreTable {
    /// The scorer's label, or `weighted sum`.
    pub scorer: String,
    /// Rows in system order.
    pub rows: Vec<ScoreRow>,
}

/// A paired t-test of per-prompt differences.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TTest {
    /// The t statistic (mean difference over its standard error); infinite when every
    /// difference is the same non-zero number.
    pub t: f64,
    /// Degrees of freedom, prompts - 1.
    pub dof: f64,
    /// Two-sided p-value.
    pub p: f64,
}

/// One system against the reference under one scorer, over the prompts both scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The system.
    pub system: String,
    /// The scorer (or `weighted sum`).
    pub scorer: String,
    /// Prompts both systems have a score for.
    pub paired: usize,
    /// Mean per-prompt difference (system - reference) with its 95% paired bootstrap
    /// interval; `None` without paired prompts.
    pub difference: Option<Interval>,
    /// Paired t-test; `None` with fewer than 2 paired prompts.
    pub t_test: Option<TTest>,
}

/// What a system lost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemReport {
    /// The system.
    pub system: String,
    /// What produced its prompts ([`System::source`]).
    pub source: String,
    /// Images scored by every scorer.
    pub images_kept: usize,
    /// Samples lost (an image, or one scorer's score of it).
    pub dropped: usize,
    /// Lost samples by `stage:cause` (`render:timeout`, `score hpsv2:not_finite`).
    pub causes: BTreeMap<String, usize>,
}

/// The whole report, as `<out>/report.json` holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImagesReport {
    /// Column order.
    pub categories: Vec<String>,
    /// Prompts per category.
    pub prompts: Vec<usize>,
    /// Seeds of every prompt's images.
    pub seeds: Vec<u64>,
    /// The scorers.
    pub scorers: Vec<ScorerInfo>,
    /// The row compared with.
    pub reference: String,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// One table per scorer, then the weighted sum when there are several scorers.
    pub tables: Vec<ScoreTable>,
    /// Every other system against the reference, per table.
    pub comparisons: Vec<Comparison>,
    /// Losses per system.
    pub systems: Vec<SystemReport>,
}

/// Per system, per table, per category, per prompt: the prompt's mean score.
pub type PromptScores = Vec<Vec<Vec<Vec<Option<f64>>>>>;

impl ImagesReport {
    /// Builds the tables and comparisons from per-prompt scores
    /// (`scores[system][table][category][prompt]`, tables named by `tables`), comparing
    /// every system with `reference` over the prompts both scored, with `resamples`
    /// bootstrap draws from `seed`.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        categories: &[Category],
        seeds: Vec<u64>,
        scorers: Vec<ScorerInfo>,
        tables: &[String],
        systems: Vec<SystemReport>,
        scores: &PromptScores,
        reference: &str,
        resamples: usize,
        seed: u64,
    ) -> Result<Self> {
        let r = systems
            .iter()
            .position(|s| s.system == reference)
            .ok_or_else(|| {
                EvalImagesError::Systems(format!("no system named {reference:?} to compare with"))
            })?;
        let mean = |v: &mut dyn Iterator<Item = f64>| {
            let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
            (n > 0).then(|| sum / n as f64)
        };
        let mut out_tables = Vec::new();
        let mut comparisons = Vec::new();
        for (t, name) in tables.iter().enumerate() {
            let rows = systems
                .iter()
                .enumerate()
                .map(|(s, sys)| {
                    let cats: Vec<Option<f64>> = scores[s][t]
                        .iter()
                        .map(|c| mean(&mut c.iter().flatten().copied()))
                        .collect();
                    ScoreRow {
                        system: sys.system.clone(),
                        average: if cats.iter().all(Option::is_some) {
                            mean(&mut cats.iter().flatten().copied())
                        } else {
                            None
                        },
                        prompts: scores[s][t].iter().flatten().flatten().count(),
                        categories: cats,
                    }
                })
                .collect();
            out_tables.push(ScoreTable {
                scorer: name.clone(),
                rows,
            });
            let reference_scores: Vec<Option<f64>> =
                scores[r][t].iter().flatten().copied().collect();
            for (s, sys) in systems.iter().enumerate() {
                if s == r {
                    continue;
                }
                let diffs: Vec<f64> = scores[s][t]
                    .iter()
                    .flatten()
                    .zip(&reference_scores)
                    .filter_map(|(a, b)| Some((*a)? - (*b)?))
                    .collect();
                let difference = (!diffs.is_empty()).then(|| {
                    let draws = bootstrap_draws(diffs.len(), resamples, seed);
                    paired_interval(diffs.len(), &draws, |idx| {
                        idx.iter().map(|&i| diffs[i]).sum::<f64>() / idx.len() as f64
                    })
                });
                comparisons.push(Comparison {
                    system: sys.system.clone(),
                    scorer: name.clone(),
                    paired: diffs.len(),
                    difference,
                    t_test: paired_t_test(&diffs),
                });
            }
        }
        Ok(ImagesReport {
            categories: categories.iter().map(|c| c.name.clone()).collect(),
            prompts: categories.iter().map(|c| c.prompts.len()).collect(),
            seeds,
            scorers,
            reference: reference.to_string(),
            resamples,
            tables: out_tables,
            comparisons,
            systems,
        })
    }
}

/// The paired t-test of `diffs` (one system minus the other, per prompt): `t` = mean /
/// (sd / sqrt(n)), `n - 1` degrees of freedom, two-sided p from Student's t. `None`
/// with fewer than two differences or a non-finite one.
pub fn paired_t_test(diffs: &[f64]) -> Option<TTest> {
    let n = diffs.len();
    if n < 2 || diffs.iter().any(|d| !d.is_finite()) {
        return None;
    }
    let mean = diffs.iter().sum::<f64>() / n as f64;
    let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let dof = (n - 1) as f64;
    let se = (var / n as f64).sqrt();
    let t = if se > 0.0 {
        mean / se
    } else if mean == 0.0 {
        0.0
    } else {
        mean.signum() * f64::INFINITY
    };
    Some(TTest {
        t,
        dof,
        p: student_t_two_sided(t, dof),
    })
}

/// Two-sided p-value of Student's t with `dof` degrees of freedom:
/// `P(|T| >= |t|) = I_{dof / (dof + t^2)}(dof / 2, 1 / 2)`.
pub fn student_t_two_sided(t: f64, dof: f64) -> f64 {
    if t.is_nan() || dof.is_nan() || dof <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return 0.0;
    }
    regularized_incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error about 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let a = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |a, (i, c)| a + c / (x + i as f64 + 1.0));
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b), a, b > 0, by its continued
/// fraction (modified Lentz), on the side of x where it converges fast.
pub fn regularized_incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x.is_nan() || a.is_nan() || b.is_nan() || a <= 0.0 || b <= 0.0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    let fix = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / fix(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / fix(1.0 + aa * d);
        c = fix(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / fix(1.0 + aa * d);
        c = fix(1.0 + aa / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// Runs a baseline refiner: `sh -c command` with `prompts` on stdin, one per line
/// (newlines inside a prompt become spaces), and reads one refined prompt per line
/// from stdout. A non-zero exit, a failed start or a wrong line count is an error
/// naming the baseline.
pub fn run_baseline(name: &str, command: &str, prompts: &[String]) -> Result<Vec<String>> {
    let fail = |reason: String| EvalImagesError::Baseline {
        name: name.to_string(),
        reason,
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start `sh -c {command}`: {e}")))?;
    let input: String = prompts
        .iter()
        .map(|p| p.replace(['\n', '\r'], " ") + "\n")
        .collect();
    let mut stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        // A command that exits without reading all of stdin is judged by its output.
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(input.as_bytes());
        }
    });
    let mut stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out)
            .map_err(|e| fail(format!("reading its output: {e}")))?;
    }
    let status = child
        .wait()
        .map_err(|e| fail(format!("waiting for it: {e}")))?;
    let _ = writer.join();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(fail(format!(
            "`{command}` exited with {status}{}",
            if last.is_empty() {
                String::new()
            } else {
                format!(": {}", last.trim())
            }
        )));
    }
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    if lines.len() != prompts.len() {
        return Err(fail(format!(
            "`{command}` printed {} lines for {} prompts (one refined prompt per line expected)",
            lines.len(),
            prompts.len()
        )));
    }
    Ok(lines)
}

/// The sampling seed of `prompt` under base `seed`: the same prompt always refines the
/// same way, whatever else the set holds.
pub fn prompt_seed(seed: u64, prompt: &str) -> u64 {
    let h = Sha256::digest(prompt.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    seed.wrapping_add(u64::from_le_bytes(b))
}

/// Refines `prompts` with a PRIP refiner, 8 at a time, prompt `p` under
/// [`prompt_seed`]`(seed, p)`.
pub fn refine_with_prip(
    refiner: &mut Refiner,
    prompts: &[String],
    seed: u64,
) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(8) {
        let reqs: Vec<RefineRequest> = chunk
            .iter()
            .map(|p| RefineRequest {
                seed: Some(prompt_seed(seed, p)),
                ..RefineRequest::new(p.clone())
            })
            .collect();
        for r in refiner.refine(&reqs) {
            out.push(r?.refined);
        }
    }
    Ok(out)
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One line of `<out>/refined/<system>.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
struct RefinedRecord {
    source: String,
    prompt: String,
    refined: String,
}

/// One line of `<out>/scores.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
struct ScoreRecord {
    system: String,
    prompt: String,
    text: String,
    seed: u64,
    scorer: String,
    render: String,
    score: f32,
}

/// Reads a JSONL cache; a line that does not parse (a run killed mid-write) is skipped.
fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path, e)),
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| io(path, e))?;
        match serde_json::from_str(&line) {
            Ok(r) => out.push(r),
            Err(e) if !line.trim().is_empty() => {
                tracing::warn!(path = %path.display(), "cache line skipped: {e}")
            }
            Err(_) => {}
        }
    }
    Ok(out)
}

fn append_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    let mut w = BufWriter::new(file);
    for r in records {
        let line = serde_json::to_string(r).map_err(|e| io(path, std::io::Error::other(e)))?;
        writeln!(w, "{line}").map_err(|e| io(path, e))?;
    }
    w.flush().map_err(|e| io(path, e))
}

/// The refined prompts of `system` for every category, from its cache where it has
/// them (same source), the rest refined now and appended to the cache.
fn refinements(
    system: &System,
    categories: &[Category],
    opts: &ImagesEvalOptions,
    store: &ModelStore,
) -> Result<Vec<Vec<String>>> {
    if *system == System::None {
        return Ok(categories.iter().map(|c| c.prompts.clone()).collect());
    }
    let dir = opts.out.join("refined");
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let label = system.label();
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{safe}-{}.jsonl", short_hash(&[label])));
    let source = system.source();
    let mut cached: HashMap<String, String> = read_jsonl::<RefinedRecord>(&path)?
        .into_iter()
        .filter(|r| r.source == source)
        .map(|r| (r.prompt, r.refined))
        .collect();
    let mut refiner: Option<Refiner> = None;
    let mut out = Vec::new();
    for c in categories {
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<String> = c
            .prompts
            .iter()
            .filter(|p| !cached.contains_key(*p) && seen.insert(p.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            tracing::info!(system = label, category = %c.name, prompts = missing.len(), "refining");
            let refined = match system {
                System::None => missing.clone(),
                System::Baseline { command, .. } => run_baseline(label, command, &missing)?,
                System::Prip { model, .. } => {
                    if refiner.is_none() {
                        refiner = Some(Refiner::open_with_store(
                            &RefinerOptions {
                                model: model.clone(),
                                device: opts.device,
                                ..RefinerOptions::default()
                            },
                            store,
                        )?);
                    }
                    match refiner.as_mut() {
                        Some(r) => refine_with_prip(r, &missing, opts.seed)?,
                        None => missing.clone(),
                    }
                }
            };
            let records: Vec<RefinedRecord> = missing
                .iter()
                .zip(&refined)
                .map(|(p, r)| RefinedRecord {
                    source: source.clone(),
                    prompt: p.clone(),
                    refined: r.clone(),
                })
                .collect();
            append_jsonl(&path, &records)?;
            cached.extend(missing.into_iter().zip(refined));
        }
        out.push(
            c.prompts
                .iter()
                .map(|p| cached.get(p).cloned().unwrap_or_else(|| p.clone()))
                .collect(),
        );
    }
    Ok(out)
}

/// The label of the weighted-sum table (present with more than one scorer).
pub const WEIGHTED_SUM: &str = "weighted sum";

/// Runs the evaluation, writes `<out>/report.md`, `<out>/report.json` and
/// `<out>/scores.svg`, and returns the report.
pub fn evaluate_images(opts: &ImagesEvalOptions, store: &ModelStore) -> Result<ImagesReport> {
    let categories = load_prompts(&opts.prompts, opts.limit)?;
    let mut systems = vec![System::None];
    systems.extend(opts.systems.iter().filter(|s| **s != System::None).cloned());
    for (i, s) in systems.iter().enumerate() {
        if systems[..i].iter().any(|o| o.label() == s.label()) {
            return Err(EvalImagesError::Systems(format!(
                "two systems are labelled {:?}; label them (--model LABEL=MODEL, --baseline NAME=COMMAND)",
                s.label()
            )));
        }
    }
    let reference = match &opts.reference {
        Some(r) => r.clone(),
        None => systems
            .iter()
            .find(|s| matches!(s, System::Prip { .. }))
            .unwrap_or(&System::None)
            .label()
            .to_string(),
    };
    if !systems.iter().any(|s| s.label() == reference) {
        return Err(EvalImagesError::Systems(format!(
            "--reference {reference:?}: no such system (have: {})",
            systems
                .iter()
                .map(System::label)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| io(&opts.out, e))?;

    // Servers and scorers first (a wrong URL fails at once), then refinements (a
    // broken baseline fails before any image is rendered).
    let mut images = opts.images.clone();
    if images.cache.is_none() {
        images.cache = Some(opts.out.join("images"));
    }
    let device = opts.device.open()?;
    let pref = ImagePreference::open(&images, &device)?;
    let refined: Vec<Vec<Vec<String>>> = systems
        .iter()
        .map(|s| refinements(s, &categories, opts, store))
        .collect::<Result<_>>()?;

    let labels = pref.labels();
    let (backend, settings) = pref.render_key();
    let render = short_hash(&[&backend, &settings]);

    let scores_path = opts.out.join("scores.jsonl");
    let mut known: HashMap<(String, String, u64, String), (String, f32)> = HashMap::new();
    for r in read_jsonl::<ScoreRecord>(&scores_path)? {
        if r.render == render && r.score.is_finite() {
            known.insert((r.system, r.prompt, r.seed, r.scorer), (r.text, r.score));
        }
    }

    let total: usize = categories.iter().map(|c| c.prompts.len()).sum::<usize>() * systems.len();
    let bar = if opts.progress {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} prompts, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let share = opts.max_failed_share;
    let mut render_tally = FailureTally::new("render", share, 16);
    let mut score_tally = FailureTally::new("score", share, 16);
    let tables: Vec<String> = if labels.len() > 1 {
        labels
            .iter()
            .cloned()
            .chain([WEIGHTED_SUM.to_string()])
            .collect()
    } else {
        labels.clone()
    };
    // scores[system][table][category][prompt]
    let mut scores: PromptScores = Vec::new();
    let mut reports = Vec::new();
    for (system, texts) in systems.iter().zip(&refined) {
        let label = system.label().to_string();
        let mut per_table: Vec<Vec<Vec<Option<f64>>>> = vec![Vec::new(); tables.len()];
        let mut report = SystemReport {
            system: label.clone(),
            source: system.source(),
            images_kept: 0,
            dropped: 0,
            causes: BTreeMap::new(),
        };
        for (c, texts) in categories.iter().zip(texts) {
            bar.set_message(format!("{label} / {}", c.name));
            let mut cat: Vec<Vec<Option<f64>>> = vec![Vec::new(); tables.len()];
            let items: Vec<Item> = c
                .prompts
                .iter()
                .zip(texts)
                .map(|(p, t)| Item {
                    text: t.clone(),
                    prompt: p.clone(),
                })
                .collect();
            for chunk in items.chunks(opts.batch.max(1)) {
                let judged = pref.judge_with(chunk, |item, seed, scorer| {
                    known
                        .get(&(label.clone(), item.prompt.clone(), seed, scorer.to_string()))
                        .filter(|(text, _)| *text == item.text)
                        .map(|(_, s)| *s)
                });
                let mut fresh = Vec::new();
                for (item, j) in chunk.iter().zip(&judged) {
                    for img in &j.images {
                        for (scorer, score) in labels.iter().zip(&img.scores) {
                            let Some(score) = score else { continue };
                            let key =
                                (label.clone(), item.prompt.clone(), img.seed, scorer.clone());
                            if known.get(&key).is_some_and(|(t, _)| *t == item.text) {
                                continue;
                            }
                            fresh.push(ScoreRecord {
                                system: label.clone(),
                                prompt: item.prompt.clone(),
                                text: item.text.clone(),
                                seed: img.seed,
                                scorer: scorer.clone(),
                                render: render.clone(),
                                score: *score,
                            });
                            known.insert(key, (item.text.clone(), *score));
                        }
                    }
                    record(j, &mut report, &mut cat, labels.len() > 1);
                    j.tally(&mut render_tally, &mut score_tally);
                }
                append_jsonl(&scores_path, &fresh)?;
                render_tally.check()?;
                score_tally.check()?;
                bar.inc(chunk.len() as u64);
            }
            for (t, v) in cat.into_iter().enumerate() {
                per_table[t].push(v);
            }
        }
        scores.push(per_table);
        reports.push(report);
    }
    bar.finish_and_clear();
    render_tally.check_final()?;
    score_tally.check_final()?;

    let weights = pref.weights();
    let scorers = pref
        .versions()
        .into_iter()
        .zip(weights)
        .map(|((label, version), weight)| ScorerInfo {
            label,
            version,
            weight,
        })
        .collect();
    let report = ImagesReport::build(
        &categories,
        pref.seeds().to_vec(),
        scorers,
        &tables,
        reports,
        &scores,
        &reference,
        opts.resamples,
        opts.seed,
    )?;
    let write = |name: &str, text: &str| {
        let path = opts.out.join(name);
        std::fs::write(&path, text).map_err(|e| io(&path, e))
    };
    write("report.md", &markdown(&report))?;
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| io(&opts.out.join("report.json"), std::io::Error::other(e)))?;
    write("report.json", &(json + "\n"))?;
    write("scores.svg", &chart(&report))?;
    Ok(report)
}

/// Adds one judged prompt to its system's losses and its category's per-prompt scores.
fn record(j: &Judgement, report: &mut SystemReport, cat: &mut [Vec<Option<f64>>], with_sum: bool) {
    report.images_kept += j.kept;
    report.dropped += j.dropped.len();
    for d in &j.dropped {
        let stage = match &d.stage {
            Stage::Render => "render".to_string(),
            Stage::Score(s) => format!("score {s}"),
        };
        *report
            .causes
            .entry(format!("{stage}:{}", d.cause))
            .or_default() += 1;
    }
    for (t, m) in j.means.iter().enumerate() {
        cat[t].push(*m);
    }
    if with_sum {
        if let Some(last) = cat.last_mut() {
            last.push(j.total);
        }
    }
}

/// A p-value with three decimals, or in scientific notation below 0.001.
fn p_value(p: f64) -> String {
    if p > 0.0 && p < 1e-3 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        Some(v) => format!("{v}"),
        None => "–".into(),
    }
}

/// The report as Markdown: one table per scorer in Table 1's layout (rows = systems,
/// columns = categories + average), the comparisons with the reference, the losses.
pub fn markdown(report: &ImagesReport) -> String {
    let mut md = String::from("# Image evaluation\n\n");
    let prompts: Vec<String> = report
        .categories
        .iter()
        .zip(&report.prompts)
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    md.push_str(&format!(
        "Prompts per category: {}. Images per prompt: {} (seeds {}). Scorers: {}.\n",
        prompts.join(", "),
        report.seeds.len(),
        report
            .seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        report
            .scorers
            .iter()
            .map(|s| format!("{} {} (weight {})", s.label, s.version, s.weight))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    md.push_str("A cell is the mean over the category's prompts of each prompt's mean score over its images; the average is the mean of the category columns.\n");
    for table in &report.tables {
        md.push_str(&format!("\n## {}\n\n| system |", table.scorer));
        for c in &report.categories {
            md.push_str(&format!(" {c} |"));
        }
        md.push_str(" average |\n|---|");
        md.push_str(&"---:|".repeat(report.categories.len() + 1));
        md.push('\n');
        for row in &table.rows {
            md.push_str(&format!("| {} |", row.system));
            for v in &row.categories {
                md.push_str(&format!(" {} |", num(*v)));
            }
            md.push_str(&format!(" {} |\n", num(row.average)));
        }
    }
    md.push_str(&format!(
        "\n## Against {}\n\nPer prompt: system minus {} (same prompts, same seeds). 95% paired bootstrap interval ({} resamples), * where it leaves out 0; paired t-test, two-sided (the two can disagree near the edge: the bootstrap makes no normality assumption).\n\n| system | scorer | prompts | difference | 95% interval | t | dof | p |\n|---|---|---:|---:|---|---:|---:|---:|\n",
        report.reference, report.reference, report.resamples
    ));
    for c in &report.comparisons {
        let (d, ci) = match c.difference {
            Some(i) => (
                format!(
                    "{:+.3}{}",
                    i.estimate,
                    if i.excludes_zero() { " *" } else { "" }
                ),
                format!("[{:+.3}, {:+.3}]", i.low, i.high),
            ),
            None => ("–".into(), "–".into()),
        };
        let (t, dof, p) = match c.t_test {
            Some(t) => (format!("{:.2}", t.t), format!("{}", t.dof), p_value(t.p)),
            None => ("–".into(), "–".into(), "–".into()),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {d} | {ci} | {t} | {dof} | {p} |\n",
            c.system, c.scorer, c.paired
        ));
    }
    md.push_str(
        "\n## Lost samples\n\n| system | images kept | dropped | causes |\n|---|---:|---:|---|\n",
    );
    for s in &report.systems {
        let causes: Vec<String> = s.causes.iter().map(|(c, n)| format!("{c}={n}")).collect();
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            s.system,
            s.images_kept,
            s.dropped,
            if causes.is_empty() {
                "–".into()
            } else {
                causes.join(", ")
            }
        ));
    }
    md
}

/// The bar chart of the report: one panel per table, categories + average as groups,
/// systems as bars.
pub fn chart(report: &ImagesReport) -> String {
    let groups: Vec<String> = report
        .categories
        .iter()
        .cloned()
        .chain(["average".to_string()])
        .collect();
    let panels: Vec<Bars> = report
        .tables
        .iter()
        .map(|t| Bars {
            title: t.scorer.clone(),
            groups: groups.clone(),
            series: t
                .rows
                .iter()
                .map(|r| {
                    (
                        r.system.clone(),
                        r.categories
                            .iter()
                            .chain([&r.average])
                            .map(|v| v.unwrap_or(f64::NAN))
                            .collect(),
                    )
                })
                .collect(),
        })
        .collect();
    bar_chart("mean preference score per category", &panels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_incomplete_beta_and_student_t_match_known_values() {
        // I_0.5(2, 3) = 11/16 (a polynomial); I_x(a, a) at 0.5 is 1/2.
        assert!((regularized_incomplete_beta(2.0, 3.0, 0.5) - 0.6875).abs() < 1e-12);
        assert!((regularized_incomplete_beta(7.5, 7.5, 0.5) - 0.5).abs() < 1e-12);
        // dof 1 is Cauchy: p = 1 - 2 atan(|t|) / pi; dof 2: p = 1 - |t| / sqrt(2 + t^2).
        let cauchy = 1.0 - 2.0 * 2f64.atan() / std::f64::consts::PI;
        assert!((student_t_two_sided(2.0, 1.0) - cauchy).abs() < 1e-10);
        assert!((student_t_two_sided(-1.0, 1.0) - 0.5).abs() < 1e-10);
        assert!((student_t_two_sided(2.0, 2.0) - (1.0 - 2.0 / 6f64.sqrt())).abs() < 1e-10);
        // Tables: t = 2 with 10 dof, p = 0.0733880348; t = 2.228 with 10 dof is p ~ 0.05.
        assert!((student_t_two_sided(2.0, 10.0) - 0.073_388_034_8).abs() < 1e-8);
        assert!((student_t_two_sided(2.228_138_85, 10.0) - 0.05).abs() < 1e-6);
        assert_eq!(student_t_two_sided(0.0, 5.0), 1.0);
        assert_eq!(student_t_two_sided(f64::INFINITY, 5.0), 0.0);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn the_paired_t_test_matches_a_hand_computed_example() {
        // d = system - reference per prompt: mean 0.18, sd 0.192354, se 0.086023,
        // t = 2.092457 with 4 dof, two-sided p = 0.104540.
        let system = [1.1, 1.3, 0.9, 1.4, 1.2];
        let reference = [1.0; 5];
        let d: Vec<f64> = system.iter().zip(reference).map(|(a, b)| a - b).collect();
        let t = paired_t_test(&d).unwrap();
        assert!((t.t - 2.092_457_497_4).abs() < 1e-8, "{t:?}");
        assert_eq!(t.dof, 4.0);
        assert!((t.p - 0.104_540_0).abs() < 1e-6, "{t:?}");
        // No spread: no difference is p = 1, a constant gap is p = 0.
        assert_eq!(paired_t_test(&[0.0, 0.0, 0.0]).map(|t| t.p), Some(1.0));
        assert_eq!(paired_t_test(&[0.5, 0.5]).map(|t| t.p), Some(0.0));
        assert_eq!(paired_t_test(&[0.5]), None);
        assert_eq!(paired_t_test(&[0.5, f64::NAN]), None);
    }

    #[test]
    fn system_specs_parse_with_labels() {
        assert_eq!(
            System::model("default").unwrap(),
            System::Prip {
                label: PRIP.into(),
                model: "default".into()
            }
        );
        assert_eq!(System::model("ppo=runs/ppo/final").unwrap().label(), "ppo");
        // A path with '=' and a slash before it is a model, not a label.
        assert_eq!(
            System::model("runs/a=b").unwrap(),
            System::Prip {
                label: PRIP.into(),
                model: "runs/a=b".into()
            }
        );
        assert!(System::model("ppo=").is_err());
        assert_eq!(
            System::baseline("promptist=python3 promptist.py").unwrap(),
            System::Baseline {
                label: "promptist".into(),
                command: "python3 promptist.py".into()
            }
        );
        let e = System::baseline("promptist").unwrap_err().to_string();
        assert_eq!(e, "--baseline \"promptist\": expected NAME=COMMAND");
    }

    #[test]
    fn tables_average_categories_and_compare_over_paired_prompts() {
        let categories = vec![
            Category {
                name: "a".into(),
                prompts: vec!["x".into(), "y".into()],
            },
            Category {
                name: "b".into(),
                prompts: vec!["z".into()],
            },
        ];
        let sys = |name: &str| SystemReport {
            system: name.into(),
            source: String::new(),
            images_kept: 0,
            dropped: 0,
            causes: BTreeMap::new(),
        };
        // One table; none: a = [1, 3], b = [4]; PRIP: a = [2, None], b = [6].
        let scores: PromptScores = vec![
            vec![vec![vec![Some(1.0), Some(3.0)], vec![Some(4.0)]]],
            vec![vec![vec![Some(2.0), None], vec![Some(6.0)]]],
        ];
        let r = ImagesReport::build(
            &categories,
            vec![0],
            Vec::new(),
            &["s".into()],
            vec![sys("none"), sys("PRIP")],
            &scores,
            "PRIP",
            200,
            1,
        )
        .unwrap();
        let rows = &r.tables[0].rows;
        assert_eq!(rows[0].categories, [Some(2.0), Some(4.0)]);
        assert_eq!(rows[0].average, Some(3.0));
        assert_eq!(rows[1].categories, [Some(2.0), Some(6.0)]);
        assert_eq!((rows[1].average, rows[1].prompts), (Some(4.0), 2));
        // Paired prompts: x (1 - 2) and z (4 - 6).
        let c = &r.comparisons[0];
        assert_eq!((c.system.as_str(), c.paired), ("none", 2));
        assert_eq!(c.difference.unwrap().estimate, -1.5);
        assert_eq!(c.t_test.unwrap().t, -3.0);
        let md = markdown(&r);
        assert!(md.contains("| system | a | b | average |"), "{md}");
        assert!(md.contains("| none | 2.000 | 4.000 | 3.000 |"), "{md}");
        assert!(
            md.contains("| none | s | 2 | -1.500 * | [-2.000, -1.000] | -3.00 | 1 | 0.205 |"),
            "{md}"
        );
        assert!(ImagesReport::build(
            &categories,
            vec![0],
            Vec::new(),
            &["s".into()],
            vec![sys("none"), sys("PRIP")],
            &scores,
            "ppo",
            10,
            1
        )
        .is_err());
    }
}
