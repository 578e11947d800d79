//! The Prompt Decoder D(s|v): a llama LM that receives the pivot, projected into its
//! embedding width, as prefix embeddings inside a text template, and continues the user's
//! prompt in system language.

use std::collections::HashSet;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::files::{load_tokenizer, read_json, safetensors_vb};
use crate::lora::LoraSet;
use crate::models::llama::{KvCache, Llama, LlamaConfig, LlamaPreparation};
use crate::models::pivot::PivotProjection;
use crate::models::quantized::{self, CpuKernels};
use crate::nn::OpsMode;
use crate::sampling::{GenerationConfig, RowSampler};
use crate::{Error, Result};

/// Text around the pivot slot: `before` <pivot embeddings> `after` + " " + prompt + ",".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Text before the pivot slot.
    pub before: String,
    /// Text between the pivot slot and the user's prompt.
    pub after: String,
}

impl Default for Template {
    fn default() -> Self {
        Self {
            before: "<pivot>".into(),
            after: "</pivot> Prompt:".into(),
        }
    }
}

/// The decoder LM with its tokenizer.
#[derive(Debug, Clone)]
pub struct DecoderLm {
    /// The causal LM.
    pub lm: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Ids that end a generation (EOS and the like).
    pub stop_ids: HashSet<u32>,
    /// Id used for padding and for finished rows.
    pub pad_id: u32,
}

impl DecoderLm {
    /// Loads a GGUF file (tokenizer from a tokenizer.json beside it, else rebuilt from
    /// the GGUF metadata) or a Hugging Face directory (config.json, model.safetensors,
    /// tokenizer.json).
    pub fn load(path: &Path, device: &Device, mode: OpsMode) -> Result<Self> {
        if path.is_dir() {
            let cfg: LlamaConfig = read_json(&path.join("config.json"))?;
            cfg.validate()
                .map_err(|e| Error::bad_file(path.join("config.json"), e))?;
            let weights = path.join("model.safetensors");
            let vb = safetensors_vb(&weights, DType::F32, device)?;
            let lm = Llama::load(&cfg, vb, mode).map_err(|e| Error::bad_file(&weights, e))?;
            let tokenizer = load_tokenizer(&path.join("tokenizer.json"))?;
            let eos = read_json::<serde_json::Value>(&path.join("config.json"))?
                .get("eos_token_id")
                .and_then(|v| v.as_u64())
                .map(|v| v as u32);
            Self::assemble(lm, tokenizer, eos)
        } else {
            let prepared = Self::prepared(path, device, mode);
            let path = prepared.as_deref().unwrap_or(path);
            // GGUF metadata is ~100k small strings (the vocabulary): unbuffered, each
            // is two read syscalls.
            let mut file =
                std::io::BufReader::new(std::fs::File::open(path).map_err(|e| Error::io(path, e))?);
            let content =
                gguf_file::Content::read(&mut file).map_err(|e| Error::bad_file(path, e))?;
            let lm = Llama::from_gguf(&content, &mut file, device, mode)
                .map_err(|e| Error::bad_file(path, e))?;
            let beside = path.with_file_name("tokenizer.json");
            let tokenizer = if beside.exists() {
                load_tokenizer(&beside)?
            } else {
                crate::gguf_tokenizer::tokenizer_from_gguf(&content)
                    .map_err(|e| Error::bad_file(path, e))?
            };
            let eos = crate::gguf_tokenizer::special_tokens(&content).eos;
            Self::assemble(lm, tokenizer, eos)
        }
    }

