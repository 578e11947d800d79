//! Logit processing and token choice for one row of a batch: repetition penalty,
//! no-repeat n-grams, banned token sequences, temperature, top-k, top-p.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Decoding options; every field has a default so a prip.toml may set any subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationConfig {
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Nucleus mass; 1.0 disables.
    pub top_p: f64,
    /// >1 discourages tokens already in the context (CTRL-style).
    pub repetition_penalty: f64,
    /// Forbid repeating any n-gram of this size; 0 disables.
    pub no_repeat_ngram: usize,
    /// End generation at the first newline.
    pub stop_at_newline: bool,
    /// Words the refiner must never add.
    pub banned_words: Vec<String>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 48,
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
            repetition_penalty: 1.15,
            no_repeat_ngram: 3,
            stop_at_newline: true,
            banned_words: Vec::new(),
        }
    }
}

/// A partial [`GenerationConfig`]: the settings a caller changes (CLI flags, a C ABI
/// request's `"generation"` object), `None` keeping the base's. Every front end merges
/// through [`GenerationPatch::apply`], so a value is accepted or refused the same way
/// whichever way it arrives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationPatch {
    /// See [`GenerationConfig::max_new_tokens`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// See [`GenerationConfig::temperature`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// See [`GenerationConfig::top_k`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// See [`GenerationConfig::top_p`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// See [`GenerationConfig::repetition_penalty`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    /// See [`GenerationConfig::no_repeat_ngram`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_repeat_ngram: Option<usize>,
    /// See [`GenerationConfig::stop_at_newline`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_at_newline: Option<bool>,
    /// See [`GenerationConfig::banned_words`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub banned_words: Option<Vec<String>>,
}

impl GenerationPatch {
    /// Whether no field is set (applying it changes nothing).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with the set fields replaced, validated.
    pub fn apply(&self, base: &GenerationConfig) -> Result<GenerationConfig, String> {
        let cfg = GenerationConfig {
            max_new_tokens: self.max_new_tokens.unwrap_or(base.max_new_tokens),
            temperature: self.temperature.unwrap_or(base.temperature),
            top_k: self.top_k.unwrap_or(base.top_k),
            top_p: self.top_p.unwrap_or(base.top_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(base.repetition_penalty),
            no_repeat_ngram: self.no_repeat_ngram.unwrap_or(base.no_repeat_ngram),
            stop_at_newline: self.stop_at_newline.unwrap_or(base.stop_at_newline),
            banned_words: self
                .banned_words
                .clone()
                .unwrap_or_else(|| base.banned_words.clone()),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the set values on their own. [`GenerationConfig::validate`]'s rules each
    /// concern one field, so this refuses exactly what [`GenerationPatch::apply`] would
    /// over any valid base; callers that send the patch elsewhere as JSON (which has no
    /// NaN) check it first.
    pub fn validate(&self) -> Result<(), String> {
        self.apply(&GenerationConfig::default()).map(drop)
    }
}

impl GenerationConfig {
    /// Refuses values that make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if self.max_new_tokens > 4096 {
            return Err(format!(
                "max_new_tokens {} is over the limit of 4096",
                self.max_new_tokens
            ));
        }
        Ok(())
    }
}

/// The state of one row: its generator, its context and its bans.
#[derive(Debug, Clone)]
pub struct RowSampler {
    rng: StdRng,
    /// Token ids the row has seen (prompt text, then generated).
    pub context: Vec<u32>,
    generated_from: usize,
}

impl RowSampler {
    /// A row whose visible prompt tokens are `context`, drawing from `seed`.
    pub fn new(seed: u64, context: Vec<u32>) -> Self {
        let generated_from = context.len();
        Self {
            rng: StdRng::seed_from_u64(seed),
            context,
            generated_from,
        }
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.context[self.generated_from..]
    }

