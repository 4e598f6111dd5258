//! `philotes compact` and the flusher role's periodic compaction on a real pipeline: a real PostgreSQL, the real
//! binary, a warehouse on disk and the SQL catalog in Postgres. The reference is the source's recorded history
//! (tests/flush.rs): the changelog table, read by the iceberg crate and by pyiceberg, equals it row for row
//! before and after compaction, and flushes after a compaction neither lose nor double a change.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use philotes_stages::catalog::{self, committed_position};
use philotes_stages::maintenance::FileCounts;
use philotes_stages::position::Position;
use philotes_testkit::TestDatabase;

use crate::flush::{
    assert_both_readers_see_the_source, create_table, drained, last_commit, read_with_iceberg_crate, Pipeline, SCHEMA,
};
use crate::support::{assert_status_clean, philotes, Philotes};

/// The Iceberg table `lake.orders`: the files its current snapshot reads and its committed position.
async fn orders_state(pipeline: &Pipeline) -> (FileCounts, Option<Position>) {
    let catalog = catalog::connect(&pipeline.catalog()).await.expect("catalog");
    let ident = iceberg::TableIdent::from_strs(["lake", "orders"]).expect("ident");
    let table = catalog.load_table(&ident).await.expect("table exists");
    (FileCounts::of(&table).await.expect("files"), committed_position(&table, &pipeline.name))
}

/// Runs `transactions` workload transactions on `orders` (inserts, updates, a delete), each flushed before the
/// next starts, so each is a flush of its own (a data file each).
async fn flushed_transactions(db: &TestDatabase, pipeline: &Pipeline, run: &Philotes, from: i64, transactions: i64) {
    for t in from..from + transactions {
        let base = t * 100;
        let sql = format!(
            "INSERT INTO orders SELECT g, 'order ' || g, g * 1.25, g % 2 = 0, now(), jsonb_build_object('g', g),
                    ARRAY['t{t}'], 'n' FROM generate_series({base}, {base} + 49) g;
             UPDATE orders SET amount = amount + 1 WHERE id % 7 = 0;
             DELETE FROM orders WHERE id = {base} + 3"
        );
        let after = last_commit(db, &sql);
        run.wait_until("the transaction in iceberg", Duration::from_secs(120), || async { drained(db, &pipeline.name, &after) })
            .await;
    }
}

/// A pipeline of `orders` on a fresh database (`hint`) whose table got `transactions` flushes (a data file each),
/// stopped.
async fn flushed_orders(hint: &str, transactions: i64) -> (TestDatabase, Pipeline) {
    let db = philotes_testkit::shared().database(hint).expect("database");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    let pipeline = Pipeline::new(&db, &["public.orders"], "{ workers: 1, max_events: 100000, interval: 100ms }");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    flushed_transactions(&db, &pipeline, &run, 1, transactions).await;
    run.stop_cleanly().await;
    (db, pipeline)
}

/// `philotes compact FILE ARGS…`, with its output.
fn compact(pipeline: &Pipeline, args: &[&str]) -> std::process::Output {
    let file = pipeline.file.to_str().expect("utf-8 path");
    philotes(&[&["compact", file], args].concat(), &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_cli_rewrites_a_changelog_table_into_one_file_with_the_same_rows_and_flushing_goes_on() {
    let (db, pipeline) = flushed_orders("compact_cli", 5).await;

    let rows_before = read_with_iceberg_crate(&pipeline, "orders").await;
    let (files_before, position_before) = orders_state(&pipeline).await;
    assert!(files_before.data >= 5, "a file per flush: {files_before:?}");
    assert!(position_before.is_some());

    let out = compact(&pipeline, &["--table", "public.orders"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "compact failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().next().expect("a line per table");
    let expected_start = format!("public.orders → lake.orders: compacted {} data files and 0 delete files", files_before.data);
    assert!(line.starts_with(&expected_start), "{line}");
    assert!(line.contains(&format!("{} rows", rows_before.len())) && line.contains("no snapshot to expire (older than 7d)"), "{line}");

    // The same rows, bookkeeping columns included, in one file; the position carried into the new snapshot.
    assert_eq!(read_with_iceberg_crate(&pipeline, "orders").await, rows_before);
    let (files_after, position_after) = orders_state(&pipeline).await;
    assert_eq!((files_after.data, files_after.deletes), (1, 0), "{files_after:?}");
    assert_eq!(files_after.records, rows_before.len() as u64);
    assert_eq!(position_after, position_before);
    assert_both_readers_see_the_source(&db, &pipeline, "orders").await;

    // A table the pipeline never flushed is skipped (exit 2), the compacted one has nothing left to do.
    let out = compact(&pipeline, &["--table", "public.orders", "--table", "public.never"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("public.orders → lake.orders: not compacted (1 data file and 0 delete files, fewer than min_files 2)"), "{stdout}");
    assert!(stdout.contains("public.never → lake.never: skipped: never flushed"), "{stdout}");

    // Flushing goes on from the carried position: nothing lost, nothing doubled.
    let run = pipeline.start_streaming(&db, &[], &[], "run-2.log").await;
    flushed_transactions(&db, &pipeline, &run, 6, 2).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    assert_both_readers_see_the_source(&db, &pipeline, "orders").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_cli_waits_for_the_flush_lease_and_skips_a_table_whose_lease_stays_held() {
    let (db, pipeline) = flushed_orders("compact_lease", 2).await;

    // A flusher's lease: the table's watermark row locked in an open transaction.
    let holder = db.connect().await.expect("connect");
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM philotes.table_watermarks WHERE pipeline = '{}' AND source_table = 'orders' FOR UPDATE",
            pipeline.name
        ))
        .await
        .expect("lease held");
    let started = Instant::now();
    let out = compact(&pipeline, &["--wait", "1s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("public.orders → lake.orders: skipped: a flush held the table's lease for 1s; try again"), "{stdout}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(orders_state(&pipeline).await.0.data, 2, "nothing compacted");

    // Released while it waits: it goes on and compacts.
    let file = pipeline.file.to_str().expect("utf-8 path");
    let child = Command::new(env!("CARGO_BIN_EXE_philotes"))
        .args(["compact", file, "--wait", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("philotes starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    holder.batch_execute("ROLLBACK").await.expect("lease released");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.expect("join").expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("public.orders → lake.orders: compacted 2 data files"), "{stdout}");
    assert_eq!(orders_state(&pipeline).await.0.data, 1);
    assert_both_readers_see_the_source(&db, &pipeline, "orders").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_compaction_while_flushes_run_keeps_every_change_exactly_once() {
    let db = philotes_testkit::shared().database("compact_periodic").expect("database");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    let pipeline = Pipeline::new(&db, &["public.orders"], "{ workers: 2, max_events: 100000, interval: 100ms }");
    pipeline.rewrite("    namespace: lake\n", "    namespace: lake\n    compaction: { interval: 1s, min_files: 3 }\n    retention: 1s\n");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    // Flushes keep coming while compaction and expiry run every second.
    flushed_transactions(&db, &pipeline, &run, 1, 12).await;
    let compacted = |log: &str| log.contains("maintenance: compacted") && log.contains("; expired ");
    run.wait_until("a compaction and an expiry", Duration::from_secs(60), || async { compacted(&run.log()) }).await;
    flushed_transactions(&db, &pipeline, &run, 13, 3).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;

    assert!(!run.log().contains("maintenance failed"), "{}", run.log());
    assert_both_readers_see_the_source(&db, &pipeline, "orders").await;
    let (files, position) = orders_state(&pipeline).await;
    assert!(files.data < 15, "fewer files than flushes: {files:?}");
    assert!(position.is_some());
}
