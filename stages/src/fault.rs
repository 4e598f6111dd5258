//! Fault points for crash tests: with the `fault-injection` feature (on in test builds only), setting
//! `PHILOTES_FAULT=<point>` aborts the process at that point, the way a power cut or `kill -9` would, and
//! `PHILOTES_FAULT_DELAY_BEFORE_COMMIT_MS=<ms>` holds every Iceberg commit for that long after its position
//! check, so a test can make two flushers race on one table's commit, and `PHILOTES_PART_EVENTS=<n>` cuts
//! flushes into slices of `n` changes, so a test with a few thousand changes has flushes of many slices, as a
//! million-change flush has.

/// After a flush's schema change is committed to the Iceberg table, before its rows are written.
pub const AFTER_SCHEMA_COMMIT: &str = "after-schema-commit";
/// After the Parquet files are written, before the Iceberg commit.
pub const AFTER_PARQUET: &str = "after-parquet";
/// After the Iceberg commit, before the buffer checkpoint.
pub const AFTER_ICEBERG_COMMIT: &str = "after-iceberg-commit";
/// After the checkpoint statements, before the buffer transaction commits.
pub const BEFORE_PG_COMMIT: &str = "before-pg-commit";
/// After a snapshot chunk written straight into Iceberg is committed, before its progress moves in the buffer.
pub const AFTER_CHUNK_COMMIT: &str = "after-chunk-commit";

/// Aborts the process when `point` is the configured fault (test builds only; a no-op otherwise).
pub fn hit(point: &str) {
    #[cfg(feature = "fault-injection")]
    if std::env::var("PHILOTES_FAULT").is_ok_and(|p| p == point) {
        eprintln!("philotes: fault injected at {point}: aborting");
        std::process::abort();
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = point;
}

/// Sleeps between a commit's position check and the commit itself when `PHILOTES_FAULT_DELAY_BEFORE_COMMIT_MS`
/// is set (test builds only; a no-op otherwise): the window in which another flusher may commit to the table.
pub async fn delay_before_commit(table: &str) {
    #[cfg(feature = "fault-injection")]
    if let Some(ms) = std::env::var("PHILOTES_FAULT_DELAY_BEFORE_COMMIT_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        tracing::warn!(table, delay_ms = ms, "fault injected: holding the iceberg commit after its position check");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = table;
}

/// Changes per flush slice: `default`, or `PHILOTES_PART_EVENTS` in test builds.
pub fn slice_events(default: usize) -> usize {
    #[cfg(feature = "fault-injection")]
    if let Some(n) = std::env::var("PHILOTES_PART_EVENTS").ok().and_then(|v| v.parse::<usize>().ok()) {
        return n.max(1);
    }
    default
}