    /// Applies every rule to `logits` (modified in place) and draws the next token.
    pub fn next_token(
        &mut self,
        logits: &mut [f32],
        cfg: &GenerationConfig,
        banned: &[Vec<u32>],
    ) -> u32 {
        self.penalise_repeats(logits, cfg.repetition_penalty);
        self.ban_ngrams(logits, cfg.no_repeat_ngram);
        self.ban_sequences(logits, banned);
        let tok = choose(logits, cfg, &mut self.rng);
        self.context.push(tok);
        tok
    }

    /// Takes back the token [`Self::next_token`] just drew from `logits` (already
    /// penalised by that call) and draws another with it excluded.
    pub fn redraw_without(&mut self, logits: &mut [f32], cfg: &GenerationConfig) -> u32 {
        if let Some(tok) = self.context.pop() {
            ban(logits, tok);
        }
        let tok = choose(logits, cfg, &mut self.rng);
        self.context.push(tok);
        tok
    }

    fn penalise_repeats(&self, logits: &mut [f32], penalty: f64) {
        if penalty == 1.0 {
            return;
        }
        let p = penalty as f32;
        let mut seen = std::collections::HashSet::new();
        for &t in &self.context {
            if seen.insert(t) {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p } else { *l * p };
                }
            }
        }
    }

    fn ban_ngrams(&self, logits: &mut [f32], n: usize) {
        let ctx = &self.context;
        if n == 0 || ctx.len() < n {
            return;
        }
        let tail = &ctx[ctx.len() - (n - 1)..];
        for start in 0..=ctx.len() - n {
            if &ctx[start..start + n - 1] == tail {
                ban(logits, ctx[start + n - 1]);
            }
        }
    }

    fn ban_sequences(&self, logits: &mut [f32], banned: &[Vec<u32>]) {
        let gen = self.generated();
        for seq in banned {
            let Some((&last, head)) = seq.split_last() else {
                continue;
            };
            if gen.ends_with(head) {
                ban(logits, last);
            }
        }
    }
}

fn ban(logits: &mut [f32], tok: u32) {
    if let Some(l) = logits.get_mut(tok as usize) {
        *l = f32::NEG_INFINITY;
    }
}

