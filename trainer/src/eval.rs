//! `prip eval text`: a text-only quality report of a PRIP model against the paper's
//! baselines and ablations, all measured the same way in one run.
//!
//! What it can show: that the user's prompt and syntax survive, that the added phrases
//! are system language rather than chatter, how varied and repetitive they are, how
//! close the refined prompt stays to what the user asked for (sentence-embedding
//! similarity), and how fast. What it cannot show: whether images get better. The
//! paper's ImageReward/HPSv2 evaluation needs an image generator and preference
//! models that cannot be had offline here.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use prip_core::decoder::Template;
use prip_core::encoder::TextEncoder;
use prip_core::nn::OpsMode;
use prip_core::refiner::Conditioning;
use prip_core::store::ModelStore;
use prip_core::syntax::{self, Dialect, SpanKind};
use prip_core::{RefineRequest, Refiner, RefinerOptions};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::recipe::Vocabulary;
use crate::{Result, TrainError};

/// The row every other system is compared with.
pub const PRIP: &str = "PRIP";

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Held-out prompts, one per line.
    pub prompts: PathBuf,
    /// The PRIP model (name or directory).
    pub model: String,
    /// A model trained with the decoder ablation (no pivot).
    pub no_pivot_model: Option<String>,
    /// A model whose encoder regressed random candidates.
    pub random_target_model: Option<String>,
    /// More PRIP checkpoints as (row label, model), each compared with PRIP (e.g. the
    /// warm-up checkpoint beside its PPO-trained one: Table 4's "without RL").
    pub compare: Vec<(String, String)>,
    /// Evaluate only the first N prompts.
    pub limit: Option<usize>,
    /// Base sampling seed (prompt i uses seed + i).
    pub seed: u64,
    /// Prompts decoded together.
    pub batch: usize,
}

/// One system's scores.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    /// Variant name.
    pub name: String,
    /// Prompts evaluated.
    pub prompts: usize,
    /// Share whose refined prompt keeps the user prompt byte-for-byte around the details.
    pub prompt_kept: f64,
    /// Share whose protected syntax is unchanged and where no new syntax appears.
    pub syntax_kept: f64,
    /// Mean added phrases per prompt.
    pub phrases_per_prompt: f64,
    /// Share of added phrases found in the system-language vocabulary.
    pub in_vocabulary: f64,
    /// Distinct word bigrams / all word bigrams of the added text.
    pub distinct_2: f64,
    /// Share of prompts whose additions repeat a phrase (their own or the user's).
    pub repeated_phrase_rate: f64,
    /// Mean cosine similarity (MiniLM) between the user prompt and the refined prompt.
    pub relevance: f64,
    /// Generated tokens per second (0 for variants without a model).
    pub tokens_per_s: f64,
    /// A few outputs, for the reader.
    pub samples: Vec<String>,
    /// What each prompt contributed, in prompt order, for the paired bootstrap.
    #[serde(skip)]
    per_prompt: Vec<PromptScore>,
}

/// One prompt's share of the scores that [`Difference`] resamples.
#[derive(Debug, Clone, Copy)]
struct PromptScore {
    phrases: usize,
    known: usize,
    relevance: f64,
}

/// A point estimate with its 95% percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// The difference on the prompts as evaluated.
    pub estimate: f64,
    /// 2.5th percentile over the resamples.
    pub low: f64,
    /// 97.5th percentile over the resamples.
    pub high: f64,
}

impl Interval {
    /// Whether the interval leaves out zero, i.e. the difference is not sampling noise
    /// at the 95% level.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// `resamples` draws of `n` prompt indices with replacement, from `seed` (so a rerun
/// gives the same intervals): the resamples of a paired bootstrap, shared by every
/// system and metric compared on the same prompts.
pub fn bootstrap_draws(n: usize, resamples: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..resamples)
        .map(|_| (0..n).map(|_| rng.random_range(0..n)).collect())
        .collect()
}

