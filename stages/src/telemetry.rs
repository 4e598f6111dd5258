//! The domain metrics of the stages (the engine measures every stage itself: items, errors, time, queues).
//! Names as DESIGN.md says (`philotes_…`); the Prometheus exporter adds `_total` to counters.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{Array, RecordBatch, TimestampMicrosecondArray};

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use opentelemetry::KeyValue;

/// Changes enqueued into the buffer (per table).
pub const EVENTS_ENQUEUED: &str = "philotes_capture_events";
/// Commit LSN of the last transaction made durable in the buffer.
pub const CHECKPOINT_LSN: &str = "philotes_capture_checkpoint_lsn";
/// Rows written to Iceberg (per table).
pub const ROWS_WRITTEN: &str = "philotes_flush_rows";
/// Parquet data files written (per table).
pub const FILES_WRITTEN: &str = "philotes_flush_files";
/// Snapshots committed (per table).
pub const SNAPSHOTS: &str = "philotes_flush_snapshots";
/// Time to write files and commit one snapshot, seconds.
pub const COMMIT_SECONDS: &str = "philotes_flush_commit_seconds";
/// Segments, changes and bytes waiting in the buffer (gauges, from the status poller).
pub const BUFFER_SEGMENTS: &str = "philotes_buffer_segments";
/// See [`BUFFER_SEGMENTS`].
pub const BUFFER_EVENTS: &str = "philotes_buffer_events";
/// See [`BUFFER_SEGMENTS`].
pub const BUFFER_BYTES: &str = "philotes_buffer_bytes";
/// WAL bytes between the slot's confirmed position and the source's current one.
pub const REPLICATION_LAG_BYTES: &str = "philotes_replication_lag_bytes";
/// WAL bytes the slot keeps on the source (from its restart position).
pub const SLOT_RETAINED_WAL_BYTES: &str = "philotes_slot_retained_wal_bytes";
/// Seconds since the last checkpoint's source commit (an upper bound of the capture's delay).
pub const REPLICATION_LAG_SECONDS: &str = "philotes_replication_lag_seconds";
/// Existing rows read by snapshots and enqueued (per table).
pub const SNAPSHOT_ROWS: &str = "philotes_snapshot_rows";
/// Tables whose snapshot is pending or running (a gauge, from the status poller).
pub const SNAPSHOT_TABLES_PENDING: &str = "philotes_snapshot_tables_pending";
/// Changes read from the source (the WAL and snapshots) and made durable in the buffer (per table).
pub const CDC_EVENTS_READ: &str = "philotes_cdc_events_read";
/// Changes committed to Iceberg (per table).
pub const CDC_EVENTS_PROCESSED: &str = "philotes_cdc_events_processed";
/// Changes that went to the dead-letter table instead (per table).
pub const CDC_EVENTS_ERROR: &str = "philotes_cdc_events_error";
/// Changes waiting in the buffer (a gauge, from the status poller; what flushers are scaled on).
pub const CDC_BUFFER_DEPTH: &str = "philotes_cdc_buffer_depth";
/// True lag: now minus the source commit time of the oldest change not yet in Iceberg; 0 when all is in.
pub const CDC_LAG_SECONDS: &str = "philotes_cdc_lag_seconds";
/// Iceberg commits (snapshots) written (per table).
pub const CDC_BATCHES_WRITTEN: &str = "philotes_cdc_batches_written";
/// Commit LSN of the last transaction made durable in the buffer.
pub const CDC_LAST_CHECKPOINT_LSN: &str = "philotes_cdc_last_checkpoint_lsn";
/// Per change: seconds from its source commit (`_commit_ts`) to the Iceberg commit that holds it (per table).
pub const CDC_COMMIT_TO_ICEBERG_SECONDS: &str = "philotes_cdc_commit_to_iceberg_seconds";
/// The `table` attribute: the source table `schema.table`.
pub const TABLE: &str = "table";
/// The `pipeline` label every metric carries (set once on the exporter's registry by the binary).
pub const PIPELINE: &str = "pipeline";

