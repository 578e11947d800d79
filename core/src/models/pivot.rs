//! The pivot former (learned queries that read the encoder's token states and emit the
//! image pivot, num_queries x d_pivot, the shape of a BLIP-2 Q-Former output) and the
//! projection of the pivot into the decoder's embedding width.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::nn::{attention, gelu, padding_bias, Linear, OpsMode};

/// Architecture of the pivot former, stored in prip.toml under `[pivot]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PivotConfig {
    /// Learned query vectors (rows of the pivot).
    #[serde(default = "default_queries")]
    pub num_queries: usize,
    /// Width of the pivot; 0 means "the backbone's width".
    #[serde(default)]
    pub d_pivot: usize,
    /// Blocks of [self-attention, cross-attention, MLP].
    #[serde(default = "default_layers")]
    pub n_layers: usize,
    /// Attention heads.
    #[serde(default = "default_heads")]
    pub n_heads: usize,
    /// MLP width as a multiple of d_pivot.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: usize,
}

fn default_queries() -> usize {
    32
}
fn default_layers() -> usize {
    2
}
fn default_heads() -> usize {
    8
}
fn default_mlp_ratio() -> usize {
    4
}

impl Default for PivotConfig {
    fn default() -> Self {
        Self {
            num_queries: default_queries(),
            d_pivot: 0,
            n_layers: default_layers(),
            n_heads: default_heads(),
            mlp_ratio: default_mlp_ratio(),
        }
    }
}

impl PivotConfig {
    /// The pivot width for a backbone of width `d_backbone`.
    pub fn width(&self, d_backbone: usize) -> usize {
        if self.d_pivot == 0 {
            d_backbone
        } else {
            self.d_pivot
        }
    }

