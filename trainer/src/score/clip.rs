//! Scorers on candle that need no Python: CLIP score and the LAION aesthetic predictor.
//!
//! Both read a Hugging Face CLIP directory (`config.json`, `model.safetensors`, and for
//! CLIP score `tokenizer.json`), e.g. openai/clip-vit-large-patch14, whose vision side
//! is [`ImageEncoder`] with CLIP's own preprocessing ([`crate::image::clip_pixels`]).
//! candle-transformers' CLIP has QuickGELU only, so OpenAI CLIP towers load and
//! OpenCLIP's GELU towers (ViT-H, HPSv2's) do not: those are served over HTTP.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig, ClipTextTransformer,
};
use serde::Deserialize;

use super::{ScoreError, Scorer};
use crate::image::{ClipFiles, ImageEncoder, Picture};

fn load_error(path: &Path, e: impl std::fmt::Display) -> ScoreError {
    ScoreError::Load(format!("{}: {e}", path.display()))
}

/// The config and weights of a CLIP directory, refused when the weights lack the
/// vision class embedding: candle's CLIP would silently draw a random one per load,
/// and every score would change from run to run.
fn clip_weights(
    dir: &Path,
    device: &Device,
) -> Result<(ClipFiles, VarBuilder<'static>), ScoreError> {
    let files = ClipFiles::read(dir).map_err(|e| ScoreError::Load(e.to_string()))?;
    let vb = files
        .weights(device)
        .map_err(|e| ScoreError::Load(e.to_string()))?;
    if !vb.contains_tensor("vision_model.embeddings.class_embedding") {
        return Err(load_error(
            &files.weights_path(),
            "no vision_model.embeddings.class_embedding (not a complete CLIP checkpoint)",
        ));
    }
    Ok((files, vb))
}

/// `text_config` of a Hugging Face `CLIPModel` config.json.
#[derive(Debug, Deserialize)]
struct TextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "seventy_seven")]
    max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
}

fn seventy_seven() -> usize {
    77
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}

/// Projected image embeddings, L2-normalised: (n, width).
fn image_embeddings(encoder: &ImageEncoder, images: &[Picture]) -> candle_core::Result<Tensor> {
    let pixels = images
        .iter()
        .map(|p| encoder.pixels_of(&p.dynamic()))
        .collect::<crate::Result<Vec<_>>>()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let pixels = Tensor::stack(&pixels, 0)?;
    l2_normalise(
        &encoder
            .embed(&pixels)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
    )
}

fn l2_normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    // A zero vector stays zero rather than becoming NaN.
    x.broadcast_div(&norm.clamp(1e-12, f64::MAX)?)
}

/// CLIP score: the cosine similarity of the prompt's and each image's projected CLIP
/// embeddings, in -1..=1 (papers often report 100 x cosine, or Hessel et al.'s
/// 2.5 x max(cosine, 0)). The prompt is cut to CLIP's 77 positions, keeping its
/// end-of-text token, which the text tower pools at.
pub struct ClipScorer {
    images: ImageEncoder,
    text: ClipTextTransformer,
    text_projection: Linear,
    tokenizer: tokenizers::Tokenizer,
    max_positions: usize,
    version: String,
}

impl std::fmt::Debug for ClipScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipScorer")
            .field("version", &self.version)
            .finish()
    }
}

impl ClipScorer {
    /// Loads a Hugging Face `CLIPModel` directory: `config.json` (with `text_config`
    /// and `vision_config`), `model.safetensors`, `tokenizer.json`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ScoreError> {
        let (files, vb) = clip_weights(dir, device)?;
        let cfg_path = dir.join("config.json");
        let text_cfg: TextConfig = serde_json::from_value(
            files
                .text_config
                .clone()
                .ok_or_else(|| load_error(&cfg_path, "no text_config (a CLIPModel is needed)"))?,
        )
        .map_err(|e| load_error(&cfg_path, format!("text_config: {e}")))?;
        if text_cfg.hidden_act != "quick_gelu" {
            return Err(load_error(
                &cfg_path,
                format!(
                    "text hidden_act {:?}: only OpenAI CLIP's quick_gelu is supported",
                    text_cfg.hidden_act
                ),
            ));
        }
        let config = ClipTextConfig {
            vocab_size: text_cfg.vocab_size,
            embed_dim: text_cfg.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: text_cfg.intermediate_size,
            max_position_embeddings: text_cfg.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: text_cfg.num_hidden_layers,
            num_attention_heads: text_cfg.num_attention_heads,
            projection_dim: files.projection_dim,
        };
        let weights = files.weights_path();
        let images =
            ImageEncoder::from_weights(&files, &vb).map_err(|e| ScoreError::Load(e.to_string()))?;
        let text = ClipTextTransformer::new(vb.pp("text_model"), &config)
            .map_err(|e| load_error(&weights, e))?;
        let text_projection = candle_nn::linear_no_bias(
            text_cfg.hidden_size,
            files.projection_dim,
            vb.pp("text_projection"),
        )
        .map_err(|e| load_error(&weights, e))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| load_error(&tok_path, e))?;
        Ok(Self {
            images,
            text,
            text_projection,
            tokenizer,
            max_positions: text_cfg.max_position_embeddings,
            version: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })
    }

    /// The prompt's projected, L2-normalised text embedding: (1, width).
    pub fn text_embedding(&self, prompt: &str) -> Result<Tensor, ScoreError> {
        let model = |e: String| ScoreError::Model {
            scorer: "clip".into(),
            reason: e,
        };
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| model(e.to_string()))?;
        let mut ids: Vec<u32> = enc.get_ids().to_vec();
        if ids.is_empty() {
            return Err(model("the prompt tokenised to nothing".into()));
        }
        if ids.len() > self.max_positions {
            // Keep the end-of-text token: the tower pools at the largest id, which is it.
            let last = ids[ids.len() - 1];
            ids.truncate(self.max_positions - 1);
            ids.push(last);
        }
        let run = || -> candle_core::Result<Tensor> {
            let ids = Tensor::new(ids.as_slice(), self.images.device())?.unsqueeze(0)?;
            l2_normalise(&self.text_projection.forward(&self.text.forward(&ids)?)?)
        };
        run().map_err(|e| model(e.to_string()))
    }
}

