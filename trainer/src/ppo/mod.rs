//! `prip train ppo`: the paper's third stage (Section 3.4). The Preference Encoder is
//! trained with PPO on a reward of its refinements while the Prompt Decoder stays
//! frozen; the result is an ordinary PRIP checkpoint.
//!
//! One step: take a batch of user prompts, sample one refinement each in one decoder
//! batch ([`Policy::rollout`]), judge them ([`crate::reward`]), turn the score into
//! per-token rewards with a KL penalty to the warm-up encoder, estimate advantages with
//! GAE, then run a few epochs of the clipped PPO objective over minibatches. The paper
//! gives only the reward, that E alone trains, and steps/batch/lr; the rest (token-level
//! PPO, a value head on D, GAE, an adaptive KL penalty to the warm-up encoder) follows
//! RLHF practice (Ziegler et al. 2019; Promptist, Hao et al. 2023).
//!
//! Robustness: a sample whose reward could not be computed (dropped images or scores)
//! leaves the step and nothing else is lost; a step whose loss, KL or gradient is NaN or
//! infinite is undone (parameters and optimiser moments restored) and counted, and past
//! `max_bad_steps` the run stops with its last good checkpoint. Snapshots are atomic and
//! resumable exactly as the warm-up stages' are (same layout under `runs/ppo/`).

pub mod advantage;
pub mod policy;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use prip_core::checkpoint::{Checkpoint, FORMER_PREFIX};
use prip_core::device::DeviceSpec;
use prip_core::sampling::GenerationConfig;
use prip_core::store::ModelStore;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::distributed::World;
use crate::objective::Parts;
use crate::optim::AdamW;
use crate::reward::{
    ImagePreferenceReward, KeywordReward, Reward, RewardConfig, Sample, TextReward,
};
use crate::run::{
    export_head, latest_snapshot, load, non_finite, prepare_out, prepare_run_dir, progress_bar,
    restore, save, snapshot, truncate_metrics, write_atomic, Start,
};
use crate::{Result, TrainError};

pub use advantage::KlController;
pub use policy::{Policy, Rollout};

/// Name of PPO's run directory under `<out>/runs/`.
pub const RUN_NAME: &str = "ppo";

/// `[ppo]` of a training config. Defaults follow RLHF practice (Ziegler et
/// al. 2019; Promptist); the paper gives only steps, batch and learning rate, which are
/// `[run] steps = 1000`, `batch_size = 512` and `[optim] lr = 1e-3, schedule =
/// "constant"` in a config that reproduces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoSettings {
    /// Clip range ε of the probability ratio.
    pub clip_range: f64,
    /// Clip range of the value update.
    pub value_clip: f64,
    /// Discount γ.
    pub gamma: f64,
    /// GAE λ.
    pub lambda: f64,
    /// Initial KL penalty coefficient β.
    pub kl_coef: f64,
    /// Target KL per sequence (nats) of the adaptive β; absent keeps β fixed.
    pub kl_target: Option<f64>,
    /// Samples over which β may change by about 20%.
    pub kl_horizon: f64,
    /// Optimisation epochs over each batch of rollouts.
    pub epochs: usize,
    /// Rollouts per gradient step (default: the whole batch).
    pub minibatch_size: Option<usize>,
    /// Weight of the value loss.
    pub vf_coef: f64,
    /// Weight of the entropy bonus (0: entropy is only logged).
    pub entropy_coef: f64,
    /// Longest refinement sampled, tokens.
    pub max_new_tokens: usize,
    /// Sampling temperature of the rollouts (1: the policy itself).
    pub temperature: f64,
    /// Steps with a NaN or infinite loss or KL skipped before the run stops.
    pub max_bad_steps: usize,
    /// The system whose decoder LoRA the policy uses (default: the checkpoint's default).
    pub system: Option<String>,
    /// Longest a step's images may take to render, seconds: an image reward checks at
    /// start that the servers can render a batch (refined and original) in time.
    pub step_timeout_s: f64,
    /// Share of rendered samples or scores that may fail before the run stops.
    pub max_failed_share: f64,
}

