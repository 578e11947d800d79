//! `prip`: the PRIP prompt refiner on the command line.

mod config;
mod engine;
mod eval_cmd;
mod models_cmd;
mod refine_cmd;
mod serve_cmd;
mod train_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Refine plain image prompts into keyword-rich system language (PRIP, ACL 2024).
#[derive(Debug, Parser)]
#[command(name = "prip", version, about)]
struct Cli {
    /// Config file (default: $PRIP_HOME/prip.toml when it exists).
    #[arg(long, global = true, env = "PRIP_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Refine prompts given as arguments, or one per line on stdin.
    Refine(refine_cmd::RefineArgs),
    /// Run a reverse proxy that refines prompts on their way to an image server.
    Serve(serve_cmd::ServeArgs),
    /// Manage the packaged base models.
    Models {
        #[command(subcommand)]
        command: models_cmd::ModelsCommand,
    },
    /// Evaluate a PRIP model against baselines and ablations.
    Eval {
        #[command(subcommand)]
        command: eval_cmd::EvalCommand,
    },
    /// Train a PRIP model: warm-up stages and per-system LoRAs.
    Train {
        #[command(subcommand)]
        command: train_cmd::TrainCommand,
    },
}

fn main() -> ExitCode {
    // Before any other thread exists (see the function's note).
    prip_core::device::pin_cpu_threads();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PRIP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: redirected logs stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = config::Config::load(cli.config.as_deref()).and_then(|cfg| match cli.command {
        Command::Refine(args) => refine_cmd::run(args, &cfg),
        Command::Serve(args) => serve_cmd::run(args, &cfg),
        Command::Models { command } => models_cmd::run(command),
        Command::Train { command } => train_cmd::run(command),
        Command::Eval { command } => eval_cmd::run(command),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // Error chains can carry backtraces or multi-line causes; the CLI promises one line.
            eprintln!("prip: {}", prip_core::error::one_line(&chain_text(&e)));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text an outer
/// message already carries (many errors put their source in their own message, as
/// `path: reason`, and also return it as `source()`).
fn chain_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Io {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(Io {
            path: "/x.toml".into(),
            source: io,
        });
        assert_eq!(chain_text(&e), "/x.toml: No such file");
        let wrapped = e.context("reading the config");
        assert_eq!(
            chain_text(&wrapped),
            "reading the config: /x.toml: No such file"
        );
    }
}
