//! The training stages on tiny random models written by the test: each lowers its loss,
//! every trainable parameter gets a gradient, exports load into the refiner, and bad
//! input is reported without losing the last good checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};

use prip_core::checkpoint::Checkpoint;
use prip_core::store::ModelStore;
use prip_core::{RefineRequest, Refiner, RefinerOptions};
use prip_test_support::models;
use prip_trainer::config::TrainConfig;
use prip_trainer::objective::{
    DecoderObjective, DecoderSettings, EncoderObjective, Objective, Parts, TargetChoice,
};
use prip_trainer::run::{prepare_out, Start};
use prip_trainer::stage::{self, Stage};
use prip_trainer::TrainError;
use tempfile::TempDir;

/// Deterministic decoding, and LoRA on four projections: the tiny random LM needs the
/// capacity to show its loss falling.
const EXTRA: &str = r#"
[generation]
max_new_tokens = 6
temperature = 0.0

[lora]
rank = 8
alpha = 16.0
targets = ["q_proj", "v_proj", "o_proj", "down_proj"]
"#;

const SUBJECTS: [&str; 6] = [
    "a cat",
    "a dog in the rain",
    "an old castle",
    "a red fox",
    "a ship at sea",
    "a girl reading",
];
const DETAILS: [&str; 6] = [
    "oil painting",
    "highly detailed",
    "golden hour",
    "by monet",
    "trending on artstation",
    "soft light",
];

struct Fixture {
    dir: TempDir,
    store: ModelStore,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir_all(&base).unwrap();
        models::write_tiny_checkpoint(&base, EXTRA).unwrap();
        let store = ModelStore::new(dir.path().join("home"));
        let f = Self { dir, store };
        f.write("system.jsonl", &system_lines(24));
        f.write("prefs.jsonl", &preference_lines(24));
        f
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, lines: &[String]) -> PathBuf {
        let p = self.path(rel);
        let mut f = std::fs::File::create(&p).unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        p
    }

    fn config(&self, corpus: &str, out: &str, extra: &str) -> TrainConfig {
        // PRIP_TEST_DEVICE (e.g. cuda:0) runs the stages on another device; scripts/gpu-check.sh
        // sets it.
        let device = std::env::var("PRIP_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
        let text = format!(
            "base = \"base\"\nout = \"{out}\"\ntrain = [\"{corpus}\"]\ndevice = \"{device}\"\n{extra}"
        );
        let p = self.path(&format!("{out}.toml"));
        std::fs::write(&p, text).unwrap();
        TrainConfig::load(&p).unwrap()
    }
}

fn system_lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let s = SUBJECTS[i % SUBJECTS.len()];
            let d = [DETAILS[i % 6], DETAILS[(i + 2) % 6], DETAILS[(i + 3) % 6]].join(", ");
            serde_json::json!({"prompt": format!("{s}, {d}")}).to_string()
        })
        .collect()
}

fn preference_lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let s = SUBJECTS[i % SUBJECTS.len()];
            let cands: Vec<_> = (0..3)
                .map(|c| serde_json::json!({"text": format!("{s}, {}", DETAILS[(i + c) % 6]), "score": c as f64}))
                .collect();
            serde_json::json!({"prompt": s, "candidates": cands}).to_string()
        })
        .collect()
}

const STEPS: &str =
    "[run]\nsteps = 30\nbatch_size = 4\nsave_every = 10\n[optim]\nlr = 2e-2\nwarmup_steps = 3\n";

fn losses(metrics: &Path) -> Vec<f64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

#[test]
fn encoder_warmup_lowers_its_loss_and_writes_a_loadable_head() {
    let f = Fixture::new();
    let cfg = f.config("prefs.jsonl", "out", STEPS);
    let s = stage::run(&Stage::WarmupEncoder, &cfg, &f.store, Start::Fresh, false).unwrap();
    let l = losses(&s.metrics);
    assert_eq!(l.len(), 30);
    assert!(mean(&l[25..]) < 0.7 * mean(&l[..5]), "{l:?}");
    assert!(f.path("out/head.safetensors").is_file());
    // Readable by an image server running as another user.
    #[cfg(unix)]
    for file in ["out/head.safetensors", "out/prip.toml"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f.path(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o044, 0o044, "{file}: {mode:o}");
    }
    assert!(std::fs::read_to_string(&s.plot)
        .unwrap()
        .contains("<polyline"));
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
fn decoder_warmup_lowers_its_loss_and_registers_the_base_lora() {
    let f = Fixture::new();
    let cfg = f.config("system.jsonl", "out", STEPS);
    let s = stage::run(&Stage::WarmupDecoder, &cfg, &f.store, Start::Fresh, false).unwrap();
    let l = losses(&s.metrics);
    // A tiny random LM's output scale caps how far its loss can fall (~6.69 from 6.90).
    assert!(mean(&l[25..]) < l[0] - 0.1, "{l:?}");
    let ckpt = Checkpoint::open(&f.path("out")).unwrap();
    assert_eq!(
        ckpt.manifest.systems["base"].lora.as_deref(),
        Some("lora/base.safetensors")
    );
    assert!(f.path("out/lora/base.safetensors").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let p = f.path("out/lora/base.safetensors");
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode & 0o044, 0o044, "{mode:o}");
    }
}

