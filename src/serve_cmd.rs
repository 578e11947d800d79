//! `prip serve`: the refining reverse proxy in front of an image server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use prip_protocols::Polarity;
use prip_proxy::proxy::{AdapterChoice, Proxy, ServeConfig};
use prip_proxy::refine::RefineQueue;
use prip_proxy::sandbox::{AdapterHost, Limits};

use crate::config::{Config, ServeDefaults};
use crate::engine::Engine;

/// Flags of `prip serve`; each falls back to `[serve]` in prip.toml.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The image server: http[s]://HOST:PORT (ComfyUI, A1111/Forge, diffusers, OpenAI-style).
    #[arg(long)]
    pub upstream: Option<String>,
    /// Extra CA certificates (PEM) to trust for an https upstream.
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7870].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// auto (every loaded adapter), an adapter name (a1111, comfyui, diffusers,
    /// openai-images, or one from --adapters-dir), or a path to an adapter .wasm.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Directory of more adapter components (*.wasm) to load at start-up.
    #[arg(long)]
    pub adapters_dir: Option<PathBuf>,
    /// Bearer token clients must send (Authorization: Bearer TOKEN).
    #[arg(long, env = "PRIP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Allow listening on a non-loopback address without a token.
    #[arg(long)]
    pub allow_public: bool,
    /// Which prompts to refine: positive, negative, unknown (comma-separated) [default: positive].
    #[arg(long, value_delimiter = ',')]
    pub prompts: Vec<String>,
    /// Seconds a request waits for refinement before it goes upstream unchanged [default: 30].
    #[arg(long)]
    pub refine_timeout: Option<f64>,
    /// Seconds the upstream may take to start answering [default: 600].
    #[arg(long)]
    pub upstream_timeout: Option<f64>,
    /// Largest request body on a refined route, MiB [default: 32].
    #[arg(long)]
    pub max_body_mb: Option<usize>,
    /// Requests that may wait for the refiner [default: 256].
    #[arg(long)]
    pub queue: Option<usize>,
    /// Most prompts refined in one batch [default: 16].
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// PRIP model: a packaged name (default) or a checkpoint directory.
    #[arg(long)]
    pub model: Option<String>,
    /// Generation system whose decoder adapter to use.
    #[arg(long)]
    pub system: Option<String>,
    /// auto, cpu or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Refine through this refiner library (libprip_abi built elsewhere, e.g. with
    /// CUDA) instead of the refiner built into this binary.
    #[arg(long)]
    pub refiner_lib: Option<PathBuf>,
    /// Sampling seed for every prompt, so a prompt is always refined the same way;
    /// random when absent.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Runs the proxy until Ctrl-C.
pub fn run(args: ServeArgs, cfg: &Config) -> anyhow::Result<ExitCode> {
    let d: &ServeDefaults = &cfg.serve;
    let upstream = args
        .upstream
        .or_else(|| d.upstream.clone())
        .context("--upstream URL is required (or `upstream` under [serve] in prip.toml)")?;
    let listen = match args.listen.or(d.listen) {
        Some(a) => a,
        None => "127.0.0.1:7870".parse().expect("valid address"),
    };
    let mut serve = ServeConfig::new(upstream);
    serve.upstream_ca = args.upstream_ca.or_else(|| d.upstream_ca.clone());
    serve.token = args.token.or_else(|| d.token.clone());
    serve.allow_public = args.allow_public || d.allow_public.unwrap_or(false);
    if let Some(s) = args.refine_timeout.or(d.refine_timeout) {
        serve.refine_timeout = seconds(s, "refine timeout")?;
    }
    if let Some(s) = args.upstream_timeout.or(d.upstream_timeout) {
        serve.upstream_timeout = seconds(s, "upstream timeout")?;
    }
    if let Some(mb) = args.max_body_mb.or(d.max_body_mb) {
        serve.max_body_bytes = mb << 20;
    }
    let prompts = if args.prompts.is_empty() {
        d.prompts.clone().unwrap_or_default()
    } else {
        args.prompts
    };
    if !prompts.is_empty() {
        serve.polarities = prompts
            .iter()
            .map(|p| p.parse::<Polarity>().context("--prompts"))
            .collect::<Result<_, _>>()?;
    }
    serve.system = args.system.or_else(|| d.system.clone());
    serve.seed = args.seed.or(d.seed);

    serve.check(listen)?;
    let mut host = AdapterHost::with_builtin(Limits::default())?;
    if let Some(dir) = args.adapters_dir.or_else(|| d.adapters_dir.clone()) {
        for e in host.load_dir(&dir)? {
            tracing::warn!("{e}; skipped");
            eprintln!("prip serve: {e}; skipped");
        }
    }
    let adapter = args
        .adapter
        .or_else(|| d.adapter.clone())
        .unwrap_or_else(|| "auto".into());
    serve.adapter = if adapter == "auto" {
        AdapterChoice::Auto
    } else if adapter.ends_with(".wasm") || Path::new(&adapter).is_file() {
        let idx = host.load_file(Path::new(&adapter))?;
        AdapterChoice::Named(host.adapters()[idx].info.name.clone())
    } else {
        AdapterChoice::Named(adapter)
    };

    let model = args
        .model
        .or_else(|| d.model.clone())
        .unwrap_or_else(|| "default".into());
    let device = args
        .device
        .as_deref()
        .or(d.device.as_deref())
        .unwrap_or("auto");
    let lib = args.refiner_lib.or_else(|| d.refiner_lib.clone());
    let refiner = Engine::open(lib.as_deref(), &model, device)?;
    let queue = RefineQueue::start(
        Box::new(refiner),
        args.queue.or(d.queue).unwrap_or(256),
        args.max_batch.or(d.max_batch).unwrap_or(16),
    )?;
    let upstream = serve.upstream.clone();
    let proxy = Proxy::new(serve, Arc::new(host), queue)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let running = proxy.bind(listen).await?;
        eprintln!(
            "prip serve: http://{} -> {upstream} (Ctrl-C to stop)",
            running.local_addr()
        );
        tokio::select! {
            _ = running.wait() => {}
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0) {
        bail!("{what} must be a positive number of seconds, not {s}");
    }
    Ok(Duration::from_secs_f64(s))
}
