//! `prip train` end to end on tiny random models: a run killed with SIGKILL and resumed
//! ends with exactly the weights of an uninterrupted run, and the CLI reports bad
//! configurations in one line.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use prip_test_support::models;

const PRIP: &str = env!("CARGO_BIN_EXE_prip");

fn setup(dir: &Path) {
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    models::write_tiny_checkpoint(&base, "").unwrap();
    let lines: Vec<String> = (0..40)
        .map(|i| {
            serde_json::json!({"prompt": format!("subject {i}, detail {}, style {}", i % 7, i % 5)})
                .to_string()
        })
        .collect();
    std::fs::write(dir.join("system.jsonl"), lines.join("\n")).unwrap();
    for name in ["a", "b"] {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!(
                "base = \"base\"\nout = \"out-{name}\"\ntrain = [\"system.jsonl\"]\n[run]\nsteps = 120\nbatch_size = 4\nsave_every = 5\nseed = 3\nshuffle_buffer = 16\n[optim]\nlr = 1e-2\n"
            ),
        )
        .unwrap();
    }
}

fn prip(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(PRIP);
    c.args(args)
        .current_dir(dir)
        .env("PRIP_HOME", dir.join("home"))
        .env("PRIP_LOG", "error");
    c
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    ok(prip(dir, &["train", "warmup-decoder", "a.toml"])
        .output()
        .unwrap());

    let mut child = prip(dir, &["train", "warmup-decoder", "b.toml"])
        .spawn()
        .unwrap();
    let snaps = dir.join("out-b/runs/warmup-decoder/snapshots");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !snaps.join("step-00000010").is_dir() {
        assert!(Instant::now() < deadline, "no snapshot appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before the kill");
    let metrics =
        std::fs::read_to_string(dir.join("out-b/runs/warmup-decoder/metrics.jsonl")).unwrap();
    assert!(
        metrics.lines().count() < 120,
        "the killed run was not interrupted"
    );

    let refused = prip(dir, &["train", "warmup-decoder", "b.toml"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));

    let out = ok(
        prip(dir, &["train", "warmup-decoder", "b.toml", "--resume"])
            .output()
            .unwrap(),
    );
    assert!(out.contains("resumed at step"), "{out}");
    for f in ["head.safetensors", "lora/base.safetensors"] {
        let a = std::fs::read(dir.join("out-a").join(f)).unwrap();
        let b = std::fs::read(dir.join("out-b").join(f)).unwrap();
        assert!(
            a == b,
            "{f} differs between the uninterrupted and the resumed run"
        );
    }
    let a = std::fs::read_to_string(dir.join("out-a/runs/warmup-decoder/metrics.jsonl")).unwrap();
    let b = std::fs::read_to_string(dir.join("out-b/runs/warmup-decoder/metrics.jsonl")).unwrap();
    let losses = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].to_string())
            .collect()
    };
    assert_eq!(losses(&a), losses(&b), "the resumed run saw other data");
}

#[test]
fn bad_training_configs_fail_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    std::fs::write(
        dir.join("bad.toml"),
        "base = \"base\"\nout = \"o\"\ntrain = []\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("typo.toml"),
        "base = \"base\"\nout = \"o\"\ntrain = [\"x\"]\n[run]\nbatchsize = 4\n",
    )
    .unwrap();
    for (cfg, want) in [
        ("bad.toml", "no corpus files"),
        ("typo.toml", "batchsize"),
        ("missing.toml", "missing.toml"),
    ] {
        let out = prip(dir, &["train", "warmup-encoder", cfg])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
    }
}

