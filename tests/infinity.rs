//! Infinite dates and timestamps, captured by the real binary, must be readable by every common Iceberg reader:
//! pyarrow's `to_pylist()` (through pyiceberg), DuckDB and the `iceberg` crate each read them back as the
//! documented sentinels (9999-12-31 23:59:59.999999 and 0001-01-01 00:00:00), row for row.

use std::time::Duration;

use serde_json::json;

use crate::support::assert_status_clean;
use crate::flush::{self, Pipeline, Row};

/// A source row as every reader must render it (NULLs left out, as [`flush::comparable`] does).
fn row(value: serde_json::Value) -> Row {
    serde_json::from_value(value).expect("a row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_dates_and_timestamps_are_read_back_by_pyarrow_pyiceberg_duckdb_and_the_iceberg_crate() {
    let db = philotes_testkit::shared().database("infinity_readers").expect("database");
    db.psql("CREATE TABLE moments (id bigint PRIMARY KEY, d date, ts timestamp, tz timestamptz, ds date[])").expect("table");
    let pipeline = Pipeline::new(&db, &["public.moments"], "{ workers: 1, max_events: 1000, interval: 200ms }");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    db.psql(
        "INSERT INTO moments VALUES
           (1, 'infinity', 'infinity', 'infinity', ARRAY['infinity', '-infinity', NULL]::date[]),
           (2, '-infinity', '-infinity', '-infinity', NULL),
           (3, '2024-02-29', '2024-02-29 12:34:56.789', '2024-02-29 12:34:56.789+00', ARRAY['2024-02-29']::date[]),
           (4, NULL, NULL, NULL, NULL)",
    )
    .expect("rows");
    let after = flush::last_commit(&db, "UPDATE moments SET d = 'infinity', tz = '-infinity' WHERE id = 3");
    run.wait_until("every change in iceberg", Duration::from_secs(120), || async { flush::drained(&db, &pipeline.name, &after) })
        .await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;

    let (max_ts, min_ts) = ("9999-12-31 23:59:59.999999", "0001-01-01 00:00:00.000000");
    let expected = [
        row(json!({"_op": "I", "id": "1", "d": "9999-12-31", "ts": max_ts, "tz": format!("{max_ts}+00"),
                   "ds": ["9999-12-31", "0001-01-01", null]})),
        row(json!({"_op": "I", "id": "2", "d": "0001-01-01", "ts": min_ts, "tz": format!("{min_ts}+00")})),
        row(json!({"_op": "I", "id": "3", "d": "2024-02-29", "ts": "2024-02-29 12:34:56.789000",
                   "tz": "2024-02-29 12:34:56.789000+00", "ds": ["2024-02-29"]})),
        row(json!({"_op": "I", "id": "4"})),
        row(json!({"_op": "U", "id": "3", "d": "9999-12-31", "ts": "2024-02-29 12:34:56.789000",
                   "tz": format!("{min_ts}+00"), "ds": ["2024-02-29"]})),
    ];
    let readers = [
        ("iceberg crate", flush::read_with_iceberg_crate(&pipeline, "moments").await),
        ("pyiceberg + pyarrow to_pylist()", flush::read_with_pyiceberg(&pipeline, "moments")),
        ("duckdb iceberg_scan", flush::read_with_duckdb(&pipeline, "moments")),
    ];
    for (reader, rows) in &readers {
        let got: Vec<Row> = rows.iter().map(flush::comparable).collect();
        assert_eq!(got, expected, "{reader}");
    }
}
