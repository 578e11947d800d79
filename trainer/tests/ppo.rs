//! PPO (`prip train ppo`) on tiny random models written by the test: a toy reward whose
//! optimum is known rises while the KL stays bounded, every trainable parameter gets a
//! gradient, the text-side reward runs end to end into a checkpoint the refiner loads,
//! a resumed run ends where an uninterrupted one does, and non-finite steps are skipped,
//! counted and, past the limit, stop the run with its last good checkpoint; the paper's
//! image reward trains against fake image servers and a fake scoring service, through a
//! server failing mid-rollout, and a batch the servers cannot render in time is refused
//! at start.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prip_core::checkpoint::Checkpoint;
use prip_core::store::ModelStore;
use prip_core::{RefineRequest, Refiner, RefinerOptions};
use prip_test_support::models;
use prip_trainer::config::TrainConfig;
use prip_trainer::objective::Parts;
use prip_trainer::ppo::{self, Policy};
use prip_trainer::reward::{Judged, KeywordReward, Reward, Sample};
use prip_trainer::run::{prepare_out, Start};
use prip_trainer::TrainError;
use tempfile::TempDir;

const SUBJECTS: [&str; 8] = [
    "a cat",
    "a dog in the rain",
    "an old castle",
    "a red fox",
    "a little girl",
    "a big tree",
    "a white horse",
    "the moon at night",
];

struct Fixture {
    dir: TempDir,
    store: ModelStore,
}

/// The tiny checkpoint with its decoder as a Hugging Face directory whose output layer
/// is scaled up, and a pivot of 16 queries: a random LM of width 32 otherwise writes
/// near-uniform tokens (entropy ~6.9 nats over ~1000), and 4 prefix positions among ~20
/// barely move it, so no pivot could steer it.
fn write_steerable_checkpoint(dir: &Path) {
    models::write_tiny_checkpoint(dir, "").unwrap();
    let dec = dir.join("dec");
    models::write_tiny_llama(&dec, 2).unwrap();
    let path = dec.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let head = (&t["lm_head.weight"] * 40.0).unwrap();
    t.insert("lm_head.weight".into(), head);
    candle_core::safetensors::save(&t, &path).unwrap();
    let manifest = std::fs::read_to_string(dir.join("prip.toml"))
        .unwrap()
        .replace("model = \"dec.gguf\"", "model = \"dec\"")
        .replace("num_queries = 4", "num_queries = 16");
    std::fs::write(dir.join("prip.toml"), manifest).unwrap();
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir_all(&base).unwrap();
        write_steerable_checkpoint(&base);
        let prompts: String = SUBJECTS.iter().map(|s| format!("{s}\n")).collect();
        std::fs::write(dir.path().join("prompts.txt"), prompts).unwrap();
        let store = ModelStore::new(dir.path().join("home"));
        Self { dir, store }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self, out: &str, extra: &str) -> TrainConfig {
        let text = format!("base = \"base\"\nout = \"{out}\"\ntrain = [\"prompts.txt\"]\n{extra}");
        let p = self.path(&format!("{out}.toml"));
        std::fs::write(&p, text).unwrap();
        TrainConfig::load(&p).unwrap()
    }
}

fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// A piece of text the untrained policy writes in about a fifth of its refinements:
/// rare enough to leave room to rise, common enough for sampling to find. (The tiny
/// random LM writes byte-level gibberish, in which whole words are too rare.)
fn sometimes_written(f: &Fixture, cfg: &TrainConfig) -> String {
    let out = prepare_out(
        &Checkpoint::open(&f.path("base")).unwrap(),
        &f.path("probe"),
    )
    .unwrap();
    let parts = Parts::open(out, &f.store, false, None, &candle_core::Device::Cpu).unwrap();
    parts
        .encoder(prip_core::nn::OpsMode::Differentiable)
        .unwrap();
    let reference = parts.params.snapshot("pivot_former.").unwrap();
    let policy = Policy::new(&parts, &reference, cfg.ppo.generation(), 75).unwrap();
    let prompts: Vec<String> = (0..64).map(|i| SUBJECTS[i % 8].to_string()).collect();
    let seeds: Vec<u64> = (0..64).collect();
    let roll = policy.rollout(&prompts, &seeds).unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for d in &roll.details {
        let text: Vec<char> = d.join(", ").to_lowercase().chars().collect();
        let mut pieces: Vec<String> = text
            .windows(3)
            .map(|w| w.iter().collect::<String>())
            .filter(|p| p.chars().all(char::is_alphabetic))
            .collect();
        pieces.sort();
        pieces.dedup();
        for p in pieces {
            *counts.entry(p).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .min_by_key(|(_, n)| n.abs_diff(13))
        .map(|(p, _)| p)
        .expect("the tiny model writes letters")
}

/// The toy reward: 1 when the added details contain `piece`, else 0 (optimum: always).
#[derive(Debug)]
struct Contains {
    piece: String,
}

impl Reward for Contains {
    fn name(&self) -> &str {
        "contains"
    }

    fn judge(&mut self, samples: &[Sample<'_>]) -> prip_trainer::Result<Judged> {
        let rewards = samples
            .iter()
            .map(|s| {
                let hit = s.details.join(", ").to_lowercase().contains(&self.piece);
                Some(f64::from(u8::from(hit)))
            })
            .collect();
        Ok(Judged { rewards, images: 0 })
    }
}

const TOY: &str = "[run]\nsteps = 30\nbatch_size = 16\nsave_every = 20\n\
[optim]\nlr = 3e-3\nwarmup_steps = 0\nschedule = \"constant\"\n\
[ppo]\nepochs = 4\nmax_new_tokens = 6\nkl_coef = 0.05\n";

#[test]
fn a_toy_reward_rises_while_the_kl_stays_bounded() {
    let f = Fixture::new();
    let cfg = f.config("out", TOY);
    let piece = sometimes_written(&f, &cfg);
    let mut reward = Contains {
        piece: piece.clone(),
    };
    let s = ppo::train(&cfg, &f.store, &mut reward, Start::Fresh, false).unwrap();
    let m = metrics(&s.metrics);
    assert_eq!(m.len(), 30);
    let rewards: Vec<f64> = m.iter().map(|x| x["reward"].as_f64().unwrap()).collect();
    let kls: Vec<f64> = m.iter().map(|x| x["kl"].as_f64().unwrap()).collect();
    let (first, last) = (mean(&rewards[..5]), mean(&rewards[25..]));
    eprintln!("reward for {piece:?}: {rewards:?}\nKL: {kls:?}");
    assert!(
        last > first + 0.3,
        "reward for {piece:?}: {first:.3} -> {last:.3}: {rewards:?}"
    );
    assert!(kls.iter().all(|k| k.is_finite() && *k < 20.0), "{kls:?}");
    for plot in ["reward.svg", "kl.svg", "loss.svg"] {
        let svg = std::fs::read_to_string(s.run_dir.join(plot)).unwrap();
        assert!(svg.contains("<svg"), "{plot}");
    }
    // The result is an ordinary PRIP checkpoint.
    let mut r = Refiner::open_with_store(
        &RefinerOptions {
            model: f.path("out").display().to_string(),
            ..RefinerOptions::default()
        },
        &f.store,
    )
    .unwrap();
    assert!(r.head_trained());
    let out = r.refine(&[RefineRequest::new("a cat")]).remove(0).unwrap();
    assert!(out.refined.starts_with("a cat"));
}

#[test]
fn every_trainable_parameter_of_the_policy_gets_a_gradient() {
    let f = Fixture::new();
    let out = prepare_out(&Checkpoint::open(&f.path("base")).unwrap(), &f.path("out")).unwrap();
    let parts = Parts::open(out, &f.store, false, None, &candle_core::Device::Cpu).unwrap();
    parts
        .encoder(prip_core::nn::OpsMode::Differentiable)
        .unwrap();
    let reference = parts.params.snapshot("pivot_former.").unwrap();
    let generation = prip_core::sampling::GenerationConfig {
        max_new_tokens: 4,
        temperature: 1.0,
        ..Default::default()
    };
    let policy = Policy::new(&parts, &reference, generation, 75).unwrap();
    let prompts: Vec<String> = SUBJECTS[..4].iter().map(|s| s.to_string()).collect();
    let roll = policy.rollout(&prompts, &[1, 2, 3, 4]).unwrap();
    assert!(roll.ids.iter().all(|g| !g.is_empty()));
    let pivots = policy.pivots(&prompts).unwrap();
    let fwd = policy
        .forward(&roll.rows, &roll.ids, &pivots, true)
        .unwrap();
    // The policy term reaches the encoder through the frozen decoder; the value term
    // trains the value head.
    let loss = (fwd.logp.sum_all().unwrap() + fwd.values.sum_all().unwrap())
        .unwrap()
        .add(&fwd.entropy.sum_all().unwrap())
        .unwrap();
    let vars = policy.trainable();
    // The former's queries, input projection, final norm and one block (31), and the
    // value head's weight and bias.
    assert_eq!(
        vars.len(),
        33,
        "{:?}",
        vars.iter().map(|v| &v.0).collect::<Vec<_>>()
    );
    models::assert_all_vars_get_gradients(&vars, &loss.backward().unwrap());
    // The rollout's own log-probabilities are those of a teacher-forced pass.
    let again: Vec<f32> = fwd.logp.to_vec1().unwrap();
    let n0 = roll.ids[0].len();
    for (a, b) in again[..n0].iter().zip(&roll.logp[0]) {
        assert!((f64::from(*a) - b).abs() < 1e-4, "{a} vs {b}");
    }
}

fn write_vocabulary(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("mediums.txt"), "an oil painting\na photograph\n").unwrap();
    std::fs::write(dir.join("movements.txt"), "art nouveau\n").unwrap();
    std::fs::write(dir.join("artists.txt"), "claude monet\n").unwrap();
    std::fs::write(dir.join("flavors.txt"), "highly detailed\ngolden hour\n").unwrap();
}

#[test]
fn the_text_reward_trains_end_to_end_and_resumes_where_it_stopped() {
    let f = Fixture::new();
    write_vocabulary(&f.path("vocab"));
    models::write_tiny_bert(&f.path("minilm"), 7).unwrap();
    let reward = "[reward]\nkind = \"text\"\nsentence_encoder = \"minilm\"\nphrases = \"vocab\"\n";
    let run = |steps: usize| {
        format!(
            "[run]\nsteps = {steps}\nbatch_size = 4\nsave_every = 2\n[optim]\nlr = 3e-3\nwarmup_steps = 0\nschedule = \"constant\"\n[ppo]\nepochs = 2\nmax_new_tokens = 5\n{reward}"
        )
    };
    // Whole: 4 steps at once.
    let whole = f.config("whole", &run(4));
    let mut r = ppo::open_reward(&whole, &f.store).unwrap();
    assert_eq!(r.name(), "text");
    let s = ppo::train(&whole, &f.store, r.as_mut(), Start::Fresh, false).unwrap();
    assert_eq!(s.steps, 4);
    let m = metrics(&s.metrics);
    assert_eq!(m.len(), 4);
    assert!(m.iter().all(|x| x["reward"].as_f64().unwrap().is_finite()));

    // Split: 2 steps, then the same run resumed to 4.
    let first = f.config("split", &run(2));
    ppo::train(&first, &f.store, r.as_mut(), Start::Fresh, false).unwrap();
    let second = f.config("split", &run(4));
    // A fresh start must not silently throw away... a finished 2-step run is history,
    // so resuming is what continues it.
    let s2 = ppo::train(&second, &f.store, r.as_mut(), Start::Resume, false).unwrap();
    assert_eq!(s2.resumed_from, Some(2));
    assert_eq!(metrics(&s2.metrics).len(), 4);
    let head = |d: &str| {
        candle_core::safetensors::load(
            f.path(d).join("head.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (a, b) = (head("whole"), head("split"));
    for (k, t) in &a {
        let diff = (t - &b[k])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{k} differs by {diff}");
    }
}

/// NaN on chosen calls, 1 otherwise.
#[derive(Debug)]
struct Poisoned {
    calls: usize,
    nan_on: Vec<usize>,
}

impl Reward for Poisoned {
    fn name(&self) -> &str {
        "poisoned"
    }

    fn judge(&mut self, samples: &[Sample<'_>]) -> prip_trainer::Result<Judged> {
        self.calls += 1;
        let v = if self.nan_on.contains(&self.calls) {
            f64::NAN
        } else {
            1.0
        };
        Ok(Judged {
            rewards: vec![Some(v); samples.len()],
            images: 0,
        })
    }
}

#[test]
fn non_finite_steps_are_skipped_and_counted_and_too_many_stop_with_the_last_good_checkpoint() {
    let f = Fixture::new();
    let extra = "[run]\nsteps = 6\nbatch_size = 2\nsave_every = 2\n[ppo]\nepochs = 1\nmax_new_tokens = 3\nmax_bad_steps = 1\n";
    let cfg = f.config("out", extra);
    let mut once = Poisoned {
        calls: 0,
        nan_on: vec![3],
    };
    let s = ppo::train(&cfg, &f.store, &mut once, Start::Fresh, false).unwrap();
    assert_eq!(s.skipped_steps, 1);
    let m = metrics(&s.metrics);
    assert_eq!(m.len(), 5, "the skipped step writes no metrics");
    assert_eq!(m.last().unwrap()["skipped_steps"], 1);

    let mut always = Poisoned {
        calls: 0,
        nan_on: (3..100).collect(),
    };
    let e = ppo::train(&cfg, &f.store, &mut always, Start::Restart, false).unwrap_err();
    assert!(matches!(e, TrainError::NonFinite(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains("2 steps skipped"), "{text}");
    assert!(text.contains("last good checkpoint (step 2)"), "{text}");
    assert!(f.path("out/head.safetensors").is_file());
}

#[test]
fn configs_that_cannot_train_are_refused_with_one_line() {
    let f = Fixture::new();
    let p = f.path("bad.toml");
    std::fs::write(
        &p,
        "base = \"base\"\nout = \"o\"\ntrain = [\"prompts.txt\"]\n[ppo]\nclip_range = 0\n",
    )
    .unwrap();
    let e = TrainConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("clip_range") && !e.contains('\n'), "{e}");
    std::fs::write(f.path("empty.txt"), "\n\n").unwrap();
    let mut empty = f.config("e", "");
    empty.train = vec![f.path("empty.txt")];
    let e = ppo::train(
        &empty,
        &f.store,
        &mut KeywordReward::new("x"),
        Start::Fresh,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no prompts"), "{e}");
}

fn images_table(servers: &[&common::Fake], scoring: &common::Fake, extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("{:?}", s.url)).collect();
    format!(
        "[reward]\nkind = \"images\"\n[images]\nbackend = \"a1111\"\nservers = [{}]\nimages_per_prompt = 2\nseed = 7\ntimeout_s = 10\nbackoff_s = 0.01\ncooldown_s = 0.2\n{extra}\n[images.a1111]\nsteps = 2\nwidth = 32\nheight = 32\n[[images.scorers]]\nkind = \"http\"\nurl = {:?}\nname = \"fake\"\n",
        servers.join(", "),
        scoring.url
    )
}

#[test]
fn the_image_reward_trains_through_a_server_failing_mid_rollout() {
    let f = Fixture::new();
    let healthy = common::a1111(common::Faults::default());
    let failing = common::a1111(common::Faults {
        fail_after: Some(4),
        ..Default::default()
    });
    let scoring = common::scoring(common::Faults::default());
    let run =
        "[run]\nsteps = 3\nbatch_size = 3\nsave_every = 3\n[ppo]\nepochs = 1\nmax_new_tokens = 4\n";
    let cfg = f.config(
        "out",
        &format!("{run}{}", images_table(&[&healthy, &failing], &scoring, "")),
    );
    let mut reward = ppo::open_reward(&cfg, &f.store).unwrap();
    assert_eq!(reward.name(), "images");
    let s = ppo::train(&cfg, &f.store, reward.as_mut(), Start::Fresh, false).unwrap();
    let m = metrics(&s.metrics);
    assert_eq!(m.len(), 3);
    for x in &m {
        // Every sample judged: what the failing server did not render, the healthy one did.
        assert_eq!(x["samples"], 3, "{x}");
        assert_eq!(x["dropped"], 0, "{x}");
        assert!(x["images_per_s"].as_f64().unwrap() > 0.0);
        assert!(x["reward"].as_f64().unwrap().is_finite());
    }
    assert!(
        failing.count() > 4,
        "the failing server was asked past its failure"
    );
    // Refined and original prompts were rendered under the same seeds.
    let seeds: Vec<u64> = healthy
        .bodies("/sdapi/v1/txt2img")
        .iter()
        .chain(&failing.bodies("/sdapi/v1/txt2img"))
        .filter_map(|b| b["seed"].as_u64())
        .collect();
    assert!(
        !seeds.is_empty() && seeds.iter().all(|s| [7, 8].contains(s)),
        "{seeds:?}"
    );
}

#[test]
fn a_batch_the_servers_cannot_render_in_time_is_refused_at_start() {
    let f = Fixture::new();
    let server = common::a1111(common::Faults::default());
    let scoring = common::scoring(common::Faults::default());
    let run = "[run]\nsteps = 3\nbatch_size = 512\n[ppo]\nstep_timeout_s = 0.001\n";
    let cfg = f.config(
        "out",
        &format!("{run}{}", images_table(&[&server], &scoring, "")),
    );
    let e = ppo::open_reward(&cfg, &f.store).unwrap_err().to_string();
    assert!(e.contains("step timeout") && !e.contains('\n'), "{e}");
    // Without an [images] table, the image reward is a config error, in one line.
    let p = f.path("no-images.toml");
    std::fs::write(
        &p,
        "base = \"base\"\nout = \"o\"\ntrain = [\"prompts.txt\"]\n[reward]\nkind = \"images\"\n",
    )
    .unwrap();
    let e = TrainConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("[images]"), "{e}");
}

#[test]
fn every_example_training_config_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/train");
    let mut seen = 0;
    for dir in ["default", "paper"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                TrainConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                seen += 1;
            }
        }
    }
    assert!(seen >= 8, "{seen} configs");
}

#[test]
fn a_new_run_starts_from_the_base_not_from_what_an_earlier_run_left() {
    let f = Fixture::new();
    let cfg = f.config(
        "out",
        "[run]\nsteps = 2\nbatch_size = 4\n[optim]\nlr = 1e-2\n[ppo]\nepochs = 1\nmax_new_tokens = 4\n",
    );
    let head = || std::fs::read(f.path("out/head.safetensors")).unwrap();
    // A reward that varies between samples, so every step moves the encoder.
    let mut reward = Contains { piece: "e".into() };
    ppo::train(&cfg, &f.store, &mut reward, Start::Fresh, false).unwrap();
    let first = head();
    assert!(first != std::fs::read(f.path("base/head.safetensors")).unwrap_or_default());
    // A finished run is history: a fresh run replaces it, from the same base.
    ppo::train(&cfg, &f.store, &mut reward, Start::Fresh, false).unwrap();
    assert!(
        head() == first,
        "the second run trained on top of the first"
    );
    ppo::train(&cfg, &f.store, &mut reward, Start::Restart, false).unwrap();
    assert!(
        head() == first,
        "--restart trained on top of the earlier run"
    );
    // Training into the base itself would overwrite it.
    let onto_base = f.config("base", "[run]\nsteps = 1\n");
    let e = ppo::train(&onto_base, &f.store, &mut reward, Start::Fresh, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("out is the base checkpoint"), "{e}");
}
