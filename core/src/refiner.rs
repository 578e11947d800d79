//! The refiner: prompt syntax -> Preference Encoder -> pivot -> Prompt Decoder ->
//! output hygiene -> the user's prompt with details appended.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::decoder::{DecoderLm, PromptDecoder, Template};
use crate::device::DeviceSpec;
use crate::encoder::{PreferenceEncoder, TextEncoder};
use crate::files::safetensors_vb;
use crate::init::SeededInit;
use crate::lora::{self, LoraSet};
use crate::nn::OpsMode;
use crate::sampling::GenerationConfig;
use crate::store::ModelStore;
use crate::syntax::{self, ClipTokenEstimate, Hygiene};
use crate::{Error, Result};

/// Longest prompt accepted, in bytes. Real prompts are a few hundred bytes; far longer
/// input is a mistake (a pasted file) and would only slow the encoder down.
pub const MAX_PROMPT_BYTES: usize = 16 * 1024;

/// How to open a refiner.
#[derive(Debug, Clone)]
pub struct RefinerOptions {
    /// Checkpoint name or directory.
    pub model: String,
    /// Where to run.
    pub device: DeviceSpec,
    /// Fetch missing base models through the store.
    pub fetch: bool,
}

impl Default for RefinerOptions {
    fn default() -> Self {
        Self {
            model: "default".into(),
            device: DeviceSpec::Auto,
            fetch: true,
        }
    }
}

/// One prompt to refine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefineRequest {
    /// The prompt as the user typed it.
    pub prompt: String,
    /// Sampling seed; drawn at random (and reported) when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Generation system; the checkpoint's default when absent.
    #[serde(default)]
    pub system: Option<String>,
}

impl RefineRequest {
    /// A request with defaults.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            ..Default::default()
        }
    }
}

/// Wall-clock cost of a request's batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Preference Encoder, whole batch.
    pub encode_ms: f64,
    /// Prompt Decoder, whole batch.
    pub decode_ms: f64,
    /// Everything, whole batch.
    pub total_ms: f64,
    /// Tokens generated for this prompt.
    pub new_tokens: usize,
    /// Prompts decoded together.
    pub batch_size: usize,
}

/// A refined prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refined {
    /// The input, unchanged.
    pub prompt: String,
    /// The input with the generated details inserted.
    pub refined: String,
    /// The details that were added.
    pub details: Vec<String>,
    /// The seed used.
    pub seed: u64,
    /// The system used.
    pub system: String,
    /// The checkpoint name.
    pub model: String,
    /// Cost.
    pub timings: Timings,
}

/// How the decoder is conditioned. Refining uses the pivot; evaluation runs the paper's
/// baselines and ablations through the same path with the other two.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Conditioning {
    /// The encoder's pivot in the checkpoint's template (PRIP).
    #[default]
    Pivot,
    /// The checkpoint's template and adapters without a pivot ("decoder without pivot").
    NoPivot,
    /// The bare decoder LM, no pivot and no adapter, prompted with this template (the
    /// paper's "generic LLM" baseline).
    Instruction(Template),
}

/// A loaded PRIP model ready to refine prompts.
#[derive(Debug)]
pub struct Refiner {
    conditioning: Conditioning,
    checkpoint: Checkpoint,
    encoder: PreferenceEncoder,
    decoder: PromptDecoder,
    adapters: BTreeMap<String, LoraSet>,
    head_trained: bool,
    device: Device,
}

impl Refiner {
    /// Opens a checkpoint with the model store found from the environment.
    pub fn open(opts: &RefinerOptions) -> Result<Self> {
        Self::open_with_store(opts, &ModelStore::from_env()?)
    }