#[test]
fn adapt_trains_a_system_lora_that_refine_can_select() {
    let f = Fixture::new();
    let cfg = f.config("system.jsonl", "out", STEPS);
    let s = stage::run(
        &Stage::Adapt {
            system: "sd15".into(),
        },
        &cfg,
        &f.store,
        Start::Fresh,
        false,
    )
    .unwrap();
    let l = losses(&s.metrics);
    // A tiny random LM's output scale caps how far its loss can fall (~6.69 from 6.90).
    assert!(mean(&l[25..]) < l[0] - 0.1, "{l:?}");
    assert!(f.path("out/lora/sd15.safetensors").is_file());
    let opts = RefinerOptions {
        model: f.path("out").display().to_string(),
        ..RefinerOptions::default()
    };
    let mut r = Refiner::open_with_store(&opts, &f.store).unwrap();
    let mut req = RefineRequest::new("a cat");
    req.system = Some("sd15".into());
    req.seed = Some(1);
    let out = r.refine(&[req]).remove(0).unwrap();
    assert_eq!(out.system, "sd15");
    let err = stage::run(
        &Stage::Adapt {
            system: "base".into(),
        },
        &cfg,
        &f.store,
        Start::Fresh,
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not \"base\""), "{err}");
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let f = Fixture::new();
    let out = prepare_out(&Checkpoint::open(&f.path("base")).unwrap(), &f.path("out")).unwrap();
    let dev = candle_core::Device::Cpu;
    let read = |name: &str| -> Vec<String> {
        std::fs::read_to_string(f.path(name))
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };

    let parts = Parts::open(out.clone(), &f.store, false, None, &dev).unwrap();
    let mut enc = EncoderObjective::new(&parts, TargetChoice::Best).unwrap();
    let batch: Vec<_> = read("prefs.jsonl")
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, l)| located(l, i))
        .collect();
    // Queries, input projection, final norm and the 28 tensors of one block.
    check_grads(&mut enc, &batch, 31);

    let parts = Parts::open(out, &f.store, false, Some("base"), &dev).unwrap();
    let mut dec = DecoderObjective::new(&parts, "base", true, DecoderSettings::default()).unwrap();
    let batch: Vec<_> = read("system.jsonl")
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, l)| located(l, i))
        .collect();
    // LoRA A and B on four projections of both layers, projection weight and bias.
    check_grads(&mut dec, &batch, 2 * 4 * 2 + 2);
}

fn located<T: serde::de::DeserializeOwned>(line: &str, i: usize) -> prip_trainer::data::Located<T> {
    prip_trainer::data::Located {
        record: serde_json::from_str(line).unwrap(),
        file: "t.jsonl".into(),
        line: i + 1,
    }
}

fn check_grads<O: Objective>(
    obj: &mut O,
    batch: &[prip_trainer::data::Located<O::Record>],
    expected: usize,
) {
    let loss = obj.loss(batch, 1).unwrap().loss.unwrap();
    let vars = obj.trainable();
    let names: Vec<&String> = vars.iter().map(|v| &v.0).collect();
    assert_eq!(vars.len(), expected, "{names:?}");
    models::assert_all_vars_get_gradients(&vars, &loss.backward().unwrap());
}

