//! Several servers of one protocol behind one call: bounded concurrency per server,
//! retries with exponential backoff on transient failures (on another server when
//! there is one), and a server that fails `eject_after` times in a row taken out of
//! rotation for `cooldown`, then tried again (one more failure takes it out again).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Backend, Cache, Dropped, Endpoint, RenderError, RenderJob, Rendered, RenderedImage};
use crate::image::{ImageLimits, Picture};
use crate::{Result, TrainError};

/// How a [`Pool`] uses its servers.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Base URLs of the servers, `http://host:port` (or `https://`, with a path
    /// prefix when the server sits behind one).
    pub servers: Vec<String>,
    /// Calls in flight per server. A GPU server renders one job at a time, so more than
    /// 2 only queues work on the server instead of here.
    pub concurrency: usize,
    /// Limit for one call (every request of it, ComfyUI's polling included).
    pub timeout: Duration,
    /// Tries per call, the first included.
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Consecutive transient failures that take a server out of rotation.
    pub eject_after: u32,
    /// How long a server stays out of rotation.
    pub cooldown: Duration,
    /// What images are accepted.
    pub limits: ImageLimits,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            concurrency: 2,
            timeout: Duration::from_secs(600),
            attempts: 4,
            backoff: Duration::from_secs(1),
            eject_after: 3,
            cooldown: Duration::from_secs(60),
            limits: ImageLimits::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    out_until: Option<Instant>,
    in_flight: usize,
}

struct Server {
    endpoint: Endpoint,
    permits: Semaphore,
    health: Mutex<Health>,
}

impl Server {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // A poisoned lock only means a panic elsewhere; the counters are still usable.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inner {
    backend: Arc<dyn Backend>,
    settings: String,
    servers: Vec<Server>,
    cfg: PoolConfig,
    cache: Option<Cache>,
}

/// Renders batches of prompts on a set of servers of one protocol.
pub struct Pool {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("backend", &self.inner.backend.name())
            .field("servers", &self.servers())
            .finish()
    }
}

