//! The queue between two stages. An edge is an unbounded channel guarded by a semaphore of `queue + workers`
//! permits: a sender takes a permit before sending and the permit travels with the input until the receiving stage
//! has forwarded that input's outputs. So the bound covers everything inside a stage (queued, being processed,
//! waiting for re-sequencing, waiting to leave) and a full downstream stalls its upstream: backpressure end to end.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::telemetry::StageMetrics;

/// One input inside a stage, holding its share of the stage's bound.
#[derive(Debug)]
pub(crate) struct Envelope<T> {
    pub(crate) item: T,
    pub(crate) permit: OwnedSemaphorePermit,
}

/// What both ends of an edge share: the bound and the queue depth.
#[derive(Debug)]
pub(crate) struct EdgeShared {
    permits: Arc<Semaphore>,
    depth: AtomicI64,
    metrics: Arc<StageMetrics>,
}

impl EdgeShared {
    /// A worker took an input off the queue.
    pub(crate) fn taken(&self) {
        let depth = self.depth.fetch_sub(1, Ordering::Relaxed) - 1;
        self.metrics.queue_depth(depth);
    }
}

/// The sending end; cloned by every upstream worker.
#[derive(Debug)]
pub(crate) struct EdgeSender<T> {
    tx: mpsc::UnboundedSender<Envelope<T>>,
    shared: Arc<EdgeShared>,
}

impl<T> Clone for EdgeSender<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), shared: Arc::clone(&self.shared) }
    }
}

/// The receiver is gone: the downstream stage stopped (only after a failure).
#[derive(Debug)]
pub(crate) struct Closed;

impl<T> EdgeSender<T> {
    /// Waits for room in the downstream stage, then enqueues.
    pub(crate) async fn send(&self, item: T) -> Result<(), Closed> {
        let permit = Arc::clone(&self.shared.permits).acquire_owned().await.map_err(|_| Closed)?;
        let depth = self.shared.depth.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared.metrics.queue_depth(depth);
        self.tx.send(Envelope { item, permit }).map_err(|_| Closed)
    }
}

/// The receiving end, owned by the stage's pool.
#[derive(Debug)]
pub(crate) struct EdgeReceiver<T> {
    pub(crate) rx: mpsc::UnboundedReceiver<Envelope<T>>,
    pub(crate) shared: Arc<EdgeShared>,
}

/// A new edge letting at most `bound` inputs into the receiving stage.
pub(crate) fn edge<T>(bound: usize, metrics: Arc<StageMetrics>) -> (EdgeSender<T>, EdgeReceiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(EdgeShared { permits: Arc::new(Semaphore::new(bound)), depth: AtomicI64::new(0), metrics });
    (EdgeSender { tx, shared: Arc::clone(&shared) }, EdgeReceiver { rx, shared })
}