/// The instruments, created once from the global meter provider (set up by the binary before pipelines run).
pub struct Metrics {
    /// [`EVENTS_ENQUEUED`].
    pub events_enqueued: Counter<u64>,
    /// [`CHECKPOINT_LSN`].
    pub checkpoint_lsn: Gauge<u64>,
    /// [`ROWS_WRITTEN`].
    pub rows_written: Counter<u64>,
    /// [`FILES_WRITTEN`].
    pub files_written: Counter<u64>,
    /// [`SNAPSHOTS`].
    pub snapshots: Counter<u64>,
    /// [`COMMIT_SECONDS`].
    pub commit_seconds: Histogram<f64>,
    /// [`BUFFER_SEGMENTS`].
    pub buffer_segments: Gauge<i64>,
    /// [`BUFFER_EVENTS`].
    pub buffer_events: Gauge<i64>,
    /// [`BUFFER_BYTES`].
    pub buffer_bytes: Gauge<i64>,
    /// [`REPLICATION_LAG_BYTES`].
    pub lag_bytes: Gauge<i64>,
    /// [`SLOT_RETAINED_WAL_BYTES`].
    pub retained_wal_bytes: Gauge<i64>,
    /// [`REPLICATION_LAG_SECONDS`].
    pub lag_seconds: Gauge<f64>,
    /// [`SNAPSHOT_ROWS`].
    pub snapshot_rows: Counter<u64>,
    /// [`SNAPSHOT_TABLES_PENDING`].
    pub snapshot_tables_pending: Gauge<i64>,
    /// [`CDC_EVENTS_READ`].
    pub cdc_events_read: Counter<u64>,
    /// [`CDC_EVENTS_PROCESSED`].
    pub cdc_events_processed: Counter<u64>,
    /// [`CDC_EVENTS_ERROR`].
    pub cdc_events_error: Counter<u64>,
    /// [`CDC_BUFFER_DEPTH`].
    pub cdc_buffer_depth: Gauge<i64>,
    /// [`CDC_LAG_SECONDS`].
    pub cdc_lag_seconds: Gauge<f64>,
    /// [`CDC_BATCHES_WRITTEN`].
    pub cdc_batches_written: Counter<u64>,
    /// [`CDC_LAST_CHECKPOINT_LSN`].
    pub cdc_last_checkpoint_lsn: Gauge<u64>,
    /// [`CDC_COMMIT_TO_ICEBERG_SECONDS`].
    pub cdc_commit_to_iceberg_seconds: Histogram<f64>,
}

/// The process's instruments.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter: Meter = opentelemetry::global::meter("philotes");
        Metrics {
            events_enqueued: meter.u64_counter(EVENTS_ENQUEUED).with_description("Changes enqueued into the buffer").build(),
            checkpoint_lsn: meter.u64_gauge(CHECKPOINT_LSN).with_description("Commit LSN of the last transaction durable in the buffer").build(),
            rows_written: meter.u64_counter(ROWS_WRITTEN).with_description("Rows written to Iceberg").build(),
            files_written: meter.u64_counter(FILES_WRITTEN).with_description("Parquet data files written").build(),
            snapshots: meter.u64_counter(SNAPSHOTS).with_description("Iceberg snapshots committed").build(),
            commit_seconds: meter
                .f64_histogram(COMMIT_SECONDS)
                .with_description("Time to write the files and commit one snapshot")
                .with_boundaries(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
                .build(),
            buffer_segments: meter.i64_gauge(BUFFER_SEGMENTS).with_description("Segments waiting in the buffer").build(),
            buffer_events: meter.i64_gauge(BUFFER_EVENTS).with_description("Changes waiting in the buffer").build(),
            buffer_bytes: meter.i64_gauge(BUFFER_BYTES).with_description("Payload bytes waiting in the buffer").build(),
            lag_bytes: meter.i64_gauge(REPLICATION_LAG_BYTES).with_description("WAL bytes the slot has not confirmed").build(),
            retained_wal_bytes: meter
                .i64_gauge(SLOT_RETAINED_WAL_BYTES)
                .with_description("WAL bytes the slot keeps on the source")
                .build(),
            lag_seconds: meter.f64_gauge(REPLICATION_LAG_SECONDS).with_description("Seconds since the source commit of the last checkpoint").build(),
            snapshot_rows: meter.u64_counter(SNAPSHOT_ROWS).with_description("Existing rows read by snapshots and enqueued").build(),
            snapshot_tables_pending: meter
                .i64_gauge(SNAPSHOT_TABLES_PENDING)
                .with_description("Tables whose snapshot is pending or running")
                .build(),
            cdc_events_read: meter.u64_counter(CDC_EVENTS_READ).with_description("Changes read from the source and durable in the buffer").build(),
            cdc_events_processed: meter.u64_counter(CDC_EVENTS_PROCESSED).with_description("Changes committed to Iceberg").build(),
            cdc_events_error: meter.u64_counter(CDC_EVENTS_ERROR).with_description("Changes sent to the dead-letter table").build(),
            cdc_buffer_depth: meter.i64_gauge(CDC_BUFFER_DEPTH).with_description("Changes waiting in the buffer").build(),
            cdc_lag_seconds: meter
                .f64_gauge(CDC_LAG_SECONDS)
                .with_description("Now minus the source commit time of the oldest change not yet in Iceberg")
                .build(),
            cdc_batches_written: meter.u64_counter(CDC_BATCHES_WRITTEN).with_description("Iceberg commits written").build(),
            cdc_last_checkpoint_lsn: meter
                .u64_gauge(CDC_LAST_CHECKPOINT_LSN)
                .with_description("Commit LSN of the last transaction durable in the buffer")
                .build(),
            cdc_commit_to_iceberg_seconds: meter
                .f64_histogram(CDC_COMMIT_TO_ICEBERG_SECONDS)
                .with_description("Per change: seconds from its source commit to the Iceberg commit holding it")
                .with_boundaries(vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0])
                .build(),
        }
    })
}

