//! The image side of pivot targets: a frozen CLIP vision tower (candle-transformers)
//! loaded from Hugging Face weights, with CLIP's own preprocessing. The image pivot is
//! the projected image embedding, the paper's "representation of the preferred image".

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::Activation;
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use image::imageops::FilterType;
use serde::Deserialize;

use crate::{Result, TrainError};

/// CLIP's normalisation (CLIPImageProcessor defaults).
const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

#[derive(Debug, Deserialize)]
struct VisionConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    image_size: usize,
    patch_size: usize,
    #[serde(default = "three")]
    num_channels: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default)]
    projection_dim: Option<usize>,
}

fn three() -> usize {
    3
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}

/// config.json of a `CLIPModel` (with `vision_config`) or a `CLIPVisionModelWithProjection`.
#[derive(Debug, Deserialize)]
struct ClipConfig {
    #[serde(default)]
    vision_config: Option<VisionConfig>,
    #[serde(default)]
    projection_dim: Option<usize>,
    #[serde(flatten)]
    rest: serde_json::Value,
}

/// A frozen CLIP image encoder.
#[derive(Debug, Clone)]
pub struct ImageEncoder {
    tower: ClipVisionTransformer,
    projection: Tensor,
    size: usize,
    device: Device,
}

impl ImageEncoder {
    /// Loads config.json and model.safetensors from a Hugging Face CLIP directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let bad = |e: String| TrainError::Config(format!("{}: {e}", cfg_path.display()));
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| TrainError::io(&cfg_path, e))?;
        let cfg: ClipConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let projection_dim = cfg.projection_dim;
        let v = match cfg.vision_config {
            Some(v) => v,
            None => serde_json::from_value(cfg.rest).map_err(|e| bad(e.to_string()))?,
        };
        if v.hidden_act != "quick_gelu" {
            return Err(bad(format!(
                "hidden_act {:?}: only OpenAI CLIP's quick_gelu towers are supported",
                v.hidden_act
            )));
        }
        if v.patch_size == 0 || v.image_size % v.patch_size != 0 || v.num_attention_heads == 0 {
            return Err(bad("image_size must be a multiple of patch_size".into()));
        }
        let projection_dim = projection_dim
            .or(v.projection_dim)
            .ok_or_else(|| bad("no projection_dim".into()))?;
        let config = ClipVisionConfig {
            embed_dim: v.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            projection_dim,
            num_channels: v.num_channels,
            image_size: v.image_size,
            patch_size: v.patch_size,
        };
        let weights = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(|e| TrainError::Config(format!("{}: {e}", weights.display())))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let wrap =
            |e: candle_core::Error| TrainError::Config(format!("{}: {e}", weights.display()));
        let tower = ClipVisionTransformer::new(vb.pp("vision_model"), &config).map_err(wrap)?;
        let projection = vb
            .get((projection_dim, v.hidden_size), "visual_projection.weight")
            .map_err(wrap)?;
        Ok(Self {
            tower,
            projection,
            size: v.image_size,
            device: device.clone(),
        })
    }

    /// Width of the image embedding.
    pub fn width(&self) -> usize {
        self.projection.dims()[0]
    }

    /// CLIP preprocessing of one image file: shortest side to the input size (bicubic),
    /// centre crop, scale to 0..1, normalise. (3, size, size).
    pub fn pixels(&self, path: &Path) -> std::result::Result<Tensor, String> {
        let img = image::open(path).map_err(|e| format!("image {}: {e}", path.display()))?;
        let (w, h) = (img.width().max(1), img.height().max(1));
        let s = self.size as u32;
        let scale = s as f64 / w.min(h) as f64;
        let (nw, nh) = (
            ((w as f64 * scale).round() as u32).max(s),
            ((h as f64 * scale).round() as u32).max(s),
        );
        let img = img
            .resize_exact(nw, nh, FilterType::CatmullRom)
            .crop_imm((nw - s) / 2, (nh - s) / 2, s, s)
            .to_rgb8();
        let n = (s * s) as usize;
        let mut data = vec![0f32; 3 * n];
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                data[c * n + i] = (p[c] as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
        Tensor::from_vec(data, (3, self.size, self.size), &self.device).map_err(|e| e.to_string())
    }

    /// Projected embeddings of preprocessed images (n, 3, size, size) -> (n, width).
    pub fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let pooled = self.tower.forward(pixels)?;
        Ok(pooled.matmul(&self.projection.t()?)?)
    }
}