#[test]
fn bad_lines_are_skipped_and_counted_and_too_many_stop_the_run() {
    let f = Fixture::new();
    let mut lines = system_lines(20);
    lines.insert(3, "{not json".into());
    lines.insert(7, r#"{"prompt": "no details here"}"#.into());
    lines.insert(
        9,
        r#"{"prompt": "a cat, x", "image": "missing.png"}"#.into(),
    );
    // A prefix longer than max_tokens (a prompt beyond the model's context fails the same way).
    let long = format!("{}, oil painting", "word ".repeat(200));
    lines.insert(12, serde_json::json!({ "prompt": long }).to_string());
    f.write("mixed.jsonl", &lines);
    let cfg = f.config(
        "mixed.jsonl",
        "out",
        "[run]\nsteps = 6\nbatch_size = 4\nmax_bad_share = 0.5\n",
    );
    let s = stage::run(&Stage::WarmupDecoder, &cfg, &f.store, Start::Fresh, false).unwrap();
    // The shuffle buffer reads on into the next epoch, where bad lines count again.
    assert!(s.bad.bad >= 4, "{:?}", s.bad);

    let garbage: Vec<String> = (0..30).map(|i| format!("garbage {i}")).collect();
    f.write("garbage.jsonl", &garbage);
    let cfg = f.config(
        "garbage.jsonl",
        "out2",
        "[run]\nsteps = 2\nbatch_size = 4\n",
    );
    let err = stage::run(&Stage::WarmupDecoder, &cfg, &f.store, Start::Fresh, false).unwrap_err();
    assert!(matches!(err, TrainError::TooManyBadLines { .. }), "{err}");
    assert!(err.to_string().contains("garbage.jsonl"), "{err}");
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let f = Fixture::new();
    let cfg = f.config(
        "prefs.jsonl",
        "out",
        "[run]\nsteps = 4\nbatch_size = 4\nsave_every = 2\n",
    );
    stage::run(&Stage::WarmupEncoder, &cfg, &f.store, Start::Fresh, false).unwrap();
    let good = std::fs::read(f.path("out/head.safetensors")).unwrap();

    // A learning rate that throws the weights past f32's range after one update.
    let cfg = f.config(
        "prefs.jsonl",
        "out",
        "[run]\nsteps = 4\nbatch_size = 4\nsave_every = 2\n[optim]\nlr = 1e35\nwarmup_steps = 0\n",
    );
    let err = stage::run(&Stage::WarmupEncoder, &cfg, &f.store, Start::Restart, false).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite(_)), "{err}");
    assert!(
        err.to_string().contains("step 2") && err.to_string().contains("unchanged"),
        "{err}"
    );
    assert_eq!(std::fs::read(f.path("out/head.safetensors")).unwrap(), good);
}

#[test]
fn an_unfinished_run_is_not_silently_restarted_and_resume_extends_it() {
    let f = Fixture::new();
    let cfg = f.config(
        "prefs.jsonl",
        "out",
        "[run]\nsteps = 2\nbatch_size = 4\nsave_every = 1\n",
    );
    stage::run(&Stage::WarmupEncoder, &cfg, &f.store, Start::Fresh, false).unwrap();
    // Finished: a fresh run of the same length replaces it.
    stage::run(&Stage::WarmupEncoder, &cfg, &f.store, Start::Fresh, false).unwrap();
    let longer = f.config(
        "prefs.jsonl",
        "out",
        "[run]\nsteps = 4\nbatch_size = 4\nsave_every = 1\n",
    );
    let err = stage::run(
        &Stage::WarmupEncoder,
        &longer,
        &f.store,
        Start::Fresh,
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    let s = stage::run(
        &Stage::WarmupEncoder,
        &longer,
        &f.store,
        Start::Resume,
        false,
    )
    .unwrap();
    assert_eq!(s.resumed_from, Some(2));
    assert_eq!(losses(&s.metrics).len(), 4);
}

/// A tiny random CLIP vision tower with Hugging Face names (width 32 = the tiny pivot).
fn write_tiny_clip(dir: &Path) {
    use candle_nn::{Init, VarBuilder, VarMap};
    use candle_transformers::models::clip::text_model::Activation;
    use candle_transformers::models::clip::vision_model::{
        ClipVisionConfig, ClipVisionTransformer,
    };
    std::fs::create_dir_all(dir).unwrap();
    let cfg = ClipVisionConfig {
        embed_dim: 32,
        activation: Activation::QuickGelu,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        projection_dim: 32,
        num_channels: 3,
        image_size: 32,
        patch_size: 8,
    };
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, candle_core::DType::F32, &candle_core::Device::Cpu);
    // A stored class embedding: without one candle's CLIP draws a random one per load.
    vb.get_with_hints(
        32,
        "vision_model.embeddings.class_embedding",
        Init::Randn {
            mean: 0.0,
            stdev: 0.2,
        },
    )
    .unwrap();
    ClipVisionTransformer::new(vb.pp("vision_model"), &cfg).unwrap();
    vb.get_with_hints(
        (32, 32),
        "visual_projection.weight",
        Init::Randn {
            mean: 0.0,
            stdev: 0.2,
        },
    )
    .unwrap();
    vm.save(dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "clip", "projection_dim": 32, "vision_config": {"hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu"}}"#,
    )
    .unwrap();
}

/// Images made in the test: solid colours and gradients of several sizes, PNG and JPEG.
fn write_images(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..6u32 {
        let (w, h) = (40 + 7 * i, 30 + 11 * i);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (40 * i) as u8,
                (x * 255 / w) as u8,
                ((y * 255 / h) as u8).wrapping_add(30 * i as u8),
            ])
        });
        let name = if i % 2 == 0 {
            format!("img{i}.png")
        } else {
            format!("img{i}.jpg")
        };
        img.save(dir.join(&name)).unwrap();
        names.push(name);
    }
    names
}

