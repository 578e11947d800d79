//! The PRIP checkpoint: a directory holding prip.toml (architecture, base models by name
//! and sha256, template, generation defaults, systems) and safetensors for the trained
//! parts: the head (pivot former + projection) and one decoder LoRA per system.
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

/// The system that uses the decoder without any LoRA; always available.
pub const BASE_SYSTEM: &str = "base";

/// Prefix of the pivot former's tensors in the head's safetensors.
pub const FORMER_PREFIX: &str = "pivot_former";
/// Prefix of the pivot projection's tensors in the head's safetensors.
pub const PROJECTION_PREFIX: &str = "projection";

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
    /// LoRA file relative to the checkpoint; none means the bare decoder. Read from
    /// `adapter` too, the key's name before PRIP 0.2.
    #[serde(skip_serializing_if = "Option::is_none", alias = "adapter")]
    pub lora: Option<String>,
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
    /// Shape of the per-system LoRAs.
    #[serde(default)]
    pub lora: LoraConfig,
    /// System used when a request names none.
    #[serde(default = "default_system")]
    pub default_system: String,
    /// Per-system LoRAs and budgets.
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
        Err(Error::UnknownSystem {
            name: name.to_string(),
            known: self.system_names(),
        })
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
    /// then a checkpoint packaged into this build ([`crate::packaged`], written under
    /// `$PRIP_HOME/packaged/` on first use).
    ///
    /// # Errors
    /// [`Error::Config`] naming the places looked at when nothing is found; the open
    /// errors of the manifest; [`Error::Io`] when a packaged checkpoint cannot be written.
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
            let dir = store.root().join("checkpoints").join(name_or_dir);
            if dir.join(MANIFEST).is_file() {
                return Self::open(&dir);
            }
            if let Some(dir) = crate::packaged::install(name_or_dir, store.root())? {
                return Self::open(&dir);
            }
        }
        Err(Error::Config(format!(
            "no PRIP model {name_or_dir:?}: not a directory with a {MANIFEST}, nor a checkpoint in {}, nor packaged ({})",
            store.root().join("checkpoints").display(),
            crate::packaged::NAMES.join(", ")
        )))
    }

    /// Path of a file named by the manifest (relative to the checkpoint).
    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The encoder backbone's directory (config.json, tokenizer.json, weights), resolved
    /// as [`Checkpoint::resolve_base`] does; a manifest naming the weights file gives its
    /// directory.
    pub fn encoder_dir(&self, store: &ModelStore, fetch: bool) -> Result<PathBuf> {
        let path = self.resolve_base(&self.manifest.encoder, store, fetch)?;
        Ok(if path.is_file() {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path
        })
    }

    /// The decoder LM's GGUF file or Hugging Face directory, resolved as
    /// [`Checkpoint::resolve_base`] does.
    pub fn decoder_path(&self, store: &ModelStore, fetch: bool) -> Result<PathBuf> {
        self.resolve_base(&self.manifest.decoder, store, fetch)
    }

    /// The head's safetensors (pivot former under [`FORMER_PREFIX`], projection under
    /// [`PROJECTION_PREFIX`]); it does not exist before the first training.
    pub fn head_file(&self) -> PathBuf {
        self.file(&self.manifest.head.weights)
    }

    /// The LoRA file of `system` as the manifest names it (it may not exist yet), or
    /// `None` when that system has none.
    pub fn lora_file(&self, system: &str) -> Option<PathBuf> {
        let sys = self.manifest.systems.get(system)?;
        sys.lora.as_deref().map(|rel| self.file(rel))
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
                    let have = crate::files::sha256_file(&file, |_| {})
                        .map_err(|e| Error::io(&file, e))?;
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
    fn a_manifest_with_the_old_adapter_key_still_loads() {
        let old = format!("{MINIMAL}\n[systems.sd15]\nadapter = \"lora/sd15.safetensors\"\n");
        let m = Manifest::parse(&old, Path::new("prip.toml")).unwrap();
        assert_eq!(
            m.systems["sd15"].lora.as_deref(),
            Some("lora/sd15.safetensors")
        );
        let new = old.replace("adapter =", "lora =");
        assert_eq!(Manifest::parse(&new, Path::new("prip.toml")).unwrap(), m);
    }

    #[test]
    fn the_packaged_default_is_found_by_name() {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::new(home.path().to_path_buf());
        let c = Checkpoint::find("default", &store).unwrap();
        assert!(c.dir.starts_with(home.path().join("packaged")));
        assert_eq!(c.manifest.decoder.model, "smollm2-135m");
        // A checkpoint of the same name in $PRIP_HOME/checkpoints wins.
        let mine = home.path().join("checkpoints").join("default");
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::copy(c.dir.join(MANIFEST), mine.join(MANIFEST)).unwrap();
        assert_eq!(Checkpoint::find("default", &store).unwrap().dir, mine);
        let err = Checkpoint::find("nope", &store).unwrap_err().to_string();
        assert!(err.contains("nor packaged (default)"), "{err}");
    }
}
