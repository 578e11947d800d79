//! `prip refine`: prompts from arguments or stdin, decoded as one batch.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use prip_core::sampling::GenerationPatch;
use prip_core::{Dialect, RefineRequest};
use serde_json::json;

use crate::config::Config;
use crate::engine::Engine;

/// Flags of `prip refine`; each falls back to `[refine]` in prip.toml.
#[derive(Debug, Args)]
pub struct RefineArgs {
    /// Prompts to refine; when none are given, one prompt per line is read from stdin.
    pub prompts: Vec<String>,
    /// Sampling seed (output is reproducible for a given seed); random when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object per prompt: prompt, refined, details, outcome, seed, system,
    /// model, timings.
    #[arg(long)]
    pub json: bool,
    /// PRIP model: a packaged name (default) or a checkpoint directory.
    #[arg(long)]
    pub model: Option<String>,
    /// Generation system whose decoder LoRA to use (e.g. sd15, sdxl); see the model's prip.toml.
    #[arg(long)]
    pub system: Option<String>,
    /// Who will read the refined prompt: a1111 (A1111/Forge: `#` starts a comment
    /// anywhere in a line, so details after one go on a new line), comfyui or plain
    /// (`#` is text). Default a1111.
    #[arg(long)]
    pub dialect: Option<Dialect>,
    /// Most tokens to generate per prompt.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f64>,
    /// auto, cpu or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Refine through this refiner library (libprip_abi built elsewhere, e.g. with
    /// CUDA) instead of the refiner built into this binary.
    #[arg(long)]
    pub refiner_lib: Option<PathBuf>,
}

/// One input line: its 1-based number, and the prompt or why it cannot be one.
type Line = (usize, Result<String, String>);

/// Runs `prip refine`. Exit status 1 when any prompt failed; the others are still answered.
pub fn run(args: RefineArgs, cfg: &Config) -> anyhow::Result<ExitCode> {
    let d = &cfg.refine;
    let lines: Vec<Line> = if args.prompts.is_empty() {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        split_lines(&buf)
    } else {
        args.prompts
            .iter()
            .cloned()
            .map(Ok)
            .enumerate()
            .map(|(i, p)| (i + 1, p))
            .collect()
    };
    if lines.is_empty() {
        anyhow::bail!("no prompt given (pass prompts as arguments or one per line on stdin)");
    }
    let model = args
        .model
        .clone()
        .or_else(|| d.model.clone())
        .unwrap_or_else(|| "default".into());
    let device = args
        .device
        .as_deref()
        .or(d.device.as_deref())
        .unwrap_or("auto");
    let lib = args.refiner_lib.as_deref().or(d.refiner_lib.as_deref());
    let mut engine = Engine::open(lib, &model, device)?;
    let overrides = GenerationPatch {
        max_new_tokens: args.max_new_tokens.or(d.max_new_tokens),
        temperature: args.temperature.or(d.temperature),
        top_p: args.top_p.or(d.top_p),
        ..GenerationPatch::default()
    };
    let seed = args.seed.or(d.seed);
    let system = args.system.clone().or_else(|| d.system.clone());
    let dialect = args.dialect.or(d.dialect).unwrap_or_default();

    let good: Vec<(usize, RefineRequest)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, (_, l))| {
            l.as_ref().ok().map(|p| {
                (
                    i,
                    RefineRequest {
                        seed,
                        system: system.clone(),
                        dialect,
                        ..RefineRequest::new(p.clone())
                    },
                )
            })
        })
        .collect();
    let requests: Vec<RefineRequest> = good.iter().map(|(_, r)| r.clone()).collect();
    let mut results = engine.refine(&requests, &overrides)?.into_iter();
    let mut outcome = Vec::with_capacity(lines.len());
    for (line_no, line) in &lines {
        let r = match line {
            Err(e) => Err(e.clone()),
            Ok(_) => results
                .next()
                .context("refiner returned fewer results than requests")?,
        };
        outcome.push((*line_no, r));
    }

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0;
    for (line_no, r) in outcome {
        match r {
            Ok(r) if args.json => writeln!(out, "{}", serde_json::to_string(&r)?)?,
            Ok(r) => writeln!(out, "{}", r.refined)?,
            Err(e) => {
                failed += 1;
                if args.json {
                    writeln!(out, "{}", json!({ "line": line_no, "error": e }))?;
                }
                eprintln!("prip: prompt {line_no}: {e}");
            }
        }
    }
    out.flush()?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Splits stdin into prompts: one per line, `\r\n` tolerated, blank lines skipped, and
/// each line checked for UTF-8 on its own so one bad line spoils nothing else.
fn split_lines(buf: &[u8]) -> Vec<Line> {
    buf.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .map(|(i, l)| {
            let text = String::from_utf8(l.to_vec())
                .map_err(|e| format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()));
            (i + 1, text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::split_lines;

    #[test]
    fn lines_are_split_checked_and_blank_ones_skipped() {
        let lines = split_lines(b"a cat\r\n\n  \nbad \xff line\nlast");
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], (1, Ok("a cat".into())));
        assert_eq!(lines[1], (4, Err("invalid UTF-8 at byte 4".into())));
        assert_eq!(lines[2], (5, Ok("last".into())));
    }
}
