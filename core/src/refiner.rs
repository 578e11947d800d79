//! The refiner: prompt syntax -> Preference Encoder -> pivot -> Prompt Decoder ->
//! output hygiene -> the user's prompt with details appended.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, FORMER_PREFIX, PROJECTION_PREFIX};
use crate::decoder::{DecoderLm, PromptDecoder, Template};
use crate::device::DeviceSpec;
use crate::encoder::{PreferenceEncoder, TextEncoder};
use crate::files::safetensors_vb;
use crate::init::SeededInit;
use crate::lora::{self, LoraSet};
use crate::nn::OpsMode;
use crate::sampling::{GenerationConfig, GenerationPatch};
use crate::store::ModelStore;
use crate::syntax::{self, ClipTokenEstimate, Dialect, Hygiene};
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

/// One prompt to refine: the one request type of every front end. `prip refine`, the
/// `prip serve` queue, the C ABI (its request JSON is this type's serde form, unknown
/// keys refused) and the Python binding all build it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefineRequest {
    /// The prompt as the user typed it.
    pub prompt: String,
    /// Sampling seed; drawn at random (and reported) when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Generation system; the checkpoint's default when absent.
    #[serde(default)]
    pub system: Option<String>,
    /// Which program reads the prompt (where comments are, so where details go);
    /// A1111 when absent.
    #[serde(default)]
    pub dialect: Dialect,
    /// Decoding settings of this request over the caller's (`{"max_new_tokens": 20}`);
    /// empty keeps them.
    #[serde(default, skip_serializing_if = "GenerationPatch::is_empty")]
    pub generation: GenerationPatch,
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
    /// Prompt Decoder's prefill (template, pivot and prompt through the LM), whole batch;
    /// part of `decode_ms`.
    #[serde(default)]
    pub prefill_ms: f64,
    /// Prompt Decoder, whole batch.
    pub decode_ms: f64,
    /// Everything, whole batch.
    pub total_ms: f64,
    /// Positions of this prompt's decoder row in the prefill (template, pivot, prompt).
    #[serde(default)]
    pub prefill_tokens: usize,
    /// Tokens generated for this prompt.
    pub new_tokens: usize,
    /// Prompts decoded together.
    pub batch_size: usize,
}

/// One request's answer as JSON carries it (the C ABI's results, the Python binding): a
/// [`Refined`] object, or `{"error": "one line"}` for a request that failed while the
/// others of its batch succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RefineAnswer {
    /// The request failed; the reason is one line.
    Failed {
        /// Why.
        error: String,
    },
    /// The request was refined (which may have added nothing: see [`Refined::outcome`]).
    Refined(Refined),
}

impl From<std::result::Result<Refined, String>> for RefineAnswer {
    fn from(r: std::result::Result<Refined, String>) -> Self {
        match r {
            Ok(refined) => RefineAnswer::Refined(refined),
            Err(error) => RefineAnswer::Failed { error },
        }
    }
}

impl From<RefineAnswer> for std::result::Result<Refined, String> {
    fn from(a: RefineAnswer) -> Self {
        match a {
            RefineAnswer::Refined(refined) => Ok(refined),
            RefineAnswer::Failed { error } => Err(error),
        }
    }
}

/// Whether a refinement added details, and if not, why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Details were added.
    #[default]
    Refined,
    /// The prompt's last chunk already fills the target encoder's token budget (CLIP:
    /// 75 content tokens), so no generated phrase fitted.
    BudgetFull,
    /// The decoder ended before writing any phrase (it hit `max_new_tokens` while
    /// still on blanks and separators).
    ModelStopped,
    /// Phrases were generated, but output hygiene removed every one (repeats of the
    /// prompt, banned words, syntax only).
    Filtered,
}