impl Default for PpoSettings {
    fn default() -> Self {
        Self {
            clip_range: 0.2,
            value_clip: 0.2,
            gamma: 1.0,
            lambda: 0.95,
            kl_coef: 0.2,
            kl_target: Some(6.0),
            kl_horizon: 10_000.0,
            epochs: 4,
            minibatch_size: None,
            vf_coef: 0.1,
            entropy_coef: 0.0,
            max_new_tokens: 40,
            temperature: 1.0,
            max_bad_steps: 5,
            system: None,
            step_timeout_s: 3600.0,
            max_failed_share: 0.2,
        }
    }
}

impl PpoSettings {
    /// How rollouts are sampled: the policy itself (no top-k/top-p truncation, no
    /// repetition penalty), so the PPO ratio compares the distribution that drew them.
    pub fn generation(&self) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram: 0,
            stop_at_newline: true,
            banned_words: Vec::new(),
        }
    }

    /// Refuses settings that cannot train.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.clip_range) || !positive(self.value_clip) {
            return Err("ppo.clip_range and ppo.value_clip must be > 0".into());
        }
        if !(0.0..=1.0).contains(&self.gamma) || !(0.0..=1.0).contains(&self.lambda) {
            return Err("ppo.gamma and ppo.lambda must be within 0..1".into());
        }
        if !(self.kl_coef.is_finite() && self.kl_coef >= 0.0) {
            return Err("ppo.kl_coef must be >= 0".into());
        }
        if self.kl_target.is_some_and(|t| !positive(t)) || !positive(self.kl_horizon) {
            return Err("ppo.kl_target and ppo.kl_horizon must be > 0".into());
        }
        if self.epochs == 0 || self.minibatch_size == Some(0) || self.max_new_tokens == 0 {
            return Err(
                "ppo.epochs, ppo.minibatch_size and ppo.max_new_tokens must be >= 1".into(),
            );
        }
        if !positive(self.step_timeout_s) || !(0.0..=1.0).contains(&self.max_failed_share) {
            return Err(
                "ppo.step_timeout_s must be > 0 and ppo.max_failed_share within 0..1".into(),
            );
        }
        if !positive(self.temperature) {
            return Err("ppo.temperature must be > 0".into());
        }
        Ok(())
    }
}

/// One line of `runs/ppo/metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoMetrics {
    /// 1-based step.
    pub step: usize,
    /// Mean reward (score) of the step's judged samples.
    pub reward: f64,
    /// Mean KL to the reference per sequence, nats (Σ_t log π − log π_ref).
    pub kl: f64,
    /// β used for this step's rewards.
    pub kl_coef: f64,
    /// Clipped policy loss (mean of the last epoch).
    pub policy_loss: f64,
    /// Clipped value loss (mean of the last epoch).
    pub value_loss: f64,
    /// Mean policy entropy per token, nats.
    pub entropy: f64,
    /// Share of tokens whose ratio was clipped (last epoch).
    pub clip_fraction: f64,
    /// Mean generated tokens per sample.
    pub response_tokens: f64,
    /// Samples judged and trained on.
    pub samples: usize,
    /// Samples whose reward could not be computed (left out of this step).
    pub dropped: usize,
    /// Generated tokens per second of the whole step.
    pub tokens_per_s: f64,
    /// Images rendered per second (0 without an image reward).
    pub images_per_s: f64,
    /// Learning rate.
    pub lr: f64,
    /// Steps skipped so far for a non-finite loss or KL.
    pub skipped_steps: usize,
}

/// Where a PPO run is, saved with every snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PpoState {
    step: usize,
    total: usize,
    /// AdamW updates so far (epochs x minibatches per step), for its bias correction.
    optimizer_steps: usize,
    kl: KlController,
    skipped: usize,
    seed: u64,
}

/// What a finished PPO run reports.
#[derive(Debug, Clone)]
pub struct PpoSummary {
    /// Steps of the run.
    pub steps: usize,
    /// The step a resumed run started from.
    pub resumed_from: Option<usize>,
    /// Mean reward of the first and last tenth of the steps run in this process.
    pub first_reward: f64,
    /// See `first_reward`.
    pub last_reward: f64,
    /// Mean KL of the last tenth of the steps.
    pub last_kl: f64,
    /// Steps skipped for a non-finite loss or KL.
    pub skipped_steps: usize,
    /// Wall time of this process's part, seconds.
    pub seconds: f64,
    /// metrics.jsonl of the run.
    pub metrics: PathBuf,
    /// The run directory (plots: reward.svg, kl.svg, loss.svg).
    pub run_dir: PathBuf,
}