/// The paired bootstrap interval of a difference: `diff(indices)` computes it on a set
/// of prompt indices (both systems on the same prompts); the estimate is on all `n`
/// prompts, the bounds are the 2.5th and 97.5th percentiles over `draws`
/// ([`bootstrap_draws`]). With no draws the bounds are the estimate.
pub fn paired_interval(n: usize, draws: &[Vec<usize>], diff: impl Fn(&[usize]) -> f64) -> Interval {
    let all: Vec<usize> = (0..n).collect();
    let estimate = diff(&all);
    let mut samples: Vec<f64> = draws.iter().map(|d| diff(d)).collect();
    if samples.is_empty() {
        return Interval {
            estimate,
            low: estimate,
            high: estimate,
        };
    }
    samples.sort_by(f64::total_cmp);
    let last = samples.len() - 1;
    let at = |q: f64| samples[((q * last as f64).round() as usize).min(last)];
    Interval {
        estimate,
        low: at(0.025),
        high: at(0.975),
    }
}

/// One system minus the reference, over the same prompts and seeds.
///
/// The systems are paired (same prompt, same seed), so the bootstrap resamples prompts
/// and recomputes both systems' scores on each resample: the interval then reflects
/// how much the gap depends on which prompts were drawn. Distinct-2 is left out: it
/// counts repeats across prompts, and resampling with replacement makes repeats.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// The system compared with the reference.
    pub name: String,
    /// Added phrases per prompt.
    pub phrases_per_prompt: Interval,
    /// Share of added phrases in the vocabulary.
    pub in_vocabulary: Interval,
    /// Mean relevance.
    pub relevance: Interval,
}

/// A whole report: every system's scores and each one's difference from the reference.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scores in table order.
    pub scores: Vec<Scores>,
    /// The row the differences are taken from.
    pub reference: String,
    /// Bootstrap resamples behind each interval.
    pub resamples: usize,
    /// Every other row minus the reference.
    pub differences: Vec<Difference>,
}

impl Report {
    /// Compares every row with the one named `reference` by a paired bootstrap of
    /// `resamples` draws of the prompts (seeded, so a rerun prints the same intervals).
    pub fn new(scores: Vec<Scores>, reference: &str, resamples: usize, seed: u64) -> Result<Self> {
        let base = scores.iter().find(|s| s.name == reference).ok_or_else(|| {
            TrainError::Config(format!("no row named {reference:?} to compare with"))
        })?;
        let n = base.per_prompt.len();
        if n == 0 || resamples == 0 {
            return Err(TrainError::Config(
                "a bootstrap needs at least one prompt and one resample".into(),
            ));
        }
        let draws = bootstrap_draws(n, resamples, seed);
        let mut differences = Vec::new();
        for other in scores.iter().filter(|s| s.name != reference) {
            if other.per_prompt.len() != n {
                return Err(TrainError::Config(format!(
                    "{:?} scored {} prompts, {reference:?} {n}: not paired",
                    other.name,
                    other.per_prompt.len()
                )));
            }
            let interval = |metric: fn(&[PromptScore], &[usize]) -> f64| {
                paired_interval(n, &draws, |idx: &[usize]| {
                    metric(&other.per_prompt, idx) - metric(&base.per_prompt, idx)
                })
            };
            differences.push(Difference {
                name: other.name.clone(),
                phrases_per_prompt: interval(|p, idx| {
                    idx.iter().map(|&i| p[i].phrases as f64).sum::<f64>() / idx.len() as f64
                }),
                in_vocabulary: interval(|p, idx| {
                    let phrases: usize = idx.iter().map(|&i| p[i].phrases).sum();
                    let known: usize = idx.iter().map(|&i| p[i].known).sum();
                    if phrases == 0 {
                        0.0
                    } else {
                        known as f64 / phrases as f64
                    }
                }),
                relevance: interval(|p, idx| {
                    idx.iter().map(|&i| p[i].relevance).sum::<f64>() / idx.len() as f64
                }),
            });
        }
        Ok(Report {
            scores,
            reference: reference.to_string(),
            resamples,
            differences,
        })
    }
}

struct Output {
    prompt: String,
    refined: String,
    details: Vec<String>,
}

