//! The packaged default's training data, composed reproducibly from offline assets.
//!
//! No DiffusionDB, image generator or ImageReward can be had offline, so the recipe
//! stands in for each with the closest thing that exists:
//! - user language: plain prompts composed from `recipes/default/user-language.toml`;
//! - system language: the user prompt followed by real prompt fragments from
//!   clip-interrogator (a medium, an artist, flavors mined from real prompts);
//! - the preference score that picks the best of several candidates (ImageReward in the
//!   paper): the mean sentence-embedding similarity between the user prompt and the
//!   candidate's fragments, a text proxy for "the image shows what the user asked for".
//!
//! Everything depends only on the seed and the pinned assets, so two runs write the same
//! files.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use prip_core::encoder::TextEncoder;
use prip_core::nn::OpsMode;
use prip_core::store::ModelStore;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;

use crate::{Result, TrainError};

/// The grammar of user-language prompts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserGrammar {
    /// Probability of an adjective.
    pub p_adjective: f64,
    /// Probability of an action.
    pub p_action: f64,
    /// Probability of a place.
    pub p_place: f64,
    /// Adjectives.
    pub adjectives: Vec<String>,
    /// Subjects.
    pub subjects: Vec<String>,
    /// Actions.
    pub actions: Vec<String>,
    /// Places.
    pub places: Vec<String>,
}

impl UserGrammar {
    /// The grammar shipped with the default recipe.
    pub fn packaged() -> Self {
        toml::from_str(include_str!("../recipes/default/user-language.toml"))
            .expect("the packaged grammar parses (checked by a test)")
    }

    /// One prompt.
    pub fn sample(&self, rng: &mut StdRng) -> String {
        let mut words = Vec::new();
        let adj = if rng.random_bool(self.p_adjective) {
            self.adjectives.choose(rng).cloned()
        } else {
            None
        };
        let subject = self.subjects.choose(rng).cloned().unwrap_or_default();
        let first = adj.as_deref().unwrap_or(&subject);
        let article = if first.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        words.push(article.to_string());
        words.extend(adj);
        words.push(subject);
        if rng.random_bool(self.p_action) {
            words.extend(self.actions.choose(rng).cloned());
        }
        if rng.random_bool(self.p_place) {
            words.extend(self.places.choose(rng).cloned());
        }
        words.join(" ")
    }
}

/// Sizes of the generated data.
#[derive(Debug, Clone)]
pub struct RecipeOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Training user prompts.
    pub train_prompts: usize,
    /// Held-out user prompts for `prip eval text`.
    pub heldout_prompts: usize,
    /// Candidates per user prompt.
    pub candidates: usize,
    /// Flavors sampled from clip-interrogator's 100k.
    pub flavors: usize,
    /// Seed.
    pub seed: u64,
}

impl RecipeOptions {
    /// The sizes the packaged default was trained with.
    pub fn packaged(out: PathBuf) -> Self {
        Self {
            out,
            train_prompts: 3000,
            heldout_prompts: 300,
            candidates: 6,
            flavors: 20000,
            seed: 0,
        }
    }
}

/// The system-language vocabulary: clip-interrogator's fragments.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    /// Media ("an oil painting").
    pub mediums: Vec<String>,
    /// Movements ("art nouveau").
    pub movements: Vec<String>,
    /// Artists, as "by NAME".
    pub artists: Vec<String>,
    /// Flavors mined from real prompts ("highly detailed").
    pub flavors: Vec<String>,
}

impl Vocabulary {
    /// Reads the fragments from the clip-interrogator-data asset directory, keeping the
    /// ones the refiner's output hygiene would keep (no syntax characters).
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<Vec<String>> {
            let p = dir.join(name);
            let text = fs::read_to_string(&p).map_err(|e| TrainError::io(&p, e))?;
            Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| usable(l))
                .map(String::from)
                .collect())
        };
        Ok(Self {
            mediums: read("mediums.txt")?,
            movements: read("movements.txt")?,
            artists: read("artists.txt")?
                .into_iter()
                .map(|a| format!("by {a}"))
                .collect(),
            flavors: read("flavors.txt")?,
        })
    }

    /// Every fragment, lower-cased, for membership tests.
    pub fn phrases(&self) -> HashSet<String> {
        self.mediums
            .iter()
            .chain(&self.movements)
            .chain(&self.artists)
            .chain(&self.flavors)
            .map(|s| s.to_lowercase())
            .collect()
    }
}