    /// Opens a checkpoint, resolving base models through `store`.
    pub fn open_with_store(opts: &RefinerOptions, store: &ModelStore) -> Result<Self> {
        let checkpoint = Checkpoint::find(&opts.model, store)?;
        let device = opts.device.open()?;
        let m = &checkpoint.manifest;
        let enc_path = checkpoint.resolve_base(&m.encoder, store, opts.fetch)?;
        let enc_dir = if enc_path.is_file() {
            enc_path.parent().unwrap_or(Path::new("."))
        } else {
            &enc_path
        };
        let dec_path = checkpoint.resolve_base(&m.decoder, store, opts.fetch)?;
        let text = TextEncoder::load(enc_dir, &device, OpsMode::Fused)?;
        let lm = DecoderLm::load(&dec_path, &device, OpsMode::Fused)?;

        let head_path = checkpoint.file(&m.head.weights);
        let head_trained = head_path.is_file();
        let vb = if head_trained {
            safetensors_vb(&head_path, DType::F32, &device)?
        } else {
            tracing::warn!(
                "{} has no trained head ({}); using the untrained initialisation",
                m.name,
                m.head.weights
            );
            SeededInit::new(m.head.seed).var_builder(DType::F32, &device)
        };
        let wrap = |e: Error| match e {
            Error::Candle(c) if head_trained => Error::bad_file(&head_path, c),
            other => other,
        };
        let encoder = PreferenceEncoder::new(text, &m.pivot, vb.pp("pivot_former"), OpsMode::Fused)
            .map_err(wrap)?;
        let decoder = PromptDecoder::new(
            lm,
            encoder.pivot_width(),
            m.template.clone(),
            vb.pp("projection"),
        )
        .map_err(wrap)?;
        let mut adapters = BTreeMap::new();
        for (name, sys) in &m.systems {
            let Some(file) = &sys.adapter else { continue };
            let path = checkpoint.file(file);
            if !path.is_file() && !head_trained {
                // A checkpoint whose training has not run yet, like the untrained head.
                tracing::warn!("{} has no trained adapter for {name} ({file})", m.name);
                continue;
            }
            adapters.insert(name.clone(), lora::load(&path, &m.lora, &device)?);
        }
        Ok(Self {
            conditioning: Conditioning::Pivot,
            checkpoint,
            encoder,
            decoder,
            adapters,
            head_trained,
            device,
        })
    }

    /// Assembles a refiner from parts already built (tests, the trainer).
    pub fn from_parts(
        checkpoint: Checkpoint,
        encoder: PreferenceEncoder,
        decoder: PromptDecoder,
    ) -> Self {
        let device = decoder.lm().lm.device().clone();
        Self {
            conditioning: Conditioning::Pivot,
            checkpoint,
            encoder,
            decoder,
            adapters: BTreeMap::new(),
            head_trained: false,
            device,
        }
    }

    /// Changes how the decoder is conditioned (see [`Conditioning`]).
    pub fn set_conditioning(&mut self, conditioning: Conditioning) {
        self.conditioning = conditioning;
    }