/// Builds the reward of a config.
pub fn open_reward(cfg: &TrainConfig, store: &ModelStore) -> Result<Box<dyn Reward>> {
    Ok(match &cfg.reward {
        RewardConfig::Text(t) => Box::new(TextReward::open(t, store)?),
        RewardConfig::Keyword { word } => Box::new(KeywordReward::new(word)),
        RewardConfig::Images => {
            let images = cfg.images.as_ref().ok_or_else(|| {
                TrainError::Config("reward kind \"images\" needs an [images] table".into())
            })?;
            let device = cfg.device.parse::<DeviceSpec>()?.open()?;
            Box::new(ImagePreferenceReward::open(
                images,
                &device,
                cfg.run.batch_size,
                std::time::Duration::from_secs_f64(cfg.ppo.step_timeout_s),
                cfg.ppo.max_failed_share,
            )?)
        }
    })
}

/// Runs `prip train ppo` as configured: `cfg.train` lists the user-prompt files (text,
/// one prompt per line, or JSONL with a "prompt" field), `cfg.base` the warmed-up
/// checkpoint, `cfg.out` the checkpoint written.
pub fn train(
    cfg: &TrainConfig,
    store: &ModelStore,
    reward: &mut dyn Reward,
    start: Start,
    progress: bool,
) -> Result<PpoSummary> {
    let s = &cfg.ppo;
    s.validate().map_err(TrainError::Config)?;
    if World::from_env()?.is_distributed() {
        return Err(TrainError::Config(
            "PPO runs as one process (rollouts are batched on one device); unset WORLD_SIZE or drop --gpus".into(),
        ));
    }
    let device = cfg.device.parse::<DeviceSpec>()?.open()?;
    let prompts = read_prompts(&cfg.train)?;
    let base = Checkpoint::find(&cfg.base, store)?;
    let out = prepare_out(&base, &cfg.out)?;
    let run_dir = out.dir.join("runs").join(RUN_NAME);
    let snaps = run_dir.join("snapshots");
    let metrics_path = run_dir.join("metrics.jsonl");
    let total = cfg.run.steps.unwrap_or_else(|| {
        ((prompts.len() as f64 * cfg.run.epochs) / cfg.run.batch_size as f64).ceil() as usize
    });
    let total = total.max(1);
    prepare_run_dir(&run_dir, &snaps, RUN_NAME, start, total)?;
    // Unless it continues a snapshot, a run starts from the base's encoder (its policy and
    // its KL reference), not from what an earlier run left in `out`.
    if !(start == Start::Resume && latest_snapshot(&snaps)?.is_some()) {
        let from = base.file(&base.manifest.head.weights);
        let to = out.file(&out.manifest.head.weights);
        if from.is_file() {
            fs::copy(&from, &to).map_err(|e| TrainError::io(&to, e))?;
        } else if to.is_file() {
            fs::remove_file(&to).map_err(|e| TrainError::io(&to, e))?;
        }
    }

    let m = &out.manifest;
    let system = s.system.clone().unwrap_or_else(|| m.default_system.clone());
    let budget = m
        .system(&system)?
        .budget
        .unwrap_or(prip_core::syntax::hygiene::CLIP_CHUNK_TOKENS);
    let parts = Parts::open(out.clone(), store, true, Some(&system), &device)?;
    // The reference is the encoder PPO starts from; kept in the run directory because
    // the checkpoint's head is overwritten by every export.
    let reference_path = run_dir.join("reference.safetensors");
    parts.encoder(prip_core::nn::OpsMode::Differentiable)?;
    let reference = if reference_path.is_file() {
        load(&reference_path)?
    } else {
        let r = parts.params.snapshot(&format!("{FORMER_PREFIX}."))?;
        save(&r, &reference_path)?;
        r
    };
    let policy = Policy::new(&parts, &reference, s.generation(), budget)?;
    let mut opt = AdamW::new(cfg.optim.clone(), policy.trainable())?;
    let mut state = PpoState {
        step: 0,
        total,
        optimizer_steps: 0,
        kl: KlController {
            coef: s.kl_coef,
            target: s.kl_target,
            horizon: s.kl_horizon,
        },
        skipped: 0,
        seed: cfg.run.seed,
    };
    let mut resumed_from = None;
    if start == Start::Resume {
        if let Some((step, dir)) = latest_snapshot(&snaps)? {
            let saved: PpoState = restore(&dir, policy.params(), &mut opt, |s: &PpoState| {
                s.optimizer_steps
            })?;
            state = PpoState { total, ..saved };
            resumed_from = Some(step);
            truncate_metrics(&metrics_path, step)?;
            tracing::info!("resumed ppo at step {step} of {total}");
        }
    }

    let bar = progress_bar(progress, RUN_NAME, total, state.step);
    let mut metrics = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| TrainError::io(&metrics_path, e))?;
    let started = Instant::now();
    let mut history: Vec<PpoMetrics> = Vec::new();
    let mut last_good = resumed_from;
    let trainable = policy.trainable();
    while state.step < total {
        let t0 = Instant::now();
        let batch = batch_of(&prompts, cfg.run.batch_size, state.step, state.seed);
        let seeds: Vec<u64> = (0..batch.len())
            .map(|i| mix(state.seed, state.step as u64, i as u64))
            .collect();
        // Undo point: a non-finite step leaves parameters and moments as they were.
        let saved_params: HashMap<String, Tensor> = trainable
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
            .collect::<candle_core::Result<_>>()?;
        let saved_opt = opt.state();
        let saved_opt_steps = opt.steps();
        let lr = cfg.optim.lr_at(state.step, total);
        let outcome = ppo_step(&policy, reward, &mut opt, s, &state.kl, &batch, &seeds, lr);
        let stats = match outcome {
            Ok(stats) => Some(stats),
            Err(TrainError::NonFinite(what)) => {
                for (n, v) in &trainable {
                    v.set(&saved_params[n])?;
                }
                opt.restore(&saved_opt, saved_opt_steps)?;
                state.skipped += 1;
                tracing::warn!(
                    "ppo step {}: {what}; step skipped ({} so far)",
                    state.step + 1,
                    state.skipped
                );
                if state.skipped > s.max_bad_steps {
                    bar.finish_and_clear();
                    return Err(non_finite(
                        state.step + 1,
                        &format!(
                            "{what} ({} steps skipped, more than ppo.max_bad_steps = {})",
                            state.skipped, s.max_bad_steps
                        ),
                        last_good,
                        &out.dir,
                    ));
                }
                None
            }
            Err(e) => return Err(e),
        };
        state.step += 1;
        state.optimizer_steps = opt.steps();
        if let Some(stats) = stats {
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            let m = PpoMetrics {
                step: state.step,
                reward: stats.reward,
                kl: stats.kl,
                kl_coef: state.kl.coef,
                policy_loss: stats.policy_loss,
                value_loss: stats.value_loss,
                entropy: stats.entropy,
                clip_fraction: stats.clip_fraction,
                response_tokens: stats.tokens as f64 / stats.samples.max(1) as f64,
                samples: stats.samples,
                dropped: stats.dropped,
                tokens_per_s: stats.generated as f64 / secs,
                images_per_s: stats.images as f64 / secs,
                lr,
                skipped_steps: state.skipped,
            };
            state.kl.update(stats.kl, stats.samples);
            let line = serde_json::to_string(&m).map_err(|e| TrainError::Config(e.to_string()))?;
            writeln!(metrics, "{line}").map_err(|e| TrainError::io(&metrics_path, e))?;
            let images = if m.images_per_s > 0.0 {
                format!(" · {:.1} img/s", m.images_per_s)
            } else {
                String::new()
            };
            bar.set_message(format!(
                "reward {:.3} · KL {:.2} · {:.0} tok/s{images}",
                m.reward, m.kl, m.tokens_per_s
            ));
            history.push(m);
        }
        bar.inc(1);
        if state.step.is_multiple_of(cfg.run.save_every) || state.step == total {
            snapshot(
                &snaps,
                policy.params(),
                &opt,
                state.step,
                &state,
                cfg.run.keep_snapshots,
            )?;
            export_head(policy.params(), &out, cfg.run.export_dtype.dtype())?;
            write_plots(&run_dir, &metrics_path)?;
            last_good = Some(state.step);
        }
    }
    bar.finish_and_clear();
    let tenth = (history.len() / 10).max(1);
    let mean = |xs: &[PpoMetrics], f: fn(&PpoMetrics) -> f64| {
        xs.iter().map(f).sum::<f64>() / xs.len().max(1) as f64
    };
    let first = &history[..tenth.min(history.len())];
    let last = &history[history.len().saturating_sub(tenth)..];
    Ok(PpoSummary {
        steps: total,
        resumed_from,
        first_reward: mean(first, |m| m.reward),
        last_reward: mean(last, |m| m.reward),
        last_kl: mean(last, |m| m.kl),
        skipped_steps: state.skipped,
        seconds: started.elapsed().as_secs_f64(),
        metrics: metrics_path,
        run_dir,
    })
}