fn usable(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.split_whitespace().count() <= 5
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " -'.&".contains(c))
}

/// Counts of what was written.
#[derive(Debug, Clone)]
pub struct RecipeReport {
    /// preferences.jsonl records.
    pub preferences: usize,
    /// system.jsonl records.
    pub system: usize,
    /// heldout.txt prompts.
    pub heldout: usize,
}

/// Writes preferences.jsonl, system.jsonl and heldout.txt into `opts.out`.
pub fn make_default_data(store: &ModelStore, opts: &RecipeOptions) -> Result<RecipeReport> {
    let vocab = Vocabulary::load(&store.ensure("clip-interrogator-data")?)?;
    let text = TextEncoder::load(
        &store.ensure("minilm-l6")?,
        &candle_core::Device::Cpu,
        OpsMode::Fused,
    )?;
    let grammar = UserGrammar::packaged();
    let mut rng = StdRng::seed_from_u64(opts.seed);

    let mut seen = HashSet::new();
    let mut prompts = Vec::new();
    let want = opts.train_prompts + opts.heldout_prompts;
    let mut tries = 0;
    while prompts.len() < want && tries < want * 50 {
        tries += 1;
        let p = grammar.sample(&mut rng);
        if seen.insert(p.clone()) {
            prompts.push(p);
        }
    }
    let (train, heldout) = prompts.split_at(opts.train_prompts.min(prompts.len()));

    let mut flavors = vocab.flavors.clone();
    flavors.sort();
    let flavors: Vec<String> = flavors
        .choose_multiple(&mut rng, opts.flavors.min(flavors.len()))
        .cloned()
        .collect();
    let user_emb = embed(&text, train)?;
    let flavor_emb = embed(&text, &flavors)?;
    let medium_emb = embed(&text, &vocab.mediums)?;
    // Cosine similarities (embeddings are unit length).
    let sim_f = user_emb.matmul(&flavor_emb.t()?)?.to_vec2::<f32>()?;
    let sim_m = user_emb.matmul(&medium_emb.t()?)?.to_vec2::<f32>()?;

    fs::create_dir_all(&opts.out).map_err(|e| TrainError::io(&opts.out, e))?;
    let mut prefs = Writer::create(&opts.out.join("preferences.jsonl"))?;
    let mut system = Writer::create(&opts.out.join("system.jsonl"))?;
    let k = opts.candidates.max(2);
    for (i, u) in train.iter().enumerate() {
        let mut near: Vec<usize> = (0..flavors.len()).collect();
        near.sort_by(|&a, &b| sim_f[i][b].total_cmp(&sim_f[i][a]).then(a.cmp(&b)));
        near.truncate(64);
        let mut media: Vec<usize> = (0..vocab.mediums.len()).collect();
        media.sort_by(|&a, &b| sim_m[i][b].total_cmp(&sim_m[i][a]).then(a.cmp(&b)));
        media.truncate(8);
        let mut cands = Vec::with_capacity(k);
        for c in 0..k {
            // Candidates range from random fragments to ones close to the prompt, so
            // the preference has something to choose.
            let relevance = c as f64 / (k - 1) as f64;
            let mut parts: Vec<(String, f32)> = Vec::new();
            let m = if rng.random_bool(relevance) {
                *media.choose(&mut rng).unwrap_or(&0)
            } else {
                rng.random_range(0..vocab.mediums.len())
            };
            parts.push((vocab.mediums[m].clone(), sim_m[i][m]));
            let mut used = HashSet::new();
            while parts.len() < 4 {
                let f = if rng.random_bool(relevance) {
                    *near.choose(&mut rng).unwrap_or(&0)
                } else {
                    rng.random_range(0..flavors.len())
                };
                if used.insert(f) {
                    parts.push((flavors[f].clone(), sim_f[i][f]));
                }
            }
            let score = parts.iter().map(|p| p.1 as f64).sum::<f64>() / parts.len() as f64;
            let mut details: Vec<String> = parts.into_iter().map(|p| p.0).collect();
            if rng.random_bool(0.5) {
                let list = if rng.random_bool(0.5) {
                    &vocab.artists
                } else {
                    &vocab.movements
                };
                details.push(list.choose(&mut rng).cloned().unwrap_or_default());
            }
            cands.push((format!("{u}, {}", details.join(", ")), score));
        }
        let best = cands
            .iter()
            .enumerate()
            .max_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
            .map(|(j, _)| j)
            .unwrap_or(0);
        prefs.line(&json!({
            "prompt": u,
            "candidates": cands.iter().map(|(t, s)| json!({"text": t, "score": (s * 1e4).round() / 1e4})).collect::<Vec<_>>(),
        }))?;
        system.line(&json!({"prompt": cands[best].0, "prefix": u}))?;
    }
    let heldout_path = opts.out.join("heldout.txt");
    let mut h = fs::File::create(&heldout_path).map_err(|e| TrainError::io(&heldout_path, e))?;
    // A separate generator, so the training files do not depend on this.
    let mut srng = StdRng::seed_from_u64(opts.seed ^ 0x5EED);
    for (i, p) in heldout.iter().enumerate() {
        let line = if i % 4 == 0 {
            with_syntax(p, &heldout[(i + 1) % heldout.len()], &mut srng)
        } else {
            p.clone()
        };
        writeln!(h, "{line}").map_err(|e| TrainError::io(&heldout_path, e))?;
    }
    Ok(RecipeReport {
        preferences: prefs.finish()?,
        system: system.finish()?,
        heldout: heldout.len(),
    })
}

