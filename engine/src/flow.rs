//! Building and running a flow: a source, stages and a sink joined by bounded edges. [`Flow::run`] spawns every
//! task into one `JoinSet`, drains on cancellation, and stops everything on the first failure.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{FutureExt, Stream};
use opentelemetry::metrics::Meter;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::edge::edge;
use crate::error::FlowError;
use crate::options::{RetryPolicy, StageOptions};
use crate::pool::{stage_tasks, Task};
use crate::report::{FlowReport, StageStats};
use crate::retry::Failures;
use crate::stage::{Mode, Source, Stage, StreamSource};
use crate::telemetry::{StageMetrics, METER_NAME};
use crate::worker::Output;

/// The name the source has in metrics, reports and errors.
pub const SOURCE_STAGE: &str = "source";

/// What wiring needs at run time; lives only while the tasks are being built.
struct RunCtx {
    meter: Meter,
    cancel: CancellationToken,
    source_retry: RetryPolicy,
    stats: RefCell<Vec<(Arc<str>, Arc<StageStats>)>>,
}

impl RunCtx {
    fn metrics(&self, stage: &str) -> Arc<StageMetrics> {
        Arc::new(StageMetrics::new(&self.meter, stage))
    }

    /// Registers a stage's counters (in flow order) and bundles what its tasks need to act on failures.
    fn failures(&self, stage: &Arc<str>, retry: RetryPolicy, metrics: Arc<StageMetrics>) -> Failures {
        let stats = Arc::new(StageStats::default());
        self.stats.borrow_mut().push((Arc::clone(stage), Arc::clone(&stats)));
        Failures { stage: Arc::clone(stage), retry, metrics, stats, cancel: self.cancel.clone() }
    }
}

/// Builds the tasks of everything up to an edge, given where that edge's items go.
type Wire<T> = Box<dyn FnOnce(&RunCtx, Output<T>) -> Vec<Task> + Send>;

/// Builds the tasks of a whole flow, sink included.
type Closed = Box<dyn FnOnce(&RunCtx) -> Vec<Task> + Send>;

/// Flow-wide settings, and every problem found while building (reported all at once by `run`).
struct Settings {
    meter: Option<Meter>,
    source_retry: RetryPolicy,
    names: HashSet<String>,
    problems: Vec<String>,
}

impl Settings {
    fn check(&mut self, name: &str, options: &StageOptions) {
        if !self.names.insert(name.to_owned()) {
            self.problems.push(format!("stage name `{name}` is used twice"));
        }
        self.problems.extend(options.problems(name));
    }
}

/// A flow still open at its end: items of type `T` come out of its last stage. Add stages, then a sink.
pub struct FlowBuilder<T> {
    wire: Wire<T>,
    settings: Settings,
}

/// A complete flow (source, stages, sink), ready to run.
pub struct Flow {
    wire: Closed,
    settings: Settings,
}

impl Flow {
    /// Starts a flow from a source; the source runs as the stage named [`SOURCE_STAGE`].
    pub fn from_source<Src: Source>(source: Src) -> FlowBuilder<Src::Item> {
        let name: Arc<str> = Arc::from(SOURCE_STAGE);
        let wire: Wire<Src::Item> = Box::new(move |ctx, output| {
            let failures = ctx.failures(&name, ctx.source_retry, ctx.metrics(&name));
            vec![(name, run_source(source, output, ctx.cancel.clone(), failures).boxed())]
        });
        let mut names = HashSet::new();
        names.insert(SOURCE_STAGE.to_owned());
        let settings = Settings {
            meter: None,
            source_retry: RetryPolicy::default(),
            names,
            problems: Vec::new(),
        };
        FlowBuilder { wire, settings }
    }

    /// Starts a flow from any stream (which never fails).
    pub fn from_stream<St>(stream: St) -> FlowBuilder<St::Item>
    where
        St: Stream + Send + Unpin + 'static,
        St::Item: Send + 'static,
    {
        Self::from_source(StreamSource(stream))
    }

    /// Records metrics through this meter instead of `global::meter("philotes")`.
    pub fn meter(mut self, meter: Meter) -> Self {
        self.settings.meter = Some(meter);
        self
    }

