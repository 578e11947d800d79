//! BERT encoder (e.g. all-MiniLM-L6-v2): a Preference Encoder backbone and the frozen
//! sentence encoder of the text pivot.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::nn::{attention, gelu, norm_weight, padding_bias, Linear, OpsMode, WEIGHT_INIT};

/// The BERT fields of a Hugging Face config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Longest input.
    pub max_position_embeddings: usize,
    /// Segment vocabulary.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// Activation; only GELU variants are supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    /// Refuses configs whose shapes cannot work.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} does not split into {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.hidden_act.starts_with("gelu") {
            return Err(format!("unsupported BERT activation {:?}", self.hidden_act));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn load(vb: &VarBuilder, d: usize) -> Result<Self> {
        // Older checkpoints spell LayerNorm parameters gamma/beta.
        let (weight, bias) = if vb.contains_tensor("gamma") {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        let weight = norm_weight(vb, d, weight)?;
        let bias = vb.get_with_hints(d, bias, candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }
}

#[derive(Debug, Clone)]
struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    inter: Linear,
    out: Linear,
    out_norm: Norm,
}

/// A BERT encoder returning token states.
#[derive(Debug, Clone)]
pub struct Bert {
    cfg: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    mode: OpsMode,
}

impl Bert {
    /// Loads Hugging Face weights, with or without the `bert.` prefix.
    pub fn load(cfg: &BertConfig, vb: VarBuilder, mode: OpsMode) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let d = cfg.hidden_size;
        let e = vb.pp("embeddings");
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            layers.push(Layer {
                q: Linear::load(&a.pp("self.query"), d, d, true)?,
                k: Linear::load(&a.pp("self.key"), d, d, true)?,
                v: Linear::load(&a.pp("self.value"), d, d, true)?,
                attn_out: Linear::load(&a.pp("output.dense"), d, d, true)?,
                attn_norm: Norm::load(&a.pp("output.LayerNorm"), d)?,
                inter: Linear::load(&l.pp("intermediate.dense"), d, cfg.intermediate_size, true)?,
                out: Linear::load(&l.pp("output.dense"), cfg.intermediate_size, d, true)?,
                out_norm: Norm::load(&l.pp("output.LayerNorm"), d)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            word: e.get_with_hints((cfg.vocab_size, d), "word_embeddings.weight", WEIGHT_INIT)?,
            position: e.get(
                (cfg.max_position_embeddings, d),
                "position_embeddings.weight",
            )?,
            token_type: e.get_with_hints(
                (cfg.type_vocab_size, d),
                "token_type_embeddings.weight",
                WEIGHT_INIT,
            )?,
            emb_norm: Norm::load(&e.pp("LayerNorm"), d)?,
            layers,
            mode,
        })
    }

    /// Model width.
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Longest input in tokens.
    pub fn max_len(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    /// Token states (batch, seq, hidden) of ids (batch, seq) with `mask` (batch, seq)
    /// marking real tokens with 1.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "{t} tokens exceed BERT's {} positions",
                self.cfg.max_position_embeddings
            );
        }
        let d = self.cfg.hidden_size;
        let words = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let pos = self.position.narrow(0, 0, t)?.unsqueeze(0)?;
        let seg = self.token_type.narrow(0, 0, 1)?.unsqueeze(0)?;
        let x = words.broadcast_add(&pos)?.broadcast_add(&seg)?;
        let mut x = self.norm(&x, &self.emb_norm)?;
        let bias = padding_bias(mask, x.dtype())?;
        let h = self.cfg.num_attention_heads;
        let hd = d / h;
        for l in &self.layers {
            let split = |y: Tensor| y.reshape((b, t, h, hd))?.transpose(1, 2);
            let q = split(l.q.forward(&x)?)?;
            let k = split(l.k.forward(&x)?)?;
            let v = split(l.v.forward(&x)?)?;
            let y = attention(&q, &k, &v, Some(&bias), 1.0 / (hd as f64).sqrt(), self.mode)?;
            let y = y.transpose(1, 2)?.reshape((b, t, d))?;
            x = self.norm(&(l.attn_out.forward(&y)? + &x)?, &l.attn_norm)?;
            let y = l.out.forward(&gelu(&l.inter.forward(&x)?)?)?;
            x = self.norm(&(y + &x)?, &l.out_norm)?;
        }
        Ok(x)
    }

    fn norm(&self, x: &Tensor, n: &Norm) -> Result<Tensor> {
        self.mode
            .layer_norm(x, &n.weight, &n.bias, self.cfg.layer_norm_eps)
    }
}

/// Mean of token states over real tokens, L2-normalised: the sentence-transformers
/// embedding of all-MiniLM-L6-v2. (batch, seq, d) -> (batch, d).
pub fn mean_pool_normalized(states: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(states.dtype())?.unsqueeze(2)?;
    let sum = states.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = sum.broadcast_div(&count)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    mean.broadcast_div(&norm)?.to_dtype(DType::F32)
}
