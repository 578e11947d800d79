//! Pivot targets: what the encoder regresses and what the decoder is conditioned on
//! during warm-up. Every source becomes a (num_queries, d_pivot) matrix with rows of unit
//! RMS, so text pivots, image pivots and precomputed vectors share one code path.
//!
//! The text pivot (the design brief's substitute for the image embedding, since no image
//! encoder weights can be had offline) is the frozen sentence encoder's token states of a
//! system prompt, mean-pooled over `num_queries` contiguous spans: with one query it is
//! the sentence embedding; with more, each row summarises a part of the prompt.

use candle_core::{Device, Tensor};
use prip_core::encoder::TextEncoder;

use crate::data::PivotSource;
use crate::image::ImageEncoder;
use crate::{Result, TrainError};

/// The targets of a batch of sources.
#[derive(Debug)]
pub struct TargetBatch {
    /// (kept, rows, width).
    pub targets: Tensor,
    /// Indices of the sources whose targets are in `targets`, in order.
    pub kept: Vec<usize>,
    /// (index, reason) of the sources that failed.
    pub failed: Vec<(usize, String)>,
}

/// Turns pivot sources into target matrices.
#[derive(Debug, Clone)]
pub struct Targets {
    text: TextEncoder,
    image: Option<ImageEncoder>,
    rows: usize,
    width: usize,
    device: Device,
}

impl Targets {
    /// Targets of `rows` x `width` from a frozen text encoder (whose width must be `width`).
    pub fn new(text: TextEncoder, rows: usize, width: usize, device: &Device) -> Result<Self> {
        if text.hidden_size() != width {
            return Err(TrainError::Config(format!(
                "the text pivot encoder is {} wide, the pivot {width}: set [pivot] d_pivot = {}",
                text.hidden_size(),
                text.hidden_size()
            )));
        }
        Ok(Self {
            text,
            image: None,
            rows,
            width,
            device: device.clone(),
        })
    }

    /// Adds an image encoder for `image` sources; its embedding width must be the
    /// pivot's.
    pub fn with_images(mut self, image: ImageEncoder) -> Result<Self> {
        if image.width() != self.width {
            return Err(TrainError::Config(format!(
                "the image encoder's embeddings are {} wide, the pivot {}: set [pivot] d_pivot = {}",
                image.width(),
                self.width,
                image.width()
            )));
        }
        self.image = Some(image);
        Ok(self)
    }

    /// Image pivots of preprocessed images (n, 3, s, s): the embedding in every row.
    fn images(&self, enc: &ImageEncoder, pixels: &Tensor) -> Result<Tensor> {
        let e = enc.embed(pixels)?;
        let n = e.dim(0)?;
        Ok(unit_rms(
            &e.unsqueeze(1)?
                .broadcast_as((n, self.rows, self.width))?
                .contiguous()?,
        )?)
    }