    /// Runs the flow to its end: the source is exhausted, or `cancel` fires. On cancellation the source is asked
    /// for nothing more, every accepted item is drained through every stage and the sink, and each instance is
    /// flushed then closed, stage after stage. On the first failure every task is stopped at once (no flush, no
    /// close) and the failure is returned. Dropping the returned future stops every task too.
    pub async fn run(self, cancel: CancellationToken) -> Result<FlowReport, FlowError> {
        let Self { wire, settings } = self;
        if !settings.problems.is_empty() {
            return Err(FlowError::Invalid { problems: settings.problems });
        }
        let ctx = RunCtx {
            meter: settings.meter.unwrap_or_else(|| opentelemetry::global::meter(METER_NAME)),
            cancel,
            source_retry: settings.source_retry,
            stats: RefCell::new(Vec::new()),
        };
        let tasks = wire(&ctx);
        let mut set = JoinSet::new();
        let mut names = HashMap::new();
        for (name, task) in tasks {
            names.insert(set.spawn(task).id(), name);
        }
        let mut failure: Option<FlowError> = None;
        while let Some(joined) = set.join_next_with_id().await {
            let error = match joined {
                Ok((_, Ok(()))) => continue,
                Ok((_, Err(error))) => error,
                Err(join) if join.is_panic() => FlowError::Panicked {
                    stage: names.get(&join.id()).map_or_else(|| "unknown".to_owned(), |name| name.to_string()),
                },
                // Cancelled: only by `abort_all` below, after a failure that is already recorded.
                Err(_) => continue,
            };
            match &failure {
                None => {
                    set.abort_all();
                    failure = Some(error);
                }
                Some(first) if first.is_secondary() && !error.is_secondary() => failure = Some(error),
                Some(_) => {}
            }
        }
        if let Some(error) = failure {
            return Err(error);
        }
        let stages = ctx.stats.borrow().iter().map(|(name, stats)| stats.report(name)).collect();
        Ok(FlowReport { stages })
    }
}

impl<T: Send + 'static> FlowBuilder<T> {
    /// Appends a stage named `name` (the `stage` attribute of its metrics) running `options.workers` instances,
    /// made now by `factory(worker_index)`.
    pub fn stage<S, F>(mut self, name: &str, options: StageOptions, factory: F) -> FlowBuilder<S::Out>
    where
        S: Stage<In = T>,
        F: FnMut(usize) -> S,
    {
        self.settings.check(name, &options);
        let wire = wire_stage(self.wire, Arc::from(name), options, factory);
        FlowBuilder { wire, settings: self.settings }
    }

    /// Closes the flow with a sink: a stage whose outputs are `()`, so nothing can be dropped by accident. It has
    /// workers, a mode, retries and metrics like any stage.
    pub fn sink<S, F>(mut self, name: &str, options: StageOptions, factory: F) -> Flow
    where
        S: Stage<In = T, Out = ()>,
        F: FnMut(usize) -> S,
    {
        self.settings.check(name, &options);
        let wire = wire_stage(self.wire, Arc::from(name), options, factory);
        Flow { wire: Box::new(move |ctx| wire(ctx, Output::Discard)), settings: self.settings }
    }

    /// Records metrics through this meter instead of `global::meter("philotes")`.
    pub fn meter(mut self, meter: Meter) -> Self {
        self.settings.meter = Some(meter);
        self
    }

    /// How the source's retryable errors are retried.
    pub fn source_retry(mut self, retry: RetryPolicy) -> Self {
        self.settings.source_retry = retry;
        self
    }
}

/// Makes the instances now and defers the edge and the tasks to run time.
fn wire_stage<S, F>(upstream: Wire<S::In>, name: Arc<str>, options: StageOptions, factory: F) -> Wire<S::Out>
where
    S: Stage,
    F: FnMut(usize) -> S,
{
    let instances: Vec<S> = (0..options.workers).map(factory).collect();
    let mode = options.mode.unwrap_or_else(|| instances.first().map_or(Mode::Ordered, Stage::mode));
    let bound = options.queue.saturating_add(options.workers);
    Box::new(move |ctx, output| {
        let metrics = ctx.metrics(&name);
        let (sender, receiver) = edge(bound, Arc::clone(&metrics));
        let mut tasks = upstream(ctx, Output::Edge(sender));
        let failures = ctx.failures(&name, options.retry, metrics);
        tasks.extend(stage_tasks(instances, mode, receiver, output, failures));
        tasks
    })
}

/// Pulls the source until it ends or `cancel` fires; an item taken is always handed over (never dropped on
/// shutdown), waiting for room in the first stage.
async fn run_source<Src: Source>(
    mut source: Src,
    output: Output<Src::Item>,
    cancel: CancellationToken,
    failures: Failures,
) -> Result<(), FlowError> {
    let mut attempt = 1;
    loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            next = source.next() => next,
        };
        match next {
            Ok(Some(item)) => {
                attempt = 1;
                failures.metrics.item_in();
                StageStats::add(&failures.stats.items_in, 1);
                output.send(item, &failures.stage).await?;
                failures.metrics.items_out(1);
                StageStats::add(&failures.stats.items_out, 1);
            }
            Ok(None) => return Ok(()),
            Err(error) => {
                failures.handle(error, attempt).await?;
                attempt += 1;
            }
        }
    }
}
