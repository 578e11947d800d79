//! The PRIP checkpoint: a directory holding prip.toml (architecture, base models by name
//! and sha256, template, generation defaults, systems) and safetensors for the trained
//! parts: the head (pivot former + projection) and one LoRA adapter per system.
//! The format is documented in docs/checkpoint.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decoder::Template;
use crate::lora::LoraConfig;
use crate::models::pivot::PivotConfig;
use crate::sampling::GenerationConfig;
use crate::store::ModelStore;
use crate::{Error, Result};

/// The checkpoint format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The name of the manifest inside a checkpoint directory.
pub const MANIFEST: &str = "prip.toml";

/// The system that uses the decoder without any adapter; always available.
pub const BASE_SYSTEM: &str = "base";

/// A base model: a model-store asset name or a path relative to the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseModel {
    /// Store asset name (e.g. "minilm-l6") or a path.
    pub model: String,
    /// For a GGUF decoder: the file inside the asset directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// sha256 of the weights file the head was trained against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Where the trained head lives and how an absent head is initialised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadConfig {
    /// safetensors with `pivot_former.*` and `projection.*`, relative to the checkpoint.
    pub weights: String,
    /// Seed of the deterministic initialisation used while no trained weights exist.
    pub seed: u64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            weights: "head.safetensors".into(),
            seed: 0,
        }
    }
}

/// One generation system (sd15, sdxl, flux, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemConfig {
    /// LoRA adapter file relative to the checkpoint; none means the base decoder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Token budget of that system's text encoder for one chunk (default: CLIP's 75).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<usize>,
}

/// prip.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Must equal [`FORMAT_VERSION`].
    pub format: u32,
    /// Checkpoint name reported in outputs.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Backbone of the Preference Encoder.
    pub encoder: BaseModel,
    /// Prompt Decoder LM.
    pub decoder: BaseModel,
    /// Pivot former architecture.
    #[serde(default)]
    pub pivot: PivotConfig,
    /// Decoder template.
    #[serde(default)]
    pub template: Template,
    /// Decoding defaults.
    #[serde(default)]
    pub generation: GenerationConfig,
    /// The trained head.
    #[serde(default)]
    pub head: HeadConfig,
    /// Shape of the per-system adapters.
    #[serde(default)]
    pub lora: LoraConfig,
    /// System used when a request names none.
    #[serde(default = "default_system")]
    pub default_system: String,
    /// Per-system adapters and budgets.
    #[serde(default)]
    pub systems: BTreeMap<String, SystemConfig>,
}

fn default_system() -> String {
    BASE_SYSTEM.into()
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let m: Manifest = toml::from_str(text).map_err(|e| Error::bad_file(path, e.message()))?;
        if m.format != FORMAT_VERSION {
            return Err(Error::bad_file(
                path,
                format!(
                    "checkpoint format {} (this build reads {FORMAT_VERSION})",
                    m.format
                ),
            ));
        }
        m.generation
            .validate()
            .map_err(|e| Error::bad_file(path, e))?;
        if m.default_system != BASE_SYSTEM && !m.systems.contains_key(&m.default_system) {
            return Err(Error::bad_file(
                path,
                format!("default_system {:?} is not in [systems]", m.default_system),
            ));
        }
        Ok(m)
    }

    /// The configuration of a system; `base` always exists.
    pub fn system(&self, name: &str) -> Result<SystemConfig> {
        if let Some(s) = self.systems.get(name) {
            return Ok(s.clone());
        }
        if name == BASE_SYSTEM {
            return Ok(SystemConfig::default());
        }
        Err(Error::Config(format!(
            "unknown system {name:?} (this model has: {})",
            self.system_names().join(", ")
        )))
    }

    /// Every system name, `base` first.
    pub fn system_names(&self) -> Vec<String> {
        std::iter::once(BASE_SYSTEM.to_string())
            .chain(self.systems.keys().filter(|k| *k != BASE_SYSTEM).cloned())
            .collect()
    }
}

/// A checkpoint on disk.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

/// Directory holding the checkpoints that ship with the source tree (models/).
pub fn packaged_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
}

