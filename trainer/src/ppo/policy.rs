//! The PPO policy π(s | u) = D(s | E(u)): the Preference Encoder trains, the Prompt
//! Decoder is frozen but differentiable, so the log-probability of every generated token
//! flows back through the pivot into E. A value head on D's last
//! hidden states estimates each token's return; a frozen copy of the warm-up encoder is
//! the KL reference.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var, D};
use candle_nn::{Init, VarBuilder};
use prip_core::checkpoint::{FORMER_PREFIX, PROJECTION_PREFIX};
use prip_core::decoder::{DecoderLm, PrefixRow, PromptDecoder};
use prip_core::encoder::PreferenceEncoder;
use prip_core::nn::OpsMode;
use prip_core::sampling::GenerationConfig;
use prip_core::syntax::{self, ClipTokenEstimate, Dialect, Hygiene};

use crate::objective::{lora_set, Parts};
use crate::params::ParamStore;
use crate::Result;

/// Name prefix of the value head's parameters (kept in snapshots, never exported: a
/// PRIP checkpoint has no use for it).
pub const VALUE_PREFIX: &str = "value_head";

/// A batch of sampled refinements with what PPO needs of them.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The user prompts, as typed.
    pub prompts: Vec<String>,
    /// Decoder input rows of their free text.
    pub rows: Vec<PrefixRow>,
    /// Generated token ids per row (the actions), without the stop token.
    pub ids: Vec<Vec<u32>>,
    /// Added details after output hygiene, per row.
    pub details: Vec<Vec<String>>,
    /// The refined prompts, as the refiner returns them.
    pub refined: Vec<String>,
    /// Log-probability of each action under the policy that sampled it.
    pub logp: Vec<Vec<f64>>,
    /// Log-probability of each action under the reference (warm-up) encoder.
    pub ref_logp: Vec<Vec<f64>>,
    /// Value estimate before each action.
    pub values: Vec<Vec<f64>>,
}

/// The teacher-forced pass of a batch: one entry per action token, rows in order.
#[derive(Debug)]
pub struct Forward {
    /// log π(a_t | ·), [tokens].
    pub logp: Tensor,
    /// Entropy of π at each action, nats, [tokens].
    pub entropy: Tensor,
    /// V(s_t), [tokens].
    pub values: Tensor,
}

/// E (trainable), the reference E, D (frozen, differentiable) and the value head.
///
/// Rollouts are sampled by a second copy of D on the refiner's fast inference path (the
/// same weights in the CPU's quantized layout); log-probabilities, and so the PPO ratio,
/// come from the differentiable copy. The two differ by quantization noise only: the
/// behaviour policy is the trained one up to rounding.
#[derive(Debug)]
pub struct Policy {
    encoder: PreferenceEncoder,
    reference: PreferenceEncoder,
    decoder: PromptDecoder,
    sampler: PromptDecoder,
    value_w: Var,
    value_b: Var,
    params: ParamStore,
    generation: GenerationConfig,
    hygiene: Hygiene,
}

impl Policy {
    /// Builds the policy over `parts` (opened with the system whose LoRA the decoder
    /// uses). `reference` holds the warm-up head (`pivot_former.*` tensors).
    pub fn new(
        parts: &Parts,
        reference: &HashMap<String, Tensor>,
        generation: GenerationConfig,
        budget: usize,
    ) -> Result<Self> {
        let encoder = parts.encoder(OpsMode::Differentiable)?;
        let vb = VarBuilder::from_tensors(reference.clone(), DType::F32, &parts.device);
        let reference = PreferenceEncoder::new(
            parts.text.clone(),
            &parts.checkpoint.manifest.pivot,
            vb.pp(FORMER_PREFIX),
            OpsMode::Fused,
        )?;
        let (decoder, _frozen_lora) = parts.decoder()?;
        let lm = DecoderLm::load(&parts.decoder_path, &parts.device, OpsMode::Fused)?;
        let mut sampler = PromptDecoder::new(
            lm,
            encoder.pivot_width(),
            parts.checkpoint.manifest.template.clone(),
            parts
                .params
                .var_builder(&parts.device)
                .pp(PROJECTION_PREFIX),
        )?;
        let lora = lora_set(&parts.params, &parts.checkpoint.manifest.lora)?;
        sampler.set_lora(Some(&lora))?;
        let d_model = decoder.lm().lm.hidden_size();
        // Zero-initialised: the first values are 0 and the first value loss trains them.
        let value_w = parts.params.get(
            &format!("{VALUE_PREFIX}.weight"),
            (1, d_model),
            Init::Const(0.0),
            &parts.device,
        )?;
        let value_b = parts.params.get(
            &format!("{VALUE_PREFIX}.bias"),
            1,
            Init::Const(0.0),
            &parts.device,
        )?;
        Ok(Self {
            encoder,
            reference,
            decoder,
            sampler,
            value_w,
            value_b,
            params: parts.params.clone(),
            generation,
            hygiene: Hygiene {
                budget,
                ..Hygiene::default()
            },
        })
    }

