//! T5 encoder (the paper's Flan-T5 backbone of the Preference Encoder).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::nn::{attention, norm_weight, padding_bias, Linear, OpsMode, WEIGHT_INIT};

/// The T5 fields of a Hugging Face config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    /// MLP width.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Buckets of the relative position bias.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which all positions share a bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// "relu", "gated-gelu" (Flan-T5) or "gated-silu".
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
}

fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "relu".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedForward {
    Relu,
    GatedGelu,
    GatedSilu,
}

impl T5Config {
    fn feed_forward(&self) -> std::result::Result<FeedForward, String> {
        match self.feed_forward_proj.as_str() {
            "relu" => Ok(FeedForward::Relu),
            "gated-gelu" => Ok(FeedForward::GatedGelu),
            "gated-silu" => Ok(FeedForward::GatedSilu),
            other => Err(format!("unsupported T5 feed_forward_proj {other:?}")),
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ff_norm: Tensor,
    wi: Linear,
    wi_gate: Option<Linear>,
    wo: Linear,
}

/// A T5 encoder stack returning token states.
#[derive(Debug, Clone)]
pub struct T5Encoder {
    cfg: T5Config,
    ff: FeedForward,
    embed: Tensor,
    rel_bias: Tensor,
    layers: Vec<Layer>,
    final_norm: Tensor,
    mode: OpsMode,
}

impl T5Encoder {
    /// Loads `shared.weight` (or `encoder.embed_tokens.weight`) and `encoder.*`.
    pub fn load(cfg: &T5Config, vb: VarBuilder, mode: OpsMode) -> Result<Self> {
        let ff = cfg.feed_forward().map_err(candle_core::Error::Msg)?;
        let (d, inner) = (cfg.d_model, cfg.num_heads * cfg.d_kv);
        let name = if vb.contains_tensor("encoder.embed_tokens.weight")
            && !vb.contains_tensor("shared.weight")
        {
            "encoder.embed_tokens.weight"
        } else {
            "shared.weight"
        };
        let embed = vb.get_with_hints((cfg.vocab_size, d), name, WEIGHT_INIT)?;
        let e = vb.pp("encoder");
        let rel_bias = e.get_with_hints(
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            "block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            WEIGHT_INIT,
        )?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let b = e.pp(format!("block.{i}.layer"));
            let a = b.pp("0.SelfAttention");
            let f = b.pp("1.DenseReluDense");
            let (wi, wi_gate) = match ff {
                FeedForward::Relu => (Linear::load(&f.pp("wi"), d, cfg.d_ff, false)?, None),
                _ => (
                    Linear::load(&f.pp("wi_1"), d, cfg.d_ff, false)?,
                    Some(Linear::load(&f.pp("wi_0"), d, cfg.d_ff, false)?),
                ),
            };
            layers.push(Layer {
                attn_norm: norm_weight(&b, d, "0.layer_norm.weight")?,
                q: Linear::load(&a.pp("q"), d, inner, false)?,
                k: Linear::load(&a.pp("k"), d, inner, false)?,
                v: Linear::load(&a.pp("v"), d, inner, false)?,
                o: Linear::load(&a.pp("o"), inner, d, false)?,
                ff_norm: norm_weight(&b, d, "1.layer_norm.weight")?,
                wi,
                wi_gate,
                wo: Linear::load(&f.pp("wo"), cfg.d_ff, d, false)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            ff,
            embed,
            rel_bias,
            layers,
            final_norm: norm_weight(&e, d, "final_layer_norm.weight")?,
            mode,
        })
    }

    /// Model width.
    pub fn hidden_size(&self) -> usize {
        self.cfg.d_model
    }

    /// Token states (batch, seq, d_model) of ids (batch, seq) with `mask` marking real tokens.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let (d, h, hd) = (self.cfg.d_model, self.cfg.num_heads, self.cfg.d_kv);
        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let bias = self
            .position_bias(t)?
            .broadcast_add(&padding_bias(mask, x.dtype())?)?;
        let eps = self.cfg.layer_norm_epsilon;
        for l in &self.layers {
            let xn = self.mode.rms_norm(&x, &l.attn_norm, eps)?;
            let split = |y: Tensor| y.reshape((b, t, h, hd))?.transpose(1, 2);
            let q = split(l.q.forward(&xn)?)?;
            let k = split(l.k.forward(&xn)?)?;
            let v = split(l.v.forward(&xn)?)?;
            // T5 folds the 1/sqrt(d) scale into its initialisation.
            let y = attention(&q, &k, &v, Some(&bias), 1.0, self.mode)?;
            x = (x + l.o.forward(&y.transpose(1, 2)?.reshape((b, t, h * hd))?)?)?;
            let xn = self.mode.rms_norm(&x, &l.ff_norm, eps)?;
            let hidden = l.wi.forward(&xn)?;
            let hidden = match (&l.wi_gate, self.ff) {
                (Some(g), FeedForward::GatedGelu) => (g.forward(&xn)?.gelu()? * hidden)?,
                (Some(g), FeedForward::GatedSilu) => (g.forward(&xn)?.silu()? * hidden)?,
                _ => hidden.relu()?,
            };
            x = (x + l.wo.forward(&hidden)?)?;
        }
        self.mode.rms_norm(&x, &self.final_norm, eps)
    }

    /// (1, heads, t, t) relative position bias shared by every layer.
    fn position_bias(&self, t: usize) -> Result<Tensor> {
        let buckets: Vec<u32> = (0..t)
            .flat_map(|q| {
                (0..t).map(move |k| {
                    relative_bucket(
                        k as i64 - q as i64,
                        self.cfg.relative_attention_num_buckets,
                        self.cfg.relative_attention_max_distance,
                    )
                })
            })
            .collect();
        let idx = Tensor::from_vec(buckets, t * t, self.rel_bias.device())?;
        self.rel_bias
            .index_select(&idx, 0)?
            .reshape((t, t, self.cfg.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }
}

/// T5's bidirectional relative-position bucket of `rel = key - query`.
pub fn relative_bucket(rel: i64, num_buckets: usize, max_distance: usize) -> u32 {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if rel > 0 { half } else { 0 };
    let n = rel.abs();
    let max_exact = half / 2;
    bucket += if n < max_exact {
        n
    } else {
        let scaled = ((n as f64 / max_exact as f64).ln()
            / (max_distance as f64 / max_exact as f64).ln()
            * (half - max_exact) as f64) as i64;
        (max_exact + scaled).min(half - 1)
    };
    bucket as u32
}

#[cfg(test)]
mod tests {
    use super::relative_bucket;

    #[test]
    fn buckets_match_the_reference_formula() {
        // Values from transformers' T5Attention._relative_position_bucket with 32/128.
        assert_eq!(relative_bucket(0, 32, 128), 0);
        assert_eq!(relative_bucket(-1, 32, 128), 1);
        assert_eq!(relative_bucket(1, 32, 128), 17);
        assert_eq!(relative_bucket(-7, 32, 128), 7);
        assert_eq!(relative_bucket(-8, 32, 128), 8);
        assert_eq!(relative_bucket(-20, 32, 128), 10);
        assert_eq!(relative_bucket(-200, 32, 128), 15);
        assert_eq!(relative_bucket(200, 32, 128), 31);
    }
}
