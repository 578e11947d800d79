//! The user's prip.toml: defaults for the CLI flags, which win over it.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

/// The whole config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Defaults of `prip refine`.
    #[serde(default)]
    pub refine: RefineDefaults,
    /// Defaults of `prip serve`.
    #[serde(default)]
    pub serve: ServeDefaults,
}

/// Keys of `[serve]`, named like the flags of `prip serve`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeDefaults {
    /// --upstream
    pub upstream: Option<String>,
    /// --upstream-ca
    pub upstream_ca: Option<std::path::PathBuf>,
    /// --listen
    pub listen: Option<std::net::SocketAddr>,
    /// --adapter
    pub adapter: Option<String>,
    /// --adapters-dir
    pub adapters_dir: Option<std::path::PathBuf>,
    /// --token
    pub token: Option<String>,
    /// --allow-public
    pub allow_public: Option<bool>,
    /// --prompts
    pub prompts: Option<Vec<String>>,
    /// --refine-timeout (seconds)
    pub refine_timeout: Option<f64>,
    /// --upstream-timeout (seconds)
    pub upstream_timeout: Option<f64>,
    /// --max-body-mb
    pub max_body_mb: Option<usize>,
    /// --queue
    pub queue: Option<usize>,
    /// --max-batch
    pub max_batch: Option<usize>,
    /// --refiner-lib
    pub refiner_lib: Option<std::path::PathBuf>,
    /// --model
    pub model: Option<String>,
    /// --system
    pub system: Option<String>,
    /// --device
    pub device: Option<String>,
    /// --seed
    pub seed: Option<u64>,
}

/// Keys of `[refine]`, named like the flags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefineDefaults {
    /// --refiner-lib
    pub refiner_lib: Option<std::path::PathBuf>,
    /// --model
    pub model: Option<String>,
    /// --system
    pub system: Option<String>,
    /// --dialect
    pub dialect: Option<prip_core::Dialect>,
    /// --device
    pub device: Option<String>,
    /// --seed
    pub seed: Option<u64>,
    /// --max-new-tokens
    pub max_new_tokens: Option<usize>,
    /// --temperature
    pub temperature: Option<f64>,
    /// --top-p
    pub top_p: Option<f64>,
}

impl Config {
    /// Reads `explicit`, else `$PRIP_HOME/prip.toml` when present, else defaults.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Self> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match prip_core::store::ModelStore::from_env() {
                Ok(store) if store.root().join("prip.toml").is_file() => {
                    store.root().join("prip.toml")
                }
                _ => return Ok(Self::default()),
            },
        };
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("config {}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config {}: {}", path.display(), e.message()))
    }
}
