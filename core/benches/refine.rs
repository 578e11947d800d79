//! Speed of the packaged default refiner on this machine (issue 14's benchmark).
//!
//! `cargo bench -p prip-core --bench refine [-- --peers FILE] [--out DIR] [--baseline]`
//!
//! Fetches the packaged default's base models through the model store (PRIP_HOME) when
//! they are missing. Each measurement runs in a fresh child process of this binary, so
//! cold start-up is real and peak resident memory (VmHWM) belongs to one phase:
//!
//! - `cold`: process start to one finished refinement (load + 40 new tokens), 5 runs;
//! - `warm`: 20 refinements of one prompt after a warm-up: latency p50/p95, prefill and
//!   batch-1 decode speed;
//! - `batch8`, `batch32`: decode throughput of 8 and 32 prompts decoded together.
//!
//! Decoding is greedy with newline stops off, end-of-text banned and max_new_tokens 40,
//! as the peers in bench/peers.py. The machine's read bandwidth, and from it the upper bound on batch-1
//! tokens/s (bandwidth / bytes of weights read per token), are measured here too. Writes
//! DIR/refine.json and DIR/refine.md (default DIR: the workspace's target/bench). With
//! `--peers`, a JSON file from bench/peers.py, the table gains each peer's figures and
//! the ratios; with `--baseline`, also PRIP on the GGUF's own quantization
//! (`PRIP_GGUF_LAYOUT=published`, the layout before `prip_core::models::quantized`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use prip_core::checkpoint::Checkpoint;
use prip_core::sampling::GenerationPatch;
use prip_core::{RefineRequest, Refiner, RefinerOptions};
use serde_json::{json, Value};

/// The prompts, one per line; bench/peers.py reads the same file.
const PROMPTS_FILE: &str = include_str!("../../bench/prompts.txt");
const NEW_TOKENS: usize = 40;
/// End-of-text tokens of the chat models PRIP decodes with (SmolLM2's among them).
const END_OF_TEXT: [&str; 4] = ["<|endoftext|>", "<|im_end|>", "</s>", "<|eot_id|>"];

