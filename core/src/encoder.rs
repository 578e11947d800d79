//! The Preference Encoder E(v|u): a text backbone chosen by config.json `model_type`
//! followed by the pivot former.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use crate::files::{load_tokenizer, read_json, safetensors_vb};
use crate::models::bert::{mean_pool_normalized, Bert, BertConfig};
use crate::models::pivot::{PivotConfig, PivotFormer};
use crate::models::t5::{T5Config, T5Encoder};
use crate::nn::OpsMode;
use crate::{Error, Result};

/// A text backbone.
#[derive(Debug, Clone)]
pub enum Backbone {
    /// BERT family (all-MiniLM-L6-v2, the packaged default).
    Bert(Bert),
    /// T5 encoder (the paper's Flan-T5).
    T5(T5Encoder),
}

/// Token ids and mask of a padded batch.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    /// (batch, seq) u32 ids.
    pub ids: Tensor,
    /// (batch, seq) u32, 1 for real tokens.
    pub mask: Tensor,
}

/// A Hugging Face encoder model directory loaded for use: backbone plus tokenizer.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    backbone: Backbone,
    tokenizer: Tokenizer,
    max_len: usize,
    device: Device,
}

impl TextEncoder {
    /// Loads config.json, model.safetensors and tokenizer.json from `dir`.
    pub fn load(dir: &Path, device: &Device, mode: OpsMode) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let raw: serde_json::Value = read_json(&cfg_path)?;
        let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        let weights = dir.join("model.safetensors");
        let vb = safetensors_vb(&weights, DType::F32, device)?;
        let wrap = |e: candle_core::Error| Error::bad_file(&weights, e);
        let (backbone, max_len) = match model_type {
            "bert" => {
                let cfg: BertConfig =
                    serde_json::from_value(raw).map_err(|e| Error::bad_file(&cfg_path, e))?;
                cfg.validate().map_err(|e| Error::bad_file(&cfg_path, e))?;
                let m = Bert::load(&cfg, vb, mode).map_err(wrap)?;
                let max = m.max_len();
                (Backbone::Bert(m), max)
            }
            "t5" | "mt5" | "umt5" => {
                let cfg: T5Config =
                    serde_json::from_value(raw).map_err(|e| Error::bad_file(&cfg_path, e))?;
                (
                    Backbone::T5(T5Encoder::load(&cfg, vb, mode).map_err(wrap)?),
                    512,
                )
            }
            other => {
                return Err(Error::bad_file(
                    &cfg_path,
                    format!("model_type {other:?} is not a supported encoder (bert, t5)"),
                ))
            }
        };
        let mut tokenizer = load_tokenizer(&dir.join("tokenizer.json"))?;
        // sentence-transformers exports pad every input to a fixed 128 tokens; padding
        // and truncation are done here, with an explicit mask, instead.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Self {
            backbone,
            tokenizer,
            max_len,
            device: device.clone(),
        })
    }

    /// Backbone width.
    pub fn hidden_size(&self) -> usize {
        match &self.backbone {
            Backbone::Bert(m) => m.hidden_size(),
            Backbone::T5(m) => m.hidden_size(),
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokenises texts (with the model's special tokens), truncating each to the model's
    /// context, right-padded with id 0.
    pub fn tokenize(&self, texts: &[&str]) -> Result<EncodedBatch> {
        let mut rows = Vec::with_capacity(texts.len());
        for t in texts {
            let enc = self
                .tokenizer
                .encode(*t, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            let mut ids = enc.get_ids().to_vec();
            if ids.len() > self.max_len {
                // Keep the final special token (CLS ... SEP / ... </s>) where there is one.
                let last = *ids.last().unwrap_or(&0);
                ids.truncate(self.max_len - 1);
                ids.push(last);
            }
            rows.push(ids);
        }
        let width = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for r in &rows {
            ids.extend(
                r.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, width - r.len())),
            );
            mask.extend((0..width).map(|i| u32::from(i < r.len())));
        }
        let n = rows.len();
        Ok(EncodedBatch {
            ids: Tensor::from_vec(ids, (n, width), &self.device)?,
            mask: Tensor::from_vec(mask, (n, width), &self.device)?,
        })
    }

    /// Token states (batch, seq, hidden) of an encoded batch.
    pub fn states(&self, batch: &EncodedBatch) -> Result<Tensor> {
        Ok(match &self.backbone {
            Backbone::Bert(m) => m.forward(&batch.ids, &batch.mask)?,
            Backbone::T5(m) => m.forward(&batch.ids, &batch.mask)?,
        })
    }

    /// Mean-pooled, L2-normalised sentence embeddings (batch, hidden).
    pub fn sentence_embeddings(&self, texts: &[&str]) -> Result<Tensor> {
        let batch = self.tokenize(texts)?;
        Ok(mean_pool_normalized(&self.states(&batch)?, &batch.mask)?)
    }
}

/// E: backbone + pivot former, user prompt -> pivot (batch, num_queries, d_pivot).
#[derive(Debug, Clone)]
pub struct PreferenceEncoder {
    text: TextEncoder,
    former: PivotFormer,
}

impl PreferenceEncoder {
    /// Joins a loaded backbone with a pivot former built from `vb` (checkpoint weights,
    /// a VarMap for training, or a seeded initialiser for an untrained head).
    pub fn new(
        text: TextEncoder,
        cfg: &PivotConfig,
        vb: VarBuilder,
        mode: OpsMode,
    ) -> Result<Self> {
        cfg.validate(text.hidden_size()).map_err(Error::Config)?;
        let former = PivotFormer::load(cfg, text.hidden_size(), vb, mode)?;
        Ok(Self { text, former })
    }

    /// Pivot width.
    pub fn pivot_width(&self) -> usize {
        self.former.width()
    }

    /// Pivots of a batch of free-text prompts.
    pub fn encode(&self, texts: &[&str]) -> Result<Tensor> {
        let batch = self.text.tokenize(texts)?;
        let states = self.text.states(&batch)?;
        Ok(self.former.forward(&states, &batch.mask)?)
    }
}
