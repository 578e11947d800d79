//! Building blocks shared by every model: the fused-or-differentiable op switch, linear
//! layers over dense or quantized weights with optional LoRA, and rotary embeddings.
//!
//! candle's fused softmax, rms_norm, layer_norm and rope have no backward pass: a model
//! trained through them silently leaves most parameters without gradient. Every model in
//! this crate therefore takes an [`OpsMode`]; inference uses the fused kernels, training
//! the slow, differentiable compositions. One model definition serves both.

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Result, Tensor, D};

/// Which implementation of the normalisation/softmax/rope ops a forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpsMode {
    /// candle's fused kernels: fast, no backward pass. For inference.
    #[default]
    Fused,
    /// Compositions of elementary ops that candle can differentiate. For training.
    Differentiable,
}

impl OpsMode {
    /// Softmax over the last dimension.
    pub fn softmax_last_dim(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            OpsMode::Fused => candle_nn::ops::softmax_last_dim(xs),
            OpsMode::Differentiable => candle_nn::ops::softmax(xs, D::Minus1),
        }
    }

    /// RMS normalisation over the last dimension, scaled by `weight`.
    pub fn rms_norm(self, xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        match self {
            OpsMode::Fused => candle_nn::ops::rms_norm(&xs.contiguous()?, weight, eps as f32),
            OpsMode::Differentiable => candle_nn::ops::rms_norm_slow(xs, weight, eps as f32),
        }
    }

    /// Layer normalisation over the last dimension.
    pub fn layer_norm(
        self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        match self {
            OpsMode::Fused => {
                candle_nn::ops::layer_norm(&xs.contiguous()?, weight, bias, eps as f32)
            }
            OpsMode::Differentiable => {
                candle_nn::ops::layer_norm_slow(xs, weight, bias, eps as f32)
            }
        }
    }

    /// Rotary position embedding of `xs` (batch, heads, seq, head_dim) with per-row
    /// `cos`/`sin` of shape (batch, seq, head_dim / 2). `interleaved` selects the GGUF
    /// (llama.cpp) pairing of dimensions rather than the Hugging Face half split.
    pub fn rope(
        self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        interleaved: bool,
    ) -> Result<Tensor> {
        match (self, interleaved) {
            (OpsMode::Fused, false) => candle_nn::rotary_emb::rope(&xs.contiguous()?, cos, sin),
            (OpsMode::Fused, true) => candle_nn::rotary_emb::rope_i(&xs.contiguous()?, cos, sin),
            (OpsMode::Differentiable, false) => rope_half_slow(xs, cos, sin),
            (OpsMode::Differentiable, true) => rope_interleaved_slow(xs, cos, sin),
        }
    }
}