/// Uses the real clip-interrogator vocabulary and MiniLM through the model store (the
/// user's $PRIP_HOME or ~/.cache/prip, fetched on first use); the refiner is tiny.
#[test]
fn eval_text_scores_every_variant_the_same_way() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    std::fs::write(
        dir.join("heldout.txt"),
        "a cat in the woods\n(a red fox:1.2)\na castle <lora:x:0.7>\n\nan owl BREAK a moon\n",
    )
    .unwrap();
    // A bad flag is refused before the (long) evaluation starts.
    let out = Command::new(PRIP)
        .args([
            "eval",
            "text",
            "--prompts",
            "heldout.txt",
            "--resamples",
            "0",
        ])
        .args(["--json", "scores.json"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value '0' for '--resamples"), "{err}");
    assert!(!dir.join("scores.json").exists());

    let mut cmd = Command::new(PRIP);
    cmd.args([
        "eval",
        "text",
        "--prompts",
        "heldout.txt",
        "--model",
        "base",
        "--no-pivot-model",
        "base",
        "--random-target-model",
        "base",
        "--limit",
        "3",
        "--json",
        "scores.json",
    ])
    .current_dir(dir)
    .env("PRIP_LOG", "error");
    let table = ok(cmd.output().unwrap());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scores.json")).unwrap()).unwrap();
    let rows = report["scores"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{table}");
    for r in rows {
        assert_eq!(r["prompts"], 3);
        // The refiner's guarantees hold for every variant, trained or not.
        assert_eq!(r["prompt_kept"], 1.0, "{r}");
        assert_eq!(r["syntax_kept"], 1.0, "{r}");
    }
    assert_eq!(rows[0]["relevance"].as_f64().unwrap().round(), 1.0);
    assert_eq!(
        rows[1]["in_vocabulary"], 1.0,
        "random fragments come from the vocabulary"
    );
    assert!(table.contains("| PRIP |"), "{table}");
    // Every other row compared with PRIP, in table order.
    let differences = report["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 5, "{table}");
    assert_eq!(differences[0]["name"], "no refinement");
    let relevance = &differences[0]["relevance"];
    assert!(
        relevance["low"].as_f64() <= relevance["high"].as_f64(),
        "{relevance}"
    );
    assert!(table.contains("Difference from PRIP"), "{table}");
}

#[test]
fn ppo_with_the_text_reward_runs_end_to_end_into_a_checkpoint_refine_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    models::write_tiny_checkpoint(&base, "").unwrap();
    // The text reward's assets, tiny: a sentence encoder and a vocabulary directory.
    models::write_tiny_bert(&dir.join("minilm"), 5).unwrap();
    let vocab = dir.join("vocab");
    std::fs::create_dir_all(&vocab).unwrap();
    for (file, text) in [
        ("mediums.txt", "an oil painting\n"),
        ("movements.txt", "art nouveau\n"),
        ("artists.txt", "claude monet\n"),
        ("flavors.txt", "highly detailed\ngolden hour\n"),
    ] {
        std::fs::write(vocab.join(file), text).unwrap();
    }
    std::fs::write(dir.join("prompts.txt"), "a cat\na red fox\nan old castle\n").unwrap();
    std::fs::write(
        dir.join("ppo.toml"),
        "base = \"base\"\nout = \"out\"\ntrain = [\"prompts.txt\"]\n\
         [run]\nsteps = 3\nbatch_size = 3\nsave_every = 3\n\
         [ppo]\nepochs = 1\nmax_new_tokens = 4\n\
         [reward]\nkind = \"text\"\nsentence_encoder = \"minilm\"\nphrases = \"vocab\"\n",
    )
    .unwrap();
    let out = ok(prip(dir, &["train", "ppo", "ppo.toml"]).output().unwrap());
    assert!(out.contains("ppo: 3 steps, text reward"), "{out}");
    let metrics = std::fs::read_to_string(dir.join("out/runs/ppo/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    for plot in ["reward.svg", "kl.svg", "loss.svg"] {
        assert!(dir.join("out/runs/ppo").join(plot).is_file(), "{plot}");
    }
    let refined = ok(
        prip(dir, &["refine", "--model", "out", "--seed", "1", "a cat"])
            .output()
            .unwrap(),
    );
    assert!(refined.starts_with("a cat"), "{refined}");
    // Run again without --resume: the finished run is history, a fresh one replaces it.
    ok(prip(dir, &["train", "ppo", "ppo.toml"]).output().unwrap());
}
