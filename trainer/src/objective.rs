//! The training objectives: the encoder warm-up (MSE to the pivot target, Eq. 6) and the
//! decoder objective (LM loss on the system prompt given its pivot, Eq. 7) that serves
//! both the decoder warm-up and per-system adaptation.
//!
//! Every model part is built once through a [`ParamStore`], so the head and LoRAs
//! start from the checkpoint's saved values (or the same seeded initialisation the
//! refiner uses for an untrained head); each objective then names the parameters it
//! trains and leaves the rest frozen.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor, Var, D};
use candle_nn::Init;
use prip_core::checkpoint::Checkpoint;
use prip_core::decoder::{DecoderLm, PrefixRow, PromptDecoder};
use prip_core::encoder::{PreferenceEncoder, TextEncoder};
use prip_core::lora::{self, LoraConfig, LoraSet};
use prip_core::models::llama::{config_from_gguf, LlamaConfig};
use prip_core::models::pivot::PivotProjection;
use prip_core::nn::{Lora, OpsMode};
use prip_core::store::ModelStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::{Located, PreferenceRecord, Record, SystemRecord};
use crate::image::ImageEncoder;
use crate::params::ParamStore;
use crate::targets::{TargetBatch, Targets};
use crate::{Result, TrainError};

use prip_core::checkpoint::{FORMER_PREFIX, PROJECTION_PREFIX};

/// A batch's loss and how much text it covered.
#[derive(Debug)]
pub struct BatchLoss {
    /// Scalar loss; `None` when no record of the batch was usable.
    pub loss: Option<Tensor>,
    /// Tokens (decoder) or prompts (encoder) the loss is over.
    pub tokens: usize,
    /// Records that could not be used: (index in the batch, reason).
    pub rejected: Vec<(usize, String)>,
}

/// A training objective over one record type.
pub trait Objective {
    /// The corpus format.
    type Record: Record;
    /// Loss of a batch; `seed` makes any noise of this step reproducible.
    fn loss(&mut self, batch: &[Located<Self::Record>], seed: u64) -> Result<BatchLoss>;
    /// The parameters this objective trains.
    fn trainable(&self) -> Vec<(String, Var)>;
    /// Every parameter of the model (trained or not), for snapshots and export.
    fn params(&self) -> &ParamStore;
    /// The system whose LoRA this objective writes, if any.
    fn system(&self) -> Option<&str>;
}

/// The loaded parts of a checkpoint that training needs.
#[derive(Debug)]
pub struct Parts {
    /// The checkpoint being trained (its directory receives the results).
    pub checkpoint: Checkpoint,
    /// Every trainable tensor, initialised from the checkpoint.
    pub params: ParamStore,
    /// Frozen text backbone.
    pub text: TextEncoder,
    /// Path of the decoder LM.
    pub decoder_path: std::path::PathBuf,
    /// The decoder's architecture.
    pub decoder_config: LlamaConfig,
    /// Device.
    pub device: Device,
    /// Image encoder for `image` pivot sources.
    pub image: Option<ImageEncoder>,
}

impl Parts {
    /// Opens `checkpoint`, fetching base models through `store` when `fetch`, with the
    /// saved head and LoRA (`lora/<system>`, else the base LoRA) as initial values.
    pub fn open(
        checkpoint: Checkpoint,
        store: &ModelStore,
        fetch: bool,
        system: Option<&str>,
        device: &Device,
    ) -> Result<Self> {
        let m = &checkpoint.manifest;
        let enc_dir = checkpoint.encoder_dir(store, fetch)?;
        let decoder_path = checkpoint.decoder_path(store, fetch)?;
        // The backbone is frozen, so its fused kernels are fine (and faster).
        let text = TextEncoder::load(&enc_dir, device, OpsMode::Fused)?;
        let decoder_config = decoder_config(&decoder_path)?;

        let mut initial = HashMap::new();
        let head = checkpoint.head_file();
        if head.is_file() {
            initial.extend(load_tensors(&head)?);
        }
        let lora = system
            .and_then(|s| checkpoint.lora_file(s))
            .or_else(|| checkpoint.lora_file(prip_core::checkpoint::BASE_SYSTEM));
        if let Some(p) = lora.filter(|p| p.is_file()) {
            initial.extend(load_tensors(&p)?);
        }
        let params = ParamStore::new(m.head.seed, initial);
        Ok(Self {
            checkpoint,
            params,
            text,
            decoder_path,
            decoder_config,
            device: device.clone(),
            image: None,
        })
    }