/// The instruction of the generic-LLM baseline, in SmolLM2's chat format.
pub fn instruction_template() -> Template {
    Template {
        before: "<|im_start|>system\nYou write prompts for text-to-image models.<|im_end|>\n<|im_start|>user\nImprove this image prompt by adding comma-separated keywords about medium, style, lighting, detail and artists. Keep the original words first.<|im_end|>\n<|im_start|>assistant\n".into(),
        after: "".into(),
    }
}

/// Runs every variant that the options allow and returns their scores, in table order.
pub fn evaluate(opts: &EvalOptions, store: &ModelStore) -> Result<Vec<Scores>> {
    let text =
        std::fs::read_to_string(&opts.prompts).map_err(|e| TrainError::io(&opts.prompts, e))?;
    let mut prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if let Some(n) = opts.limit {
        prompts.truncate(n);
    }
    if prompts.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no prompts",
            opts.prompts.display()
        )));
    }
    let vocab = Vocabulary::load(&store.ensure("clip-interrogator-data")?)?;
    let phrases = vocab.phrases();
    let minilm = TextEncoder::load(
        &store.ensure("minilm-l6")?,
        &candle_core::Device::Cpu,
        OpsMode::Fused,
    )?;

    let mut out = Vec::new();
    let none: Vec<Output> = prompts
        .iter()
        .map(|p| Output {
            prompt: p.clone(),
            refined: p.clone(),
            details: Vec::new(),
        })
        .collect();
    out.push(score("no refinement", &none, 0.0, &phrases, &minilm)?);

    let mut rng = StdRng::seed_from_u64(opts.seed);
    let random: Vec<Output> = prompts
        .iter()
        .map(|p| {
            let mut details: Vec<String> = vocab
                .mediums
                .choose(&mut rng)
                .into_iter()
                .cloned()
                .collect();
            details.extend(vocab.flavors.choose_multiple(&mut rng, 3).cloned());
            Output {
                prompt: p.clone(),
                refined: syntax::append_details(p, Dialect::default(), &details),
                details,
            }
        })
        .collect();
    out.push(score(
        "random vocabulary fragments",
        &random,
        0.0,
        &phrases,
        &minilm,
    )?);

    let mut variants: Vec<(&str, &str, Conditioning)> = vec![
        (
            "generic LLM (SmolLM2 zero-shot instruction)",
            opts.model.as_str(),
            Conditioning::Instruction(instruction_template()),
        ),
        (PRIP, opts.model.as_str(), Conditioning::Pivot),
    ];
    if let Some(m) = &opts.no_pivot_model {
        variants.push(("ablation: decoder without pivot", m, Conditioning::NoPivot));
    }
    if let Some(m) = &opts.random_target_model {
        variants.push((
            "ablation: encoder on a random target",
            m,
            Conditioning::Pivot,
        ));
    }
    for (label, model) in &opts.compare {
        variants.push((label, model, Conditioning::Pivot));
    }
    for (name, model, conditioning) in variants {
        tracing::info!("evaluating {name}");
        let mut refiner = Refiner::open_with_store(
            &RefinerOptions {
                model: model.to_string(),
                ..RefinerOptions::default()
            },
            store,
        )?;
        refiner.set_conditioning(conditioning);
        let (outputs, tps) = run_model(&mut refiner, &prompts, opts)?;
        out.push(score(name, &outputs, tps, &phrases, &minilm)?);
    }
    Ok(out)
}

fn run_model(
    refiner: &mut Refiner,
    prompts: &[String],
    opts: &EvalOptions,
) -> Result<(Vec<Output>, f64)> {
    let mut outputs = Vec::with_capacity(prompts.len());
    let (mut tokens, mut secs) = (0usize, 0f64);
    for (c, chunk) in prompts.chunks(opts.batch.max(1)).enumerate() {
        let reqs: Vec<RefineRequest> = chunk
            .iter()
            .enumerate()
            .map(|(i, p)| RefineRequest {
                seed: Some(opts.seed + (c * opts.batch + i) as u64),
                ..RefineRequest::new(p.clone())
            })
            .collect();
        let t = Instant::now();
        let results = refiner.refine(&reqs);
        secs += t.elapsed().as_secs_f64();
        for (p, r) in chunk.iter().zip(results) {
            let r = r?;
            tokens += r.timings.new_tokens;
            outputs.push(Output {
                prompt: p.clone(),
                refined: r.refined,
                details: r.details,
            });
        }
    }
    Ok((outputs, tokens as f64 / secs.max(1e-9)))
}

