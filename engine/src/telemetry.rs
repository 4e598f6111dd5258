//! The engine's own measurements of every stage: metric names (one place, so dashboards and tests agree) and the
//! instruments the workers record into. Stages add only domain metrics.

use std::time::Duration;

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use opentelemetry::KeyValue;

/// The meter name used when the flow is not given a meter.
pub const METER_NAME: &str = "philotes";
/// Counter: inputs a stage took from its queue (for the source: items it handed over).
pub const STAGE_ITEMS_IN: &str = "philotes_stage_items_in";
/// Counter: outputs a stage forwarded downstream.
pub const STAGE_ITEMS_OUT: &str = "philotes_stage_items_out";
/// Counter: failed attempts, with attribute [`KIND`].
pub const STAGE_ERRORS: &str = "philotes_stage_errors";
/// Histogram: seconds per `process` (or `flush`) attempt.
pub const STAGE_PROCESS_SECONDS: &str = "philotes_stage_process_seconds";
/// Gauge: inputs waiting in a stage's queue for a worker.
pub const STAGE_QUEUE_DEPTH: &str = "philotes_stage_queue_depth";
/// Attribute on every engine metric: the stage name.
pub const STAGE: &str = "stage";
/// Attribute on [`STAGE_ERRORS`]: `retryable`, `fatal` or `session_lost`.
pub const KIND: &str = "kind";

/// Histogram buckets in seconds, from a fast decode (0.1 ms) to a slow commit (10 s).
const SECONDS_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];

/// The instruments of one stage, with its `stage` attribute ready.
#[derive(Debug)]
pub(crate) struct StageMetrics {
    items_in: Counter<u64>,
    items_out: Counter<u64>,
    errors: Counter<u64>,
    process_seconds: Histogram<f64>,
    queue_depth: Gauge<i64>,
    stage: [KeyValue; 1],
}

impl StageMetrics {
    pub(crate) fn new(meter: &Meter, stage: &str) -> Self {
        Self {
            items_in: meter
                .u64_counter(STAGE_ITEMS_IN)
                .with_description("Inputs a stage took from its queue")
                .build(),
            items_out: meter
                .u64_counter(STAGE_ITEMS_OUT)
                .with_description("Outputs a stage forwarded downstream")
                .build(),
            errors: meter
                .u64_counter(STAGE_ERRORS)
                .with_description("Failed attempts of a stage, by kind")
                .build(),
            process_seconds: meter
                .f64_histogram(STAGE_PROCESS_SECONDS)
                .with_description("Time of one process or flush attempt")
                .with_unit("s")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            queue_depth: meter
                .i64_gauge(STAGE_QUEUE_DEPTH)
                .with_description("Inputs waiting in a stage's queue")
                .build(),
            stage: [KeyValue::new(STAGE, stage.to_owned())],
        }
    }

    pub(crate) fn item_in(&self) {
        self.items_in.add(1, &self.stage);
    }

    pub(crate) fn items_out(&self, count: u64) {
        if count > 0 {
            self.items_out.add(count, &self.stage);
        }
    }

    pub(crate) fn error(&self, kind: &'static str) {
        let [stage] = &self.stage;
        self.errors.add(1, &[stage.clone(), KeyValue::new(KIND, kind)]);
    }

    pub(crate) fn processed(&self, took: Duration) {
        self.process_seconds.record(took.as_secs_f64(), &self.stage);
    }

    pub(crate) fn queue_depth(&self, depth: i64) {
        self.queue_depth.record(depth, &self.stage);
    }
}