/// What one step measured.
#[derive(Debug, Default)]
struct StepStats {
    reward: f64,
    kl: f64,
    policy_loss: f64,
    value_loss: f64,
    entropy: f64,
    clip_fraction: f64,
    samples: usize,
    dropped: usize,
    tokens: usize,
    generated: usize,
    images: usize,
}

/// Rollout, reward, advantages and the PPO epochs of one step. A non-finite loss, KL or
/// gradient is [`TrainError::NonFinite`] (the caller undoes the step).
#[allow(clippy::too_many_arguments)]
fn ppo_step(
    policy: &Policy,
    reward: &mut dyn Reward,
    opt: &mut AdamW,
    s: &PpoSettings,
    kl: &KlController,
    prompts: &[String],
    seeds: &[u64],
    lr: f64,
) -> Result<StepStats> {
    let t0 = Instant::now();
    let roll = policy.rollout(prompts, seeds)?;
    let rollout_s = t0.elapsed().as_secs_f64();
    let generated = roll.ids.iter().map(Vec::len).sum();
    let samples: Vec<Sample> = (0..prompts.len())
        .map(|i| Sample {
            prompt: &roll.prompts[i],
            refined: &roll.refined[i],
            details: &roll.details[i],
        })
        .collect();
    let judged = reward.judge(&samples)?;
    let judge_s = t0.elapsed().as_secs_f64() - rollout_s;
    // Samples with a reward and at least one token train; the rest leave the step.
    let keep: Vec<usize> = (0..prompts.len())
        .filter(|&i| judged.rewards.get(i).copied().flatten().is_some() && !roll.ids[i].is_empty())
        .collect();
    let dropped = prompts.len() - keep.len();
    if keep.is_empty() {
        return Err(TrainError::Config(
            "no sample of the batch could be judged (see the warnings above)".into(),
        ));
    }
    let scores: Vec<f64> = keep
        .iter()
        .map(|&i| judged.rewards[i].unwrap_or(0.0))
        .collect();
    let kls: Vec<f64> = keep
        .iter()
        .map(|&i| {
            roll.logp[i]
                .iter()
                .zip(&roll.ref_logp[i])
                .map(|(a, b)| a - b)
                .sum()
        })
        .collect();
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let (reward_mean, kl_mean) = (mean(&scores), mean(&kls));
    if !reward_mean.is_finite() || !kl_mean.is_finite() {
        return Err(TrainError::NonFinite(format!(
            "reward {reward_mean}, KL {kl_mean}"
        )));
    }
    // Per-token advantages and returns (GAE), whitened over the batch.
    let mut adv = Vec::new();
    let mut ret = Vec::new();
    for (k, &i) in keep.iter().enumerate() {
        let r = advantage::token_rewards(scores[k], &roll.logp[i], &roll.ref_logp[i], kl.coef);
        let (a, g) = advantage::gae(&r, &roll.values[i], s.gamma, s.lambda);
        adv.push(a);
        ret.push(g);
    }
    let mut flat_adv: Vec<f64> = adv.concat();
    advantage::whiten(&mut flat_adv);
    let mut at = 0;
    for a in &mut adv {
        let n = a.len();
        a.copy_from_slice(&flat_adv[at..at + n]);
        at += n;
    }

    let mb = s.minibatch_size.unwrap_or(keep.len()).min(keep.len());
    let mut order: Vec<usize> = (0..keep.len()).collect();
    let mut rng = StdRng::seed_from_u64(seeds.first().copied().unwrap_or(0));
    let mut last = Vec::new();
    for _ in 0..s.epochs {
        order.shuffle(&mut rng);
        last.clear();
        for chunk in order.chunks(mb) {
            let idx: Vec<usize> = chunk.iter().map(|&k| keep[k]).collect();
            let rows: Vec<_> = idx.iter().map(|&i| roll.rows[i].clone()).collect();
            let ids: Vec<Vec<u32>> = idx.iter().map(|&i| roll.ids[i].clone()).collect();
            let chosen: Vec<String> = idx.iter().map(|&i| roll.prompts[i].clone()).collect();
            let pivots = policy.pivots(&chosen)?;
            let fwd = policy.forward(&rows, &ids, &pivots, s.entropy_coef > 0.0)?;
            let dev = fwd.logp.device().clone();
            let (a, g) = (flat(&adv, chunk, &dev)?, flat(&ret, chunk, &dev)?);
            let (old_logp, old_v) = (
                flat(&roll.logp, &idx, &dev)?,
                flat(&roll.values, &idx, &dev)?,
            );
            let loss = ppo_loss(&fwd, &old_logp, &old_v, &a, &g, s)?;
            let total = loss.total.to_scalar::<f32>()?;
            if !total.is_finite() {
                return Err(TrainError::NonFinite(format!("loss {total}")));
            }
            let grads = loss.total.backward()?;
            opt.step(&grads, lr)?;
            last.push((
                loss.policy.to_scalar::<f32>()? as f64,
                loss.value.to_scalar::<f32>()? as f64,
                fwd.entropy.mean_all()?.to_scalar::<f32>()? as f64,
                loss.clip_fraction,
            ));
        }
    }
    tracing::debug!(
        "ppo step: rollout {rollout_s:.1} s, reward {judge_s:.1} s, update {:.1} s",
        t0.elapsed().as_secs_f64() - rollout_s - judge_s
    );
    let avg = |f: fn(&(f64, f64, f64, f64)) -> f64| {
        last.iter().map(f).sum::<f64>() / last.len().max(1) as f64
    };
    Ok(StepStats {
        reward: reward_mean,
        kl: kl_mean,
        policy_loss: avg(|x| x.0),
        value_loss: avg(|x| x.1),
        entropy: avg(|x| x.2),
        clip_fraction: avg(|x| x.3),
        samples: keep.len(),
        dropped,
        tokens: keep.iter().map(|&i| roll.ids[i].len()).sum(),
        generated,
        images: judged.images,
    })
}

