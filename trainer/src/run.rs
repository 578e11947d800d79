//! The training loop shared by every stage: streaming batches, AdamW, metrics JSONL, the
//! loss plot, resumable snapshots and the export of the trained parts into the output
//! checkpoint.
//!
//! Crash safety: a snapshot is written into `step-N.tmp/` and renamed to `step-N/` when
//! complete, and each exported file is written beside its destination and renamed over
//! it, so a kill at any moment leaves whole files only. A resumed run restores weights,
//! optimiser moments and the data position from the newest complete snapshot; data
//! order and noise depend only on (seed, epoch, step), so it ends with the same weights
//! as an uninterrupted run.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use prip_core::checkpoint::{Checkpoint, Manifest, SystemConfig, MANIFEST};
use serde::{Deserialize, Serialize};

use crate::config::RunSettings;
use crate::data::{BadLines, Stream};
use crate::distributed::{agree, broadcast_params, shard, sync_step, GradientSync, Single};
use crate::objective::{head_tensors, lora_set, Objective};
use crate::optim::{AdamW, OptimConfig};
use crate::plot::loss_svg;
use crate::{Result, TrainError};

/// One line of metrics.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based step.
    pub step: usize,
    /// Epoch (0-based) the step's data came from.
    pub epoch: usize,
    /// Loss of the batch.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (decoder) or prompts (encoder) in the batch.
    pub tokens: usize,
    /// Throughput of this step.
    pub tokens_per_s: f64,
    /// Unusable corpus lines so far.
    pub bad_lines: usize,
}

/// Where a run is, saved with every snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunState {
    step: usize,
    total: usize,
    epoch: usize,
    taken: usize,
    bad: BadLines,
    seed: u64,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Steps of the run.
    pub steps: usize,
    /// The step a resumed run started from.
    pub resumed_from: Option<usize>,
    /// Mean loss of the first and last tenth of the steps run in this process.
    pub first_loss: f64,
    /// See `first_loss`.
    pub last_loss: f64,
    /// Unusable corpus lines.
    pub bad: BadLines,
    /// Wall time of this process's part.
    pub seconds: f64,
    /// Tokens (or prompts) per second.
    pub tokens_per_s: f64,
    /// metrics.jsonl of the run.
    pub metrics: PathBuf,
    /// loss.svg of the run.
    pub plot: PathBuf,
}

/// How a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Fresh; refuses when an unfinished run of the same stage is on disk.
    Fresh,
    /// Continue the newest snapshot (or start fresh when there is none).
    Resume,
    /// Discard any earlier run of this stage.
    Restart,
}

/// Trains `objective` on `files`, writing into the checkpoint `out`.
#[allow(clippy::too_many_arguments)]
pub fn train<O: Objective>(
    objective: &mut O,
    out: &Checkpoint,
    stage: &str,
    files: &[PathBuf],
    settings: &RunSettings,
    optim: &OptimConfig,
    start: Start,
    progress: bool,
) -> Result<Summary> {
    train_with(
        objective,
        out,
        stage,
        files,
        settings,
        optim,
        start,
        progress,
        &mut Single,
    )
}