    /// The CPU layout's copy of a GGUF ([`quantized::prepared_file`]), made on first use;
    /// `None` on a GPU, for training, or when the copy cannot be written (the matrices
    /// are then prepared in memory at every load).
    fn prepared(path: &Path, device: &Device, mode: OpsMode) -> Option<std::path::PathBuf> {
        if !device.is_cpu() || mode != OpsMode::Fused {
            return None;
        }
        let plan = |content: &gguf_file::Content| {
            crate::models::llama::config_from_gguf(content).map(LlamaPreparation)
        };
        match quantized::prepared_file(path, CpuKernels::detect(), plan) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(
                    "{}: no prepared copy ({e}); preparing in memory",
                    path.display()
                );
                None
            }
        }
    }

    fn assemble(lm: Llama, tokenizer: Tokenizer, eos: Option<u32>) -> Result<Self> {
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > lm.config().vocab_size {
            return Err(Error::Config(format!(
                "tokenizer has {vocab} tokens, the model only {}",
                lm.config().vocab_size
            )));
        }
        let mut stop_ids: HashSet<u32> = eos.into_iter().collect();
        for t in ["<|endoftext|>", "<|im_end|>", "</s>", "<|eot_id|>"] {
            if let Some(id) = tokenizer.token_to_id(t) {
                stop_ids.insert(id);
            }
        }
        let pad_id = eos.unwrap_or(0);
        Ok(Self {
            lm,
            tokenizer,
            stop_ids,
            pad_id,
        })
    }

    /// Whether token `id`'s text contains a newline. Asked of drawn tokens only: finding
    /// every newline token up front means decoding the whole vocabulary at each start
    /// (30 ms of SmolLM2-135M's load).
    pub fn is_newline(&self, id: u32) -> bool {
        self.tokenizer
            .decode(&[id], false)
            .is_ok_and(|s| s.contains('\n'))
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Text of ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// One row of decoder input: text, pivot slot, text.
#[derive(Debug, Clone)]
pub struct PrefixRow {
    /// Ids before the slot.
    pub before: Vec<u32>,
    /// Ids after the slot (template tail, the user prompt and its comma).
    pub after: Vec<u32>,
}

/// A left-padded batch of decoder inputs.
#[derive(Debug, Clone)]
pub struct DecoderBatch {
    /// (batch, seq, d_model)
    pub embeds: Tensor,
    /// (batch, seq) u32 rotary positions, counting from each row's first real token.
    pub positions: Tensor,
    /// (batch, seq) u32, 1 for real positions.
    pub valid: Tensor,
    /// Per row, the number of real positions.
    pub lengths: Vec<usize>,
}

/// Newline tokens a row may redraw before it has written a word (a vocabulary has a few
/// hundred at most; the model rarely insists past a handful).
const MAX_NEWLINE_REDRAWS: usize = 64;

/// The output of [`PromptDecoder::generate`] and what it cost.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    /// Generated ids per row, without the stop token.
    pub ids: Vec<Vec<u32>>,
    /// Wall time of the prefill (the whole padded batch through the LM), ms.
    pub prefill_ms: f64,
}

/// D: the LM, the pivot projection and the template.
#[derive(Debug, Clone)]
pub struct PromptDecoder {
    lm: DecoderLm,
    projection: PivotProjection,
    template: Template,
    before_ids: Vec<u32>,
}

impl PromptDecoder {
    /// Joins a decoder LM with a projection from `d_pivot`, built from `vb`.
    pub fn new(lm: DecoderLm, d_pivot: usize, template: Template, vb: VarBuilder) -> Result<Self> {
        let projection = PivotProjection::load(d_pivot, lm.lm.hidden_size(), vb)?;
        let before_ids = lm.encode(&template.before)?;
        Ok(Self {
            lm,
            projection,
            template,
            before_ids,
        })
    }

    /// The LM and tokenizer.
    pub fn lm(&self) -> &DecoderLm {
        &self.lm
    }

    /// Installs one system's LoRA (or none).
    pub fn set_lora(&mut self, set: Option<&LoraSet>) -> Result<()> {
        Ok(self.lm.lm.set_loras(set.map(Vec::as_slice))?)
    }

    /// The template rows for prompts (free text as the model should see it).
    pub fn rows(&self, prompts: &[&str]) -> Result<Vec<PrefixRow>> {
        self.rows_in(&self.template, &self.before_ids, prompts)
    }

    /// Template rows for prompts in another template (instruction baselines).
    pub fn rows_with(&self, template: &Template, prompts: &[&str]) -> Result<Vec<PrefixRow>> {
        self.rows_in(template, &self.lm.encode(&template.before)?, prompts)
    }

