//! Llama-architecture causal LM: the Prompt Decoder's backbone.
//!
//! Loads from Hugging Face safetensors (config.json field names) or from a GGUF file whose
//! weights stay quantized. Takes input *embeddings* rather than token ids so the pivot can
//! be spliced in as prefix embeddings, returns hidden states for every position (training
//! needs them all) and supports a KV cache with left-padded batches.

use std::sync::Arc;

use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::models::quantized::{self, CpuKernels};
use crate::nn::{
    attention, causal_padding_bias, forward_shared, norm_weight, Linear, Lora, OpsMode,
    QuantizedWeight, RotaryTable, WEIGHT_INIT,
};

/// The llama fields of a Hugging Face config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Rotary base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Context length.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the token embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Rotary scaling for a longer context (`{"rope_type": "llama3", "factor": 8.0, ...}`,
    /// `linear`, `yarn`, ...), as config.json writes it. Not implemented: [`Self::validate`]
    /// refuses any value but null, since plain rotary positions would silently give the
    /// model other positions than it was trained with.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

fn default_rms_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

impl LlamaConfig {
    /// Key/value head count.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// (input, output) width of the linear layer a LoRA `target` adapts (PEFT's module
    /// names: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`,
    /// `down_proj`); `None` for a name this model has no layer of.
    pub fn lora_target_shape(&self, target: &str) -> Option<(usize, usize)> {
        let (hd, q, kv) = (self.head_dim(), self.num_attention_heads, self.kv_heads());
        Some(match target {
            "q_proj" => (self.hidden_size, q * hd),
            "k_proj" | "v_proj" => (self.hidden_size, kv * hd),
            "o_proj" => (q * hd, self.hidden_size),
            "gate_proj" | "up_proj" => (self.hidden_size, self.intermediate_size),
            "down_proj" => (self.intermediate_size, self.hidden_size),
            _ => return None,
        })
    }

    /// Refuses configs whose shapes cannot work, or that ask for what this model does not
    /// implement (`rope_scaling`), before any tensor is touched.
    ///
    /// # Errors
    /// A one-line message naming the offending fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(format!(
                "rope_scaling {scaling} is not supported (only unscaled rotary positions are)"
            ));
        }
        let h = self.num_attention_heads;
        if self.hidden_size == 0 || h == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return Err("llama config has a zero dimension".into());
        }
        if !self.hidden_size.is_multiple_of(h) || !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "hidden_size {} does not split into {h} heads of even width",
                self.hidden_size
            ));
        }
        if self.kv_heads() == 0 || !h.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "{h} attention heads do not group over {} kv heads",
                self.kv_heads()
            ));
        }
        Ok(())
    }
}

/// Names of the projections a LoRA may target, in Hugging Face/PEFT spelling.
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Block {
    fn proj_mut(&mut self, name: &str) -> Option<&mut Linear> {
        Some(match name {
            "q_proj" => &mut self.q,
            "k_proj" => &mut self.k,
            "v_proj" => &mut self.v,
            "o_proj" => &mut self.o,
            "gate_proj" => &mut self.gate,
            "up_proj" => &mut self.up,
            "down_proj" => &mut self.down,
            _ => return None,
        })
    }
}

/// Per-layer key/value cache of one generation.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dims()[2])
            .unwrap_or(0)
    }

    /// True before the first forward pass.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps only the batch rows `rows` (u32 indices, in the new order): rows that have
    /// finished generating leave the cache.
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(rows, 0)?;
            *v = v.index_select(rows, 0)?;
        }
        Ok(())
    }
}

/// The token embedding table: dense (trainable, or a Hugging Face checkpoint), or the
/// GGUF's quantized table read row by row, which saves its f32 copy (113 MB for
/// SmolLM2-135M).
#[derive(Debug, Clone)]
enum Embedding {
    Dense(Tensor),
    /// (vocab, hidden + padding): rows are read, then cut to `hidden`.
    Quantized(Arc<QuantizedWeight>),
}

/// The decoder LM.
#[derive(Debug, Clone)]
pub struct Llama {
    cfg: LlamaConfig,
    embed: Embedding,
    device: Device,
    layers: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    rotary: RotaryTable,
    interleaved_rope: bool,
    mode: OpsMode,
}