/// The rows `pick` of per-token values, concatenated: [tokens].
fn flat(rows: &[Vec<f64>], pick: &[usize], dev: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<f32> = pick
        .iter()
        .flat_map(|&i| rows[i].iter().map(|&x| x as f32))
        .collect();
    let n = v.len();
    Ok(Tensor::from_vec(v, n, dev)?)
}

/// The clipped PPO objective of one minibatch.
struct PpoLoss {
    total: Tensor,
    policy: Tensor,
    value: Tensor,
    clip_fraction: f64,
}

/// L = mean_t max(−A·ρ, −A·clip(ρ, 1±ε)) + c_v · ½ mean_t max((V − R)², (V_clip − R)²)
/// − c_H · mean_t H, with ρ = exp(log π − log π_old) (Schulman et al. 2017).
fn ppo_loss(
    fwd: &policy::Forward,
    old_logp: &Tensor,
    old_values: &Tensor,
    adv: &Tensor,
    returns: &Tensor,
    s: &PpoSettings,
) -> Result<PpoLoss> {
    let ratio = (&fwd.logp - old_logp)?.exp()?;
    let clipped = ratio.clamp(1.0 - s.clip_range, 1.0 + s.clip_range)?;
    let pg1 = (ratio.neg()? * adv)?;
    let pg2 = (clipped.neg()? * adv)?;
    let policy = pg1.maximum(&pg2)?.mean_all()?;
    let clip_fraction = {
        let r: Vec<f32> = ratio.detach().to_vec1()?;
        let n = r.len().max(1) as f64;
        r.iter()
            .filter(|&&x| (f64::from(x) - 1.0).abs() > s.clip_range)
            .count() as f64
            / n
    };
    let v_clipped =
        (old_values + (&fwd.values - old_values)?.clamp(-s.value_clip, s.value_clip)?)?;
    let l1 = (&fwd.values - returns)?.sqr()?;
    let l2 = (v_clipped - returns)?.sqr()?;
    let value = (l1.maximum(&l2)?.mean_all()? * 0.5)?;
    let mut total = (&policy + (&value * s.vf_coef)?)?;
    if s.entropy_coef > 0.0 {
        total = (total - (fwd.entropy.mean_all()? * s.entropy_coef)?)?;
    }
    Ok(PpoLoss {
        total,
        policy,
        value,
        clip_fraction,
    })
}

