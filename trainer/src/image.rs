//! Images: the frozen CLIP vision tower (candle-transformers) loaded from Hugging Face
//! weights, with CLIP's own preprocessing, and the handling of images that image
//! servers send back: decoding (PNG, JPEG, WebP) with size checks, and saving a sample
//! with a JSON sidecar so a run can be inspected and resumed.
//!
//! The image pivot is the projected image embedding, the paper's "representation of the
//! preferred image"; the CLIP scorers ([`crate::score`]) reuse the same tower and
//! preprocessing.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::Activation;
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, RgbImage};
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// CLIP's normalisation mean per RGB channel (CLIPImageProcessor / OpenAI CLIP
/// `image_mean`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's normalisation standard deviation per RGB channel (`image_std`).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

#[derive(Debug, Deserialize)]
pub(crate) struct VisionConfig {
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
pub(crate) struct ClipConfig {
    #[serde(default)]
    pub(crate) text_config: Option<serde_json::Value>,
    #[serde(default)]
    vision_config: Option<VisionConfig>,
    #[serde(default)]
    projection_dim: Option<usize>,
    #[serde(flatten)]
    rest: serde_json::Value,
}

/// The parsed config.json of a Hugging Face CLIP directory and where its weights are.
#[derive(Debug, Clone)]
pub(crate) struct ClipFiles {
    pub(crate) dir: std::path::PathBuf,
    pub(crate) vision: ClipVisionConfig,
    /// `projection_dim` at the top level (a `CLIPModel`), else the vision config's.
    pub(crate) projection_dim: usize,
    /// `text_config`, for the CLIP scorer (absent in a vision-only model).
    pub(crate) text_config: Option<serde_json::Value>,
}

impl ClipFiles {
    /// Reads and checks `dir/config.json`.
    pub(crate) fn read(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let bad = |e: String| TrainError::Config(format!("{}: {e}", cfg_path.display()));
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| TrainError::io(&cfg_path, e))?;
        let cfg: ClipConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let projection_dim = cfg.projection_dim;
        let text_config = cfg.text_config;
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
        let vision = ClipVisionConfig {
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
        Ok(Self {
            dir: dir.to_path_buf(),
            vision,
            projection_dim,
            text_config,
        })
    }

    pub(crate) fn weights_path(&self) -> std::path::PathBuf {
        self.dir.join("model.safetensors")
    }

    /// All weights of `model.safetensors`, as f32 on `device`.
    pub(crate) fn weights(&self, device: &Device) -> Result<VarBuilder<'static>> {
        let weights = self.weights_path();
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(|e| TrainError::Config(format!("{}: {e}", weights.display())))?;
        Ok(VarBuilder::from_tensors(tensors, DType::F32, device))
    }
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
        let cfg = ClipFiles::read(dir)?;
        let vb = cfg.weights(device)?;
        Self::from_weights(&cfg, &vb)
    }

    /// The vision tower and projection of a CLIP whose files are read: the weights
    /// `vision_model.*` and `visual_projection.weight`.
    pub(crate) fn from_weights(cfg: &ClipFiles, vb: &VarBuilder) -> Result<Self> {
        let wrap = |e: candle_core::Error| {
            TrainError::Config(format!("{}: {e}", cfg.weights_path().display()))
        };
        let v = &cfg.vision;
        if !vb.contains_tensor("vision_model.embeddings.class_embedding") {
            // candle's CLIP would draw a random class embedding at every load: image
            // embeddings (pivots, scores) would differ from one run to the next.
            return Err(TrainError::Config(format!(
                "{}: no vision_model.embeddings.class_embedding (not a complete CLIP vision tower)",
                cfg.weights_path().display()
            )));
        }
        let tower = ClipVisionTransformer::new(vb.pp("vision_model"), v).map_err(wrap)?;
        let projection = vb
            .get((v.projection_dim, v.embed_dim), "visual_projection.weight")
            .map_err(wrap)?;
        Ok(Self {
            tower,
            projection,
            size: v.image_size,
            device: vb.device().clone(),
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
        self.pixels_of(&img).map_err(|e| e.to_string())
    }

    /// [`ImageEncoder::pixels`] of an image in memory. (3, size, size).
    pub fn pixels_of(&self, img: &DynamicImage) -> Result<Tensor> {
        let data = clip_pixels(img, self.size);
        Ok(Tensor::from_vec(
            data,
            (3, self.size, self.size),
            &self.device,
        )?)
    }

    /// Input side of the tower, pixels.
    pub fn image_size(&self) -> usize {
        self.size
    }

    /// The device the tower runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Projected embeddings of preprocessed images (n, 3, size, size) -> (n, width).
    pub fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let pooled = self.tower.forward(pixels)?;
        Ok(pooled.matmul(&self.projection.t()?)?)
    }
}