fn protected(prompt: &str) -> Vec<String> {
    let parsed = syntax::parse(prompt, Dialect::default());
    parsed
        .spans()
        .iter()
        .filter(|s| s.kind != SpanKind::Text)
        .map(|s| parsed.slice(s).to_string())
        .collect()
}

fn score(
    name: &str,
    outs: &[Output],
    tokens_per_s: f64,
    vocab: &HashSet<String>,
    minilm: &TextEncoder,
) -> Result<Scores> {
    let n = outs.len() as f64;
    let mut kept = 0usize;
    let mut syntax_ok = 0usize;
    let mut repeated = 0usize;
    let (mut total_phrases, mut known) = (0usize, 0usize);
    let (mut bigrams, mut distinct) = (0usize, HashSet::new());
    let mut per_prompt = Vec::with_capacity(outs.len());
    for o in outs {
        let ip = syntax::insertion_point(&o.prompt, Dialect::default());
        if o.refined.starts_with(&o.prompt[..ip]) && o.refined.ends_with(&o.prompt[ip..]) {
            kept += 1;
        }
        if protected(&o.prompt) == protected(&o.refined) {
            syntax_ok += 1;
        }
        let mut seen: HashSet<String> = o
            .prompt
            .split(',')
            .map(|s| s.trim().to_lowercase())
            .collect();
        let mut rep = false;
        let mut own = PromptScore {
            phrases: o.details.len(),
            known: 0,
            relevance: 0.0,
        };
        for d in &o.details {
            let d = d.trim().to_lowercase();
            own.known += usize::from(vocab.contains(&d));
            rep |= !seen.insert(d.clone());
            let words: Vec<&str> = d.split_whitespace().collect();
            for w in words.windows(2) {
                bigrams += 1;
                distinct.insert(format!("{} {}", w[0], w[1]));
            }
        }
        repeated += usize::from(rep);
        total_phrases += own.phrases;
        known += own.known;
        per_prompt.push(own);
    }
    for (c, chunk) in outs.chunks(64).enumerate() {
        let a: Vec<String> = chunk
            .iter()
            .map(|o| syntax::parse(&o.prompt, Dialect::default()).free_text())
            .collect();
        let b: Vec<String> = chunk
            .iter()
            .map(|o| syntax::parse(&o.refined, Dialect::default()).free_text())
            .collect();
        let ea = minilm.sentence_embeddings(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
        let eb = minilm.sentence_embeddings(&b.iter().map(String::as_str).collect::<Vec<_>>())?;
        let cos: Vec<f32> = (ea * eb)?.sum(1)?.to_vec1()?;
        for (own, cos) in per_prompt[c * 64..].iter_mut().zip(cos) {
            own.relevance = cos as f64;
        }
    }
    let relevance: f64 = per_prompt.iter().map(|p| p.relevance).sum();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(Scores {
        name: name.to_string(),
        prompts: outs.len(),
        prompt_kept: kept as f64 / n,
        syntax_kept: syntax_ok as f64 / n,
        phrases_per_prompt: total_phrases as f64 / n,
        in_vocabulary: ratio(known, total_phrases),
        distinct_2: ratio(distinct.len(), bigrams),
        repeated_phrase_rate: repeated as f64 / n,
        relevance: relevance / n,
        tokens_per_s,
        samples: outs.iter().take(4).map(|o| o.refined.clone()).collect(),
        per_prompt,
    })
}

/// The report as Markdown: the scores, then each row's difference from the reference.
pub fn markdown(report: &Report) -> String {
    let mut s = scores_table(&report.scores);
    s.push_str(&format!(
        "\nDifference from {} (paired over the same prompts and seeds; 95% bootstrap interval, {} resamples; * where it leaves out 0):\n\n| system | phrases/prompt | in vocabulary (points) | relevance |\n|---|---|---|---|\n",
        report.reference, report.resamples
    ));
    let show = |i: &Interval, scale: f64, digits: usize| {
        format!(
            "{:+.digits$} [{:+.digits$}, {:+.digits$}]{}",
            scale * i.estimate,
            scale * i.low,
            scale * i.high,
            if i.excludes_zero() { " *" } else { "" }
        )
    };
    for d in &report.differences {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            d.name,
            show(&d.phrases_per_prompt, 1.0, 2),
            show(&d.in_vocabulary, 100.0, 1),
            show(&d.relevance, 1.0, 3),
        ));
    }
    s
}