    /// The parameters PPO trains: the pivot former and the value head.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.params
            .vars()
            .into_iter()
            .filter(|(n, _)| {
                n.starts_with(&format!("{FORMER_PREFIX}."))
                    || n.starts_with(&format!("{VALUE_PREFIX}."))
            })
            .collect()
    }

    /// Every parameter (for snapshots and export).
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// The pivots of `prompts` under the trained encoder (with gradient), [batch,
    /// num_queries, d_pivot].
    pub fn pivots(&self, prompts: &[String]) -> Result<Tensor> {
        let free = free_text(prompts);
        let refs: Vec<&str> = free.iter().map(String::as_str).collect();
        Ok(self.encoder.encode(&refs)?)
    }

    /// Samples one refinement per prompt (seeded) and scores its tokens under the
    /// current and the reference encoder, without gradient.
    pub fn rollout(&self, prompts: &[String], seeds: &[u64]) -> Result<Rollout> {
        let t0 = std::time::Instant::now();
        let free = free_text(prompts);
        let refs: Vec<&str> = free.iter().map(String::as_str).collect();
        let pivots = self.encoder.encode(&refs)?.detach();
        let ref_pivots = self.reference.encode(&refs)?.detach();
        let rows = self.decoder.rows(&refs)?;
        let batch = self.sampler.batch(&rows, Some(&pivots))?;
        let ids = candle_core::utils::with_threadpool(|| {
            self.sampler
                .generate(&batch, &rows, &self.generation, seeds)
        })?
        .ids;
        let sampled_s = t0.elapsed().as_secs_f64();
        let mut details = Vec::with_capacity(ids.len());
        let mut refined = Vec::with_capacity(ids.len());
        for (p, g) in prompts.iter().zip(&ids) {
            let raw = self.decoder.lm().decode(g)?;
            let d = self.hygiene.clean_details(p, &raw, &ClipTokenEstimate);
            refined.push(syntax::append_details(p, Dialect::default(), &d));
            details.push(d);
        }
        // Current and reference policy in one batch: the same rows under both pivots.
        let both_rows: Vec<PrefixRow> = rows.iter().chain(&rows).cloned().collect();
        let both_ids: Vec<Vec<u32>> = ids.iter().chain(&ids).cloned().collect();
        let both = Tensor::cat(&[&pivots, &ref_pivots], 0)?;
        let fwd = self.forward(&both_rows, &both_ids, &both, false)?;
        let logp = split(&fwd.logp, &both_ids)?;
        let values = split(&fwd.values, &both_ids)?;
        let n = prompts.len();
        tracing::debug!(
            "rollout: sampling {sampled_s:.1} s, scoring tokens {:.1} s",
            t0.elapsed().as_secs_f64() - sampled_s
        );
        Ok(Rollout {
            prompts: prompts.to_vec(),
            rows,
            details,
            refined,
            logp: logp[..n].to_vec(),
            ref_logp: logp[n..].to_vec(),
            values: values[..n].to_vec(),
            ids,
        })
    }

    /// Teacher-forced pass of `ids` after `rows` under `pivots` ([batch, q, d_pivot]).
    /// The value head reads detached hidden states, so only the policy loss reaches the
    /// encoder; `entropy_grad` keeps the entropy in the graph (for an entropy bonus).
    pub fn forward(
        &self,
        rows: &[PrefixRow],
        ids: &[Vec<u32>],
        pivots: &Tensor,
        entropy_grad: bool,
    ) -> Result<Forward> {
        let full: Vec<PrefixRow> = rows
            .iter()
            .zip(ids)
            .map(|(r, g)| PrefixRow {
                before: r.before.clone(),
                after: r.after.iter().chain(g).copied().collect(),
            })
            .collect();
        let b = self.decoder.batch(&full, Some(pivots))?;
        let lm = &self.decoder.lm().lm;
        let hidden = lm.forward_embeds(&b.embeds, &b.positions, &b.valid, None)?;
        let (n, w, d) = hidden.dims3()?;
        // Rows are left-padded, so each row's actions are its last tokens; the hidden
        // state one position earlier predicts each.
        let mut pick = Vec::new();
        let mut labels = Vec::new();
        for (i, g) in ids.iter().enumerate() {
            let start = w - g.len() - 1;
            for (j, &t) in g.iter().enumerate() {
                pick.push((i * w + start + j) as u32);
                labels.push(t);
            }
        }
        let dev = hidden.device();
        let tokens = labels.len();
        let pick = Tensor::from_vec(pick, tokens, dev)?;
        let h = hidden.reshape((n * w, d))?.index_select(&pick, 0)?;
        let logp_all = candle_nn::ops::log_softmax(&lm.logits(&h)?, D::Minus1)?;
        let labels = Tensor::from_vec(labels, (tokens, 1), dev)?;
        let logp = logp_all.gather(&labels, 1)?.squeeze(1)?;
        let for_entropy = if entropy_grad {
            logp_all
        } else {
            logp_all.detach()
        };
        let entropy = (for_entropy.exp()? * &for_entropy)?.sum(1)?.neg()?;
        let values = h
            .detach()
            .matmul(&self.value_w.as_tensor().t()?)?
            .broadcast_add(self.value_b.as_tensor())?
            .squeeze(1)?;
        Ok(Forward {
            logp,
            entropy,
            values,
        })
    }
}

fn free_text(prompts: &[String]) -> Vec<String> {
    prompts
        .iter()
        .map(|p| syntax::parse(p, Dialect::default()).free_text())
        .collect()
}

/// Splits a flat per-token tensor into rows of the lengths of `ids`.
fn split(flat: &Tensor, ids: &[Vec<u32>]) -> Result<Vec<Vec<f64>>> {
    let v: Vec<f32> = flat.to_vec1()?;
    let mut out = Vec::with_capacity(ids.len());
    let mut at = 0;
    for g in ids {
        out.push(v[at..at + g.len()].iter().map(|&x| f64::from(x)).collect());
        at += g.len();
    }
    Ok(out)
}
