//! Per-system LoRAs of the decoder: one small safetensors file per generation system,
//! in PEFT's tensor naming so LoRAs trained elsewhere load too.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::models::llama::LORA_TARGETS;
use crate::nn::Lora;
use crate::{Error, Result};

/// Rank, scale and targets of a LoRA, stored in prip.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r.
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// Scale numerator: the update is multiplied by alpha / r.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Projections adapted, e.g. ["q_proj", "v_proj"].
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
}

fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: default_rank(),
            alpha: default_alpha(),
            targets: default_targets(),
        }
    }
}

/// A loaded LoRA: (layer, projection, weights) triples ready for `Llama::set_loras`.
pub type LoraSet = Vec<(usize, String, Lora)>;

/// The PEFT name of one LoRA matrix (`which` is "A" or "B").
pub fn tensor_name(layer: usize, target: &str, which: &str) -> String {
    let block = if matches!(target, "gate_proj" | "up_proj" | "down_proj") {
        "mlp"
    } else {
        "self_attn"
    };
    format!("base_model.model.model.layers.{layer}.{block}.{target}.lora_{which}.weight")
}

/// Reads a LoRA file, keeping every (layer, target) pair that has both matrices.
pub fn load(path: &Path, cfg: &LoraConfig, device: &Device) -> Result<LoraSet> {
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(path, device).map_err(|e| Error::bad_file(path, e))?;
    from_tensors(&tensors, cfg).map_err(|e| Error::bad_file(path, e))
}

/// Assembles a LoRA set from PEFT-named tensors (a loaded file, or a trainer's
/// parameters), or says in one line why they are not one.
pub fn from_tensors(
    tensors: &HashMap<String, Tensor>,
    cfg: &LoraConfig,
) -> std::result::Result<LoraSet, String> {
    let scale = cfg.alpha / cfg.rank as f64;
    let mut set = Vec::new();
    for (name, a) in tensors {
        let Some(rest) = name.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let Some((layer, target)) = parse_site(rest) else {
            return Err(format!("unexpected LoRA tensor {name}"));
        };
        let b_name = format!("{rest}.lora_B.weight");
        let b = tensors
            .get(&b_name)
            .ok_or_else(|| format!("{name} has no matching {b_name}"))?;
        let f32 = |t: &Tensor| t.to_dtype(DType::F32).map_err(|e| e.to_string());
        let (a, b) = (f32(a)?, f32(b)?);
        if a.dims2().map_err(|e| e.to_string())?.0 != cfg.rank {
            return Err(format!(
                "{name} has shape {:?}, rank is {}",
                a.shape(),
                cfg.rank
            ));
        }
        set.push((layer, target, Lora { a, b, scale }));
    }
    if set.is_empty() {
        return Err("no LoRA tensors (expected PEFT names ending in lora_A.weight)".into());
    }
    set.sort_by(|x, y| (x.0, &x.1).cmp(&(y.0, &y.1)));
    Ok(set)
}

/// Writes a LoRA in the same naming.
pub fn save(set: &LoraSet, path: &Path) -> Result<()> {
    let mut map = HashMap::new();
    for (layer, target, l) in set {
        map.insert(tensor_name(*layer, target, "A"), l.a.clone());
        map.insert(tensor_name(*layer, target, "B"), l.b.clone());
    }
    candle_core::safetensors::save(&map, path).map_err(|e| Error::bad_file(path, e))
}

/// "....layers.{i}.{block}.{target}" -> (i, target).
fn parse_site(prefix: &str) -> Option<(usize, String)> {
    let mut parts = prefix.rsplit('.');
    let target = parts.next()?;
    let _block = parts.next()?;
    let layer = parts.next()?.parse().ok()?;
    LORA_TARGETS
        .contains(&target)
        .then(|| (layer, target.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips() {
        let dev = Device::Cpu;
        let cfg = LoraConfig {
            rank: 2,
            alpha: 4.0,
            targets: default_targets(),
        };
        let a = Tensor::arange(0f32, 8.0, &dev)
            .unwrap()
            .reshape((2, 4))
            .unwrap();
        let b = Tensor::ones((4, 2), DType::F32, &dev).unwrap();
        let set: LoraSet = vec![
            (
                0,
                "q_proj".into(),
                Lora {
                    a: a.clone(),
                    b: b.clone(),
                    scale: 2.0,
                },
            ),
            (1, "down_proj".into(), Lora { a, b, scale: 2.0 }),
        ];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sd15.safetensors");
        save(&set, &p).unwrap();
        let back = load(&p, &cfg, &dev).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!((back[0].0, back[0].1.as_str()), (0, "q_proj"));
        assert_eq!((back[1].0, back[1].1.as_str()), (1, "down_proj"));
        assert_eq!(back[0].2.scale, 2.0);
        assert_eq!(
            back[0].2.a.to_vec2::<f32>().unwrap(),
            set[0].2.a.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn a_file_without_loras_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let mut m = HashMap::new();
        m.insert(
            "foo".to_string(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&m, &p).unwrap();
        let err = load(&p, &LoraConfig::default(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no LoRA tensors"), "{err}");
    }
}