impl Llama {
    /// Loads Hugging Face weights (`model.embed_tokens`, `model.layers.N...`, `lm_head`).
    pub fn load(cfg: &LlamaConfig, vb: VarBuilder, mode: OpsMode) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let (d, kvd) = (cfg.hidden_size, cfg.kv_heads() * cfg.head_dim());
        let m = vb.pp("model");
        let embed = m.get_with_hints((cfg.vocab_size, d), "embed_tokens.weight", WEIGHT_INIT)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = m.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let f = l.pp("mlp");
            layers.push(Block {
                attn_norm: norm_weight(&l, d, "input_layernorm.weight")?,
                q: Linear::load(&a.pp("q_proj"), d, d, false)?,
                k: Linear::load(&a.pp("k_proj"), d, kvd, false)?,
                v: Linear::load(&a.pp("v_proj"), d, kvd, false)?,
                o: Linear::load(&a.pp("o_proj"), d, d, false)?,
                mlp_norm: norm_weight(&l, d, "post_attention_layernorm.weight")?,
                gate: Linear::load(&f.pp("gate_proj"), d, cfg.intermediate_size, false)?,
                up: Linear::load(&f.pp("up_proj"), d, cfg.intermediate_size, false)?,
                down: Linear::load(&f.pp("down_proj"), cfg.intermediate_size, d, false)?,
            });
        }
        let norm = norm_weight(&m, d, "norm.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::dense(embed.clone(), None)?
        } else {
            Linear::load(&vb.pp("lm_head"), d, cfg.vocab_size, false)?
        };
        let rotary = RotaryTable::new(
            cfg.head_dim(),
            cfg.rope_theta,
            cfg.max_position_embeddings,
            vb.device(),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            device: embed.device().clone(),
            embed: Embedding::Dense(embed),
            layers,
            norm,
            lm_head,
            rotary,
            interleaved_rope: false,
            mode,
        })
    }

    /// Loads a GGUF llama. For inference ([`OpsMode::Fused`]) matrices stay quantized, in
    /// the layout [`quantized::prepare`] picks for this CPU (Q4_1 and other types without
    /// a SIMD kernel are requantized to Q8_0); the embedding table stays quantized and is
    /// read row by row. For training everything is dequantised. Norms are dense.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        mode: OpsMode,
    ) -> Result<Self> {
        let cfg = config_from_gguf(content)?;
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let kernels = CpuKernels::detect();
        let quantized_weight =
            |name: &str, t: candle_core::quantized::QTensor| -> Result<QuantizedWeight> {
                let i = gguf_input_width(&cfg, name, t.shape().dims2()?.1);
                let (t, layout) = quantized::prepare(t, i, device, kernels)?;
                Ok(QuantizedWeight {
                    matmul: QMatMul::from_qtensor(t)?,
                    pad_in: layout.padded_in - i,
                    batched_kernel: layout.batched_kernel,
                })
            };
        let linear = |name: &str, t: candle_core::quantized::QTensor| -> Result<Linear> {
            let (o, stored) = t.shape().dims2()?;
            let i = gguf_input_width(&cfg, name, stored);
            match mode {
                OpsMode::Fused => Ok(Linear::quantized(quantized_weight(name, t)?, o, i)),
                // Quantized matmuls pass no gradient to their input, which would cut
                // every LoRA below them off from the loss: training runs dense.
                OpsMode::Differentiable => {
                    Linear::dense(t.dequantize(device)?.narrow(1, 0, i)?, None)
                }
            }
        };
        let mut get = |name: &str| content.tensor(reader, name, device);
        let embed_q = get("token_embd.weight")?;
        let (vocab, d) = embed_q.shape().dims2()?;
        if d < cfg.hidden_size || vocab != cfg.vocab_size {
            candle_core::bail!(
                "token_embd is {vocab}x{d}, metadata says {}x{}",
                cfg.vocab_size,
                cfg.hidden_size
            );
        }
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let (qd, kvd) = (cfg.hidden_size, cfg.kv_heads() * cfg.head_dim());
        for i in 0..cfg.num_hidden_layers {
            let p = format!("blk.{i}");
            // A prepared file stacks the layers that read one input ([`LlamaPreparation`]).
            let mut stacked = |n: &str, widths: &[usize]| -> Result<Option<Vec<Linear>>> {
                let name = format!("{p}.{n}.weight");
                if mode != OpsMode::Fused || !content.tensor_infos.contains_key(&name) {
                    return Ok(None);
                }
                let t = get(&name)?;
                let rows = t.shape().dims2()?.0;
                if rows != widths.iter().sum::<usize>() {
                    candle_core::bail!("{name} has {rows} rows, expected {widths:?}");
                }
                let w = Arc::new(quantized_weight(&name, t)?);
                let mut offset = 0;
                Ok(Some(
                    widths
                        .iter()
                        .map(|&o| {
                            offset += o;
                            Linear::rows(w.clone(), offset - o, o, cfg.hidden_size)
                        })
                        .collect(),
                ))
            };
            let qkv = stacked("attn_qkv", &[qd, kvd, kvd])?;
            let gate_up = stacked("ffn_gate_up", &[cfg.intermediate_size; 2])?;
            let mut lin = |n: &str| {
                let name = format!("{p}.{n}.weight");
                linear(&name, get(&name)?)
            };
            let [q, k, v] = match qkv {
                Some(v) => v
                    .try_into()
                    .map_err(|_| candle_core::Error::Msg("qkv".into()))?,
                None => [lin("attn_q")?, lin("attn_k")?, lin("attn_v")?],
            };
            let [gate, up] = match gate_up {
                Some(v) => v
                    .try_into()
                    .map_err(|_| candle_core::Error::Msg("gate_up".into()))?,
                None => [lin("ffn_gate")?, lin("ffn_up")?],
            };
            layers.push(Block {
                q,
                k,
                v,
                o: lin("attn_output")?,
                gate,
                up,
                down: lin("ffn_down")?,
                attn_norm: get(&format!("{p}.attn_norm.weight"))?.dequantize(device)?,
                mlp_norm: get(&format!("{p}.ffn_norm.weight"))?.dequantize(device)?,
            });
        }
        let norm = get("output_norm.weight")?.dequantize(device)?;
        // SmolLM2 ties its head to the embedding: no output.weight.
        let output = get("output.weight").ok();
        let (embed, lm_head) = match (mode, output) {
            (OpsMode::Differentiable, output) => {
                let embed = embed_q.dequantize(device)?.narrow(1, 0, cfg.hidden_size)?;
                let head = match output {
                    Some(t) => linear("output.weight", t)?,
                    None => Linear::dense(embed.clone(), None)?,
                };
                (Embedding::Dense(embed), head)
            }
            (OpsMode::Fused, Some(t)) => {
                let embed = QuantizedWeight {
                    matmul: QMatMul::QTensor(Arc::new(embed_q)),
                    pad_in: 0,
                    batched_kernel: false,
                };
                (
                    Embedding::Quantized(Arc::new(embed)),
                    linear("output.weight", t)?,
                )
            }
            // One quantized table serves both the lookup and the tied head.
            (OpsMode::Fused, None) => {
                let table = Arc::new(quantized_weight("token_embd.weight", embed_q)?);
                let head = Linear::quantized_shared(table.clone(), vocab, cfg.hidden_size);
                (Embedding::Quantized(table), head)
            }
        };
        let rotary = RotaryTable::new(
            cfg.head_dim(),
            cfg.rope_theta,
            cfg.max_position_embeddings,
            device,
        )?;
        Ok(Self {
            cfg,
            embed,
            device: device.clone(),
            layers,
            norm,
            lm_head,
            rotary,
            // llama.cpp stores q/k permuted for the interleaved rotary pairing.
            interleaved_rope: true,
            mode,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Model width (the width the pivot projection must produce).
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Embeds token ids (batch, seq) -> (batch, seq, hidden).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let d = self.cfg.hidden_size;
        match &self.embed {
            Embedding::Dense(table) => table.index_select(&ids.flatten_all()?, 0)?,
            Embedding::Quantized(table) => table
                .matmul
                .embedding(&ids.flatten_all()?)?
                .narrow(1, 0, d)?,
        }
        .reshape((b, t, d))
    }

    /// Installs the LoRAs given as (layer, projection name, LoRA); `None` removes every
    /// LoRA.
    pub fn set_loras(&mut self, loras: Option<&[(usize, String, Lora)]>) -> Result<()> {
        for block in &mut self.layers {
            for name in LORA_TARGETS {
                if let Some(p) = block.proj_mut(name) {
                    p.set_lora(None)?;
                }
            }
        }
        for (layer, name, lora) in loras.unwrap_or(&[]) {
            let block = self.layers.get_mut(*layer).ok_or_else(|| {
                candle_core::Error::Msg(format!("LoRA for layer {layer}, model has fewer"))
            })?;
            block
                .proj_mut(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("unknown LoRA target {name}")))?
                .set_lora(Some(lora.clone()))?;
        }
        Ok(())
    }

    /// Runs the blocks over input embeddings (batch, seq, hidden).
    ///
    /// `positions` (batch, seq) are rotary positions (each row counts from its first real
    /// token, so left padding does not shift them); `key_valid` (batch, cached + seq) marks
    /// real tokens with 1. Returns final-normed hidden states (batch, seq, hidden).
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        if past + t > self.rotary.max_len() {
            candle_core::bail!(
                "sequence of {} tokens exceeds the context of {}",
                past + t,
                self.rotary.max_len()
            );
        }
        let (cos, sin) = self.rotary.gather(positions, embeds.dtype())?;
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize(self.layers.len(), None);
        }
        let (h, kvh, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.kv_heads(),
            self.cfg.head_dim(),
        );
        // Grouped-query attention without copying k/v once per query head: the query
        // heads that share a kv head are laid out as rows of one group, (b, kvh,
        // n_rep * t, hd), so each group multiplies its kv head directly. The bias rows
        // follow the same (n_rep, t) order.
        let n_rep = h / kvh;
        let bias = causal_padding_bias(key_valid, t, embeds.dtype())?;
        let bias = if n_rep > 1 && t > 1 {
            let l = bias.dim(3)?;
            bias.unsqueeze(2)?
                .broadcast_as((b, 1, n_rep, t, l))?
                .reshape((b, 1, n_rep * t, l))?
        } else {
            bias
        };
        let mut x = embeds.clone();
        for (i, blk) in self.layers.iter().enumerate() {
            let res = x.clone();
            let xn = self
                .mode
                .rms_norm(&x, &blk.attn_norm, self.cfg.rms_norm_eps)?;
            let [q, k, v]: [Tensor; 3] = forward_shared(&[&blk.q, &blk.k, &blk.v], &xn)?
                .try_into()
                .map_err(|_| candle_core::Error::Msg("q/k/v split".into()))?;
            let q = q.reshape((b, t, h, hd))?.transpose(1, 2)?;
            let k = k.reshape((b, t, kvh, hd))?.transpose(1, 2)?;
            let v = v.reshape((b, t, kvh, hd))?.transpose(1, 2)?;
            let q = self.mode.rope(&q, &cos, &sin, self.interleaved_rope)?;
            let mut k = self.mode.rope(&k, &cos, &sin, self.interleaved_rope)?;
            let mut v = v.contiguous()?;
            if let Some(c) = cache.as_deref_mut() {
                if let Some((pk, pv)) = &c.layers[i] {
                    k = Tensor::cat(&[pk, &k], 2)?;
                    v = Tensor::cat(&[pv, &v], 2)?;
                }
                c.layers[i] = Some((k.clone(), v.clone()));
            }
            let q = q.contiguous()?.reshape((b, kvh, n_rep * t, hd))?;
            let y = attention(&q, &k, &v, Some(&bias), 1.0 / (hd as f64).sqrt(), self.mode)?;
            let y = y
                .reshape((b, h, t, hd))?
                .transpose(1, 2)?
                .reshape((b, t, h * hd))?;
            x = (res + blk.o.forward(&y)?)?;
            let res = x.clone();
            let xn = self
                .mode
                .rms_norm(&x, &blk.mlp_norm, self.cfg.rms_norm_eps)?;
            let [gate, up]: [Tensor; 2] = forward_shared(&[&blk.gate, &blk.up], &xn)?
                .try_into()
                .map_err(|_| candle_core::Error::Msg("gate/up split".into()))?;
            let mlp = (candle_nn::ops::silu(&gate)? * up)?;
            x = (res + blk.down.forward(&mlp)?)?;
        }
        self.mode.rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)
    }

    /// Vocabulary logits of hidden states (..., hidden) -> (..., vocab), in f32.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)?.to_dtype(DType::F32)
    }
}