    /// The preference encoder with its pivot former in `mode`, built from the params.
    pub fn encoder(&self, mode: OpsMode) -> Result<PreferenceEncoder> {
        let vb = self.params.var_builder(&self.device).pp(FORMER_PREFIX);
        let enc =
            PreferenceEncoder::new(self.text.clone(), &self.checkpoint.manifest.pivot, vb, mode)?;
        // The projection belongs to the head even when a stage does not train it.
        self.params.get(
            &format!("{PROJECTION_PREFIX}.weight"),
            (self.decoder_config.hidden_size, enc.pivot_width()),
            PivotProjection::weight_init(enc.pivot_width()),
            &self.device,
        )?;
        self.params.get(
            &format!("{PROJECTION_PREFIX}.bias"),
            self.decoder_config.hidden_size,
            Init::Const(0.0),
            &self.device,
        )?;
        Ok(enc)
    }

    /// Pivot targets shaped like this checkpoint's pivot.
    pub fn targets(&self) -> Result<Targets> {
        let p = &self.checkpoint.manifest.pivot;
        let t = Targets::new(
            self.text.clone(),
            p.num_queries,
            p.width(self.text.hidden_size()),
            &self.device,
        )?;
        match &self.image {
            Some(enc) => t.with_images(enc.clone()),
            None => Ok(t),
        }
    }

    /// The prompt decoder in differentiable mode with trainable LoRAs named for
    /// PEFT, and the projection from the params.
    pub fn decoder(&self) -> Result<(PromptDecoder, Vec<(String, Var)>)> {
        let lm = DecoderLm::load(&self.decoder_path, &self.device, OpsMode::Differentiable)?;
        let d_pivot = self
            .checkpoint
            .manifest
            .pivot
            .width(self.text.hidden_size());
        let vb = self.params.var_builder(&self.device).pp(PROJECTION_PREFIX);
        let mut dec =
            PromptDecoder::new(lm, d_pivot, self.checkpoint.manifest.template.clone(), vb)?;
        let (set, vars) = self.lora_vars(&self.checkpoint.manifest.lora)?;
        dec.set_lora(Some(&set))?;
        Ok((dec, vars))
    }

    fn lora_vars(&self, cfg: &LoraConfig) -> Result<(LoraSet, Vec<(String, Var)>)> {
        let c = &self.decoder_config;
        let mut set = Vec::new();
        let mut vars = Vec::new();
        for layer in 0..c.num_hidden_layers {
            for target in &cfg.targets {
                let (inp, out) = c
                    .lora_target_shape(target)
                    .ok_or_else(|| TrainError::Config(format!("unknown LoRA target {target:?}")))?;
                let a_name = lora::tensor_name(layer, target, "A");
                let b_name = lora::tensor_name(layer, target, "B");
                let bound = (1.0 / inp as f64).sqrt();
                let a = self.params.get(
                    &a_name,
                    (cfg.rank, inp),
                    Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                    &self.device,
                )?;
                // PEFT starts B at zero, which would leave A without gradient on the first
                // step; a tiny B changes the model by ~1e-6 and trains both from step one.
                let b = self.params.get(
                    &b_name,
                    (out, cfg.rank),
                    Init::Randn {
                        mean: 0.0,
                        stdev: 1e-4,
                    },
                    &self.device,
                )?;
                set.push((
                    layer,
                    target.clone(),
                    Lora {
                        a: a.as_tensor().clone(),
                        b: b.as_tensor().clone(),
                        scale: cfg.alpha / cfg.rank as f64,
                    },
                ));
                vars.push((a_name, a));
                vars.push((b_name, b));
            }
        }
        Ok((set, vars))
    }
}

/// The architecture of a decoder (GGUF file or HF directory) without loading weights.
pub fn decoder_config(path: &Path) -> Result<LlamaConfig> {
    if path.is_dir() {
        let p = path.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(|e| TrainError::io(&p, e))?;
        return serde_json::from_str(&text)
            .map_err(|e| TrainError::Config(format!("{}: {e}", p.display())));
    }
    let mut f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let content = gguf_file::Content::read(&mut f)
        .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
    Ok(config_from_gguf(&content)?)
}

fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
}

/// Which candidate of a preference record the encoder regresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetChoice {
    /// The best-scored candidate (the paper).
    #[default]
    Best,
    /// A random candidate (the paper's ablation).
    Random,
}

/// Encoder warm-up: MSE between E(u) and the pivot of the chosen candidate.
#[derive(Debug)]
pub struct EncoderObjective {
    encoder: PreferenceEncoder,
    targets: Targets,
    params: ParamStore,
    choice: TargetChoice,
}