    /// (rows, width) of every target.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.width)
    }

    /// Text pivots of `texts`: (n, rows, width).
    pub fn text(&self, texts: &[&str]) -> Result<Tensor> {
        let batch = self.text.tokenize(texts)?;
        let states = self.text.states(&batch)?.detach();
        let mask = batch.mask.to_vec2::<u32>()?;
        let (n, t) = (mask.len(), mask.first().map_or(0, Vec::len));
        let mut pool = vec![0f32; n * self.rows * t];
        for (i, m) in mask.iter().enumerate() {
            let len = m.iter().filter(|&&v| v == 1).count().max(1);
            for r in 0..self.rows {
                // Span r covers [floor(r*len/rows), ceil((r+1)*len/rows)): never empty,
                // overlapping when the text has fewer tokens than rows.
                let lo = r * len / self.rows;
                let hi = ((r + 1) * len).div_ceil(self.rows).max(lo + 1).min(len);
                let w = 1.0 / (hi - lo) as f32;
                for k in lo..hi {
                    pool[(i * self.rows + r) * t + k] = w;
                }
            }
        }
        let pool = Tensor::from_vec(pool, (n, self.rows, t), states.device())?;
        Ok(unit_rms(&pool.matmul(&states.contiguous()?)?)?)
    }

    /// The target of one source. Errors are one line, for the caller to report with
    /// the record's file and line.
    pub fn one(&self, source: &PivotSource) -> std::result::Result<Tensor, String> {
        if let Some(text) = &source.text {
            return self
                .text(&[text])
                .and_then(|t| Ok(t.squeeze(0)?))
                .map_err(|e| e.to_string());
        }
        if let Some(values) = &source.pivot {
            let flat = values.to_matrix(self.rows, self.width)?;
            let t = Tensor::from_vec(flat, (self.rows, self.width), &self.device)
                .map_err(|e| e.to_string())?;
            return unit_rms(&t).map_err(|e| e.to_string());
        }
        if let Some(path) = &source.image {
            if !path.is_file() {
                return Err(format!("image {} not found", path.display()));
            }
            let Some(enc) = &self.image else {
                return Err(format!(
                    "image {}: image pivots need image_encoder in the training config",
                    path.display()
                ));
            };
            let px = enc.pixels(path)?;
            return px
                .unsqueeze(0)
                .map_err(TrainError::from)
                .and_then(|px| self.images(enc, &px))
                .and_then(|t| Ok(t.squeeze(0)?))
                .map_err(|e| e.to_string());
        }
        Err("no pivot source".into())
    }

    /// Targets of many sources, texts encoded in one batch. Sources that fail are
    /// reported with their reason and left out of the tensor.
    pub fn many(&self, sources: &[&PivotSource]) -> Result<TargetBatch> {
        let mut out: Vec<Option<Tensor>> = vec![None; sources.len()];
        let mut failed = Vec::new();
        let text_idx: Vec<usize> = (0..sources.len())
            .filter(|&i| sources[i].text.is_some())
            .collect();
        if !text_idx.is_empty() {
            let texts: Vec<&str> = text_idx
                .iter()
                .map(|&i| sources[i].text.as_deref().unwrap_or_default())
                .collect();
            let t = self.text(&texts)?;
            for (j, &i) in text_idx.iter().enumerate() {
                out[i] = Some(t.get(j)?);
            }
        }
        if let Some(enc) = &self.image {
            let mut idx = Vec::new();
            let mut pixels = Vec::new();
            for (i, s) in sources.iter().enumerate() {
                let Some(path) = s.image.as_deref().filter(|_| out[i].is_none()) else {
                    continue;
                };
                match enc.pixels(path) {
                    Ok(p) => {
                        idx.push(i);
                        pixels.push(p);
                    }
                    Err(why) => failed.push((i, why)),
                }
            }
            if !pixels.is_empty() {
                let t = self.images(enc, &Tensor::stack(&pixels, 0)?)?;
                for (j, &i) in idx.iter().enumerate() {
                    out[i] = Some(t.get(j)?);
                }
            }
        }
        let done: Vec<usize> = failed.iter().map(|f| f.0).collect();
        for (i, s) in sources.iter().enumerate() {
            if out[i].is_none() && !done.contains(&i) {
                match self.one(s) {
                    Ok(t) => out[i] = Some(t),
                    Err(why) => failed.push((i, why)),
                }
            }
        }
        let kept: Vec<usize> = (0..sources.len()).filter(|&i| out[i].is_some()).collect();
        let tensors: Vec<Tensor> = out.into_iter().flatten().collect();
        let stacked = if tensors.is_empty() {
            Tensor::zeros(
                (0, self.rows, self.width),
                candle_core::DType::F32,
                &self.device,
            )?
        } else {
            Tensor::stack(&tensors, 0)?
        };
        Ok(TargetBatch {
            targets: stacked,
            kept,
            failed,
        })
    }
}

/// Scales each row (last dimension) to unit root-mean-square, the scale of the pivot
/// former's layer-normed output.
pub fn unit_rms(x: &Tensor) -> candle_core::Result<Tensor> {
    let rms = x
        .sqr()?
        .mean_keepdim(candle_core::D::Minus1)?
        .sqrt()?
        .clamp(1e-6, f64::MAX)?;
    x.broadcast_div(&rms)
}