/// The prompts of step `step`: consecutive slices of a per-epoch shuffle, so a resumed
/// run takes exactly the batches an uninterrupted one would.
fn batch_of(prompts: &[String], batch: usize, step: usize, seed: u64) -> Vec<String> {
    let n = prompts.len();
    (0..batch)
        .map(|j| {
            let k = step * batch + j;
            let (epoch, at) = (k / n, k % n);
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut StdRng::seed_from_u64(mix(seed, epoch as u64, 0x5EED)));
            prompts[order[at]].clone()
        })
        .collect()
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    seed ^ (a.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (b.wrapping_add(1)).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// User prompts from text files (one per line) or JSONL files (a "prompt" field).
pub fn read_prompts(files: &[PathBuf]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for f in files {
        let text = fs::read_to_string(f).map_err(|e| TrainError::io(f, e))?;
        let jsonl = f.extension().is_some_and(|e| e == "jsonl" || e == "json");
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if jsonl {
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| TrainError::Config(format!("{}:{}: {e}", f.display(), n + 1)))?;
                match v["prompt"].as_str() {
                    Some(p) if !p.trim().is_empty() => out.push(p.trim().to_string()),
                    _ => {
                        return Err(TrainError::Config(format!(
                            "{}:{}: no \"prompt\" string",
                            f.display(),
                            n + 1
                        )))
                    }
                }
            } else {
                out.push(line.to_string());
            }
        }
    }
    if out.is_empty() {
        return Err(TrainError::Config(
            "the prompt files hold no prompts".into(),
        ));
    }
    Ok(out)
}

/// reward.svg, kl.svg and loss.svg of the run, from its metrics.
fn write_plots(run_dir: &Path, metrics: &Path) -> Result<()> {
    let text = fs::read_to_string(metrics).map_err(|e| TrainError::io(metrics, e))?;
    let rows: Vec<PpoMetrics> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let series = |f: fn(&PpoMetrics) -> f64| -> Vec<(f64, f64)> {
        rows.iter().map(|m| (m.step as f64, f(m))).collect()
    };
    let charts = [
        (
            "reward.svg",
            "PPO reward",
            vec![("reward", series(|m| m.reward))],
        ),
        (
            "kl.svg",
            "KL to the warm-up policy (nats per sequence)",
            vec![("KL", series(|m| m.kl)), ("β", series(|m| m.kl_coef))],
        ),
        (
            "loss.svg",
            "PPO losses",
            vec![
                ("policy loss", series(|m| m.policy_loss)),
                ("value loss", series(|m| m.value_loss)),
            ],
        ),
    ];
    for (file, title, lines) in charts {
        let svg = crate::plot::line_chart(title, "step", &lines);
        write_atomic(&run_dir.join(file), svg.as_bytes())?;
    }
    Ok(())
}