impl Outcome {
    /// The name used in JSON, headers and metrics: `refined`, `budget_full`,
    /// `model_stopped`, `filtered`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Refined => "refined",
            Outcome::BudgetFull => "budget_full",
            Outcome::ModelStopped => "model_stopped",
            Outcome::Filtered => "filtered",
        }
    }
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
    /// Whether details were added, and why not when none were.
    #[serde(default)]
    pub outcome: Outcome,
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
    /// The checkpoint's template and LoRAs without a pivot ("decoder without pivot").
    NoPivot,
    /// The bare decoder LM, no pivot and no LoRA, prompted with this template (the
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
    loras: BTreeMap<String, LoraSet>,
    head_trained: bool,
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
        let enc_dir = checkpoint.encoder_dir(store, opts.fetch)?;
        let dec_path = checkpoint.decoder_path(store, opts.fetch)?;
        let text = TextEncoder::load(&enc_dir, &device, OpsMode::Fused)?;
        let lm = DecoderLm::load(&dec_path, &device, OpsMode::Fused)?;

        let head_path = checkpoint.head_file();
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
        let encoder = PreferenceEncoder::new(text, &m.pivot, vb.pp(FORMER_PREFIX), OpsMode::Fused)
            .map_err(wrap)?;
        let decoder = PromptDecoder::new(
            lm,
            encoder.pivot_width(),
            m.template.clone(),
            vb.pp(PROJECTION_PREFIX),
        )
        .map_err(wrap)?;
        let mut loras = BTreeMap::new();
        for name in m.systems.keys() {
            let Some(path) = checkpoint.lora_file(name) else {
                continue;
            };
            if !path.is_file() && !head_trained {
                // A checkpoint whose training has not run yet, like the untrained head.
                tracing::warn!(
                    "{} has no trained LoRA for {name} ({})",
                    m.name,
                    path.display()
                );
                continue;
            }
            loras.insert(name.clone(), lora::load(&path, &m.lora, &device)?);
        }
        Ok(Self {
            conditioning: Conditioning::Pivot,
            checkpoint,
            encoder,
            decoder,
            loras,
            head_trained,
        })
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
        // One padded batch per system and decoding settings.
        let mut groups: BTreeMap<(String, String), (GenerationConfig, Vec<usize>)> =
            BTreeMap::new();
        for (i, r) in requests.iter().enumerate() {
            let system = r
                .system
                .clone()
                .unwrap_or_else(|| self.checkpoint.manifest.default_system.clone());
            let checked = validate_prompt(&r.prompt)
                .and_then(|_| self.checkpoint.manifest.system(&system).map(|_| ()))
                .and_then(|_| {
                    r.generation
                        .apply(cfg)
                        .map_err(|e| Error::Config(format!("generation: {e}")))
                });
            match checked {
                Ok(own) => {
                    let key = serde_json::to_string(&r.generation).unwrap_or_default();
                    groups
                        .entry((system, key))
                        .or_insert_with(|| (own, Vec::new()))
                        .1
                        .push(i);
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        for ((system, _), (cfg, idx)) in groups {
            let reqs: Vec<&RefineRequest> = idx.iter().map(|&i| &requests[i]).collect();
            // candle's CPU ops run best on its one shared pool (one thread per physical
            // core); called from elsewhere they fan out from this thread and contend.
            let result =
                candle_core::utils::with_threadpool(|| self.refine_group(&system, &reqs, &cfg));
            match result {
                Ok(results) => {
                    for (i, r) in idx.into_iter().zip(results) {
                        out[i] = Some(Ok(r));
                    }
                }
                Err(e) => {
                    let shared = std::sync::Arc::new(e);
                    for i in idx {
                        out[i] = Some(Err(Error::Batch(shared.clone())));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("request not processed".into()))))
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
        // `base` has a LoRA too once the decoder warm-up has trained one.
        let lora = match self.conditioning {
            Conditioning::Instruction(_) => None,
            _ => self.loras.get(system),
        };
        self.decoder.set_lora(lora)?;
        let free: Vec<String> = reqs
            .iter()
            .map(|r| syntax::parse(&r.prompt, r.dialect).free_text())
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
        let generated = self
            .decoder
            .generate(&batch, &rows, cfg, &seeds)
            .map_err(|e| {
                e.with_batch_hint(
                    reqs.len(),
                    "prompts",
                    "the prompts per call (prip serve: --max-batch)",
                )
            })?;
        let decode_ms = ms(t);
        let prefill_ms = generated.prefill_ms;

        let budget = sys.budget.unwrap_or(syntax::hygiene::CLIP_CHUNK_TOKENS);
        let total_ms = ms(start);
        let mut out = Vec::with_capacity(reqs.len());
        for (((r, ids), seed), prefill_tokens) in reqs
            .iter()
            .zip(generated.ids)
            .zip(seeds)
            .zip(batch.lengths.iter().copied())
        {
            let raw = self.decoder.lm().decode(&ids)?;
            let hygiene = Hygiene {
                banned_words: cfg.banned_words.clone(),
                budget,
                dialect: r.dialect,
            };
            let details = hygiene.clean_details(&r.prompt, &raw, &ClipTokenEstimate);
            let outcome = outcome(&hygiene, &r.prompt, &raw, &details);
            out.push(Refined {
                prompt: r.prompt.clone(),
                refined: syntax::append_details(&r.prompt, r.dialect, &details),
                details,
                outcome,
                seed,
                system: system.to_string(),
                model: self.checkpoint.manifest.name.clone(),
                timings: Timings {
                    encode_ms,
                    prefill_ms,
                    decode_ms,
                    total_ms,
                    prefill_tokens,
                    new_tokens: ids.len(),
                    batch_size: reqs.len(),
                },
            });
        }
        Ok(out)
    }
}

/// Why `details` (cleaned from `raw` by `hygiene`) are what they are.
fn outcome(hygiene: &Hygiene, prompt: &str, raw: &str, details: &[String]) -> Outcome {
    if !details.is_empty() {
        return Outcome::Refined;
    }
    let unlimited = Hygiene {
        budget: usize::MAX,
        ..hygiene.clone()
    };
    if !unlimited
        .clean_details(prompt, raw, &ClipTokenEstimate)
        .is_empty()
    {
        Outcome::BudgetFull
    } else if raw.chars().any(char::is_alphanumeric) {
        Outcome::Filtered
    } else {
        Outcome::ModelStopped
    }
}

/// Something that refines a batch of requests: the in-process [`Refiner`], or a refiner
/// library loaded through the C ABI (`prip_abi::client`). The proxy's queue, the CLI and
/// the C ABI all speak this one contract.
pub trait Refine: Send {
    /// One result per request, in order; an error is one line of text. Requests with
    /// equal fields are refined independently (a random seed is drawn for each).
    fn refine_batch(
        &mut self,
        requests: &[RefineRequest],
    ) -> Vec<std::result::Result<Refined, String>>;
}

impl Refine for Refiner {
    fn refine_batch(
        &mut self,
        requests: &[RefineRequest],
    ) -> Vec<std::result::Result<Refined, String>> {
        self.refine(requests)
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }
}

/// The distinct requests of `requests` and, for each request, the index of its distinct
/// one. Refining the distinct ones and mapping back gives equal requests one
/// refinement: within one image-server request, two slots holding the same text (an SDXL
/// `text_g` equal to `text_l`, one prompt feeding two encoders) must render the same
/// refined prompt even when no seed is fixed.
pub fn distinct(requests: &[RefineRequest]) -> (Vec<RefineRequest>, Vec<usize>) {
    let mut unique: Vec<RefineRequest> = Vec::new();
    let mut index = Vec::with_capacity(requests.len());
    for r in requests {
        match unique.iter().position(|u| u == r) {
            Some(i) => index.push(i),
            None => {
                index.push(unique.len());
                unique.push(r.clone());
            }
        }
    }
    (unique, index)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_says_why_nothing_was_added() {
        let h = Hygiene::default();
        let got = |prompt: &str, raw: &str, h: &Hygiene| {
            let details = h.clean_details(prompt, raw, &ClipTokenEstimate);
            outcome(h, prompt, raw, &details)
        };
        assert_eq!(got("a cat", "golden hour", &h), Outcome::Refined);
        assert_eq!(got("a cat", "", &h), Outcome::ModelStopped);
        assert_eq!(got("a cat", " , ,\n", &h), Outcome::ModelStopped);
        assert_eq!(got("a cat", "a cat, cat", &h), Outcome::Filtered);
        let banned = Hygiene {
            banned_words: vec!["nsfw".into()],
            ..Hygiene::default()
        };
        assert_eq!(got("a cat", "nsfw", &banned), Outcome::Filtered);
        let full = "word ".repeat(80);
        assert_eq!(got(&full, "golden hour", &h), Outcome::BudgetFull);
        assert_eq!(
            serde_json::to_value(Outcome::BudgetFull).unwrap(),
            "budget_full"
        );
    }

    #[test]
    fn distinct_requests_map_back_to_every_slot() {
        let a = RefineRequest::new("a cat");
        let b = RefineRequest::new("a dog");
        let seeded = RefineRequest {
            seed: Some(1),
            ..RefineRequest::new("a cat")
        };
        let comfy = RefineRequest {
            dialect: Dialect::ComfyUi,
            ..RefineRequest::new("a cat")
        };
        let all = [
            a.clone(),
            b.clone(),
            a.clone(),
            seeded.clone(),
            comfy.clone(),
            b.clone(),
        ];
        let (unique, index) = distinct(&all);
        assert_eq!(unique, [a, b, seeded, comfy]);
        assert_eq!(index, [0, 1, 0, 2, 3, 1]);
    }
}