impl EncoderObjective {
    /// Builds the objective over `parts`.
    pub fn new(parts: &Parts, choice: TargetChoice) -> Result<Self> {
        Ok(Self {
            encoder: parts.encoder(OpsMode::Differentiable)?,
            targets: parts.targets()?,
            params: parts.params.clone(),
            choice,
        })
    }
}

impl Objective for EncoderObjective {
    type Record = PreferenceRecord;

    fn loss(&mut self, batch: &[Located<PreferenceRecord>], seed: u64) -> Result<BatchLoss> {
        let mut rng = StdRng::seed_from_u64(seed);
        let chosen: Vec<usize> = batch
            .iter()
            .map(|r| match self.choice {
                TargetChoice::Best => r.record.best().unwrap_or(0),
                TargetChoice::Random => rng.random_range(0..r.record.candidates.len()),
            })
            .collect();
        let sources: Vec<_> = batch
            .iter()
            .zip(&chosen)
            .map(|(r, &c)| &r.record.candidates[c].source)
            .collect();
        let TargetBatch {
            targets,
            kept,
            failed: rejected,
        } = self.targets.many(&sources)?;
        if kept.is_empty() {
            return Ok(BatchLoss {
                loss: None,
                tokens: 0,
                rejected,
            });
        }
        let prompts: Vec<&str> = kept
            .iter()
            .map(|&i| batch[i].record.prompt.as_str())
            .collect();
        let pred = self.encoder.encode(&prompts)?;
        let loss = (pred - targets)?.sqr()?.mean_all()?;
        Ok(BatchLoss {
            loss: Some(loss),
            tokens: kept.len(),
            rejected,
        })
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.params
            .vars()
            .into_iter()
            .filter(|(n, _)| n.starts_with(&format!("{FORMER_PREFIX}.")))
            .collect()
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn system(&self) -> Option<&str> {
        None
    }
}

/// Decoder settings, `[decoder]` in a training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecoderSettings {
    /// Gaussian noise (in units of the pivot's RMS) added to the pivot, so the decoder
    /// learns to read the encoder's imperfect predictions, not only exact targets.
    pub noise_std: f64,
    /// Longest training sequence in tokens; longer system prompts are cut.
    pub max_tokens: usize,
    /// Condition on the pivot (false trains the paper's "decoder without pivot" ablation).
    pub use_pivot: bool,
}

impl Default for DecoderSettings {
    fn default() -> Self {
        Self {
            noise_std: 0.5,
            max_tokens: 96,
            use_pivot: true,
        }
    }
}

/// LM loss on what the decoder must write after the prefix, given the pivot.
#[derive(Debug)]
pub struct DecoderObjective {
    decoder: PromptDecoder,
    targets: Targets,
    params: ParamStore,
    lora: Vec<(String, Var)>,
    train_projection: bool,
    settings: DecoderSettings,
    system: String,
    end_id: u32,
}

impl DecoderObjective {
    /// The decoder objective writing the LoRA of `system`; the projection is trained too
    /// when `train_projection` (warm-up), frozen otherwise (adaptation).
    pub fn new(
        parts: &Parts,
        system: &str,
        train_projection: bool,
        settings: DecoderSettings,
    ) -> Result<Self> {
        // Builds the pivot former's tensors too, so a snapshot holds the whole head.
        parts.encoder(OpsMode::Differentiable)?;
        let (decoder, lora) = parts.decoder()?;
        let end_id = decoder
            .lm()
            .stop_ids
            .iter()
            .min()
            .copied()
            .or_else(|| decoder.lm().encode("\n").ok()?.first().copied())
            .ok_or_else(|| {
                TrainError::Config("the decoder has no end-of-text or newline token".into())
            })?;
        Ok(Self {
            decoder,
            targets: parts.targets()?,
            params: parts.params.clone(),
            lora,
            train_projection,
            settings,
            system: system.to_string(),
            end_id,
        })
    }

    /// Token rows (prefix row, target ids) of one record, or why it cannot be used.
    fn encode(&self, r: &SystemRecord) -> std::result::Result<(PrefixRow, Vec<u32>), String> {
        let (head, tail) = r.split();
        let row = self
            .decoder
            .rows(&[&head])
            .map_err(|e| e.to_string())?
            .remove(0);
        let mut target = self
            .decoder
            .lm()
            .encode(&format!(" {tail}"))
            .map_err(|e| e.to_string())?;
        let q = if self.settings.use_pivot {
            self.targets.shape().0
        } else {
            0
        };
        let fixed = row.before.len() + q + row.after.len();
        let context = self.decoder.lm().lm.config().max_position_embeddings;
        if fixed + 1 > context.min(self.settings.max_tokens) {
            return Err(format!(
                "prefix of {fixed} tokens leaves no room within max_tokens {} (model context {context})",
                self.settings.max_tokens
            ));
        }
        let room = self.settings.max_tokens.min(context) - fixed;
        if target.len() < room {
            target.push(self.end_id);
        } else {
            target.truncate(room);
        }
        Ok((row, target))
    }
}