fn rope_half_slow(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    let half = xs.dim(D::Minus1)? / 2;
    let x1 = xs.narrow(D::Minus1, 0, half)?;
    let x2 = xs.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    xs.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

fn rope_interleaved_slow(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = xs.dims4()?;
    let cos = cos.reshape((b, 1, t, d / 2, 1))?;
    let sin = sin.reshape((b, 1, t, d / 2, 1))?;
    let x = xs.reshape((b, h, t, d / 2, 2))?;
    let x0 = x.narrow(D::Minus1, 0, 1)?;
    let x1 = x.narrow(D::Minus1, 1, 1)?;
    let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::cat(&[y0, y1], D::Minus1)?.reshape((b, h, t, d))
}

/// Precomputed rotary frequencies for positions `0..max_len`.
#[derive(Debug, Clone)]
pub struct RotaryTable {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryTable {
    /// Builds the table for a head width and base `theta`.
    pub fn new(
        head_dim: usize,
        theta: f64,
        max_len: usize,
        dev: &candle_core::Device,
    ) -> Result<Self> {
        let inv: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / (theta as f32).powf(i as f32 / head_dim as f32))
            .collect();
        let inv = Tensor::from_vec(inv, (1, head_dim / 2), dev)?;
        let pos = Tensor::arange(0u32, max_len as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((max_len, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Self {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }

    /// Number of positions covered.
    pub fn max_len(&self) -> usize {
        self.cos.dims()[0]
    }

    /// cos and sin gathered at `positions` (batch, seq) -> (batch, seq, head_dim / 2) each.
    pub fn gather(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let cos = self.cos.index_select(&flat, 0)?;
        let sin = self.sin.index_select(&flat, 0)?;
        let half = cos.dim(1)?;
        Ok((
            cos.reshape((b, t, half))?.to_dtype(dtype)?,
            sin.reshape((b, t, half))?.to_dtype(dtype)?,
        ))
    }
}

/// Initialisation of matrices and embedding tables created from a VarMap (candle's
/// default hint is zero, which would leave a fresh model unable to learn).
pub const WEIGHT_INIT: candle_nn::Init = candle_nn::Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// The weight of a linear layer: a plain tensor (trainable or not) or a quantized GGUF
/// tensor that stays quantized at inference.
#[derive(Debug, Clone)]
pub enum Weight {
    /// (out, in) dense matrix.
    Dense(Tensor),
    /// Quantized matrix, multiplied without dequantising the whole tensor.
    Quantized(Arc<QuantizedWeight>),
    /// Rows `offset..offset + out` of a quantized matrix stacked from several layers that
    /// read the same input (q/k/v, gate/up): [`forward_shared`] multiplies the stack once.
    Rows {
        /// The stacked matrix.
        stacked: Arc<QuantizedWeight>,
        /// First row of this layer.
        offset: usize,
    },
}

/// A quantized (out, in) matrix as [`crate::models::quantized::prepare`] stored it.
#[derive(Debug)]
pub struct QuantizedWeight {
    /// The matrix, (out, in + `pad_in`).
    pub matmul: QMatMul,
    /// Zero columns after the real input width: inputs are padded to match.
    pub pad_in: usize,
    /// Whether candle's kernel for this layout batches rows; when not, calls with more
    /// than [`DEQUANTIZE_ABOVE_ROWS`] rows multiply a transient dense copy instead.
    pub batched_kernel: bool,
}

/// A LoRA (low-rank adaptation) on one linear layer: y += scale * B(A x).
#[derive(Debug, Clone)]
pub struct Lora {
    /// (rank, in)
    pub a: Tensor,
    /// (out, rank)
    pub b: Tensor,
    /// alpha / rank.
    pub scale: f64,
}

impl Lora {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = xs.broadcast_matmul(&self.a.t()?)?;
        h.broadcast_matmul(&self.b.t()?)? * self.scale
    }
}

/// A linear layer with optional bias and an optional LoRA applied on top without merging.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    lora: Option<Lora>,
    in_dim: usize,
    out_dim: usize,
}

impl Linear {
    /// A dense layer from an (out, in) weight.
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        Ok(Self {
            weight: Weight::Dense(weight),
            bias,
            lora: None,
            in_dim,
            out_dim,
        })
    }

    /// A layer over a quantized (out, in) weight, stored as `q` (see [`QuantizedWeight`]).
    pub fn quantized(q: QuantizedWeight, out_dim: usize, in_dim: usize) -> Self {
        Self {
            weight: Weight::Quantized(Arc::new(q)),
            bias: None,
            lora: None,
            in_dim,
            out_dim,
        }
    }

    /// A layer over a quantized weight that another part of the model reads too (a head
    /// tied to the embedding table).
    pub fn quantized_shared(q: Arc<QuantizedWeight>, out_dim: usize, in_dim: usize) -> Self {
        Self {
            weight: Weight::Quantized(q),
            bias: None,
            lora: None,
            in_dim,
            out_dim,
        }
    }

    /// Layer `out_dim` rows from `offset` of a stacked quantized weight.
    pub fn rows(
        stacked: Arc<QuantizedWeight>,
        offset: usize,
        out_dim: usize,
        in_dim: usize,
    ) -> Self {
        Self {
            weight: Weight::Rows { stacked, offset },
            bias: None,
            lora: None,
            in_dim,
            out_dim,
        }
    }

    /// Loads `name.weight` (and `name.bias` when `bias`) from a var builder.
    pub fn load(
        vb: &candle_nn::VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        // A VarMap builder initialises instead of loading: small normal weights, zero bias.
        let w = vb.get_with_hints((out_dim, in_dim), "weight", WEIGHT_INIT)?;
        let b = if bias {
            Some(vb.get_with_hints(out_dim, "bias", candle_nn::Init::Const(0.0))?)
        } else {
            None
        };
        Self::dense(w, b)
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Installs (or removes) the LoRA of this layer.
    pub fn set_lora(&mut self, lora: Option<Lora>) -> Result<()> {
        if let Some(l) = &lora {
            let (r, i) = l.a.dims2()?;
            let (o, r2) = l.b.dims2()?;
            if i != self.in_dim || o != self.out_dim || r != r2 {
                candle_core::bail!(
                    "LoRA shapes A {:?} B {:?} do not fit a {}x{} layer",
                    l.a.shape(),
                    l.b.shape(),
                    self.out_dim,
                    self.in_dim
                );
            }
        }
        self.lora = lora;
        Ok(())
    }

    /// The LoRA currently installed.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut ys = match &self.weight {
            Weight::Dense(w) => xs.broadcast_matmul(&w.t()?)?,
            Weight::Quantized(q) => quantized_forward(q, xs)?,
            Weight::Rows { stacked, offset } => {
                quantized_forward(stacked, xs)?.narrow(D::Minus1, *offset, self.out_dim)?
            }
        };
        if let Some(b) = &self.bias {
            ys = ys.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            ys = (ys + l.forward(xs)?)?;
        }
        Ok(ys)
    }
}

/// Applies several layers to the same input. Layers that are consecutive rows of one
/// stacked weight share one matmul (a 30-block model makes 7 small matmuls per block
/// otherwise; per-call overhead and the activation's quantization are paid per matmul);
/// each keeps its own bias and LoRA.
pub fn forward_shared(layers: &[&Linear], xs: &Tensor) -> Result<Vec<Tensor>> {
    let stack = layers.iter().try_fold(
        None,
        |acc: Option<(&Arc<QuantizedWeight>, usize)>, l| match (&l.weight, acc) {
            (Weight::Rows { stacked, offset }, None) if *offset == 0 => {
                Some(Some((stacked, l.out_dim)))
            }
            (Weight::Rows { stacked, offset }, Some((s, end)))
                if Arc::ptr_eq(s, stacked) && *offset == end =>
            {
                Some(Some((s, end + l.out_dim)))
            }
            _ => None,
        },
    );
    let Some(Some((stacked, _))) = stack else {
        return layers.iter().map(|l| l.forward(xs)).collect();
    };
    let ys = quantized_forward(stacked, xs)?;
    let mut offset = 0;
    layers
        .iter()
        .map(|l| {
            let mut y = ys.narrow(D::Minus1, offset, l.out_dim)?;
            offset += l.out_dim;
            if let Some(b) = &l.bias {
                y = y.broadcast_add(b)?;
            }
            if let Some(lora) = &l.lora {
                y = (y + lora.forward(xs)?)?;
            }
            Ok(y)
        })
        .collect()
}

/// Rows above which a quantized matmul without a batched kernel dequantises the weight
/// transiently: candle's generic CPU quantized kernels are matrix-vector kernels, so a
/// 60-token prefill through them costs as much as 60 decode steps, while a dense gemm
/// over the weight dequantised for this call is several times faster. The stored weight
/// stays quantized.
pub const DEQUANTIZE_ABOVE_ROWS: usize = 8;

fn quantized_forward(q: &QuantizedWeight, xs: &Tensor) -> Result<Tensor> {
    let rows = xs.elem_count() / xs.dim(D::Minus1)?;
    let xs = if q.pad_in > 0 {
        // candle concatenates along the last dimension through a transpose: the result
        // is strided, and the quantized kernels need rows.
        xs.pad_with_zeros(D::Minus1, 0, q.pad_in)?.contiguous()?
    } else {
        xs.contiguous()?
    };
    match &q.matmul {
        QMatMul::QTensor(qt) if rows > DEQUANTIZE_ABOVE_ROWS && !q.batched_kernel => {
            let w = qt.dequantize(xs.device())?.to_dtype(xs.dtype())?;
            xs.broadcast_matmul(&w.t()?)
        }
        m => m.forward(&xs),
    }
}

/// Additive attention bias (0 where allowed, a large negative where masked) of shape
/// (batch, 1, q_len, k_len) for a causal model whose keys may start with left padding.
/// `key_valid` is (batch, k_len) with 1 for real tokens; the queries are the last
/// `q_len` keys. A finite negative rather than -inf keeps fully masked pad rows from
/// turning into NaN.
pub fn causal_padding_bias(key_valid: &Tensor, q_len: usize, dtype: DType) -> Result<Tensor> {
    let (b, k_len) = key_valid.dims2()?;
    let dev = key_valid.device();
    let offset = k_len - q_len;
    let causal: Vec<f32> = (0..q_len)
        .flat_map(|i| (0..k_len).map(move |j| if j <= i + offset { 1.0 } else { 0.0 }))
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, q_len, k_len), dev)?;
    let valid = key_valid.to_dtype(DType::F32)?.reshape((b, 1, 1, k_len))?;
    let allowed = causal.broadcast_mul(&valid)?;
    ((allowed - 1.0)? * 1e9)?.to_dtype(dtype)
}

/// Additive bias (batch, 1, 1, k_len) for bidirectional attention over padded keys.
pub fn padding_bias(key_valid: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, k_len) = key_valid.dims2()?;
    ((key_valid.to_dtype(DType::F32)?.reshape((b, 1, 1, k_len))? - 1.0)? * 1e9)?.to_dtype(dtype)
}

/// Scaled dot-product attention over (batch, heads, seq, head_dim) tensors.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
    mode: OpsMode,
) -> Result<Tensor> {
    let mut scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    if let Some(bias) = bias {
        scores = scores.broadcast_add(bias)?;
    }
    mode.softmax_last_dim(&scores)?.matmul(&v.contiguous()?)
}

/// A normalisation weight: loaded as stored, or initialised to one (a VarMap's default
/// would start it at zero, silencing the layer).
pub fn norm_weight(vb: &candle_nn::VarBuilder, d: usize, name: &str) -> Result<Tensor> {
    vb.get_with_hints(d, name, candle_nn::Init::Const(1.0))
}

/// GELU as BERT uses it (erf form).
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    xs.gelu_erf()
}