    /// Refuses shapes that cannot work.
    pub fn validate(&self, d_backbone: usize) -> std::result::Result<(), String> {
        let d = self.width(d_backbone);
        if self.num_queries == 0 || self.n_layers == 0 || self.mlp_ratio == 0 {
            return Err("pivot config has a zero dimension".into());
        }
        if self.n_heads == 0 || !d.is_multiple_of(self.n_heads) {
            return Err(format!(
                "d_pivot {d} does not split into {} heads",
                self.n_heads
            ));
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
        Ok(Self {
            weight: vb.get_with_hints(d, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(d, "bias", Init::Const(0.0))?,
        })
    }
    fn forward(&self, x: &Tensor, mode: OpsMode) -> Result<Tensor> {
        mode.layer_norm(x, &self.weight, &self.bias, 1e-5)
    }
}

fn linear(vb: &VarBuilder, i: usize, o: usize) -> Result<Linear> {
    let bound = 1.0 / (i as f64).sqrt();
    let w = vb.get_with_hints(
        (o, i),
        "weight",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    let b = vb.get_with_hints(o, "bias", Init::Const(0.0))?;
    Linear::dense(w, Some(b))
}

#[derive(Debug, Clone)]
struct Mha {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
}

impl Mha {
    fn load(vb: &VarBuilder, d: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            q: linear(&vb.pp("q"), d, d)?,
            k: linear(&vb.pp("k"), d, d)?,
            v: linear(&vb.pp("v"), d, d)?,
            o: linear(&vb.pp("o"), d, d)?,
            heads,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        bias: Option<&Tensor>,
        mode: OpsMode,
    ) -> Result<Tensor> {
        let (b, tq, d) = x.dims3()?;
        let tk = ctx.dim(1)?;
        let hd = d / self.heads;
        let q = self
            .q
            .forward(x)?
            .reshape((b, tq, self.heads, hd))?
            .transpose(1, 2)?;
        let k = self
            .k
            .forward(ctx)?
            .reshape((b, tk, self.heads, hd))?
            .transpose(1, 2)?;
        let v = self
            .v
            .forward(ctx)?
            .reshape((b, tk, self.heads, hd))?
            .transpose(1, 2)?;
        let y = attention(&q, &k, &v, bias, 1.0 / (hd as f64).sqrt(), mode)?;
        self.o.forward(&y.transpose(1, 2)?.reshape((b, tq, d))?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    self_norm: Norm,
    self_attn: Mha,
    cross_norm: Norm,
    cross_attn: Mha,
    mlp_norm: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// Learned queries -> pivot (batch, num_queries, d_pivot).
#[derive(Debug, Clone)]
pub struct PivotFormer {
    cfg: PivotConfig,
    d: usize,
    queries: Tensor,
    input_proj: Linear,
    blocks: Vec<Block>,
    final_norm: Norm,
    mode: OpsMode,
}

impl PivotFormer {
    /// Loads (or, from a VarMap builder, initialises) a pivot former reading a backbone
    /// of width `d_backbone`.
    pub fn load(
        cfg: &PivotConfig,
        d_backbone: usize,
        vb: VarBuilder,
        mode: OpsMode,
    ) -> Result<Self> {
        cfg.validate(d_backbone).map_err(candle_core::Error::Msg)?;
        let d = cfg.width(d_backbone);
        let queries = vb.get_with_hints(
            (cfg.num_queries, d),
            "queries",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let input_proj = linear(&vb.pp("input_proj"), d_backbone, d)?;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let l = vb.pp(format!("layers.{i}"));
            blocks.push(Block {
                self_norm: Norm::load(&l.pp("self_norm"), d)?,
                self_attn: Mha::load(&l.pp("self_attn"), d, cfg.n_heads)?,
                cross_norm: Norm::load(&l.pp("cross_norm"), d)?,
                cross_attn: Mha::load(&l.pp("cross_attn"), d, cfg.n_heads)?,
                mlp_norm: Norm::load(&l.pp("mlp_norm"), d)?,
                fc1: linear(&l.pp("mlp.fc1"), d, d * cfg.mlp_ratio)?,
                fc2: linear(&l.pp("mlp.fc2"), d * cfg.mlp_ratio, d)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            d,
            queries,
            input_proj,
            blocks,
            final_norm: Norm::load(&vb.pp("final_norm"), d)?,
            mode,
        })
    }

    /// Pivot width.
    pub fn width(&self) -> usize {
        self.d
    }

    /// Number of pivot rows.
    pub fn num_queries(&self) -> usize {
        self.cfg.num_queries
    }

    /// Pivot of backbone states (batch, seq, d_backbone) with `mask` (batch, seq).
    pub fn forward(&self, states: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let b = states.dim(0)?;
        let ctx = self.input_proj.forward(states)?;
        let bias = padding_bias(mask, ctx.dtype())?;
        let mut x = self
            .queries
            .unsqueeze(0)?
            .broadcast_as((b, self.cfg.num_queries, self.d))?
            .contiguous()?;
        for blk in &self.blocks {
            let h = blk.self_norm.forward(&x, self.mode)?;
            x = (&x + blk.self_attn.forward(&h, &h, None, self.mode)?)?;
            let h = blk.cross_norm.forward(&x, self.mode)?;
            x = (&x + blk.cross_attn.forward(&h, &ctx, Some(&bias), self.mode)?)?;
            let h = blk.mlp_norm.forward(&x, self.mode)?;
            x = (&x + blk.fc2.forward(&gelu(&blk.fc1.forward(&h)?)?)?)?;
        }
        self.final_norm.forward(&x, self.mode)
    }
}

/// Linear map of the pivot into the decoder's embedding width.
#[derive(Debug, Clone)]
pub struct PivotProjection {
    proj: Linear,
}

impl PivotProjection {
    /// Loads (or initialises small, so an untrained pivot barely perturbs the decoder)
    /// the projection d_pivot -> d_model.
    pub fn load(d_pivot: usize, d_model: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get_with_hints((d_model, d_pivot), "weight", Self::weight_init(d_pivot))?;
        let b = vb.get_with_hints(d_model, "bias", Init::Const(0.0))?;
        Ok(Self {
            proj: Linear::dense(w, Some(b))?,
        })
    }

    /// The initialisation of the weight [d_model, d_pivot] while untrained (the bias
    /// starts at zero); the trainer builds the same parameter with it.
    pub fn weight_init(d_pivot: usize) -> Init {
        Init::Randn {
            mean: 0.0,
            stdev: 0.02 / (d_pivot as f64).sqrt(),
        }
    }

    /// (batch, q, d_pivot) -> (batch, q, d_model).
    pub fn forward(&self, pivot: &Tensor) -> Result<Tensor> {
        self.proj.forward(pivot)
    }
}