    /// The checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Whether the head was loaded from trained weights.
    pub fn head_trained(&self) -> bool {
        self.head_trained
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The encoder.
    pub fn encoder(&self) -> &PreferenceEncoder {
        &self.encoder
    }

    /// The decoder.
    pub fn decoder(&self) -> &PromptDecoder {
        &self.decoder
    }

    /// The checkpoint's decoding defaults.
    pub fn generation_defaults(&self) -> &GenerationConfig {
        &self.checkpoint.manifest.generation
    }

    /// Refines a batch with the checkpoint's decoding defaults.
    pub fn refine(&mut self, requests: &[RefineRequest]) -> Vec<Result<Refined>> {
        let cfg = self.generation_defaults().clone();
        self.refine_with(requests, &cfg)
    }

    /// Refines a batch. Bad requests get their own error; the others are decoded
    /// together, one padded batch per system.
    pub fn refine_with(
        &mut self,
        requests: &[RefineRequest],
        cfg: &GenerationConfig,
    ) -> Vec<Result<Refined>> {
        let mut out: Vec<Option<Result<Refined>>> = (0..requests.len()).map(|_| None).collect();
        if let Err(e) = cfg.validate() {
            return requests
                .iter()
                .map(|_| Err(Error::Config(e.clone())))
                .collect();
        }
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in requests.iter().enumerate() {
            let system = r
                .system
                .clone()
                .unwrap_or_else(|| self.checkpoint.manifest.default_system.clone());
            match validate_prompt(&r.prompt)
                .and_then(|_| self.checkpoint.manifest.system(&system).map(|_| ()))
            {
                Ok(()) => groups.entry(system).or_default().push(i),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        for (system, idx) in groups {
            let reqs: Vec<&RefineRequest> = idx.iter().map(|&i| &requests[i]).collect();
            match self.refine_group(&system, &reqs, cfg) {
                Ok(results) => {
                    for (i, r) in idx.into_iter().zip(results) {
                        out[i] = Some(Ok(r));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for i in idx {
                        out[i] = Some(Err(Error::Config(msg.clone())));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Config("request not processed".into()))))
            .collect()
    }

    fn refine_group(
        &mut self,
        system: &str,
        reqs: &[&RefineRequest],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Refined>> {
        let start = Instant::now();
        let sys = self.checkpoint.manifest.system(system)?;
        // `base` has an adapter too once the decoder warm-up has trained one.
        let adapter = match self.conditioning {
            Conditioning::Instruction(_) => None,
            _ => self.adapters.get(system),
        };
        self.decoder.set_adapter(adapter)?;
        let free: Vec<String> = reqs
            .iter()
            .map(|r| syntax::parse(&r.prompt).free_text())
            .collect();
        let free_refs: Vec<&str> = free.iter().map(String::as_str).collect();
        let seeds: Vec<u64> = reqs
            .iter()
            .map(|r| r.seed.unwrap_or_else(|| u64::from(rand::random::<u32>())))
            .collect();

        let pivots = match self.conditioning {
            Conditioning::Pivot => Some(self.encoder.encode(&free_refs)?),
            _ => None,
        };
        let encode_ms = ms(start);
        let t = Instant::now();
        let rows = match &self.conditioning {
            Conditioning::Instruction(template) => self.decoder.rows_with(template, &free_refs)?,
            _ => self.decoder.rows(&free_refs)?,
        };
        let batch = self.decoder.batch(&rows, pivots.as_ref())?;
        let generated = self.decoder.generate(&batch, &rows, cfg, &seeds)?;
        let decode_ms = ms(t);

        let hygiene = Hygiene {
            banned_words: cfg.banned_words.clone(),
            budget: sys.budget.unwrap_or(syntax::hygiene::CLIP_CHUNK_TOKENS),
        };
        let total_ms = ms(start);
        let mut out = Vec::with_capacity(reqs.len());
        for ((r, ids), seed) in reqs.iter().zip(generated).zip(seeds) {
            let raw = self.decoder.lm().decode(&ids)?;
            let details = hygiene.clean_details(&r.prompt, &raw, &ClipTokenEstimate);
            out.push(Refined {
                prompt: r.prompt.clone(),
                refined: syntax::append_details(&r.prompt, &details),
                details,
                seed,
                system: system.to_string(),
                model: self.checkpoint.manifest.name.clone(),
                timings: Timings {
                    encode_ms,
                    decode_ms,
                    total_ms,
                    new_tokens: ids.len(),
                    batch_size: reqs.len(),
                },
            });
        }
        Ok(out)
    }
}

/// Refuses prompts no model should see, with a one-line reason.
pub fn validate_prompt(prompt: &str) -> Result<()> {
    if prompt.trim().is_empty() {
        return Err(Error::Prompt("empty prompt".into()));
    }
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(Error::Prompt(format!(
            "prompt too long: {} bytes (limit {MAX_PROMPT_BYTES})",
            prompt.len()
        )));
    }
    if prompt.contains('\0') {
        return Err(Error::Prompt("prompt contains a NUL byte".into()));
    }
    Ok(())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