/// Greedy when temperature is 0, else top-k/top-p sampling at that temperature.
fn choose(logits: &[f32], cfg: &GenerationConfig, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0)
    };
    if cfg.temperature == 0.0 {
        return argmax();
    }
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| (i as u32, l / cfg.temperature as f32))
        .collect();
    if cand.is_empty() {
        return argmax();
    }
    let k = if cfg.top_k == 0 {
        cand.len()
    } else {
        cfg.top_k.min(cand.len())
    };
    if k < cand.len() {
        cand.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
        cand.truncate(k);
    }
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    let mut mass = 0.0;
    let mut keep = probs.len();
    for (i, p) in probs.iter_mut().enumerate() {
        *p /= total;
        mass += *p;
        if mass >= cfg.top_p {
            keep = i + 1;
            break;
        }
    }
    let kept = &probs[..keep];
    let r = rng.random::<f64>() * kept.iter().sum::<f64>();
    let mut acc = 0.0;
    for (i, p) in kept.iter().enumerate() {
        acc += p;
        if r < acc {
            return cand[i].0;
        }
    }
    cand[keep - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greedy() -> GenerationConfig {
        GenerationConfig {
            temperature: 0.0,
            repetition_penalty: 1.0,
            no_repeat_ngram: 0,
            ..Default::default()
        }
    }

    #[test]
    fn a_redraw_excludes_the_token_taken_back_and_penalises_once() {
        let cfg = GenerationConfig {
            repetition_penalty: 2.0,
            ..greedy()
        };
        let mut s = RowSampler::new(0, vec![1]);
        // Token 1 was seen: 4.0 / 2 = 2.0, below token 2 and above token 0 (a second
        // penalty would put it below token 0).
        let mut logits = vec![1.5, 4.0, 3.0, 0.5];
        let first = s.next_token(&mut logits, &cfg, &[]);
        assert_eq!(first, 2);
        let second = s.redraw_without(&mut logits, &cfg);
        assert_eq!(second, 1, "the penalty is not applied a second time");
        assert_eq!(s.generated(), &[1]);
        assert_eq!(s.redraw_without(&mut logits, &cfg), 0);
        assert_eq!(s.generated(), &[0]);
    }

    #[test]
    fn a_patch_changes_only_what_it_sets() {
        let base = greedy();
        assert_eq!(GenerationPatch::default().apply(&base), Ok(base.clone()));
        let patch: GenerationPatch =
            serde_json::from_str(r#"{"top_p": 0.5, "banned_words": ["nsfw"]}"#).unwrap();
        let cfg = patch.apply(&base).unwrap();
        assert_eq!(cfg.top_p, 0.5);
        assert_eq!(cfg.banned_words, ["nsfw"]);
        assert_eq!(cfg.temperature, base.temperature);
        assert_eq!(cfg.max_new_tokens, base.max_new_tokens);
        // Unset fields stay out of the JSON, so the receiver keeps its own defaults.
        assert_eq!(
            serde_json::to_string(&patch).unwrap(),
            r#"{"top_p":0.5,"banned_words":["nsfw"]}"#
        );
        let err = serde_json::from_str::<GenerationPatch>(r#"{"top_q": 1}"#).unwrap_err();
        assert!(err.to_string().contains("top_q"), "{err}");
    }

    #[test]
    fn a_patch_is_validated() {
        let nan = GenerationPatch {
            temperature: Some(f64::NAN),
            ..Default::default()
        };
        assert!(nan.validate().unwrap_err().contains("temperature"));
        assert!(nan.apply(&greedy()).is_err());
        let wide = GenerationPatch {
            top_p: Some(7.0),
            ..Default::default()
        };
        assert!(wide.validate().unwrap_err().contains("top_p"));
        assert_eq!(GenerationPatch::default().validate(), Ok(()));
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = RowSampler::new(0, vec![]);
        assert_eq!(s.next_token(&mut [0.1, 3.0, 2.0], &greedy(), &[]), 1);
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let cfg = GenerationConfig {
            repetition_penalty: 2.0,
            ..greedy()
        };
        let mut s = RowSampler::new(0, vec![1]);
        assert_eq!(s.next_token(&mut [0.0, 3.0, 2.0], &cfg, &[]), 2);
    }

    #[test]
    fn no_repeat_ngram_blocks_a_repeated_bigram() {
        let cfg = GenerationConfig {
            no_repeat_ngram: 2,
            ..greedy()
        };
        // Generated "1 2 1": emitting 2 again would repeat the bigram (1, 2).
        let mut s = RowSampler::new(0, vec![]);
        s.context.extend([1, 2, 1]);
        assert_eq!(s.next_token(&mut [0.0, 1.0, 5.0, 4.0], &cfg, &[]), 3);
    }

    #[test]
    fn banned_sequences_are_cut_at_their_last_token() {
        let mut s = RowSampler::new(0, vec![]);
        assert_eq!(s.next_token(&mut [0.0, 5.0, 4.0], &greedy(), &[vec![1]]), 2);
        let mut s = RowSampler::new(0, vec![]);
        s.context.push(2);
        assert_eq!(
            s.next_token(&mut [0.0, 5.0, 4.0], &greedy(), &[vec![2, 1]]),
            2
        );
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let cfg = GenerationConfig {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            ..greedy()
        };
        let logits = [1.0f32, 1.1, 1.2, 0.9, 1.05];
        let draw = |seed| {
            let mut s = RowSampler::new(seed, vec![]);
            (0..50)
                .map(|_| s.next_token(&mut logits.clone(), &cfg, &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert!(a.iter().all(|&t| t == 2 || t == 1), "{a:?}");
        assert!(a.contains(&1) && a.contains(&2));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let cfg = GenerationConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            ..greedy()
        };
        let mut s = RowSampler::new(3, vec![]);
        for _ in 0..20 {
            assert_eq!(s.next_token(&mut [0.0, 10.0, 0.0], &cfg, &[]), 1);
        }
    }
}