/// The `table` attribute for `schema.table`.
pub fn table(table: &crate::table_id::TableId) -> [KeyValue; 1] {
    [KeyValue::new(TABLE, table.to_string())]
}

/// Counts dead letters just stored, per table ([`CDC_EVENTS_ERROR`]).
pub fn dead_lettered(letters: &[crate::store::dead_letters::DeadLetter]) {
    let metrics = metrics();
    for letter in letters {
        match &letter.table {
            Some(table) => metrics.cdc_events_error.add(1, &self::table(table)),
            None => metrics.cdc_events_error.add(1, &[]),
        }
    }
}

/// Source commit times (µs since the epoch) of the changes of one flush, run-length encoded: a transaction's
/// changes share one, so a flush of a million rows is a handful of runs.
#[derive(Debug, Default, Clone)]
pub struct CommitTimes(Vec<(i64, u64)>);

impl CommitTimes {
    /// Adds the `_commit_ts` values of `batch` (a batch without that column adds nothing).
    pub fn add(&mut self, batch: &RecordBatch) {
        let Some(column) = batch.column_by_name(crate::changelog::COMMIT_TS) else { return };
        let Some(times) = column.as_any().downcast_ref::<TimestampMicrosecondArray>() else { return };
        for time in times.iter().flatten() {
            match self.0.last_mut() {
                Some((last, count)) if *last == time => *count += 1,
                _ => self.0.push((time, 1)),
            }
        }
    }

    /// How many changes it holds.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records, per change, the seconds from its source commit to now (the Iceberg commit just done) in
    /// [`CDC_COMMIT_TO_ICEBERG_SECONDS`]. A source clock ahead of ours counts as 0, never negative.
    pub fn record(&self, attributes: &[KeyValue]) {
        let now = now_micros();
        let histogram = &metrics().cdc_commit_to_iceberg_seconds;
        for &(time, count) in &self.0 {
            let seconds = now.saturating_sub(time).max(0) as f64 / 1e6;
            for _ in 0..count {
                histogram.record(seconds, attributes);
            }
        }
    }
}

/// Now, µs since the Unix epoch.
pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The capture's part of the true lag: the source commit time (µs) of the oldest change it holds that is not
/// durable in the buffer yet; 0 when it holds none. The status poller of the same process reads it.
static CAPTURE_OLDEST_PENDING: AtomicI64 = AtomicI64::new(0);

/// The capture holds a change committed at `commit_ts` (µs) that is not durable yet.
pub fn capture_holds(commit_ts: i64) {
    let _ = CAPTURE_OLDEST_PENDING.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
        (held == 0 || commit_ts < held).then_some(commit_ts.max(1))
    });
}

/// Everything the capture held is durable in the buffer.
pub fn capture_durable() {
    CAPTURE_OLDEST_PENDING.store(0, Ordering::Relaxed);
}

/// Seconds from the source commit of the oldest change the capture holds to now (`None`: it holds none).
pub fn capture_lag_seconds() -> Option<f64> {
    match CAPTURE_OLDEST_PENDING.load(Ordering::Relaxed) {
        0 => None,
        held => Some(now_micros().saturating_sub(held).max(0) as f64 / 1e6),
    }
}
