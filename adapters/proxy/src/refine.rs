//! Model work off the async threads: one worker thread owns the refiner and takes
//! jobs from a bounded queue; jobs waiting when it comes round are refined as one
//! batch. The queue also knows how long a new job would wait ([`RefineQueue::expected_wait`]),
//! so that under overload the proxy can forward a request unrefined at once instead of
//! holding it for the whole refine timeout.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prip_core::{Refine, RefineRequest, Refined};
use tokio::sync::{mpsc, oneshot};

/// One job's answer: a result per request, an error as one line.
pub type Results = Vec<Result<Refined, String>>;

/// Why a job got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue was full.
    #[error("refine queue is full")]
    Full,
    /// The worker is gone (the refiner panicked).
    #[error("refiner worker stopped")]
    Stopped,
}

struct Job {
    requests: Vec<RefineRequest>,
    reply: oneshot::Sender<Results>,
}

/// The sending side; clone freely.
#[derive(Clone)]
pub struct RefineQueue {
    tx: mpsc::Sender<Job>,
    load: Arc<Load>,
}

/// What the worker has in hand, shared with the submitters.
#[derive(Debug, Default)]
struct Load {
    /// Batches run so far.
    batches: AtomicU64,
    /// Requests submitted and not yet answered or withdrawn.
    pending: AtomicUsize,
    /// Decayed sums of recent batches' refinement time (microseconds) and size; their
    /// ratio is the time per request. Weighting by size lets the large batches of a busy
    /// queue, which cost less per request, outweigh the small ones of a quiet start.
    /// Zero until the first batch has run.
    recent: std::sync::Mutex<(f64, f64)>,
}

impl Load {
    /// Folds one batch into the recent sums (each older batch counts 0.7 as much as the
    /// next: recent load matters, one odd batch does not decide).
    fn record(&self, requests: usize, took: Duration) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.0 = 0.7 * recent.0 + took.as_secs_f64() * 1e6;
        recent.1 = 0.7 * recent.1 + requests as f64;
    }

    /// Recent refinement time per request, microseconds; `None` before any batch.
    fn us_per_request(&self) -> Option<f64> {
        let (us, n) = *self.recent.lock().unwrap_or_else(|e| e.into_inner());
        (n > 0.0).then(|| us / n)
    }

    fn done(&self, requests: usize) {
        self.pending.fetch_sub(requests, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for RefineQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefineQueue").finish_non_exhaustive()
    }
}

impl RefineQueue {
    /// Starts the worker thread. `capacity` jobs may wait; a batch holds at most
    /// `max_batch` prompts (a single larger job still runs whole).
    pub fn start(
        mut refiner: Box<dyn Refine + 'static>,
        capacity: usize,
        max_batch: usize,
    ) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Job>(capacity.max(1));
        let load = Arc::new(Load::default());
        let worker = load.clone();
        std::thread::Builder::new()
            .name("prip-refiner".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut jobs = vec![first];
                    let mut size = jobs[0].requests.len();
                    while size < max_batch {
                        match rx.try_recv() {
                            Ok(job) => {
                                size += job.requests.len();
                                jobs.push(job);
                            }
                            Err(_) => break,
                        }
                    }
                    // A caller that gave up (timed out) no longer needs its requests.
                    jobs.retain(|j| {
                        let wanted = !j.reply.is_closed();
                        if !wanted {
                            worker.done(j.requests.len());
                        }
                        wanted
                    });
                    if jobs.is_empty() {
                        continue;
                    }
                    let requests: Vec<RefineRequest> = jobs
                        .iter()
                        .flat_map(|j| j.requests.iter().cloned())
                        .collect();
                    worker.batches.fetch_add(1, Ordering::Relaxed);
                    let started = Instant::now();
                    let mut results = refiner.refine_batch(&requests).into_iter();
                    worker.record(requests.len(), started.elapsed());
                    worker.done(requests.len());
                    for job in jobs {
                        let mine: Vec<_> = (0..job.requests.len())
                            .map(|_| {
                                results.next().unwrap_or_else(|| {
                                    Err("refiner returned too few results".into())
                                })
                            })
                            .collect();
                        let _ = job.reply.send(mine);
                    }
                }
            })?;
        Ok(Self { tx, load })
    }

    /// Queues `requests` without waiting: they join whatever batch the worker takes
    /// next. Await the returned [`Pending`] for the results.
    pub fn submit(&self, requests: Vec<RefineRequest>) -> Result<Pending, QueueError> {
        let (reply, answer) = oneshot::channel();
        let n = requests.len();
        self.load.pending.fetch_add(n, Ordering::Relaxed);
        self.tx.try_send(Job { requests, reply }).map_err(|e| {
            self.load.done(n);
            match e {
                mpsc::error::TrySendError::Full(_) => QueueError::Full,
                mpsc::error::TrySendError::Closed(_) => QueueError::Stopped,
            }
        })?;
        Ok(Pending(answer))
    }

    /// Refines `requests` together with whatever else is waiting.
    pub async fn refine(&self, requests: Vec<RefineRequest>) -> Result<Results, QueueError> {
        self.submit(requests)?.await
    }

    /// Batches run so far.
    pub fn batches(&self) -> u64 {
        self.load.batches.load(Ordering::Relaxed)
    }

    /// How long `requests` more would take to be answered if submitted now: everything
    /// pending plus them, at the recent refinement time per request. `None` until the
    /// first batch has been measured (nothing is known yet, so nothing is refused).
    pub fn expected_wait(&self, requests: usize) -> Option<Duration> {
        let us = self.load.us_per_request()?;
        let queued = self.load.pending.load(Ordering::Relaxed) + requests;
        Some(Duration::from_secs_f64(us * queued as f64 / 1e6))
    }
}

/// Results of a submitted job; dropping it withdraws the job if it has not started.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Results>);

impl std::future::Future for Pending {
    type Output = Result<Results, QueueError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(|_| QueueError::Stopped))
    }
}