impl Scorer for ClipScorer {
    fn name(&self) -> &str {
        "clip"
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn score(&self, prompt: &str, images: &[Picture]) -> Result<Vec<f32>, ScoreError> {
        let text = self.text_embedding(prompt)?;
        let run = || -> candle_core::Result<Vec<f32>> {
            let img = image_embeddings(&self.images, images)?;
            img.matmul(&text.t()?)?
                .squeeze(1)?
                .to_dtype(DType::F32)?
                .to_vec1()
        };
        run().map_err(|e| ScoreError::Model {
            scorer: "clip".into(),
            reason: e.to_string(),
        })
    }
}

/// The LAION aesthetic predictor v2 ("improved aesthetic predictor"): linear layers
/// 768-1024-128-64-16-1 (no activations between them in the released model; its
/// dropouts are identities at inference) on the L2-normalised CLIP ViT-L/14 image
/// embedding. Scores are roughly 1..10.
pub struct AestheticScorer {
    images: ImageEncoder,
    layers: Vec<Linear>,
    version: String,
}

impl std::fmt::Debug for AestheticScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AestheticScorer")
            .field("layers", &self.layers.len())
            .field("version", &self.version)
            .finish()
    }
}

impl AestheticScorer {
    /// `clip_dir`: a Hugging Face CLIP directory with the vision tower (ViT-L/14 for
    /// the released predictor); `mlp`: the predictor's weights, the released
    /// `sac+logos+ava1-l14-linearMSE.pth` (a PyTorch state dict) or a safetensors copy,
    /// with tensors `layers.{i}.weight` / `layers.{i}.bias`.
    pub fn load(clip_dir: &Path, mlp: &Path, device: &Device) -> Result<Self, ScoreError> {
        let images =
            ImageEncoder::load(clip_dir, device).map_err(|e| ScoreError::Load(e.to_string()))?;
        let tensors: Vec<(String, Tensor)> = match mlp.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => candle_core::safetensors::load(mlp, device)
                .map_err(|e| load_error(mlp, e))?
                .into_iter()
                .collect(),
            _ => candle_core::pickle::read_all(mlp).map_err(|e| load_error(mlp, e))?,
        };
        // `layers.{i}.weight`, possibly under a prefix (`model.`), in layer order.
        let mut found: Vec<(usize, Tensor, Option<Tensor>)> = Vec::new();
        for (name, t) in &tensors {
            let Some(rest) = name.rsplit_once("layers.").map(|(_, r)| r) else {
                continue;
            };
            let Some(index) = rest.strip_suffix(".weight").and_then(|i| i.parse().ok()) else {
                continue;
            };
            let bias_name = format!(
                "{}layers.{index}.bias",
                &name[..name.len() - rest.len() - 7]
            );
            let bias = tensors
                .iter()
                .find(|(n, _)| *n == bias_name)
                .map(|(_, b)| b.clone());
            found.push((
                index,
                t.to_dtype(DType::F32).map_err(|e| load_error(mlp, e))?,
                bias,
            ));
        }
        found.sort_by_key(|(i, _, _)| *i);
        if found.is_empty() {
            return Err(load_error(mlp, "no layers.{i}.weight tensors"));
        }
        let mut width = images.width();
        let mut layers = Vec::new();
        for (i, w, b) in found {
            let (out, inp) = w.dims2().map_err(|e| load_error(mlp, e))?;
            if inp != width {
                return Err(load_error(
                    mlp,
                    format!("layers.{i} takes {inp} inputs, the previous output (or the CLIP embedding) has {width}"),
                ));
            }
            let b = b
                .map(|b| b.to_dtype(DType::F32))
                .transpose()
                .map_err(|e| load_error(mlp, e))?;
            layers.push(Linear::new(w, b));
            width = out;
        }
        if width != 1 {
            return Err(load_error(
                mlp,
                format!("the last layer has {width} outputs, not 1"),
            ));
        }
        Ok(Self {
            images,
            layers,
            version: mlp
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })
    }

    /// The predictor on embeddings already made: (n, width) -> n scores.
    pub fn predict(&self, embeddings: &Tensor) -> candle_core::Result<Vec<f32>> {
        let mut x = l2_normalise(embeddings)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        x.squeeze(1)?.to_vec1()
    }
}

impl Scorer for AestheticScorer {
    fn name(&self) -> &str {
        "aesthetic"
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn score(&self, _prompt: &str, images: &[Picture]) -> Result<Vec<f32>, ScoreError> {
        let run = || -> candle_core::Result<Vec<f32>> {
            let pixels = images
                .iter()
                .map(|p| self.images.pixels_of(&p.dynamic()))
                .collect::<crate::Result<Vec<_>>>()
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let emb = self
                .images
                .embed(&Tensor::stack(&pixels, 0)?)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            self.predict(&emb)
        };
        run().map_err(|e| ScoreError::Model {
            scorer: "aesthetic".into(),
            reason: e.to_string(),
        })
    }
}
