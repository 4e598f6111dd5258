//! The domain metrics of the stages (the engine measures every stage itself: items, errors, time, queues).
//! Names as DESIGN.md says (`philotes_…`); the Prometheus exporter adds `_total` to counters.

use std::sync::OnceLock;

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
/// The `table` attribute: the source table `schema.table`.
pub const TABLE: &str = "table";

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
        }
    })
}

/// The `table` attribute for `schema.table`.
pub fn table(table: &crate::table_id::TableId) -> [KeyValue; 1] {
    [KeyValue::new(TABLE, table.to_string())]
}