    fn rows_in(
        &self,
        template: &Template,
        before_ids: &[u32],
        prompts: &[&str],
    ) -> Result<Vec<PrefixRow>> {
        prompts
            .iter()
            .map(|p| {
                // Exactly one separator ends the row, whatever the prompt ended in.
                let p = p.trim().trim_end_matches([',', ' ']);
                let tail = if p.is_empty() {
                    template.after.clone()
                } else {
                    format!("{} {p},", template.after)
                };
                Ok(PrefixRow {
                    before: before_ids.to_vec(),
                    after: self.lm.encode(&tail)?,
                })
            })
            .collect()
    }

    /// Embeds rows around their pivots (batch, q, d_pivot), left-padded to one length.
    /// `pivots` of `None` drops the slot (the "decoder without pivot" ablation).
    pub fn batch(&self, rows: &[PrefixRow], pivots: Option<&Tensor>) -> Result<DecoderBatch> {
        let dev = self.lm.lm.device().clone();
        let projected = pivots.map(|p| self.projection.forward(p)).transpose()?;
        let q = projected
            .as_ref()
            .map(|p| p.dim(1))
            .transpose()?
            .unwrap_or(0);
        let lengths: Vec<usize> = rows
            .iter()
            .map(|r| r.before.len() + q + r.after.len())
            .collect();
        let width = lengths.iter().copied().max().unwrap_or(0);
        let d = self.lm.lm.hidden_size();
        let mut embeds = Vec::with_capacity(rows.len());
        let (mut positions, mut valid) = (Vec::new(), Vec::new());
        for (i, (r, &len)) in rows.iter().zip(&lengths).enumerate() {
            let pad = width - len;
            let mut parts = Vec::new();
            if pad > 0 {
                parts.push(Tensor::zeros((pad, d), DType::F32, &dev)?);
            }
            parts.push(self.embed_ids(&r.before)?);
            if let Some(p) = &projected {
                parts.push(p.get(i)?);
            }
            parts.push(self.embed_ids(&r.after)?);
            embeds.push(Tensor::cat(&parts, 0)?);
            positions.extend((0..width).map(|j| j.saturating_sub(pad) as u32));
            valid.extend((0..width).map(|j| u32::from(j >= pad)));
        }
        let n = rows.len();
        Ok(DecoderBatch {
            embeds: Tensor::stack(&embeds, 0)?,
            positions: Tensor::from_vec(positions, (n, width), &dev)?,
            valid: Tensor::from_vec(valid, (n, width), &dev)?,
            lengths,
        })
    }