fn scores_table(scores: &[Scores]) -> String {
    let mut s = String::from(
        "| system | prompt kept | syntax kept | phrases/prompt | in vocabulary | distinct-2 | repeated phrase | relevance | tokens/s |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in scores {
        let tps = if r.tokens_per_s > 0.0 {
            format!("{:.1}", r.tokens_per_s)
        } else {
            "-".into()
        };
        s.push_str(&format!(
            "| {} | {:.1}% | {:.1}% | {:.2} | {:.1}% | {:.3} | {:.1}% | {:.3} | {tps} |\n",
            r.name,
            100.0 * r.prompt_kept,
            100.0 * r.syntax_kept,
            r.phrases_per_prompt,
            100.0 * r.in_vocabulary,
            r.distinct_2,
            100.0 * r.repeated_phrase_rate,
            r.relevance,
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(prompt: &str, refined: &str, details: &[&str]) -> Output {
        Output {
            prompt: prompt.into(),
            refined: refined.into(),
            details: details.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn scores_catch_lost_prompts_broken_syntax_repeats_and_chatter() {
        let dir = tempfile::tempdir().unwrap();
        prip_test_support::models::write_tiny_bert(dir.path(), 1).unwrap();
        let enc = TextEncoder::load(dir.path(), &candle_core::Device::Cpu, OpsMode::Fused).unwrap();
        let vocab: HashSet<String> = ["oil painting", "highly detailed"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let outs = [
            out(
                "a cat",
                "a cat, oil painting, highly detailed",
                &["oil painting", "highly detailed"],
            ),
            out(
                "(a dog:1.2)",
                "(a dog:1.2), oil painting, oil painting",
                &["oil painting", "oil painting"],
            ),
            out("a fox", "a fax, some words here", &["some words here"]),
            out("a owl <lora:x:1>", "a owl <lora:x:1>, (bad)", &["(bad)"]),
        ];
        let s = score("t", &outs, 0.0, &vocab, &enc).unwrap();
        assert_eq!(s.prompt_kept, 0.75);
        assert_eq!(s.syntax_kept, 0.75);
        assert_eq!(s.repeated_phrase_rate, 0.25);
        assert!(
            (s.in_vocabulary - 4.0 / 6.0).abs() < 1e-9,
            "{}",
            s.in_vocabulary
        );
        assert!((s.phrases_per_prompt - 1.5).abs() < 1e-9);
        // Bigrams: oil painting x3, highly detailed, some words, words here -> 4 of 6 distinct.
        assert!((s.distinct_2 - 4.0 / 6.0).abs() < 1e-9, "{}", s.distinct_2);
        assert!(s.relevance > 0.0 && s.relevance <= 1.0 + 1e-6);
        let mean: f64 = s.per_prompt.iter().map(|p| p.relevance).sum::<f64>() / 4.0;
        assert!((mean - s.relevance).abs() < 1e-9);
        let phrases: Vec<usize> = s.per_prompt.iter().map(|p| p.phrases).collect();
        assert_eq!(phrases, [2, 2, 1, 1]);
        let table = scores_table(&[s]);
        assert!(table.contains("| t | 75.0% | 75.0% |"), "{table}");
    }

    fn row(name: &str, per_prompt: Vec<PromptScore>) -> Scores {
        Scores {
            name: name.into(),
            prompts: per_prompt.len(),
            prompt_kept: 1.0,
            syntax_kept: 1.0,
            phrases_per_prompt: 0.0,
            in_vocabulary: 0.0,
            distinct_2: 0.0,
            repeated_phrase_rate: 0.0,
            relevance: 0.0,
            tokens_per_s: 0.0,
            samples: Vec::new(),
            per_prompt,
        }
    }

    /// 200 prompts whose relevance and phrase counts vary from prompt to prompt.
    fn reference() -> Vec<PromptScore> {
        (0..200)
            .map(|i| PromptScore {
                phrases: 2 + i % 3,
                known: i % 3,
                relevance: 0.5 + 0.3 * ((i * 7 % 11) as f64 / 11.0),
            })
            .collect()
    }

    #[test]
    fn bootstrap_separates_a_consistent_gap_from_noise() {
        let base = reference();
        let better: Vec<PromptScore> = base
            .iter()
            .map(|p| PromptScore {
                phrases: p.phrases + 1,
                known: p.known + 1,
                relevance: p.relevance + 0.1,
            })
            .collect();
        // Half the prompts gain what the other half lose: no gap on average.
        let noisy: Vec<PromptScore> = base
            .iter()
            .enumerate()
            .map(|(i, p)| PromptScore {
                relevance: p.relevance + if i % 2 == 0 { 0.1 } else { -0.1 },
                ..*p
            })
            .collect();
        let scores = vec![
            row("same", base.clone()),
            row(PRIP, base),
            row("better", better),
            row("noisy", noisy),
        ];
        let report = Report::new(scores.clone(), PRIP, 500, 3).unwrap();
        let names: Vec<&str> = report.differences.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["same", "better", "noisy"]);

        let same = &report.differences[0];
        for i in [
            &same.phrases_per_prompt,
            &same.in_vocabulary,
            &same.relevance,
        ] {
            assert_eq!(
                *i,
                Interval {
                    estimate: 0.0,
                    low: 0.0,
                    high: 0.0
                }
            );
            assert!(!i.excludes_zero());
        }

        let better = &report.differences[1];
        assert!((better.relevance.estimate - 0.1).abs() < 1e-9);
        assert!(
            (better.relevance.low - 0.1).abs() < 1e-9 && (better.relevance.high - 0.1).abs() < 1e-9
        );
        assert!(better.relevance.excludes_zero() && better.phrases_per_prompt.excludes_zero());
        assert!((better.phrases_per_prompt.estimate - 1.0).abs() < 1e-9);
        // 1/3 known -> 2/4 known on average: a ratio, resampled as a ratio.
        assert!(better.in_vocabulary.estimate > 0.1 && better.in_vocabulary.excludes_zero());

        let noisy = &report.differences[2];
        assert!(noisy.relevance.estimate.abs() < 1e-9);
        assert!(noisy.relevance.low < 0.0 && noisy.relevance.high > 0.0);
        assert!(!noisy.relevance.excludes_zero());
        assert_eq!(noisy.phrases_per_prompt.low, 0.0);

        // Seeded: the same report twice.
        let again = Report::new(scores, PRIP, 500, 3).unwrap();
        assert_eq!(again.differences[2].relevance, noisy.relevance);

        let table = markdown(&report);
        assert!(
            table.contains("| better | +1.00 [+1.00, +1.00] * |"),
            "{table}"
        );
        assert!(table.contains("| same | +0.00 [+0.00, +0.00] |"), "{table}");
    }

    #[test]
    fn bootstrap_refuses_unpaired_rows() {
        let err = Report::new(vec![row("x", reference())], PRIP, 10, 0).unwrap_err();
        assert!(err.to_string().contains("no row named \"PRIP\""), "{err}");
        let short = reference()[..10].to_vec();
        let err = Report::new(
            vec![row(PRIP, reference()), row("short", short)],
            PRIP,
            10,
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not paired"), "{err}");
        let err = Report::new(vec![row(PRIP, reference())], PRIP, 0, 0).unwrap_err();
        assert!(err.to_string().contains("one resample"), "{err}");
    }
}