/// The logical input width of GGUF matrix `name` (its stored width may be padded by
/// [`quantized::prepare`]): the MLP width for `ffn_down`, the model width otherwise.
pub fn gguf_input_width(cfg: &LlamaConfig, name: &str, stored: usize) -> usize {
    let logical = if name.ends_with("ffn_down.weight") {
        cfg.intermediate_size
    } else if name.ends_with("attn_output.weight") {
        cfg.num_attention_heads * cfg.head_dim()
    } else {
        cfg.hidden_size
    };
    logical.min(stored)
}

/// How a llama GGUF is prepared for CPU inference ([`quantized::prepared_file`]): q/k/v
/// stacked as `blk.N.attn_qkv.weight`, gate/up as `blk.N.ffn_gate_up.weight` (names of
/// PRIP's prepared files; [`Llama::from_gguf`] reads both layouts).
#[derive(Debug, Clone)]
pub struct LlamaPreparation(pub LlamaConfig);

impl quantized::Preparation for LlamaPreparation {
    fn input_width(&self, name: &str, stored: usize) -> usize {
        gguf_input_width(&self.0, name, stored)
    }

    fn stacks(&self) -> Vec<(String, Vec<String>)> {
        (0..self.0.num_hidden_layers)
            .flat_map(|i| {
                let w = |n: &str| format!("blk.{i}.{n}.weight");
                [
                    (w("attn_qkv"), vec![w("attn_q"), w("attn_k"), w("attn_v")]),
                    (w("ffn_gate_up"), vec![w("ffn_gate"), w("ffn_up")]),
                ]
            })
            .collect()
    }
}