impl Checkpoint {
    /// Opens a checkpoint directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest: Manifest::parse(&text, &path)?,
        })
    }

    /// Finds a checkpoint by directory path or by name: `$PRIP_HOME/checkpoints/NAME`,
    /// then the packaged `models/NAME`.
    pub fn find(name_or_dir: &str, store: &ModelStore) -> Result<Self> {
        let as_path = Path::new(name_or_dir);
        if as_path.join(MANIFEST).is_file() {
            return Self::open(as_path);
        }
        let valid_name = !name_or_dir.is_empty()
            && name_or_dir
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !name_or_dir.starts_with('.');
        if valid_name {
            for dir in [
                store.root().join("checkpoints").join(name_or_dir),
                packaged_dir().join(name_or_dir),
            ] {
                if dir.join(MANIFEST).is_file() {
                    return Self::open(&dir);
                }
            }
        }
        Err(Error::Config(format!(
            "no PRIP model {name_or_dir:?}: not a directory with a {MANIFEST}, nor a checkpoint in {} or {}",
            store.root().join("checkpoints").display(),
            packaged_dir().display()
        )))
    }

    /// Path of a file named by the manifest (relative to the checkpoint).
    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Resolves a base model to a local path, fetching store assets when `fetch`, and
    /// checks its sha256 when the manifest pins one.
    pub fn resolve_base(
        &self,
        base: &BaseModel,
        store: &ModelStore,
        fetch: bool,
    ) -> Result<PathBuf> {
        match ModelStore::asset(&base.model) {
            Ok(asset) => {
                let dir = if store.is_fetched(&base.model) {
                    store.path(&base.model)
                } else if fetch {
                    store.ensure(&base.model)?
                } else {
                    return Err(Error::Config(format!(
                        "model {} is not fetched; run `prip models fetch {}`",
                        base.model, base.model
                    )));
                };
                let path = match &base.file {
                    Some(f) => dir.join(f),
                    None => dir,
                };
                if let (Some(want), Some(file)) = (&base.sha256, &base.file) {
                    // The store verified the file against its catalogue at fetch time.
                    let have = asset
                        .files
                        .iter()
                        .find(|f| f.dest == file.as_str())
                        .map(|f| f.sha256);
                    if have != Some(want.as_str()) {
                        return Err(Error::Config(format!(
                            "{}: checkpoint wants sha256 {want}, the store has {}",
                            base.model,
                            have.unwrap_or("no such file")
                        )));
                    }
                }
                Ok(path)
            }
            Err(_) => {
                let p = self.dir.join(&base.model);
                let p = match &base.file {
                    Some(f) => p.join(f),
                    None => p,
                };
                if !p.exists() {
                    return Err(Error::Config(format!(
                        "base model {:?} is neither a model-store asset nor a path ({} does not exist)",
                        base.model,
                        p.display()
                    )));
                }
                if let Some(want) = &base.sha256 {
                    let file = if p.is_dir() {
                        p.join("model.safetensors")
                    } else {
                        p.clone()
                    };
                    let have = sha256_file(&file)?;
                    if &have != want {
                        return Err(Error::bad_file(
                            &file,
                            format!("sha256 {have}, checkpoint wants {want}"),
                        ));
                    }
                }
                Ok(p)
            }
        }
    }
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
format = 1
name = "t"
[encoder]
model = "enc"
[decoder]
model = "dec"
"#;

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = Manifest::parse(MINIMAL, Path::new("prip.toml")).unwrap();
        assert_eq!(m.pivot.num_queries, 32);
        assert_eq!(m.default_system, BASE_SYSTEM);
        assert!(m.system("base").is_ok());
        let err = m.system("sdxl").unwrap_err().to_string();
        assert!(
            err.contains("unknown system \"sdxl\"") && err.contains("base"),
            "{err}"
        );
    }

    #[test]
    fn bad_manifests_are_refused_with_the_file_named() {
        let p = Path::new("x/prip.toml");
        let wrong_format = MINIMAL.replace("format = 1", "format = 9");
        assert!(Manifest::parse(&wrong_format, p)
            .unwrap_err()
            .to_string()
            .contains("format 9"));
        let unknown_key = format!("{MINIMAL}\nbogus = 1\n");
        assert!(Manifest::parse(&unknown_key, p)
            .unwrap_err()
            .to_string()
            .starts_with("x/prip.toml"));
        let bad_system = MINIMAL.replace("name = \"t\"", "name = \"t\"\ndefault_system = \"sd15\"");
        assert!(Manifest::parse(&bad_system, p).is_err());
    }

    #[test]
    fn the_packaged_default_parses() {
        let c = Checkpoint::open(&packaged_dir().join("default")).unwrap();
        assert_eq!(c.manifest.encoder.model, "minilm-l6");
        assert_eq!(c.manifest.decoder.model, "smollm2-135m");
    }
}