fn main() {
    prip_core::device::pin_cpu_threads();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(phase) = flag("--phase") {
        let out = match phase.as_str() {
            "cold" => cold(),
            "warm" => warm(),
            "batch8" => batch(8),
            "batch32" => batch(32),
            other => Err(format!("unknown phase {other}")),
        };
        match out {
            Ok(v) => println!("{v}"),
            Err(e) => {
                eprintln!("bench phase {phase}: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is expected.
    // cargo runs benches in the package's folder; the default is the workspace's target/.
    let out_dir = flag("--out").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench"),
        PathBuf::from,
    );
    let peers = flag("--peers").map(|p| read_json(Path::new(&p)));
    let baseline = args.iter().any(|a| a == "--baseline");
    if let Err(e) = run(&out_dir, peers, baseline) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

fn run(out_dir: &Path, peers: Option<Value>, baseline: bool) -> Result<(), String> {
    let threads = candle_core::utils::get_num_threads();
    eprintln!("bench: {threads} threads; model fetched through the store when missing");
    let bandwidth = read_bandwidth_gbs(threads);
    let bytes = weight_bytes()?;
    let colds: Vec<Value> = (0..5)
        .map(|_| child("cold", false))
        .collect::<Result<_, _>>()?;
    let warm = child("warm", false)?;
    let b8 = child("batch8", false)?;
    let b32 = child("batch32", false)?;
    // The same refiner on the GGUF's own quantization (before `models::quantized`).
    let published = if baseline {
        let w = child("warm", true)?;
        let b32 = child("batch32", true)?;
        json!({
            "prefill_tokens_per_s": w["prefill_tokens_per_s"],
            "decode_tokens_per_s": {"1": w["decode_tokens_per_s"], "32": b32["decode_tokens_per_s"]},
            "refine_ms": {"warm_p50": w["p50_ms"], "warm_p95": w["p95_ms"]},
            "peak_rss_mb": {"1": w["peak_rss_mb"], "32": b32["peak_rss_mb"]},
        })
    } else {
        Value::Null
    };
    let mut peers = peers.unwrap_or_else(|| json!({"peers": {}}));
    if !published.is_null() {
        peers["peers"]["PRIP on the GGUF as published"] = published;
    }
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let load: Vec<f64> = colds.iter().map(|c| f(c, "load_ms")).collect();
    let cold_total: Vec<f64> = colds.iter().map(|c| f(c, "total_ms")).collect();
    let report = json!({
        "machine": machine(),
        "threads": threads,
        "new_tokens": NEW_TOKENS,
        "load_ms": percentile(&load, 50.0),
        "prefill_tokens_per_s": f(&warm, "prefill_tokens_per_s"),
        "prefill_positions": f(&warm, "prefill_positions"),
        "new_tokens_mean": f(&warm, "new_tokens_mean"),
        "decode_tokens_per_s": {
            "1": f(&warm, "decode_tokens_per_s"),
            "8": f(&b8, "decode_tokens_per_s"),
            "32": f(&b32, "decode_tokens_per_s"),
        },
        "refine_ms": {
            "warm_p50": f(&warm, "p50_ms"),
            "warm_p95": f(&warm, "p95_ms"),
            "cold_p50": percentile(&cold_total, 50.0),
            "cold_p95": percentile(&cold_total, 95.0),
        },
        "peak_rss_mb": {
            "1": f(&warm, "peak_rss_mb"),
            "8": f(&b8, "peak_rss_mb"),
            "32": f(&b32, "peak_rss_mb"),
        },
        "read_bandwidth_gbs": bandwidth,
        "weight_bytes_per_token": bytes,
        "batch1_bound_tokens_per_s": bytes["stored"].as_f64().map(|b| bandwidth * 1e9 / b),
        "peers": peers["peers"],
    });
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let table = markdown(&report);
    let json_path = out_dir.join("refine.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| format!("{}: {e}", json_path.display()))?;
    std::fs::write(out_dir.join("refine.md"), &table)
        .map_err(|e| format!("{}: {e}", out_dir.display()))?;
    println!("{table}");
    eprintln!("bench: wrote {}", json_path.display());
    Ok(())
}

/// Runs one phase in a fresh process of this binary (on the GGUF's own quantization
/// when `published`); its last stdout line is JSON.
fn child(phase: &str, published: bool) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["--phase", phase]);
    if published {
        cmd.env("PRIP_GGUF_LAYOUT", "published");
    }
    let out = cmd.output().map_err(|e| format!("{phase}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("{phase}: {e}: {line}"))
}

fn open() -> Result<Refiner, String> {
    Refiner::open(&RefinerOptions::default()).map_err(|e| e.to_string())
}

fn prompts() -> Vec<&'static str> {
    PROMPTS_FILE
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn requests(n: usize, seed: u64) -> Vec<RefineRequest> {
    let prompts = prompts();
    (0..n)
        .map(|i| RefineRequest {
            prompt: prompts[i % prompts.len()].into(),
            seed: Some(seed + i as u64),
            generation: GenerationPatch {
                max_new_tokens: Some(NEW_TOKENS),
                temperature: Some(0.0),
                stop_at_newline: Some(false),
                // Every row writes all its tokens, as the peers do: end-of-text banned.
                banned_words: Some(END_OF_TEXT.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect()
}

/// One batch through the refiner: (wall ms, prefill ms, decode-loop ms, new tokens,
/// prefill positions).
fn refine(refiner: &mut Refiner, reqs: &[RefineRequest]) -> Result<[f64; 5], String> {
    let t = Instant::now();
    let out = refiner.refine(reqs);
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let (mut tokens, mut positions) = (0.0, 0.0);
    let mut timings = None;
    for r in out {
        let r = r.map_err(|e| e.to_string())?;
        tokens += r.timings.new_tokens as f64;
        positions += r.timings.prefill_tokens as f64;
        timings = Some(r.timings);
    }
    let t = timings.ok_or("empty batch")?;
    Ok([
        wall,
        t.prefill_ms,
        t.decode_ms - t.prefill_ms,
        tokens,
        positions,
    ])
}

fn cold() -> Result<Value, String> {
    let start = Instant::now();
    let mut refiner = open()?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    refine(&mut refiner, &requests(1, 1))?;
    Ok(json!({
        "load_ms": load_ms,
        "total_ms": start.elapsed().as_secs_f64() * 1e3,
        "peak_rss_mb": peak_rss_mb(),
    }))
}

fn warm() -> Result<Value, String> {
    let mut refiner = open()?;
    refine(&mut refiner, &requests(1, 0))?;
    let mut walls = Vec::new();
    let (mut prefill_ms, mut positions, mut decode_ms, mut tokens) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..20 {
        let mut reqs = requests(1, i);
        let prompts = prompts();
        reqs[0].prompt = prompts[i as usize % prompts.len()].into();
        let [wall, p, d, t, pos] = refine(&mut refiner, &reqs)?;
        walls.push(wall);
        prefill_ms += p;
        positions += pos;
        decode_ms += d;
        tokens += t;
    }
    Ok(json!({
        "p50_ms": percentile(&walls, 50.0),
        "p95_ms": percentile(&walls, 95.0),
        "prefill_tokens_per_s": positions / prefill_ms * 1e3,
        "prefill_positions": positions / 20.0,
        "new_tokens_mean": tokens / 20.0,
        // The first token of each row comes from the prefill's logits.
        "decode_tokens_per_s": (tokens - 20.0) / decode_ms * 1e3,
        "peak_rss_mb": peak_rss_mb(),
    }))
}

fn batch(n: usize) -> Result<Value, String> {
    let mut refiner = open()?;
    refine(&mut refiner, &requests(n, 0))?;
    let (mut decode_ms, mut tokens) = (0.0, 0.0);
    for i in 0..3 {
        let [_, _, d, t, _] = refine(&mut refiner, &requests(n, 100 * (i + 1)))?;
        decode_ms += d;
        tokens += t - n as f64;
    }
    Ok(json!({
        "decode_tokens_per_s": tokens / decode_ms * 1e3,
        "peak_rss_mb": peak_rss_mb(),
    }))
}

/// Bytes of decoder weights one decode step reads: as the GGUF stores them, and in the
/// layout this machine's refiner stores them ([`prip_core::models::quantized`]).
fn weight_bytes() -> Result<Value, String> {
    use candle_core::quantized::gguf_file;
    use prip_core::models::quantized::{layout, CpuKernels};
    let store = prip_core::store::ModelStore::from_env().map_err(|e| e.to_string())?;
    let ckpt = Checkpoint::find("default", &store).map_err(|e| e.to_string())?;
    let path = ckpt.decoder_path(&store, true).map_err(|e| e.to_string())?;
    let mut file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| e.to_string())?;
    let kernels = CpuKernels::detect();
    let tied = !content.tensor_infos.contains_key("output.weight");
    let (mut published, mut stored) = (0usize, 0usize);
    for (name, info) in &content.tensor_infos {
        // The embedding is a row lookup, except when the head is tied to it.
        if name == "token_embd.weight" && !tied {
            continue;
        }
        let dims = info.shape.dims();
        let elems = info.shape.elem_count();
        let bytes = |dtype: candle_core::quantized::GgmlDType, n: usize| {
            n / dtype.block_size() * dtype.type_size()
        };
        published += bytes(info.ggml_dtype, elems);
        stored += match dims {
            [out, inp] => {
                let l = layout(info.ggml_dtype, *inp, kernels);
                bytes(l.dtype, out * l.padded_in)
            }
            _ => elems * 4,
        };
    }
    Ok(json!({ "published": published, "stored": stored }))
}

/// Best of 5 passes summing a 512 MB buffer on `threads` threads, GB/s.
fn read_bandwidth_gbs(threads: usize) -> f64 {
    let words: usize = 64 << 20;
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(threads.max(1));
    let mut best = f64::MAX;
    let mut sink = 0u64;
    for _ in 0..5 {
        let t = Instant::now();
        sink ^= std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    (words * 8) as f64 / best / 1e9
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

fn read_json(path: &Path) -> Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| {
            eprintln!("bench: no peers in {}", path.display());
            Value::Null
        })
}

/// The README table: PRIP's figures, each peer's, and PRIP / peer.
fn markdown(r: &Value) -> String {
    let rows: [(&str, &str, bool); 9] = [
        ("decode tokens/s, batch 1", "/decode_tokens_per_s/1", true),
        ("decode tokens/s, batch 8", "/decode_tokens_per_s/8", true),
        ("decode tokens/s, batch 32", "/decode_tokens_per_s/32", true),
        ("prefill tokens/s", "/prefill_tokens_per_s", true),
        (
            "one refinement, warm, p50 (ms)",
            "/refine_ms/warm_p50",
            false,
        ),
        (
            "one refinement, warm, p95 (ms)",
            "/refine_ms/warm_p95",
            false,
        ),
        (
            "one refinement, cold process, p50 (ms)",
            "/refine_ms/cold_p50",
            false,
        ),
        ("model load (ms)", "/load_ms", false),
        ("peak memory, batch 32 (MB)", "/peak_rss_mb/32", false),
    ];
    let peers: Vec<(String, &Value)> = r["peers"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v)).collect())
        .unwrap_or_default();
    let mut s = format!(
        "Machine: {}; {} threads; greedy, {NEW_TOKENS} new tokens with end-of-text \
         suppressed (PRIP wrote {:.1} on average).\n\n| | PRIP (candle) |",
        r["machine"].as_str().unwrap_or("?"),
        r["threads"],
        r["new_tokens_mean"].as_f64().unwrap_or(f64::NAN)
    );
    for (name, _) in &peers {
        s += &format!(" {name} | PRIP / {name} |");
    }
    s += "\n|---|---|";
    s += &"---|---|".repeat(peers.len());
    s += "\n";
    let num = |v: Option<&Value>| v.and_then(Value::as_f64).filter(|x| x.is_finite());
    for (label, ptr, higher_better) in rows {
        let ours = num(r.pointer(ptr));
        s += &format!("| {label} | {} |", fmt(ours));
        for (_, p) in &peers {
            let theirs = num(p.pointer(ptr));
            let ratio = match (ours, theirs) {
                (Some(a), Some(b)) if higher_better => Some(a / b),
                (Some(a), Some(b)) => Some(b / a),
                _ => None,
            };
            s += &format!(
                " {} | {} |",
                fmt(theirs),
                ratio.map_or("–".into(), |x| format!("{x:.2}x"))
            );
        }
        s += "\n";
    }
    let bw = num(r.get("read_bandwidth_gbs"));
    let bound = num(r.get("batch1_bound_tokens_per_s"));
    let stored = num(r.pointer("/weight_bytes_per_token/stored"));
    let published = num(r.pointer("/weight_bytes_per_token/published"));
    if let (Some(bw), Some(bound), Some(stored), Some(published)) = (bw, bound, stored, published) {
        let share = num(r.pointer("/decode_tokens_per_s/1")).map_or(f64::NAN, |d| d / bound);
        s += &format!(
            "\nRead bandwidth {bw:.1} GB/s; weights read per token {:.1} MB as stored here \
             ({:.1} MB in the GGUF): batch-1 bound {bound:.0} tokens/s, PRIP at {:.0}% of it.\n",
            stored / 1e6,
            published / 1e6,
            share * 100.0
        );
    }
    s
}

fn fmt(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "–".into(),
    }
}