impl Objective for DecoderObjective {
    type Record = SystemRecord;

    fn loss(&mut self, batch: &[Located<SystemRecord>], seed: u64) -> Result<BatchLoss> {
        let mut rejected = Vec::new();
        let mut encoded = Vec::new();
        let mut idx = Vec::new();
        for (i, r) in batch.iter().enumerate() {
            match self.encode(&r.record) {
                Ok(e) => {
                    encoded.push(e);
                    idx.push(i);
                }
                Err(why) => rejected.push((i, why)),
            }
        }
        let pivots = if self.settings.use_pivot {
            let sources: Vec<_> = idx.iter().map(|&i| batch[i].record.source()).collect();
            let refs: Vec<_> = sources.iter().collect();
            let TargetBatch {
                targets: t,
                kept,
                failed,
            } = self.targets.many(&refs)?;
            for (j, why) in failed {
                rejected.push((idx[j], why));
            }
            encoded = kept.iter().map(|&j| encoded[j].clone()).collect();
            let mut rng = StdRng::seed_from_u64(seed);
            let noise: Vec<f32> = (0..t.elem_count())
                .map(|_| prip_core::init::gaussian(&mut rng) as f32)
                .collect();
            let noise = Tensor::from_vec(noise, t.shape(), t.device())?;
            Some((t + (noise * self.settings.noise_std)?)?)
        } else {
            None
        };
        if encoded.is_empty() {
            return Ok(BatchLoss {
                loss: None,
                tokens: 0,
                rejected,
            });
        }
        let rows: Vec<PrefixRow> = encoded
            .iter()
            .map(|(row, target)| PrefixRow {
                before: row.before.clone(),
                after: row.after.iter().chain(target).copied().collect(),
            })
            .collect();
        let b = self.decoder.batch(&rows, pivots.as_ref())?;
        let lm = &self.decoder.lm().lm;
        let hidden = lm.forward_embeds(&b.embeds, &b.positions, &b.valid, None)?;
        let (n, w, d) = hidden.dims3()?;
        // Rows are left-padded, so each row's targets are its last tokens; the hidden
        // state one position earlier predicts each.
        let mut pick = Vec::new();
        let mut labels = Vec::new();
        for (i, (_, target)) in encoded.iter().enumerate() {
            let start = w - target.len() - 1;
            for (j, &t) in target.iter().enumerate() {
                pick.push((i * w + start + j) as u32);
                labels.push(t);
            }
        }
        let tokens = labels.len();
        let pick = Tensor::from_vec(pick, tokens, hidden.device())?;
        let h = hidden.reshape((n * w, d))?.index_select(&pick, 0)?;
        let logits = lm.logits(&h)?;
        let labels = Tensor::from_vec(labels, tokens, hidden.device())?;
        let loss = cross_entropy(&logits, &labels)?;
        Ok(BatchLoss {
            loss: Some(loss),
            tokens,
            rejected,
        })
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        let mut v = self.lora.clone();
        if self.train_projection && self.settings.use_pivot {
            v.extend(
                self.params
                    .vars()
                    .into_iter()
                    .filter(|(n, _)| n.starts_with(&format!("{PROJECTION_PREFIX}."))),
            );
        }
        v
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn system(&self) -> Option<&str> {
        Some(&self.system)
    }
}

/// Mean token cross-entropy, built from differentiable ops.
fn cross_entropy(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// The LoRA of a trained objective as a saveable set.
pub fn lora_set(params: &ParamStore, cfg: &LoraConfig) -> Result<LoraSet> {
    lora::from_tensors(&params.snapshot("base_model.")?, cfg).map_err(TrainError::Config)
}

/// Tensors of the head (pivot former and projection) for head.safetensors.
pub fn head_tensors(params: &ParamStore) -> Result<HashMap<String, Tensor>> {
    let mut m = params.snapshot(&format!("{FORMER_PREFIX}."))?;
    m.extend(params.snapshot(&format!("{PROJECTION_PREFIX}."))?);
    Ok(m)
}