/// CLIP preprocessing (CLIPImageProcessor for OpenAI CLIP): the shortest side resized to
/// `size` (bicubic), a centre crop of `size` x `size`, values scaled to 0..1 and
/// normalised with [`CLIP_MEAN`] and [`CLIP_STD`]. Channel-major: `3 * size * size`
/// values, channel `c` of pixel `(x, y)` at `c * size * size + y * size + x`.
pub fn clip_pixels(img: &DynamicImage, size: usize) -> Vec<f32> {
    let (w, h) = (img.width().max(1), img.height().max(1));
    let s = size as u32;
    let scale = s as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(s),
        ((h as f64 * scale).round() as u32).max(s),
    );
    // An image already at the target size is not resampled (resampling is not the
    // identity for bicubic filters at the borders).
    let resized = if (nw, nh) == (w, h) {
        img.clone()
    } else {
        img.resize_exact(nw, nh, FilterType::CatmullRom)
    };
    let img = resized.crop_imm((nw - s) / 2, (nh - s) / 2, s, s).to_rgb8();
    let n = (s * s) as usize;
    let mut data = vec![0f32; 3 * n];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            data[c * n + i] = (p[c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    data
}

/// What an image from a server may be: formats and sizes outside these are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLimits {
    /// Smallest allowed width and height, pixels.
    pub min_side: u32,
    /// Largest allowed width and height, pixels.
    pub max_side: u32,
    /// Largest encoded size, bytes.
    pub max_bytes: usize,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            min_side: 16,
            max_side: 8192,
            max_bytes: 64 << 20,
        }
    }
}

/// Why an image from a server could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Not PNG, JPEG or WebP (or no image at all).
    #[error("not a PNG, JPEG or WebP image ({0})")]
    Format(String),
    /// The bytes say PNG/JPEG/WebP but do not decode.
    #[error("image does not decode: {0}")]
    Undecodable(String),
    /// Outside [`ImageLimits`].
    #[error("image is {width}x{height} ({bytes} bytes), outside the limits {min}..={max} px, {max_bytes} bytes")]
    Size {
        /// Width, pixels.
        width: u32,
        /// Height, pixels.
        height: u32,
        /// Encoded size, bytes.
        bytes: usize,
        /// [`ImageLimits::min_side`].
        min: u32,
        /// [`ImageLimits::max_side`].
        max: u32,
        /// [`ImageLimits::max_bytes`].
        max_bytes: usize,
    },
}

/// A decoded image as a server sent it: the encoded bytes (kept, so caches and saved
/// samples are the server's own file) and the RGB pixels.
#[derive(Debug, Clone)]
pub struct Picture {
    encoded: Arc<[u8]>,
    format: ImageFormat,
    rgb: Arc<RgbImage>,
}

impl Picture {
    /// Decodes PNG, JPEG or WebP bytes (the format is read from the bytes, not trusted
    /// from a name) and checks the size against `limits` before and after decoding.
    pub fn decode(bytes: &[u8], limits: &ImageLimits) -> std::result::Result<Self, ImageError> {
        let size_error = |width, height| ImageError::Size {
            width,
            height,
            bytes: bytes.len(),
            min: limits.min_side,
            max: limits.max_side,
            max_bytes: limits.max_bytes,
        };
        if bytes.len() > limits.max_bytes {
            return Err(size_error(0, 0));
        }
        let format = image::guess_format(bytes).map_err(|e| ImageError::Format(e.to_string()))?;
        if !matches!(
            format,
            ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP
        ) {
            return Err(ImageError::Format(format!("{format:?}")));
        }
        let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
        // The decoder refuses a huge header before allocating for it.
        let mut decoder_limits = image::Limits::default();
        decoder_limits.max_image_width = Some(limits.max_side);
        decoder_limits.max_image_height = Some(limits.max_side);
        reader.limits(decoder_limits);
        let img = reader.decode().map_err(|e| match e {
            image::ImageError::Limits(_) => size_error(0, 0),
            e => ImageError::Undecodable(e.to_string()),
        })?;
        let (w, h) = (img.width(), img.height());
        if w < limits.min_side || h < limits.min_side || w > limits.max_side || h > limits.max_side
        {
            return Err(size_error(w, h));
        }
        Ok(Self {
            encoded: bytes.into(),
            format,
            rgb: Arc::new(img.to_rgb8()),
        })
    }

