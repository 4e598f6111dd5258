//! Compliance: a stage run through the engine emits the engine's metrics, with the `stage` attribute (and
//! `kind` on errors), without the stage doing anything for it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use philotes_engine::telemetry::{
    KIND, STAGE, STAGE_ERRORS, STAGE_ITEMS_IN, STAGE_ITEMS_OUT, STAGE_PROCESS_SECONDS, STAGE_QUEUE_DEPTH,
};
use philotes_engine::{Emitter, Flow, Stage, StageError, StageOptions};
use tokio_util::sync::CancellationToken;

use crate::helpers::Collect;

/// Doubles its input; fails on 3 once (retryably). No metrics code of its own.
#[derive(Default)]
struct Double {
    failed: bool,
}

impl Stage for Double {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, item: &u64, out: &mut Emitter<u64>) -> Result<(), StageError> {
        if *item == 3 && !self.failed {
            self.failed = true;
            return Err(StageError::retryable("three"));
        }
        out.emit(item * 2);
        Ok(())
    }
}

/// Every data point as (metric name → attribute sets → value as f64; histograms give their count).
fn points(exported: &[ResourceMetrics]) -> BTreeMap<String, Vec<(BTreeSet<String>, f64)>> {
    fn attrs<'a>(it: impl Iterator<Item = &'a KeyValue>) -> BTreeSet<String> {
        it.map(|kv| format!("{}={}", kv.key, kv.value)).collect()
    }
    fn collect<T: Copy>(data: &MetricData<T>, value: fn(T) -> f64, out: &mut Vec<(BTreeSet<String>, f64)>) {
        match data {
            MetricData::Sum(sum) => out.extend(sum.data_points().map(|p| (attrs(p.attributes()), value(p.value())))),
            MetricData::Gauge(g) => out.extend(g.data_points().map(|p| (attrs(p.attributes()), value(p.value())))),
            MetricData::Histogram(h) => {
                out.extend(h.data_points().map(|p| (attrs(p.attributes()), p.count() as f64)));
            }
            MetricData::ExponentialHistogram(_) => {}
        }
    }
    let mut found: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for resource in exported {
        for scope in resource.scope_metrics() {
            for metric in scope.metrics() {
                let entry = found.entry(metric.name().to_owned()).or_default();
                match metric.data() {
                    AggregatedMetrics::F64(data) => collect(data, |v| v, entry),
                    AggregatedMetrics::U64(data) => collect(data, |v| v as f64, entry),
                    AggregatedMetrics::I64(data) => collect(data, |v| v as f64, entry),
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn a_stage_run_through_the_engine_emits_the_engine_metrics() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder().with_periodic_exporter(exporter.clone()).build();
    let received = Arc::new(Mutex::new(Vec::new()));
    Flow::from_stream(futures::stream::iter(0..10u64))
        .stage("double", StageOptions::new(2, 4), |_| Double::default())
        .sink("collect", StageOptions::new(1, 4), |_| Collect::new(&received))
        .meter(provider.meter("philotes"))
        .run(CancellationToken::new())
        .await
        .expect("flow runs");
    provider.force_flush().expect("metrics flush");
    let found = points(&exporter.get_finished_metrics().expect("exported metrics"));

    let stage = format!("{STAGE}=double");
    let value = |name: &str, extra: Option<String>| -> f64 {
        found
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing; found {:?}", found.keys()))
            .iter()
            .filter(|(attrs, _)| attrs.contains(&stage) && extra.as_ref().is_none_or(|e| attrs.contains(e)))
            .map(|(_, v)| *v)
            .sum()
    };
    assert_eq!(value(STAGE_ITEMS_IN, None), 10.0);
    assert_eq!(value(STAGE_ITEMS_OUT, None), 10.0);
    assert_eq!(value(STAGE_ERRORS, Some(format!("{KIND}=retryable"))), 1.0);
    assert_eq!(value(STAGE_PROCESS_SECONDS, None), 11.0, "one histogram sample per process call, the retry's too");
    assert_eq!(value(STAGE_QUEUE_DEPTH, None), 0.0, "the queue is empty at the end");
    assert!(found[STAGE_QUEUE_DEPTH].iter().any(|(attrs, _)| attrs.contains(&stage)));
    provider.shutdown().expect("provider shuts down");
}