/// Reads a llama architecture from GGUF metadata (`llama.*` keys).
pub fn config_from_gguf(content: &gguf_file::Content) -> Result<LlamaConfig> {
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| "llama".into());
    if arch != "llama" {
        candle_core::bail!("GGUF architecture {arch:?} is not llama");
    }
    let get = |k: &str| {
        md.get(&format!("llama.{k}"))
            .ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata lacks llama.{k}")))
    };
    let u = |k: &str| -> Result<usize> { Ok(get(k)?.to_u32()? as usize) };
    let heads = u("attention.head_count")?;
    let vocab_size = match md.get("llama.vocab_size") {
        Some(v) => v.to_u32()? as usize,
        None => content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| candle_core::Error::Msg("GGUF has no token_embd.weight".into()))?,
    };
    Ok(LlamaConfig {
        vocab_size,
        hidden_size: u("embedding_length")?,
        intermediate_size: u("feed_forward_length")?,
        num_hidden_layers: u("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(u("attention.head_count_kv").unwrap_or(heads)),
        rms_norm_eps: get("attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
        rope_theta: md
            .get("llama.rope.freq_base")
            .map(|v| v.to_f32())
            .transpose()?
            .unwrap_or(10_000.0) as f64,
        max_position_embeddings: u("context_length").unwrap_or(2048),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        rope_scaling: rope_scaling_from_gguf(content),
    })
}

/// A GGUF's rotary scaling as a config.json `rope_scaling` value, so that
/// [`LlamaConfig::validate`] refuses a scaled GGUF as it refuses a scaled config.json:
/// llama.cpp's `llama.rope.scaling.type`/`.factor` keys, or the `rope_freqs.weight`
/// table its converter writes for llama3 scaling; `None` when the file has neither (or
/// type `none`).
fn rope_scaling_from_gguf(content: &gguf_file::Content) -> Option<serde_json::Value> {
    use serde_json::json;
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Some(json!({ "rope_type": "llama3", "rope_freqs": "rope_freqs.weight" }));
    }
    let md = &content.metadata;
    let kind = md
        .get("llama.rope.scaling.type")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let factor = md
        .get("llama.rope.scaling.factor")
        .and_then(|v| v.to_f32().ok());
    match (kind.as_deref(), factor) {
        (Some("none"), _) | (None, None | Some(1.0)) => None,
        _ => {
            Some(json!({ "rope_type": kind.unwrap_or_else(|| "linear".into()), "factor": factor }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M's config.json, the decoder's shapes.
    fn smollm2(rope_scaling: Option<serde_json::Value>) -> serde_json::Value {
        let mut cfg = serde_json::json!({
            "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
            "tie_word_embeddings": true
        });
        if let Some(v) = rope_scaling {
            cfg["rope_scaling"] = v;
        }
        cfg
    }

    fn parse(v: serde_json::Value) -> LlamaConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn absent_or_null_rope_scaling_is_accepted() {
        assert_eq!(parse(smollm2(None)).validate(), Ok(()));
        let null = parse(smollm2(Some(serde_json::Value::Null)));
        assert_eq!(null.rope_scaling, None);
        assert_eq!(null.validate(), Ok(()));
    }

    #[test]
    fn rope_scaling_is_refused_in_one_line_naming_it() {
        for scaling in [
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
            serde_json::json!({"type": "linear", "factor": 2.0}),
        ] {
            let cfg = parse(smollm2(Some(scaling.clone())));
            assert_eq!(cfg.rope_scaling.as_ref(), Some(&scaling));
            let err = cfg.validate().unwrap_err();
            assert!(err.starts_with("rope_scaling "), "{err}");
            assert!(
                err.contains("not supported") && !err.contains('\n'),
                "{err}"
            );
        }
    }
}
