//! One worker: one stage instance driven through its life (start, process each input with retries, flush on a
//! timer and at the end, close), with the engine's span and measurements around every call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Mutex, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::Instrument;

use crate::edge::{EdgeSender, EdgeShared, Envelope};
use crate::error::FlowError;
use crate::report::StageStats;
use crate::retry::Failures;
use crate::stage::{Emitter, Stage};

/// Where a stage's outputs go: the next stage's edge, or nowhere for a sink (whose outputs are `()`).
#[derive(Debug)]
pub(crate) enum Output<T> {
    Edge(EdgeSender<T>),
    Discard,
}

impl<T> Clone for Output<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Edge(sender) => Self::Edge(sender.clone()),
            Self::Discard => Self::Discard,
        }
    }
}

impl<T> Output<T> {
    /// Sends one output, waiting for room downstream.
    pub(crate) async fn send(&self, item: T, stage: &str) -> Result<(), FlowError> {
        match self {
            Self::Edge(sender) => {
                sender.send(item).await.map_err(|_| FlowError::Disconnected { stage: stage.to_owned() })
            }
            Self::Discard => Ok(()),
        }
    }
}

/// Where a worker takes its inputs: the stage queue shared by all workers (ordered and unordered modes), or its
/// own queue fed by the keyed dispatcher.
pub(crate) enum WorkerInput<T> {
    Shared { rx: Arc<Mutex<mpsc::UnboundedReceiver<Envelope<T>>>>, seq: Arc<AtomicU64> },
    Own(mpsc::UnboundedReceiver<Envelope<T>>),
}

impl<T> WorkerInput<T> {
    /// The next input and its position in the stage's input order (meaningful for shared input only). Cancel safe:
    /// the position is taken in the same poll that receives the input, under the queue lock, so positions follow
    /// queue order.
    async fn recv(&mut self) -> Option<(Envelope<T>, u64)> {
        match self {
            Self::Shared { rx, seq } => {
                let mut rx = rx.lock().await;
                let envelope = rx.recv().await?;
                Some((envelope, seq.fetch_add(1, Ordering::Relaxed)))
            }
            Self::Own(rx) => rx.recv().await.map(|envelope| (envelope, 0)),
        }
    }
}

/// Outputs of one input (or one flush) on their way to the ordered-mode sequencer.
pub(crate) struct Sequenced<T> {
    pub(crate) seq: u64,
    pub(crate) items: Vec<T>,
    /// The input's share of the stage bound, released once the outputs have left in order.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

/// Where a worker hands its outputs: straight downstream, or to the sequencer (ordered mode), which shares the
/// position counter with the input so that a flush takes the next position.
pub(crate) enum WorkerOutput<T> {
    Direct(Output<T>),
    Sequenced { tx: mpsc::UnboundedSender<Sequenced<T>>, seq: Arc<AtomicU64> },
}

impl<T> Clone for WorkerOutput<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Direct(output) => Self::Direct(output.clone()),
            Self::Sequenced { tx, seq } => Self::Sequenced { tx: tx.clone(), seq: Arc::clone(seq) },
        }
    }
}

/// One instance of a stage and everything it needs to run.
pub(crate) struct Worker<S: Stage> {
    pub(crate) stage: S,
    pub(crate) index: usize,
    pub(crate) input: WorkerInput<S::In>,
    pub(crate) output: WorkerOutput<S::Out>,
    pub(crate) queue: Arc<EdgeShared>,
    pub(crate) failures: Failures,
}