    /// The bytes as the server sent them.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The encoded format.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// File extension of the encoded format (`png`, `jpg`, `webp`).
    pub fn extension(&self) -> &'static str {
        match self.format {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::WebP => "webp",
            _ => "png",
        }
    }

    /// Width, pixels.
    pub fn width(&self) -> u32 {
        self.rgb.width()
    }

    /// Height, pixels.
    pub fn height(&self) -> u32 {
        self.rgb.height()
    }

    /// The pixels, RGB 8-bit.
    pub fn rgb(&self) -> &RgbImage {
        &self.rgb
    }

    /// The image as a [`DynamicImage`] (a copy of the pixels).
    pub fn dynamic(&self) -> DynamicImage {
        DynamicImage::ImageRgb8((*self.rgb).clone())
    }

    /// The image as PNG: the server's bytes when it sent PNG, else re-encoded.
    pub fn png(&self) -> std::result::Result<Vec<u8>, ImageError> {
        if self.format == ImageFormat::Png {
            return Ok(self.encoded.to_vec());
        }
        let mut out = Cursor::new(Vec::new());
        self.rgb
            .write_to(&mut out, ImageFormat::Png)
            .map_err(|e| ImageError::Undecodable(e.to_string()))?;
        Ok(out.into_inner())
    }
}

/// What is saved beside each image of a run (`<stem>.json`), so a run can be inspected
/// and resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The user's prompt.
    pub prompt: String,
    /// The prompt that was rendered when it differs from `prompt` (a refinement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refined_prompt: Option<String>,
    /// The image seed.
    pub seed: u64,
    /// The backend (`a1111`, `comfyui`, `openai-images`).
    pub backend: String,
    /// The server that rendered it (base URL).
    pub server: String,
    /// Scores by scorer name.
    #[serde(default)]
    pub scores: BTreeMap<String, f32>,
}

/// Writes `dir/<stem>.<ext>` (the server's bytes) and `dir/<stem>.json` (the sidecar),
/// each through a temporary file and a rename, the sidecar last: a sample whose sidecar
/// exists is complete. Returns the image's path.
pub fn save_sample(
    dir: &Path,
    stem: &str,
    picture: &Picture,
    sidecar: &Sidecar,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let image_path = dir.join(format!("{stem}.{}", picture.extension()));
    write_atomic(&image_path, picture.encoded())?;
    let json = serde_json::to_vec_pretty(sidecar)
        .map_err(|e| TrainError::Config(format!("sidecar of {stem}: {e}")))?;
    write_atomic(&dir.join(format!("{stem}.json")), &json)?;
    Ok(image_path)
}