/// `p` wrapped in prompt syntax of A1111, ComfyUI or dynamic prompts, so the held-out
/// set checks that protected syntax survives refinement.
fn with_syntax(p: &str, other: &str, rng: &mut StdRng) -> String {
    let forms = [
        format!("({p}:1.2)"),
        format!("{p} <lora:add_detail:0.7>"),
        format!("{p}, (masterpiece:1.1)"),
        format!("{p}, {{sunny|rainy}} day"),
        format!("{p} BREAK {other}"),
        format!("{p} AND {other} :0.8"),
        format!("__styles__ {p}"),
        format!("{p}, embedding:easynegative"),
        format!("[{p}:{other}:0.5]"),
        format!("{p} \\(detailed\\)"),
    ];
    forms.choose(rng).cloned().unwrap_or_else(|| p.to_string())
}

fn embed(text: &TextEncoder, items: &[String]) -> Result<Tensor> {
    let mut parts = Vec::new();
    for chunk in items.chunks(64) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        parts.push(text.sentence_embeddings(&refs)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

struct Writer {
    file: std::io::BufWriter<fs::File>,
    path: PathBuf,
    n: usize,
}

impl Writer {
    fn create(path: &Path) -> Result<Self> {
        let f = fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
        Ok(Self {
            file: std::io::BufWriter::new(f),
            path: path.to_path_buf(),
            n: 0,
        })
    }
    fn finish(mut self) -> Result<usize> {
        self.file
            .flush()
            .map_err(|e| TrainError::io(&self.path, e))?;
        Ok(self.n)
    }
    fn line(&mut self, v: &serde_json::Value) -> Result<()> {
        self.n += 1;
        writeln!(self.file, "{v}").map_err(|e| TrainError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_grammar_parses_and_samples_plain_prompts() {
        let g = UserGrammar::packaged();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let p = g.sample(&mut rng);
            assert!(p.starts_with("a ") || p.starts_with("an "), "{p}");
            assert!(!p.contains(','), "{p}");
        }
        let mut a = StdRng::seed_from_u64(3);
        let mut b = StdRng::seed_from_u64(3);
        assert_eq!(g.sample(&mut a), g.sample(&mut b));
    }

    #[test]
    fn unusable_fragments_are_filtered() {
        assert!(usable("highly detailed"));
        assert!(!usable("(masterpiece)"));
        assert!(!usable("a: b"));
        assert!(!usable(""));
    }
}
