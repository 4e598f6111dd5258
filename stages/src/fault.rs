//! Fault points for crash tests: with the `fault-injection` feature (on in test builds only), setting
//! `PHILOTES_FAULT=<point>` aborts the process at that point, the way a power cut or `kill -9` would.

/// After the Parquet files are written, before the Iceberg commit.
pub const AFTER_PARQUET: &str = "after-parquet";
/// After the Iceberg commit, before the buffer checkpoint.
pub const AFTER_ICEBERG_COMMIT: &str = "after-iceberg-commit";
/// After the checkpoint statements, before the buffer transaction commits.
pub const BEFORE_PG_COMMIT: &str = "before-pg-commit";

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
