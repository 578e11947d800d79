//! Rewards of refinements: what PPO maximises (Section 3.4 of the paper).
//!
//! The paper's reward is image-side: the mean preference score of the refined prompt's
//! images minus that of the original prompt's images under the same seeds
//! ([`ImagePreferenceReward`], needs image servers and scorers). Two more run without any
//! server: [`TextReward`], a documented text-side stand-in, and [`KeywordReward`], a toy
//! reward whose optimum is known (used to test the PPO loop).

mod images;
mod text;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use images::ImagePreferenceReward;
pub use text::{TextReward, TextRewardConfig, TextTerms};

use crate::Result;

/// One refinement to judge.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// The user's prompt as typed.
    pub prompt: &'a str,
    /// The refined prompt, as the refiner would return it (user prompt + details).
    pub refined: &'a str,
    /// The details the refinement added, after output hygiene.
    pub details: &'a [String],
}

/// What a reward gave for a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Judged {
    /// One reward per sample; `None` when the sample could not be judged (its images or
    /// scores were dropped): it leaves the step, and nothing else is lost.
    pub rewards: Vec<Option<f64>>,
    /// Images rendered for the batch (0 for rewards without images).
    pub images: usize,
}

/// A reward over refinements.
pub trait Reward: std::fmt::Debug {
    /// Short name for logs and metrics.
    fn name(&self) -> &str;
    /// Judges a batch of samples; higher is better.
    fn judge(&mut self, samples: &[Sample<'_>]) -> Result<Judged>;
}

/// `[reward]` of a PPO config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RewardConfig {
    /// The text-side stand-in ([`TextReward`]).
    Text(TextRewardConfig),
    /// 1 when an added detail contains `word` (a whole word, any case), else 0.
    Keyword {
        /// The word to include.
        word: String,
    },
    /// The paper's reward from the `[images]` section ([`ImagePreferenceReward`]).
    Images,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig::Text(TextRewardConfig::default())
    }
}

impl RewardConfig {
    /// Makes relative paths relative to `dir` (the config file's folder).
    pub fn rebase(&mut self, dir: &Path) {
        if let RewardConfig::Text(t) = self {
            for p in [&mut t.sentence_encoder, &mut t.phrases] {
                let joined = dir.join(&*p);
                if joined.is_dir() {
                    *p = joined.display().to_string();
                }
            }
        }
    }
}

/// An asset given as a store name (fetched on first use) or a directory.
pub(crate) fn asset_dir(name: &str, store: &prip_core::store::ModelStore) -> Result<PathBuf> {
    let p = Path::new(name);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    Ok(store.ensure(name)?)
}

/// The toy reward: 1 when an added detail contains the word, else 0.
#[derive(Debug, Clone)]
pub struct KeywordReward {
    word: String,
}

impl KeywordReward {
    /// Rewards details containing `word` (compared lower-cased, as a whole word).
    pub fn new(word: &str) -> Self {
        Self {
            word: word.trim().to_lowercase(),
        }
    }
}

impl Reward for KeywordReward {
    fn name(&self) -> &str {
        "keyword"
    }

    fn judge(&mut self, samples: &[Sample<'_>]) -> Result<Judged> {
        let rewards = samples
            .iter()
            .map(|s| {
                let hit = s.details.iter().any(|d| {
                    d.to_lowercase()
                        .split(|c: char| !c.is_alphanumeric())
                        .any(|w| w == self.word)
                });
                Some(f64::from(u8::from(hit)))
            })
            .collect();
        Ok(Judged { rewards, images: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_matches_whole_words_in_details_only() {
        let mut r = KeywordReward::new("Gold");
        let details = [
            vec!["golden hour".to_string()],
            vec!["a gold ring".to_string()],
            vec![],
        ];
        let samples: Vec<Sample> = details
            .iter()
            .map(|d| Sample {
                prompt: "gold",
                refined: "gold",
                details: d,
            })
            .collect();
        let j = r.judge(&samples).unwrap();
        assert_eq!(j.rewards, vec![Some(0.0), Some(1.0), Some(0.0)]);
    }

    #[test]
    fn reward_config_reads_each_kind() {
        let k: RewardConfig = toml::from_str("kind = \"keyword\"\nword = \"gold\"").unwrap();
        assert_eq!(
            k,
            RewardConfig::Keyword {
                word: "gold".into()
            }
        );
        let t: RewardConfig = toml::from_str("kind = \"text\"\nrelevance = 2.0").unwrap();
        assert!(matches!(t, RewardConfig::Text(c) if c.relevance == 2.0));
        let e = toml::from_str::<RewardConfig>("kind = \"text\"\nrelevanse = 2.0").unwrap_err();
        assert!(e.to_string().contains("relevanse"), "{e}");
    }
}