    fn embed_ids(&self, ids: &[u32]) -> Result<Tensor> {
        let dev = self.lm.lm.device();
        if ids.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.lm.lm.hidden_size()),
                DType::F32,
                dev,
            )?);
        }
        let t = Tensor::new(ids, dev)?.unsqueeze(0)?;
        Ok(self.lm.lm.embed(&t)?.squeeze(0)?)
    }

    /// Token ids of banned words, in the spellings the LM may produce them.
    pub fn banned_sequences(&self, words: &[String]) -> Result<Vec<Vec<u32>>> {
        let mut out = Vec::new();
        for w in words.iter().map(|w| w.trim()).filter(|w| !w.is_empty()) {
            let mut cap = w.to_string();
            if let Some(f) = cap.get(0..1) {
                cap.replace_range(0..1, &f.to_uppercase());
            }
            for v in [
                w.to_string(),
                format!(" {w}"),
                cap.clone(),
                format!(" {cap}"),
            ] {
                let ids = self.lm.encode(&v)?;
                if !ids.is_empty() && !out.contains(&ids) {
                    out.push(ids);
                }
            }
        }
        Ok(out)
    }

    /// Continues every row of a batch, as one padded batch with a KV cache, until each
    /// stops (EOS, newline when configured, or `max_new_tokens`). A row may not stop
    /// before it has written a letter or digit: a refinement that ends at once adds
    /// nothing, so until then the stop tokens are masked out and only the token budget
    /// ends it. Rows that have stopped leave the batch (and the KV cache), so the rest
    /// decode as a smaller batch. Returns the generated ids of each row, without the stop
    /// token, and what the call cost.
    pub fn generate(
        &self,
        batch: &DecoderBatch,
        rows: &[PrefixRow],
        cfg: &GenerationConfig,
        seeds: &[u64],
    ) -> Result<Generated> {
        let n = rows.len();
        let banned = self.banned_sequences(&cfg.banned_words)?;
        let mut samplers: Vec<RowSampler> = rows
            .iter()
            .zip(seeds)
            .map(|(r, &s)| RowSampler::new(s, r.after.clone()))
            .collect();
        let mut done = vec![cfg.max_new_tokens == 0; n];
        let mut has_content = vec![false; n];
        let mut cache = KvCache::default();
        let lm = &self.lm.lm;
        let dev = lm.device();
        let t0 = std::time::Instant::now();
        let mut hidden = lm.forward_embeds(
            &batch.embeds,
            &batch.positions,
            &batch.valid,
            Some(&mut cache),
        )?;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut valid = batch.valid.clone();
        let mut next_pos: Vec<u32> = batch.lengths.iter().map(|&l| l as u32).collect();
        // Batch slot -> row of `rows`, for the rows still decoding.
        let mut active: Vec<usize> = (0..n).filter(|&i| !done[i]).collect();
        if active.len() < n {
            let keep = Tensor::from_vec(
                active.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                active.len(),
                dev,
            )?;
            hidden = hidden.index_select(&keep, 0)?;
            valid = valid.index_select(&keep, 0)?;
            cache.select_rows(&keep)?;
        }
        while !active.is_empty() {
            let last = hidden.narrow(1, hidden.dim(1)? - 1, 1)?;
            let mut logits = lm.logits(&last)?.squeeze(1)?.to_vec2::<f32>()?;
            let mut step_ids = Vec::with_capacity(active.len());
            for (&i, row) in active.iter().zip(logits.iter_mut()) {
                if !has_content[i] {
                    self.mask_stops(row);
                }
                let mut tok = samplers[i].next_token(row, cfg, &banned);
                // Nor may a newline end it then: drawn, it is excluded and redrawn (a
                // bounded number of times; past that the row ends as the model wants).
                let mut redraws = 0;
                while !has_content[i]
                    && cfg.stop_at_newline
                    && redraws < MAX_NEWLINE_REDRAWS
                    && self.lm.is_newline(tok)
                {
                    tok = samplers[i].redraw_without(row, cfg);
                    redraws += 1;
                }
                if !has_content[i] {
                    has_content[i] = self
                        .lm
                        .tokenizer
                        .decode(&[tok], true)
                        .is_ok_and(|t| t.chars().any(char::is_alphanumeric));
                }
                if self.lm.stop_ids.contains(&tok)
                    || (cfg.stop_at_newline && self.lm.is_newline(tok))
                {
                    samplers[i].context.pop();
                    done[i] = true;
                } else if samplers[i].generated().len() >= cfg.max_new_tokens {
                    done[i] = true;
                }
                step_ids.push(tok);
            }
            let slots: Vec<u32> = (0..active.len() as u32)
                .filter(|&s| !done[active[s as usize]])
                .collect();
            if slots.is_empty() {
                break;
            }
            if slots.len() < active.len() {
                step_ids = slots.iter().map(|&s| step_ids[s as usize]).collect();
                active = slots.iter().map(|&s| active[s as usize]).collect();
                let keep = Tensor::from_vec(slots, active.len(), dev)?;
                valid = valid.index_select(&keep, 0)?;
                cache.select_rows(&keep)?;
            }
            let m = active.len();
            let ids = Tensor::from_vec(step_ids, (m, 1), dev)?;
            let pos: Vec<u32> = active.iter().map(|&i| next_pos[i]).collect();
            let pos = Tensor::from_vec(pos, (m, 1), dev)?;
            valid = Tensor::cat(&[&valid, &Tensor::ones((m, 1), DType::U32, dev)?], 1)?;
            hidden = lm.forward_embeds(&lm.embed(&ids)?, &pos, &valid, Some(&mut cache))?;
            for &i in &active {
                next_pos[i] += 1;
            }
        }
        Ok(Generated {
            ids: samplers.iter().map(|s| s.generated().to_vec()).collect(),
            prefill_ms,
        })
    }

    /// Makes the end-of-text tokens unsampleable.
    fn mask_stops(&self, logits: &mut [f32]) {
        for &id in &self.lm.stop_ids {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}
