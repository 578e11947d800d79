//! The text-side reward: a stand-in for the paper's image reward that needs no image
//! server, so the whole PPO loop runs on a CPU.
//!
//! It is not the paper's reward and says nothing about images. It scores what the
//! packaged default gets wrong in text: details that drift from the user's subject
//! ("a little cat running in the woods" gaining "cute tiny rabbit"), chatter that is not
//! system language, too few or too many phrases. Per sample:
//!
//! R = relevance · cos(MiniLM(user), MiniLM(refined)) + vocabulary · (share of added
//!     phrases in clip-interrogator's vocabulary) − length · |phrases − target| / target
//!     − off_subject · (share of added phrases naming a subject the user did not name)
//!
//! The cosine is the relevance of `prip eval text`, computed the same way.

use std::collections::HashSet;

use candle_core::Device;
use prip_core::encoder::TextEncoder;
use prip_core::nn::OpsMode;
use prip_core::store::ModelStore;
use prip_core::syntax::{self, Dialect};
use serde::{Deserialize, Serialize};

use super::{asset_dir, Judged, Reward, Sample};
use crate::recipe::{UserGrammar, Vocabulary};
use crate::Result;

/// `[reward] kind = "text"`: the weights of the stand-in's terms and its assets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextRewardConfig {
    /// Weight of the cosine between the user's and the refined prompt (-1..1).
    pub relevance: f64,
    /// Weight of the share of added phrases found in the system-language vocabulary.
    pub vocabulary: f64,
    /// Weight of the length penalty |phrases − target_phrases| / target_phrases.
    pub length: f64,
    /// The number of added phrases the length term aims at.
    pub target_phrases: usize,
    /// Weight of the share of added phrases that name a subject absent from the prompt.
    pub off_subject: f64,
    /// Subject nouns (default: the packaged user-language grammar's 60 subjects).
    pub subjects: Option<Vec<String>>,
    /// Sentence encoder for the cosine: a model-store name or a directory.
    pub sentence_encoder: String,
    /// System-language vocabulary (clip-interrogator's fragment lists): a model-store
    /// name or a directory with mediums.txt, movements.txt, artists.txt, flavors.txt.
    pub phrases: String,
}

impl Default for TextRewardConfig {
    fn default() -> Self {
        Self {
            relevance: 1.0,
            vocabulary: 0.5,
            length: 0.25,
            target_phrases: 4,
            off_subject: 1.0,
            subjects: None,
            sentence_encoder: "minilm-l6".into(),
            phrases: "clip-interrogator-data".into(),
        }
    }
}

/// The text-side reward (see the module notes).
#[derive(Debug)]
pub struct TextReward {
    cfg: TextRewardConfig,
    encoder: TextEncoder,
    vocabulary: HashSet<String>,
    subjects: Vec<String>,
}

/// Each term of one sample's reward, before weighting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextTerms {
    /// Cosine of the sentence embeddings of the user's and the refined prompt.
    pub relevance: f64,
    /// Share of added phrases in the vocabulary (0 without phrases).
    pub in_vocabulary: f64,
    /// Added phrases.
    pub phrases: usize,
    /// Share of added phrases naming another subject (0 without phrases).
    pub off_subject: f64,
}

impl TextReward {
    /// Loads the sentence encoder and the vocabulary (fetched through `store` when
    /// given as names).
    pub fn open(cfg: &TextRewardConfig, store: &ModelStore) -> Result<Self> {
        let encoder = TextEncoder::load(
            &asset_dir(&cfg.sentence_encoder, store)?,
            &Device::Cpu,
            OpsMode::Fused,
        )?;
        let vocabulary = Vocabulary::load(&asset_dir(&cfg.phrases, store)?)?.phrases();
        let subjects = cfg
            .subjects
            .clone()
            .unwrap_or_else(|| UserGrammar::packaged().subjects)
            .into_iter()
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            vocabulary,
            subjects,
        })
    }

    /// The unweighted terms of each sample.
    pub fn terms(&self, samples: &[Sample<'_>]) -> Result<Vec<TextTerms>> {
        let free = |p: &str| syntax::parse(p, Dialect::default()).free_text();
        let users: Vec<String> = samples.iter().map(|s| free(s.prompt)).collect();
        let refined: Vec<String> = samples.iter().map(|s| free(s.refined)).collect();
        let eu = self.encoder.sentence_embeddings(&as_strs(&users))?;
        let er = self.encoder.sentence_embeddings(&as_strs(&refined))?;
        let cos: Vec<f32> = (eu * er)?.sum(1)?.to_vec1()?;
        Ok(samples
            .iter()
            .zip(cos)
            .map(|(s, cos)| {
                let n = s.details.len();
                let share = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
                let known = s
                    .details
                    .iter()
                    .filter(|d| self.vocabulary.contains(&d.trim().to_lowercase()))
                    .count();
                let prompt_words = words(s.prompt);
                let off = s
                    .details
                    .iter()
                    .filter(|d| self.names_other_subject(&prompt_words, d))
                    .count();
                TextTerms {
                    relevance: f64::from(cos),
                    in_vocabulary: share(known),
                    phrases: n,
                    off_subject: share(off),
                }
            })
            .collect())
    }

    /// The weighted sum of `t` (the reward).
    pub fn combine(&self, t: &TextTerms) -> f64 {
        let c = &self.cfg;
        let target = c.target_phrases.max(1) as f64;
        c.relevance * t.relevance + c.vocabulary * t.in_vocabulary
            - c.length * (t.phrases as f64 - target).abs() / target
            - c.off_subject * t.off_subject
    }

    fn names_other_subject(&self, prompt_words: &[String], detail: &str) -> bool {
        let detail_words = words(detail);
        self.subjects.iter().any(|s| {
            let subject: Vec<String> = words(s);
            contains_run(&detail_words, &subject) && !contains_run(prompt_words, &subject)
        })
    }
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Lower-case words, a plural "s" dropped ("rabbits" names "rabbit").
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| match w.strip_suffix('s') {
            Some(stem) if stem.len() >= 3 && !stem.ends_with('s') => stem.to_string(),
            _ => w.to_string(),
        })
        .collect()
}

fn contains_run(haystack: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

impl Reward for TextReward {
    fn name(&self) -> &str {
        "text"
    }

    fn judge(&mut self, samples: &[Sample<'_>]) -> Result<Judged> {
        let rewards = self
            .terms(samples)?
            .iter()
            .map(|t| Some(self.combine(t)))
            .collect();
        Ok(Judged { rewards, images: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_fold_case_and_plurals() {
        assert_eq!(words("Cute RABBITS, glass"), ["cute", "rabbit", "glass"]);
        assert!(contains_run(
            &words("an old man walking"),
            &words("old man")
        ));
        assert!(!contains_run(&words("an old woman"), &words("old man")));
    }
}