impl<S: Stage> Worker<S> {
    /// Runs the instance until its input ends (then flushes and closes) or a fatal error.
    pub(crate) async fn run(mut self) -> Result<(), FlowError> {
        self.start().await?;
        let interval = self.stage.flush_interval().filter(|every| !every.is_zero());
        let mut deadline = interval.map(|every| Instant::now() + every);
        loop {
            // `None`: the flush timer fired; `Some(None)`: the input ended.
            let received = match deadline {
                Some(at) => tokio::select! {
                    biased;
                    () = tokio::time::sleep_until(at) => None,
                    received = self.input.recv() => Some(received),
                },
                None => Some(self.input.recv().await),
            };
            match received {
                None => {
                    self.flush().await?;
                    deadline = interval.map(|every| Instant::now() + every);
                }
                Some(None) => break,
                Some(Some((envelope, seq))) => self.item(envelope, seq).await?,
            }
        }
        self.flush().await?;
        self.close().await
    }

    async fn start(&mut self) -> Result<(), FlowError> {
        let mut attempt = 1;
        while let Err(error) = self.stage.start().await {
            self.failures.handle(error, attempt).await?;
            attempt += 1;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), FlowError> {
        let mut attempt = 1;
        while let Err(error) = self.stage.close().await {
            self.failures.handle(error, attempt).await?;
            attempt += 1;
        }
        Ok(())
    }

    /// Processes one input until it succeeds or fails the flow; then forwards its outputs.
    async fn item(&mut self, envelope: Envelope<S::In>, seq: u64) -> Result<(), FlowError> {
        self.queue.taken();
        self.failures.metrics.item_in();
        StageStats::add(&self.failures.stats.items_in, 1);
        let Envelope { item, permit } = envelope;
        let mut out = Emitter::new();
        let mut attempt = 1;
        loop {
            let name = &self.failures.stage;
            // Under the item's own parent (a flush job's span) if it has one, else the worker's current span.
            let span = match S::parent_span(&item).and_then(tracing::Span::id) {
                Some(parent) => tracing::info_span!(parent: parent, "stage", stage = %name, otel.name = %name, worker = self.index, attempt),
                None => tracing::info_span!("stage", stage = %name, otel.name = %name, worker = self.index, attempt),
            };
            let started = Instant::now();
            let result = self.stage.process(&item, &mut out).instrument(span).await;
            self.failures.metrics.processed(started.elapsed());
            let Err(error) = result else { break };
            out.clear();
            self.failures.handle(error, attempt).await?;
            attempt += 1;
        }
        self.forward(out.take(), Some(seq), Some(permit)).await
    }

    /// Lets the instance emit what it holds, with the same retry rules as an input.
    async fn flush(&mut self) -> Result<(), FlowError> {
        let mut out = Emitter::new();
        let mut attempt = 1;
        loop {
            let name = &self.failures.stage;
            let span = tracing::info_span!("stage", stage = %name, otel.name = %name, worker = self.index, flush = true);
            let started = Instant::now();
            let result = self.stage.flush(&mut out).instrument(span).await;
            let Err(error) = result else {
                if !out.is_empty() {
                    self.failures.metrics.processed(started.elapsed());
                }
                break;
            };
            self.failures.metrics.processed(started.elapsed());
            out.clear();
            self.failures.handle(error, attempt).await?;
            attempt += 1;
        }
        let items = out.take();
        if items.is_empty() {
            return Ok(());
        }
        self.forward(items, None, None).await
    }

    /// Sends outputs on: downstream directly, or to the sequencer at the input's position (a flush, which has no
    /// input, takes the next free position: after everything this worker has processed).
    async fn forward(
        &mut self,
        items: Vec<S::Out>,
        seq: Option<u64>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), FlowError> {
        match &self.output {
            WorkerOutput::Direct(output) => {
                let count = items.len() as u64;
                for item in items {
                    output.send(item, &self.failures.stage).await?;
                }
                self.failures.metrics.items_out(count);
                StageStats::add(&self.failures.stats.items_out, count);
                drop(permit);
                Ok(())
            }
            WorkerOutput::Sequenced { tx, seq: next } => {
                let seq = seq.unwrap_or_else(|| next.fetch_add(1, Ordering::Relaxed));
                tx.send(Sequenced { seq, items, permit })
                    .map_err(|_| FlowError::Disconnected { stage: self.failures.stage.to_string() })
            }
        }
    }
}
