//! Model work off the async threads: one worker thread owns the refiner and takes
//! jobs from a bounded queue; jobs waiting when it comes round are refined as one
//! batch.

use std::sync::Arc;

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
    batches: Arc<std::sync::atomic::AtomicU64>,
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
        let batches = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = batches.clone();
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
                    jobs.retain(|j| !j.reply.is_closed());
                    if jobs.is_empty() {
                        continue;
                    }
                    let requests: Vec<RefineRequest> = jobs
                        .iter()
                        .flat_map(|j| j.requests.iter().cloned())
                        .collect();
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut results = refiner.refine_batch(&requests).into_iter();
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
        Ok(Self { tx, batches })
    }

    /// Queues `requests` without waiting: they join whatever batch the worker takes
    /// next. Await the returned [`Pending`] for the results.
    pub fn submit(&self, requests: Vec<RefineRequest>) -> Result<Pending, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Job { requests, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => QueueError::Full,
                mpsc::error::TrySendError::Closed(_) => QueueError::Stopped,
            })?;
        Ok(Pending(answer))
    }

    /// Refines `requests` together with whatever else is waiting.
    pub async fn refine(&self, requests: Vec<RefineRequest>) -> Result<Results, QueueError> {
        self.submit(requests)?.await
    }

    /// Batches run so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
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