/// [`train`] as one rank of a data-parallel group: every step takes a global batch of
/// `batch_size` records per rank, trains on this rank's share, and averages the gradients
/// over `sync` before the optimiser step. Only rank 0 writes snapshots, the exported
/// checkpoint, metrics and the plot; the others read the snapshot when resuming, so
/// `out` must be on storage every machine sees.
#[allow(clippy::too_many_arguments)]
pub fn train_with<O: Objective>(
    objective: &mut O,
    out: &Checkpoint,
    stage: &str,
    files: &[PathBuf],
    settings: &RunSettings,
    optim: &OptimConfig,
    start: Start,
    progress: bool,
    sync: &mut dyn GradientSync,
) -> Result<Summary> {
    let (rank, world) = (sync.rank(), sync.world_size());
    let writer = rank == 0;
    let global_batch = settings.batch_size * world;
    let device = objective
        .trainable()
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let run_dir = out.dir.join("runs").join(stage);
    let snaps = run_dir.join("snapshots");
    let metrics_path = run_dir.join("metrics.jsonl");
    let plot_path = run_dir.join("loss.svg");
    let total = match settings.steps {
        Some(s) => s,
        None => {
            let n = Stream::<O::Record>::count(files, settings.max_bad_share)?;
            ((n as f64 * settings.epochs) / global_batch as f64).ceil() as usize
        }
    }
    .max(1);
    let prepared = if writer {
        prepare_run_dir(&run_dir, &snaps, stage, start, total)
    } else {
        Ok(())
    };
    agree(sync, &device, prepared)?;

    let mut stream = Stream::<O::Record>::new(
        files.to_vec(),
        settings.seed,
        settings.shuffle_buffer,
        settings.max_bad_share,
    )?;
    let mut opt = AdamW::new(optim.clone(), objective.trainable())?;
    let mut step = 0;
    let mut resumed_from = None;
    if start == Start::Resume {
        if let Some((s, dir)) = latest_snapshot(&snaps)? {
            let state: RunState =
                restore(&dir, objective.params(), &mut opt, |s: &RunState| s.step)?;
            stream.bad = state.bad.clone();
            stream.seek(state.epoch, state.taken)?;
            step = s;
            resumed_from = Some(s);
            if writer {
                truncate_metrics(&metrics_path, s)?;
            }
            tracing::info!("resumed {stage} at step {s} of {}", state.total);
        }
    }
    let trainable = objective.trainable();
    broadcast_params(sync, &trainable)?;

    let bar = progress_bar(progress && writer, stage, total, step);
    let mut metrics = if writer {
        Some(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(|e| TrainError::io(&metrics_path, e))?,
        )
    } else {
        None
    };
    let started = Instant::now();
    let mut losses = Vec::new();
    let mut tokens_total = 0usize;
    let mut last_good = resumed_from;
    while step < total {
        let t0 = Instant::now();
        let batch = stream.next_batch(global_batch)?;
        let mine = shard(&batch, rank, settings.batch_size);
        let epoch = stream.epoch();
        // Each rank draws its own noise (rank 0 the same as a one-process run).
        let seed = settings.seed
            ^ ((step as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03))
            ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let oom = |e| out_of_memory(e, settings.batch_size, world);
        let out_loss = objective.loss(mine, seed).map_err(oom)?;
        for (i, why) in &out_loss.rejected {
            stream.reject(&mine[*i], why)?;
        }
        let local = match &out_loss.loss {
            None => None,
            Some(loss_t) => {
                let loss = loss_t.to_scalar::<f32>()? as f64;
                let grads = if loss.is_finite() {
                    loss_t.backward().map_err(|e| oom(e.into()))?
                } else {
                    GradStore::default()
                };
                Some((loss, grads))
            }
        };
        let (grads, totals) = sync_step(sync, &trainable, local, out_loss.tokens)?;
        if totals.ranks_with_loss == 0 {
            continue;
        }
        let loss = totals.loss;
        if !loss.is_finite() {
            return Err(non_finite(
                step + 1,
                &format!("loss {loss}"),
                last_good,
                &out.dir,
            ));
        }
        let lr = optim.lr_at(step, total);
        let grad_norm = match opt.step(&grads, lr) {
            Ok(n) => n,
            Err(TrainError::NonFinite(what)) => {
                return Err(non_finite(step + 1, &what, last_good, &out.dir))
            }
            Err(e) => return Err(oom(e)),
        };
        step += 1;
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        tokens_total += totals.tokens;
        losses.push(loss);
        let m = StepMetrics {
            step,
            epoch,
            loss,
            lr,
            grad_norm,
            tokens: totals.tokens,
            tokens_per_s: totals.tokens as f64 / secs,
            bad_lines: stream.bad.bad,
        };
        if let Some(metrics) = &mut metrics {
            let line = serde_json::to_string(&m).map_err(|e| TrainError::Config(e.to_string()))?;
            writeln!(metrics, "{line}").map_err(|e| TrainError::io(&metrics_path, e))?;
        }
        bar.set_message(format!("loss {loss:.4} · {:.0} tok/s", m.tokens_per_s));
        bar.inc(1);
        if writer && (step % settings.save_every == 0 || step == total) {
            let state = RunState {
                step,
                total,
                epoch: stream.epoch(),
                taken: stream.taken,
                bad: stream.bad.clone(),
                seed: settings.seed,
            };
            snapshot(
                &snaps,
                objective.params(),
                &opt,
                step,
                &state,
                settings.keep_snapshots,
            )?;
            export(objective, out, settings.export_dtype.dtype())?;
            write_atomic(
                &plot_path,
                loss_svg(&format!("{stage} loss"), &read_losses(&metrics_path)?, 20).as_bytes(),
            )?;
            last_good = Some(step);
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let tenth = (losses.len() / 10).max(1);
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    Ok(Summary {
        steps: total,
        resumed_from,
        first_loss: mean(&losses[..tenth.min(losses.len())]),
        last_loss: mean(&losses[losses.len().saturating_sub(tenth)..]),
        bad: stream.bad.clone(),
        seconds,
        tokens_per_s: tokens_total as f64 / seconds.max(1e-9),
        metrics: metrics_path,
        plot: plot_path,
    })
}

/// Rank 0's set-up of the stage's run directory: refuses to overwrite an unfinished run
/// unless asked, clears a finished or discarded one.
pub(crate) fn prepare_run_dir(
    run_dir: &Path,
    snaps: &Path,
    stage: &str,
    start: Start,
    total: usize,
) -> Result<()> {
    let latest = latest_snapshot(snaps)?;
    match (start, &latest) {
        (Start::Fresh, Some((step, _))) if *step < total => {
            return Err(TrainError::Config(format!(
                "{} holds an unfinished {stage} run (step {step} of {total}); pass --resume to continue it or --restart to discard it",
                run_dir.display()
            )))
        }
        // A finished run is history: a fresh one replaces it.
        (Start::Fresh, Some(_)) | (Start::Restart, _) if run_dir.exists() => {
            fs::remove_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?
        }
        _ => {}
    }
    fs::create_dir_all(snaps).map_err(|e| TrainError::io(snaps, e))
}

/// The progress bar of a training run at `pos` of `total` steps (hidden unless `show`).
pub(crate) fn progress_bar(show: bool, stage: &str, total: usize, pos: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(total as u64);
    b.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(stage.to_string());
    b.set_position(pos as u64);
    b
}

/// A step's failure, with what to lower when the device ran out of memory.
fn out_of_memory(e: TrainError, batch_size: usize, world: usize) -> TrainError {
    let text = e.to_string();
    if !prip_core::error::is_out_of_memory(&text) {
        return e;
    }
    let per = if world > 1 {
        format!(" per process ({world} processes)")
    } else {
        String::new()
    };
    TrainError::OutOfMemory(format!(
        "out of device memory at batch_size {batch_size}{per}; lower [run] batch_size in the training config (or train on more GPUs)"
    ))
}

pub(crate) fn non_finite(
    step: usize,
    what: &str,
    last_good: Option<usize>,
    out: &Path,
) -> TrainError {
    let kept = match last_good {
        Some(s) => format!(
            "the last good checkpoint (step {s}) is kept in {}",
            out.display()
        ),
        None => format!("no step finished; {} is unchanged", out.display()),
    };
    TrainError::NonFinite(format!("step {step}: {what}; stopped, {kept}"))
}

/// Prepares the output checkpoint: copies `base` (manifest and trained parts) into `out`
/// unless `out` already holds a checkpoint, and returns it.
pub fn prepare_out(base: &Checkpoint, out: &Path) -> Result<Checkpoint> {
    if let (Ok(a), Ok(b)) = (fs::canonicalize(&base.dir), fs::canonicalize(out)) {
        if a == b {
            return Err(TrainError::Config(format!(
                "out is the base checkpoint ({}): training would overwrite it; choose another out",
                out.display()
            )));
        }
    }
    if out.join(MANIFEST).is_file() {
        return Ok(Checkpoint::open(out)?);
    }
    fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let mut m = base.manifest.clone();
    for bm in [&mut m.encoder, &mut m.decoder] {
        // Paths (not store names) were relative to the base checkpoint.
        let p = base.dir.join(&bm.model);
        if prip_core::store::ModelStore::asset(&bm.model).is_err() && p.exists() {
            bm.model = fs::canonicalize(&p)
                .map_err(|e| TrainError::io(&p, e))?
                .display()
                .to_string();
        }
    }
    let mut files = vec![m.head.weights.clone()];
    files.extend(m.systems.values().filter_map(|s| s.lora.clone()));
    for f in files {
        let src = base.file(&f);
        if src.is_file() {
            let dst = out.join(&f);
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
            }
            fs::copy(&src, &dst).map_err(|e| TrainError::io(&dst, e))?;
        }
    }
    write_manifest(out, &m)?;
    Ok(Checkpoint::open(out)?)
}

/// Writes the trained parts of `objective` into the checkpoint: head.safetensors, and
/// `lora/<system>.safetensors` registered in prip.toml for decoder stages.
pub fn export<O: Objective>(objective: &O, out: &Checkpoint, dtype: DType) -> Result<()> {
    let mut m = export_head(objective.params(), out, dtype)?;
    let cast = |t: Tensor| t.to_dtype(dtype);
    if let Some(system) = objective.system() {
        let mut set = lora_set(objective.params(), &m.lora)?;
        for (_, _, l) in &mut set {
            l.a = cast(l.a.clone())?;
            l.b = cast(l.b.clone())?;
        }
        let rel = format!("lora/{system}.safetensors");
        let path = out.file(&rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
        }
        let tmp = tmp_path(&path);
        prip_core::lora::save(&set, &tmp)?;
        readable(&tmp)?;
        rename(&tmp, &path)?;
        m.systems
            .entry(system.to_string())
            .or_insert_with(SystemConfig::default)
            .lora = Some(rel);
        write_manifest(&out.dir, &m)?;
    }
    Ok(())
}

/// Writes the head (pivot former and projection) of `params` into the checkpoint's
/// head.safetensors in `dtype`, atomically; returns the checkpoint's manifest.
pub(crate) fn export_head(
    params: &crate::params::ParamStore,
    out: &Checkpoint,
    dtype: DType,
) -> Result<Manifest> {
    let m = Checkpoint::open(&out.dir)?.manifest;
    let head = out.file(&m.head.weights);
    let tensors = head_tensors(params)?
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    save_atomic(&tensors, &head)?;
    Ok(m)
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let text = toml::to_string(m).map_err(|e| TrainError::Config(e.to_string()))?;
    write_atomic(&dir.join(MANIFEST), text.as_bytes())
}

/// Writes a resumable snapshot `step-N/` (every parameter, the optimiser's moments and
/// `state` as state.json) atomically, keeping the newest `keep`.
pub(crate) fn snapshot<S: Serialize>(
    snaps: &Path,
    params: &crate::params::ParamStore,
    opt: &AdamW,
    step: usize,
    state: &S,
    keep: usize,
) -> Result<()> {
    let name = format!("step-{step:08}");
    let tmp = snaps.join(format!("{name}.tmp"));
    let dst = snaps.join(&name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    save(&params.snapshot("")?, &tmp.join("params.safetensors"))?;
    save(&opt.state(), &tmp.join("optim.safetensors"))?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::Config(e.to_string()))?;
    write_synced(&tmp.join("state.json"), &json)?;
    if dst.exists() {
        fs::remove_dir_all(&dst).map_err(|e| TrainError::io(&dst, e))?;
    }
    rename(&tmp, &dst)?;
    let mut all = complete_snapshots(snaps)?;
    while all.len() > keep {
        let (_, old) = all.remove(0);
        fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    Ok(())
}

fn complete_snapshots(snaps: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(snaps) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Restores a snapshot written by [`snapshot`]: every parameter, the optimiser's moments
/// (at the step count `optimizer_steps` reads from the state) and the run's state.
pub(crate) fn restore<S: serde::de::DeserializeOwned>(
    dir: &Path,
    params: &crate::params::ParamStore,
    opt: &mut AdamW,
    optimizer_steps: impl Fn(&S) -> usize,
) -> Result<S> {
    let state: S = read_json(&dir.join("state.json"))?;
    params.restore(&load(&dir.join("params.safetensors"))?, dir)?;
    opt.restore(
        &load(&dir.join("optim.safetensors"))?,
        optimizer_steps(&state),
    )?;
    Ok(state)
}

pub(crate) fn latest_snapshot(snaps: &Path) -> Result<Option<(usize, PathBuf)>> {
    Ok(complete_snapshots(snaps)?.pop())
}

pub(crate) fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|m| m["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

fn read_losses(path: &Path) -> Result<Vec<(usize, f64)>> {
    let text = fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<StepMetrics>(l).ok())
        .map(|m| (m.step, m.loss))
        .collect())
}

pub(crate) fn load(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
}

/// Writes `tensors` to `path` as safetensors, readable by others and synced.
pub(crate) fn save(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(tensors, path)
        .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
    readable(path)?;
    fsync(path)
}

/// rw-r--r--, as any other file the run writes: the safetensors writer creates its file
/// through a private temporary (rw-------), and a checkpoint must stay readable by the
/// image server's user.
fn readable(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644))
            .map_err(|e| TrainError::io(path, e))?;
    }
    Ok(())
}

fn save_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = tmp_path(path);
    save(tensors, &tmp)?;
    rename(&tmp, path)
}

/// Writes `bytes` beside `path` and renames the file over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    write_synced(&tmp, bytes)?;
    rename(&tmp, path)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes).map_err(|e| TrainError::io(path, e))?;
    f.sync_all().map_err(|e| TrainError::io(path, e))
}

fn fsync(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainError::io(path, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| TrainError::io(to, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_names_the_batch_size_to_lower() {
        // As candle 0.11 prints cudarc's driver error.
        let oom = || {
            TrainError::Candle(candle_core::Error::Msg(
                "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
            ))
        };
        assert_eq!(
            out_of_memory(oom(), 32, 1).to_string(),
            "out of device memory at batch_size 32; lower [run] batch_size in the training config (or train on more GPUs)"
        );
        assert!(out_of_memory(oom(), 8, 4)
            .to_string()
            .contains("batch_size 8 per process (4 processes)"));
        let other = out_of_memory(TrainError::Config("bad".into()), 32, 1);
        assert_eq!(other.to_string(), "bad");
    }
}