impl Pool {
    /// A pool over `cfg.servers` for `backend`, with an optional cache.
    pub fn new(backend: Arc<dyn Backend>, cfg: PoolConfig, cache: Option<Cache>) -> Result<Self> {
        if cfg.servers.is_empty() {
            return Err(TrainError::Config(format!(
                "{} backend: no server URL given",
                backend.name()
            )));
        }
        if cfg.concurrency == 0 || cfg.attempts == 0 || cfg.eject_after == 0 {
            return Err(TrainError::Config(
                "render pool: concurrency, attempts and eject_after must be at least 1".into(),
            ));
        }
        let servers = cfg
            .servers
            .iter()
            .map(|url| {
                Ok(Server {
                    endpoint: Endpoint::new(url, cfg.timeout).map_err(TrainError::Config)?,
                    permits: Semaphore::new(cfg.concurrency),
                    health: Mutex::new(Health::default()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("prip-render")
            .enable_all()
            .build()
            .map_err(|e| TrainError::Config(format!("render pool runtime: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings: backend.settings_key(),
                backend,
                servers,
                cfg,
                cache,
            }),
            runtime,
        })
    }

    /// The servers' base URLs.
    pub fn servers(&self) -> Vec<String> {
        self.inner
            .servers
            .iter()
            .map(|s| s.endpoint.url().to_string())
            .collect()
    }

    /// The servers now out of rotation.
    pub fn out_of_rotation(&self) -> Vec<String> {
        let now = Instant::now();
        self.inner
            .servers
            .iter()
            .filter(|s| s.health().out_until.is_some_and(|t| t > now))
            .map(|s| s.endpoint.url().to_string())
            .collect()
    }

    /// Renders every job under each of its seeds; blocks until all are rendered or
    /// dropped. Images come from the cache where it has them. Call it from a plain
    /// thread, not from inside an async runtime.
    pub fn render(&self, jobs: &[RenderJob]) -> Rendered {
        self.runtime.block_on(render_all(self.inner.clone(), jobs))
    }
}

/// Per seed of a job: its image, its drop, or still to do.
type Outcome = Option<std::result::Result<RenderedImage, Dropped>>;

async fn render_all(inner: Arc<Inner>, jobs: &[RenderJob]) -> Rendered {
    let backend = inner.backend.name();
    let mut outcomes: Vec<Vec<Outcome>> = jobs.iter().map(|j| vec![None; j.seeds.len()]).collect();
    let mut calls = JoinSet::new();
    for (j, job) in jobs.iter().enumerate() {
        let mut missing = Vec::new();
        for (k, &seed) in job.seeds.iter().enumerate() {
            let hit = inner
                .cache
                .as_ref()
                .and_then(|c| c.get(backend, &inner.settings, &job.prompt, seed));
            match hit {
                Some((picture, server)) => {
                    outcomes[j][k] = Some(Ok(RenderedImage {
                        prompt: job.prompt.clone(),
                        seed,
                        server,
                        cached: true,
                        picture,
                    }))
                }
                None => missing.push(seed),
            }
        }
        for chunk in inner.backend.chunks(&missing) {
            let inner = inner.clone();
            let prompt = job.prompt.clone();
            calls.spawn(async move {
                let result = call(&inner, &prompt, &chunk).await;
                (j, chunk, result)
            });
        }
    }
    while let Some(joined) = calls.join_next().await {
        let Ok((j, seeds, result)) = joined else {
            // A panicking task is a bug; its seeds stay unfilled and are dropped below.
            tracing::error!("a render task panicked");
            continue;
        };
        let job = &jobs[j];
        let place = |seed: u64| job.seeds.iter().position(|s| *s == seed);
        match result {
            Ok((server, images)) => {
                for (seed, bytes) in seeds.iter().zip(images) {
                    let Some(k) = place(*seed) else { continue };
                    outcomes[j][k] = Some(finish(&inner, job, *seed, &server, &bytes));
                }
            }
            Err(e) => {
                tracing::warn!(cause = e.cause(), prompt = %job.prompt, ?seeds, "render dropped: {e}");
                for seed in &seeds {
                    if let Some(k) = place(*seed) {
                        outcomes[j][k] = Some(Err(dropped(job, *seed, &e)));
                    }
                }
            }
        }
    }
    let mut out = Rendered::default();
    for (job, row) in jobs.iter().zip(outcomes) {
        for (seed, outcome) in job.seeds.iter().zip(row) {
            match outcome {
                Some(Ok(image)) => out.images.push(image),
                Some(Err(d)) => out.dropped.push(d),
                None => out.dropped.push(Dropped {
                    prompt: job.prompt.clone(),
                    seed: *seed,
                    cause: "internal",
                    message: "render task failed".into(),
                }),
            }
        }
    }
    out
}

/// Decodes one image and stores it in the cache.
fn finish(
    inner: &Inner,
    job: &RenderJob,
    seed: u64,
    server: &str,
    bytes: &[u8],
) -> std::result::Result<RenderedImage, Dropped> {
    let picture = Picture::decode(bytes, &inner.cfg.limits).map_err(|source| {
        let e = RenderError::Image {
            server: server.to_string(),
            source,
        };
        tracing::warn!(cause = e.cause(), prompt = %job.prompt, seed, "image dropped: {e}");
        dropped(job, seed, &e)
    })?;
    if let Some(cache) = &inner.cache {
        let name = inner.backend.name();
        if let Err(e) = cache.put(name, &inner.settings, &job.prompt, seed, server, &picture) {
            // The image is still good for this batch; only the next run pays for it.
            tracing::warn!("image cache: {e}");
        }
    }
    Ok(RenderedImage {
        prompt: job.prompt.clone(),
        seed,
        server: server.to_string(),
        cached: false,
        picture,
    })
}

fn dropped(job: &RenderJob, seed: u64, e: &RenderError) -> Dropped {
    Dropped {
        prompt: job.prompt.clone(),
        seed,
        cause: e.cause(),
        message: e.to_string(),
    }
}

/// One call with its retries: the server that answered and the encoded images.
async fn call(
    inner: &Inner,
    prompt: &str,
    seeds: &[u64],
) -> std::result::Result<(String, Vec<Vec<u8>>), RenderError> {
    let cfg = &inner.cfg;
    let mut avoid = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let i = pick(inner, avoid).await;
        let server = &inner.servers[i];
        let url = server.endpoint.url().to_string();
        let result = {
            // The permits are never closed, so acquire only fails on a bug.
            let _permit = server.permits.acquire().await;
            tokio::time::timeout(
                cfg.timeout,
                inner.backend.render(&server.endpoint, prompt, seeds),
            )
            .await
            .unwrap_or_else(|_| {
                Err(RenderError::Timeout {
                    server: url.clone(),
                    secs: cfg.timeout.as_secs_f64(),
                })
            })
        };
        server.health().in_flight -= 1;
        let e = match result {
            Ok(images) if images.len() >= seeds.len() => {
                server.health().consecutive_failures = 0;
                let mut images = images;
                images.truncate(seeds.len());
                return Ok((url, images));
            }
            Ok(images) => {
                // The server works; the answer is short. Not its health's business.
                server.health().consecutive_failures = 0;
                return Err(RenderError::FewerImages {
                    server: url,
                    asked: seeds.len(),
                    got: images.len(),
                });
            }
            Err(e) => e,
        };
        if e.is_transient() {
            let mut h = server.health();
            h.consecutive_failures += 1;
            if h.consecutive_failures >= cfg.eject_after {
                h.out_until = Some(Instant::now() + cfg.cooldown);
                tracing::warn!(server = %url, failures = h.consecutive_failures,
                    cooldown_s = cfg.cooldown.as_secs_f64(), "server out of rotation");
            }
        }
        if !e.is_transient() || attempt >= cfg.attempts {
            return Err(e);
        }
        let wait = cfg.backoff.saturating_mul(1 << (attempt - 1).min(16));
        tracing::info!(server = %url, attempt, wait_ms = wait.as_millis() as u64, "retrying: {e}");
        tokio::time::sleep(wait).await;
        avoid = Some(i);
    }
}

/// The server to send the next call to: among those in rotation the least busy,
/// preferring any other than `avoid` (the one that just failed). When every server is
/// out, waits for the first to come back.
async fn pick(inner: &Inner, avoid: Option<usize>) -> usize {
    loop {
        let now = Instant::now();
        let mut best: Option<(bool, usize, usize)> = None;
        let mut back_at: Option<Instant> = None;
        for (i, s) in inner.servers.iter().enumerate() {
            let h = s.health();
            match h.out_until {
                Some(t) if t > now => {
                    back_at = Some(back_at.map_or(t, |b| b.min(t)));
                    continue;
                }
                _ => {}
            }
            let rank = (avoid == Some(i), h.in_flight, i);
            if best.is_none_or(|b| rank < b) {
                best = Some(rank);
            }
        }
        if let Some((_, _, i)) = best {
            let mut h = inner.servers[i].health();
            h.in_flight += 1;
            if h.out_until.is_some_and(|t| t <= now) {
                h.out_until = None;
                tracing::info!(server = %inner.servers[i].endpoint.url(), "server back in rotation");
            }
            return i;
        }
        let wait = back_at.map_or(Duration::from_millis(100), |t| {
            t.saturating_duration_since(now)
        });
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
    }
}
