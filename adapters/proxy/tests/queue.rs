//! The refine queue batches what waits, keeps each caller's results apart and skips
//! callers that gave up. The real tiny refiner does the work; a gate holds the first
//! batch so the test knows what is waiting when the worker comes round.

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use prip_core::{Refine, RefineRequest, Refined};
use prip_proxy::refine::RefineQueue;

struct Gated {
    inner: prip_core::Refiner,
    started: mpsc::Sender<usize>,
    release: Mutex<mpsc::Receiver<()>>,
    sizes: Arc<Mutex<Vec<usize>>>,
}

impl Refine for Gated {
    fn refine_batch(&mut self, requests: &[RefineRequest]) -> Vec<Result<Refined, String>> {
        self.sizes.lock().unwrap().push(requests.len());
        self.started.send(requests.len()).unwrap();
        self.release.lock().unwrap().recv().unwrap();
        self.inner.refine_batch(requests)
    }
}

fn prompt(text: &str) -> RefineRequest {
    RefineRequest {
        seed: Some(support::SEED),
        ..RefineRequest::new(text)
    }
}

#[tokio::test]
async fn waiting_jobs_are_refined_as_one_batch_and_answered_apart() {
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let queue = RefineQueue::start(
        Box::new(Gated {
            inner: support::tiny_refiner(),
            started: started_tx,
            release: Mutex::new(release_rx),
            sizes: sizes.clone(),
        }),
        16,
        8,
    )
    .unwrap();

    let first = queue.submit(vec![prompt("a red fox")]).unwrap();
    assert_eq!(
        started.recv().unwrap(),
        1,
        "the worker took the first job alone"
    );
    let second = queue
        .submit(vec![prompt("a cat"), prompt("a dog")])
        .unwrap();
    let third = queue.submit(vec![prompt("a lighthouse")]).unwrap();
    let gave_up = queue.submit(vec![prompt("never mind")]).unwrap();
    drop(gave_up);
    release.send(()).unwrap();
    let first = first.await.unwrap();
    assert_eq!(
        started.recv().unwrap(),
        3,
        "the waiting jobs form one batch"
    );
    release.send(()).unwrap();
    let (second, third) = (second.await.unwrap(), third.await.unwrap());

    assert_eq!(
        *sizes.lock().unwrap(),
        [1, 3],
        "the withdrawn job was skipped"
    );
    assert_eq!(first.len(), 1);
    assert_eq!(second.len(), 2);
    assert_eq!(third.len(), 1);
    for (got, text) in [
        (&first[0], "a red fox"),
        (&second[0], "a cat"),
        (&second[1], "a dog"),
        (&third[0], "a lighthouse"),
    ] {
        let got = &got.as_ref().unwrap().refined;
        assert!(
            got == text || got.starts_with(&format!("{text}, ")),
            "{got:?} for {text:?}"
        );
    }
    assert_eq!(queue.batches(), 2);
}

#[tokio::test]
async fn a_full_queue_refuses_at_once() {
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let queue = RefineQueue::start(
        Box::new(Gated {
            inner: support::tiny_refiner(),
            started: started_tx,
            release: Mutex::new(release_rx),
            sizes: Arc::default(),
        }),
        1,
        8,
    )
    .unwrap();
    let busy = queue.submit(vec![prompt("a")]).unwrap();
    started.recv().unwrap();
    let waiting = queue.submit(vec![prompt("b")]).unwrap();
    assert_eq!(
        queue.submit(vec![prompt("c")]).unwrap_err(),
        prip_proxy::refine::QueueError::Full
    );
    release.send(()).unwrap();
    release.send(()).unwrap();
    busy.await.unwrap();
    waiting.await.unwrap();
}
