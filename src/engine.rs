//! The refiner behind `prip refine` and `prip serve`: prip-core in this process, or a
//! refiner library loaded through the C ABI (`--refiner-lib`, e.g. one built with CUDA).

use std::path::Path;

use anyhow::Context;
use prip_abi::client::{LibRefiner, Library};
use prip_core::device::DeviceSpec;
use prip_core::sampling::GenerationPatch;
use prip_core::{Refine, RefineRequest, Refined, Refiner, RefinerOptions};

/// Where refinement runs.
pub enum Engine {
    /// prip-core, linked into this binary.
    InProcess(Box<Refiner>),
    /// A refiner library loaded at run time.
    Library(LibRefiner),
}

impl Engine {
    /// Opens `model` on `device` (auto, cpu, cuda:N), through the library at `lib`
    /// when one is given.
    pub fn open(lib: Option<&Path>, model: &str, device: &str) -> anyhow::Result<Self> {
        if let Some(path) = lib {
            let lib = Library::load(path)?;
            let config = serde_json::json!({"model": model, "device": device});
            let refiner = LibRefiner::open(lib, &config)
                .with_context(|| format!("opening model {model} in {}", path.display()))?;
            return Ok(Self::Library(refiner));
        }
        let device: DeviceSpec = device
            .parse()
            .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
        let opts = RefinerOptions {
            model: model.into(),
            device,
            fetch: true,
        };
        // The error already names the model or the file at fault.
        let refiner = Refiner::open(&opts)?;
        Ok(Self::InProcess(Box::new(refiner)))
    }

    /// Refines `requests` as one batch; one result per request, an error as one line.
    /// Fails as a whole only when `overrides` are invalid or the library broke.
    pub fn refine(
        &mut self,
        requests: &[RefineRequest],
        overrides: &GenerationPatch,
    ) -> anyhow::Result<Vec<Result<Refined, String>>> {
        match self {
            Self::InProcess(refiner) => {
                let gen = overrides
                    .apply(refiner.generation_defaults())
                    .map_err(|e| anyhow::anyhow!(e))?;
                Ok(refiner
                    .refine_with(requests, &gen)
                    .into_iter()
                    .map(|r| r.map_err(|e| prip_core::error::one_line(&e.to_string())))
                    .collect())
            }
            Self::Library(refiner) => {
                // JSON has no NaN (it would travel as null, i.e. unset): refuse it here.
                overrides.validate().map_err(|e| anyhow::anyhow!(e))?;
                let generation = serde_json::to_value(overrides)?;
                Ok(refiner.refine(requests, Some(&generation))?)
            }
        }
    }
}

impl Refine for Engine {
    fn refine_batch(&mut self, requests: &[RefineRequest]) -> Vec<Result<Refined, String>> {
        match Engine::refine(self, requests, &GenerationPatch::default()) {
            Ok(results) => results,
            Err(e) => {
                let msg = prip_core::error::one_line(&format!("{e:#}"));
                requests.iter().map(|_| Err(msg.clone())).collect()
            }
        }
    }
}