/// Writes through `<path>.tmp` and a rename, so a reader never sees half a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: &RgbImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn normalisation_constants_are_openai_clips() {
        // CLIPImageProcessor (openai/clip-vit-large-patch14 preprocessor_config.json).
        let mean = [0.48145466f64, 0.4578275, 0.40821073];
        let std = [0.26862954f64, 0.26130258, 0.27577711];
        for c in 0..3 {
            // Equal to f32 precision.
            assert!((CLIP_MEAN[c] as f64 - mean[c]).abs() < 1e-7, "mean {c}");
            assert!((CLIP_STD[c] as f64 - std[c]).abs() < 1e-7, "std {c}");
        }
    }

    #[test]
    fn a_solid_colour_normalises_to_reference_values() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 40, image::Rgb([255, 0, 128])));
        let px = clip_pixels(&img, 32);
        assert_eq!(px.len(), 3 * 32 * 32);
        // (v / 255 - mean) / std, computed by hand from the reference constants.
        let expect = [1.930_336_3f32, -1.752_097_1, 0.339_948_6];
        for c in 0..3 {
            for v in &px[c * 1024..(c + 1) * 1024] {
                assert!((v - expect[c]).abs() < 1e-4, "channel {c}: {v}");
            }
        }
    }

    #[test]
    fn the_short_side_is_resized_and_the_centre_cropped() {
        // 64 x 32, already 32 on the short side: no resampling, crop columns 16..48.
        let img = RgbImage::from_fn(64, 32, |x, y| image::Rgb([x as u8 * 4, y as u8 * 8, 7]));
        let px = clip_pixels(&DynamicImage::ImageRgb8(img), 32);
        let red = |x: usize, y: usize| px[y * 32 + x];
        let norm = |v: u8, c: usize| (v as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        assert!((red(0, 0) - norm(16 * 4, 0)).abs() < 1e-6);
        assert!((red(31, 5) - norm(47 * 4, 0)).abs() < 1e-6);
        assert!((px[1024 + 5 * 32] - norm(5 * 8, 1)).abs() < 1e-6);
        // 16 x 48 -> 32 x 96 (shortest side to 32), rows 32..64 kept.
        let tall = RgbImage::from_fn(16, 48, |_, y| {
            image::Rgb([if y < 24 { 0 } else { 255 }, 0, 0])
        });
        let px = clip_pixels(&DynamicImage::ImageRgb8(tall), 32);
        assert!(
            (px[0] - norm(0, 0)).abs() < 1e-6,
            "top of the crop is row 32 of 96"
        );
        assert!((px[31 * 32] - norm(255, 0)).abs() < 1e-6);
    }

    #[test]
    fn decoding_checks_format_and_size() {
        let img = RgbImage::from_pixel(32, 24, image::Rgb([1, 2, 3]));
        let p = Picture::decode(&png(&img), &ImageLimits::default()).unwrap();
        assert_eq!((p.width(), p.height(), p.extension()), (32, 24, "png"));
        let mut jpeg = Cursor::new(Vec::new());
        img.write_to(&mut jpeg, ImageFormat::Jpeg).unwrap();
        let p = Picture::decode(jpeg.get_ref(), &ImageLimits::default()).unwrap();
        assert_eq!(p.extension(), "jpg");
        assert_eq!(&p.png().unwrap()[..4], b"\x89PNG");
        let mut webp = Cursor::new(Vec::new());
        img.write_to(&mut webp, ImageFormat::WebP).unwrap();
        let p = Picture::decode(webp.get_ref(), &ImageLimits::default()).unwrap();
        assert_eq!((p.extension(), p.rgb().get_pixel(3, 3)[2]), ("webp", 3));
        let small = ImageLimits {
            min_side: 30,
            ..ImageLimits::default()
        };
        assert!(matches!(
            Picture::decode(&png(&img), &small),
            Err(ImageError::Size {
                width: 32,
                height: 24,
                ..
            })
        ));
        assert!(matches!(
            Picture::decode(b"not an image", &ImageLimits::default()),
            Err(ImageError::Format(_))
        ));
        let mut cut = png(&img);
        cut.truncate(40);
        assert!(matches!(
            Picture::decode(&cut, &ImageLimits::default()),
            Err(ImageError::Undecodable(_))
        ));
    }

    #[test]
    fn a_sample_is_saved_with_its_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let img = RgbImage::from_pixel(20, 20, image::Rgb([9, 9, 9]));
        let p = Picture::decode(&png(&img), &ImageLimits::default()).unwrap();
        let side = Sidecar {
            prompt: "a cat".into(),
            refined_prompt: Some("a cat, golden hour".into()),
            seed: 7,
            backend: "a1111".into(),
            server: "http://h:7860".into(),
            scores: BTreeMap::from([("clip".to_string(), 0.25f32)]),
        };
        let path = save_sample(dir.path(), "000001", &p, &side).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), p.encoded());
        let back: Sidecar =
            serde_json::from_slice(&std::fs::read(dir.path().join("000001.json")).unwrap())
                .unwrap();
        assert_eq!(back, side);
    }
}
