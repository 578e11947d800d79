//! The paper's reward (Section 3.4): the mean preference score of the refined prompt's
//! images minus that of the original prompt's images, rendered under the same seeds and
//! both judged against the user's prompt, from one scorer or a weighted sum (the paper
//! sums ImageReward and HPSv2).

use std::time::Duration;

use super::{Judged, Reward, Sample};
use crate::preference::{ImagePreference, ImagesConfig, Item};
use crate::tally::FailureTally;
use crate::{Result, TrainError};

/// Image-preference reward over the configured servers and scorers.
pub struct ImagePreferenceReward {
    judge: ImagePreference,
    renders: FailureTally,
    scores: FailureTally,
}

impl std::fmt::Debug for ImagePreferenceReward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagePreferenceReward")
            .field("judge", &self.judge)
            .finish_non_exhaustive()
    }
}

impl ImagePreferenceReward {
    /// Opens the servers and scorers of `cfg`, then checks at once that a step of
    /// `prompts_per_step` prompts (each rendered twice: refined and original) fits in
    /// `step_timeout` on these servers, so a hopeless config fails at start, not after
    /// an hour. `max_failed_share` of samples may fail (past a few dozen) before the run
    /// stops.
    pub fn open(
        cfg: &ImagesConfig,
        device: &candle_core::Device,
        prompts_per_step: usize,
        step_timeout: Duration,
        max_failed_share: f64,
    ) -> Result<Self> {
        let config = |e: crate::preference::PreferenceError| TrainError::Config(e.to_string());
        let judge = ImagePreference::open(cfg, device).map_err(config)?;
        judge
            .check_capacity(2 * prompts_per_step, step_timeout)
            .map_err(config)?;
        Ok(Self {
            judge,
            renders: FailureTally::new("rendered samples", max_failed_share, 50),
            scores: FailureTally::new("scores", max_failed_share, 50),
        })
    }
}

impl Reward for ImagePreferenceReward {
    fn name(&self) -> &str {
        "images"
    }

    fn judge(&mut self, samples: &[Sample<'_>]) -> Result<Judged> {
        let items: Vec<Item> = samples
            .iter()
            .flat_map(|s| {
                [
                    Item {
                        text: s.refined.to_string(),
                        prompt: s.prompt.to_string(),
                    },
                    Item {
                        text: s.prompt.to_string(),
                        prompt: s.prompt.to_string(),
                    },
                ]
            })
            .collect();
        let verdicts = self.judge.judge(&items);
        let mut images = 0;
        for v in &verdicts {
            v.tally(&mut self.renders, &mut self.scores);
            images += v.images.len();
        }
        self.renders
            .check()
            .and_then(|_| self.scores.check())
            .map_err(|e| TrainError::Config(e.to_string()))?;
        // A sample whose refined or original images all failed has no reward and leaves
        // the step; the images that did render stay in the cache for the next try.
        let rewards = verdicts
            .chunks(2)
            .map(|pair| Some(pair[0].total? - pair[1].total?))
            .collect();
        Ok(Judged { rewards, images })
    }
}