#[test]
fn image_pivots_come_from_a_clip_vision_tower() {
    let f = Fixture::new();
    write_tiny_clip(&f.path("clip"));
    let names = write_images(f.dir.path());
    let enc = prip_trainer::image::ImageEncoder::load(&f.path("clip"), &candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(enc.width(), 32);
    let a = enc.pixels(&f.path(&names[0])).unwrap();
    let b = enc.pixels(&f.path(&names[1])).unwrap();
    assert_eq!(a.dims(), &[3, 32, 32]);
    let e = enc
        .embed(&candle_core::Tensor::stack(&[&a, &b, &a], 0).unwrap())
        .unwrap();
    let e = e.to_vec2::<f32>().unwrap();
    assert_eq!(e[0], e[2]);
    assert_ne!(e[0], e[1]);
    assert!(enc
        .pixels(&f.path("nope.png"))
        .unwrap_err()
        .contains("nope.png"));

    // Preference log whose candidates are images; one names a missing file.
    let mut lines: Vec<String> = (0..12)
        .map(|i| {
            let cands: Vec<_> = (0..3)
                .map(|c| serde_json::json!({"image": names[(i + c) % 6], "score": c as f64}))
                .collect();
            serde_json::json!({"prompt": SUBJECTS[i % 6], "candidates": cands}).to_string()
        })
        .collect();
    lines.push(
        r#"{"prompt": "a cat", "candidates": [{"image": "missing.png", "score": 1}]}"#.into(),
    );
    f.write("image-prefs.jsonl", &lines);
    let cfg = f.config(
        "image-prefs.jsonl",
        "out",
        &format!(
            "image_encoder = \"clip\"\n{}",
            STEPS.replace("[run]\n", "[run]\nmax_bad_share = 0.2\n")
        ),
    );
    let s = stage::run(&Stage::WarmupEncoder, &cfg, &f.store, Start::Fresh, false).unwrap();
    let l = losses(&s.metrics);
    assert!(mean(&l[25..]) < 0.7 * mean(&l[..5]), "{l:?}");
    assert!(s.bad.bad >= 1, "the missing image is counted: {:?}", s.bad);

    // Without an image encoder, image records are skipped with a reason and too many stop the run.
    let cfg = f.config("image-prefs.jsonl", "out2", STEPS);
    let err = stage::run(&Stage::WarmupEncoder, &cfg, &f.store, Start::Fresh, false).unwrap_err();
    assert!(err.to_string().contains("image_encoder"), "{err}");
}

/// Two ranks (threads joined over TCP, as `RANK`/`WORLD_SIZE` processes would be) train
/// the decoder warm-up data-parallel: both end with the same weights, only rank 0 writes
/// metrics and the checkpoint, and each step covers both ranks' records.
#[test]
fn two_ranks_train_in_step_and_only_rank_0_writes() {
    use prip_trainer::distributed::{open_sync, World};
    use prip_trainer::run::train_with;

    let f = Fixture::new();
    let cfg = f.config("system.jsonl", "out", STEPS);
    let out = prepare_out(&Checkpoint::open(&f.path("base")).unwrap(), &f.path("out")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let f = std::sync::Arc::new(f);
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let (f, cfg, out) = (f.clone(), cfg.clone(), out.clone());
            std::thread::spawn(move || {
                let dev = candle_core::Device::Cpu;
                let world = World {
                    rank,
                    world_size: 2,
                    local_rank: rank,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                };
                let mut sync = open_sync(&world, &dev).unwrap();
                let parts = Parts::open(out.clone(), &f.store, false, Some("base"), &dev).unwrap();
                let mut obj =
                    DecoderObjective::new(&parts, "base", true, DecoderSettings::default())
                        .unwrap();
                let s = train_with(
                    &mut obj,
                    &out,
                    "warmup-decoder",
                    &cfg.train,
                    &cfg.run,
                    &cfg.optim,
                    Start::Fresh,
                    false,
                    sync.as_mut(),
                )
                .unwrap();
                let weights: Vec<Vec<f32>> = obj
                    .trainable()
                    .iter()
                    .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
                    .collect();
                (s, weights)
            })
        })
        .collect();
    let done: Vec<_> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(done[0].1, done[1].1, "the ranks' weights diverged");
    let l = losses(&done[0].0.metrics);
    assert_eq!(l.len(), 30);
    assert!(mean(&l[25..]) < l[0] - 0.1, "{l:?}");
    let metrics = std::fs::read_to_string(&done[0].0.metrics).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    // Two ranks of batch_size 4: 8 records' tokens per step.
    assert!(first["tokens"].as_u64().unwrap() > 8, "{first}");
    assert!(f.path("out/lora/base.safetensors").is_file());
}
