//! The contract between the engine and the code it runs: the [`Stage`] trait, the [`Emitter`] a stage writes
//! its outputs to, the [`Mode`] it declares, and the [`Source`] that feeds a flow.
//!
//! Nothing here spawns a task or touches a channel: the engine does both.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};

use crate::error::StageError;


/// How the engine may run a stage's workers; the stage declares it (or [`crate::StageOptions::mode`] overrides it),
/// the pipeline config only says how many workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Outputs leave in input order whatever the number of workers (re-sequenced by the engine).
    #[default]
    Ordered,
    /// Inputs with the same [`Stage::key`] go to the same worker, so their order is kept; keys spread over workers.
    Keyed,
    /// Outputs leave as soon as they are ready.
    Unordered,
}

/// Where a stage puts its outputs while processing one input (or flushing).
///
/// The engine forwards what was emitted only once the call succeeded; on a retryable error the emitted items
/// are discarded, so a retry never duplicates output.
#[derive(Debug)]
pub struct Emitter<T> {
    items: Vec<T>,
}

impl<T> Default for Emitter<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Emitter<T> {
    /// An empty emitter; public so that stage crates can unit-test a stage without an engine.
    pub fn new() -> Self {
        Self { items: Vec::new() }
    }

    /// Emits one output; a call may emit any number of outputs, none included.
    pub fn emit(&mut self, item: T) {
        self.items.push(item);
    }

    /// How many outputs were emitted so far in this call.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was emitted so far in this call.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes the emitted outputs, leaving the emitter empty.
    pub fn take(&mut self) -> Vec<T> {
        std::mem::take(&mut self.items)
    }

    /// Forgets what a failed attempt emitted.
    pub(crate) fn clear(&mut self) {
        self.items.clear();
    }
}

/// One step of a flow: turns each input into zero or more outputs.
///
/// The engine creates one instance per worker (from the factory given to [`crate::FlowBuilder::stage`]), so an
/// instance is never called concurrently and may keep state in `&mut self` (a batch being built, a cache). Different
/// instances of one stage do run concurrently. A stage never spawns tasks nor sees a channel.
///
/// `process` receives its input by reference: after a retryable error the engine calls it again with the same
/// input, which needs the input to outlive the attempt; borrowing avoids both a `Clone` bound and a copy per
/// attempt. A stage that must keep (part of) an input, e.g. to batch it, clones what it keeps.
///
/// Call order per instance: `start` once, then `process` for each input and `flush` on the
/// [`Stage::flush_interval`] timer, interleaved but never overlapping, then, once the input is exhausted (end of
/// source or shutdown), `flush` once more and `close`. On a fatal error anywhere in the flow the engine stops at
/// once and neither `flush` nor `close` is called.
pub trait Stage: Send + 'static {
    /// What the stage consumes. `Debug` names it in traces and errors; `Sync` lets a borrowed input cross an
    /// `.await`.
    type In: fmt::Debug + Send + Sync + 'static;
    /// What the stage produces.
    type Out: Send + 'static;

    /// The concurrency mode this stage needs; read once, from the first instance. Default: ordered.
    fn mode(&self) -> Mode {
        Mode::Ordered
    }

    /// The partition key of an input in [`Mode::Keyed`] (e.g. a table id); inputs with equal keys stay in order.
    /// Called by the engine's dispatcher, concurrently with `process`; must be pure. Default: `0` (every input on one
    /// worker), so keyed stages override it.
    fn key(item: &Self::In) -> u64 {
        let _ = item;
        0
    }

    /// The span an input's work belongs to, when it belongs to a larger piece of work that crosses stages (a flush
    /// job's span, carried by each of its items): the engine's span around `process` becomes its child instead
    /// of a root. Called by the worker before each attempt; must be cheap. Default: none.
    fn parent_span(item: &Self::In) -> Option<&tracing::Span> {
        let _ = item;
        None
    }

    /// Called once per instance before the first input (open a connection, load a cache). Retryable errors are
    /// retried, so it must be idempotent; any other error stops the flow.
    fn start(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }

    /// Processes one input, emitting its outputs into `out`. Never called concurrently on one instance. On a
    /// retryable error it is called again with the same input and a fresh emitter, so any state it changed
    /// before failing must not make the retry wrong.
    fn process(
        &mut self,
        item: &Self::In,
        out: &mut Emitter<Self::Out>,
    ) -> impl Future<Output = Result<(), StageError>> + Send;

    /// Emits whatever the instance holds (a batch being built). Called on the [`Stage::flush_interval`] timer
    /// between inputs and once at the end, before `close`. Retried on a retryable error with a fresh emitter, so
    /// it must keep what it holds until it succeeds.
    fn flush(&mut self, out: &mut Emitter<Self::Out>) -> impl Future<Output = Result<(), StageError>> + Send {
        let _ = out;
        async { Ok(()) }
    }

    /// How often `flush` runs when the stage holds data bounded by age (a quiet batch must still leave).
    /// Read once, when the worker starts. Default: never on a timer.
    fn flush_interval(&self) -> Option<Duration> {
        None
    }

    /// Called once per instance after the last flush (release resources). Retryable errors are retried; any
    /// other error is reported by `Flow::run`.
    fn close(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }
}

/// What feeds a flow (a replication stream, a claimer); any [`Stream`] works through [`StreamSource`].
pub trait Source: Send + 'static {
    /// What the source yields.
    type Item: Send + 'static;

    /// The next item, `Ok(None)` at the end. Called by one task, never concurrently. It must be cancel safe: on
    /// shutdown the engine drops a pending call, and an item it had not returned must not be lost (it was never
    /// accepted, so it is the source's to deliver again later). Retryable errors are retried after a backoff.
    fn next(&mut self) -> impl Future<Output = Result<Option<Self::Item>, StageError>> + Send;
}

/// Adapts any `Stream` into a [`Source`] that never fails; `Stream::next` is cancel safe.
#[derive(Debug)]
pub struct StreamSource<S>(pub S);

impl<S> Source for StreamSource<S>
where
    S: Stream + Send + Unpin + 'static,
    S::Item: Send + 'static,
{
    type Item = S::Item;

    async fn next(&mut self) -> Result<Option<S::Item>, StageError> {
        Ok(self.0.next().await)
    }
}
