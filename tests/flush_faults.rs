//! Fault and scale tests of the flusher: real PostgreSQL, real `philotes` child processes (capture and flushers
//! apart, as a scaled-out deployment runs them), a real warehouse on disk and the SQL catalog in Postgres.
//!
//! Every test ends with the same reference check as tests/flush.rs: each Iceberg table, read back, equals the
//! source's change history (recorded by a trigger) row for row — nothing lost, nothing doubled — and the buffer
//! is empty. Crashes are real (`PHILOTES_FAULT` aborts the process, or SIGKILL), so is every outage.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use iceberg::spec::{Datum, ManifestStatus, PrimitiveLiteral};
use philotes_stages::fault;
use philotes_stages::flush::catalog::{self as flush_catalog, SUMMARY_LAST_LSN, SUMMARY_LAST_SEQ};
use philotes_stages::position::Lsn;
use philotes_testkit::TestDatabase;

use crate::flush::{self, wait_for, Pipeline, Row};

/// Changes whose `amount` is numeric `NaN`: a decimal column cannot hold them, so they are dead-lettered.
const CONVERTIBLE: &str = "amount IS DISTINCT FROM 'NaN'";
const SIGABRT: i32 = 6;

/// A child `philotes` process that is killed if the test ends (or fails) while it still runs.
struct Proc {
    child: Child,
    log: String,
}

impl Proc {
    fn start(pipeline: &Pipeline, args: &[&str], env: &[(&str, &str)], log: &str) -> Self {
        Self { child: pipeline.start(args, env, log), log: log.to_string() }
    }

    fn flusher(pipeline: &Pipeline, env: &[(&str, &str)], log: &str) -> Self {
        Self::start(pipeline, &["--role", "flusher"], env, log)
    }

    fn log(&self, pipeline: &Pipeline) -> String {
        pipeline.log(&self.log)
    }

    /// Waits for the process to end by itself.
    fn wait_exit(&mut self, pipeline: &Pipeline, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not exit within {timeout:?}; log:\n{}", self.log, self.log(pipeline));
    }

    /// SIGTERM: drains and stops.
    fn stop(&mut self) {
        flush::stop(&mut self.child);
    }

    /// SIGKILL, then wait.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn database(hint: &str, tables: &[&str]) -> TestDatabase {
    let db = philotes_testkit::shared().database(hint).expect("database");
    db.psql(flush::SCHEMA).expect("schema");
    for table in tables {
        flush::create_table(&db, table);
    }
    db
}

fn pipeline(db: &TestDatabase, tables: &[&str], flush_yaml: &str) -> Pipeline {
    let qualified: Vec<String> = tables.iter().map(|t| format!("public.{t}")).collect();
    let qualified: Vec<&str> = qualified.iter().map(String::as_str).collect();
    Pipeline::new(db, &qualified, flush_yaml)
}

/// Starts a process with the capture role (or all roles) and waits for its replication slot.
fn start_capturing(db: &TestDatabase, pipeline: &Pipeline, args: &[&str], log: &str) -> Proc {
    let mut proc = Proc::start(pipeline, args, &[], log);
    wait_for("the replication slot", Duration::from_secs(60), || {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("{log} exited early ({status}):\n{}", pipeline.log(log));
        }
        // The slot's row shows (active, even) while its creation still waits for a consistent point, and
        // changes committed before that point are never streamed: wait until it has one.
        db.psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'philotes_{}' AND confirmed_flush_lsn IS NOT NULL",
            pipeline.name
        ))
            .map(|v| v == "1")
            .unwrap_or(false)
    });
    proc
}

/// `batches` source transactions per table, each inserting `rows` new ids from `start` on, then updating a third
/// and deleting a fifth of them; the tables take turns, one transaction each.
fn workload(db: &TestDatabase, tables: &[&str], start: i64, batches: i64, rows: i64) {
    db.psql(&workload_sql(tables, start, batches, rows)).expect("workload");
}

fn workload_sql(tables: &[&str], start: i64, batches: i64, rows: i64) -> String {
    let per_table: String = tables
        .iter()
        .map(|t| {
            format!(
                "INSERT INTO {t} SELECT g, 'n' || g, (g % 1000) * 1.25, g % 2 = 0,
                        '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second',
                        jsonb_build_object('g', g), ARRAY['t' || (g % 7)], NULL
                 FROM generate_series(lo, lo + {rows} - 1) g;
                 UPDATE {t} SET amount = amount + 1, name = name || '+' WHERE id BETWEEN lo AND lo + {rows} - 1 AND id % 3 = 0;
                 DELETE FROM {t} WHERE id BETWEEN lo AND lo + {rows} - 1 AND id % 5 = 0;
                 COMMIT;"
            )
        })
        .collect();
    format!(
        "DO $$ DECLARE lo bigint; BEGIN
           FOR b IN 0..{batches} - 1 LOOP
             lo := {start} + b * {rows};
             {per_table}
           END LOOP;
         END $$;"
    )
}

/// One transaction per table with a normal row, a `NaN` amount (inserted, then updated and deleted) and
/// another normal row: three changes are dead-lettered, the rest flows. Ids are negative (`-3 * k` and up).
fn unconvertible(db: &TestDatabase, tables: &[&str], k: i64) {
    for t in tables {
        db.psql(&format!(
            "BEGIN;
             INSERT INTO {t} (id, name, amount) VALUES (-3 * {k}, 'before', 1.5), (-3 * {k} - 1, 'not a number', 'NaN');
             UPDATE {t} SET amount = 'NaN', name = 'still not a number' WHERE id = -3 * {k} - 1;
             DELETE FROM {t} WHERE id = -3 * {k} - 1;
             INSERT INTO {t} (id, name, amount) VALUES (-3 * {k} - 2, 'after', 2.5);
             COMMIT;"
        ))
        .expect("unconvertible rows");
    }
}

/// Commits one more change to `table` (recorded in `history` like any other) and returns the WAL position read
/// inside its transaction, before its commit: the capture's checkpoint reaches it only once this transaction,
/// and so every earlier one, is in the buffer. (`pg_current_wal_lsn()` after the fact would not do: PostgreSQL
/// 15 sends nothing for transactions without published changes, so the checkpoint stops at the last commit of
/// ours while other databases and background writes move the WAL on.)
fn marker(db: &TestDatabase, table: &str) -> String {
    db.psql(&format!(
        "BEGIN;
         INSERT INTO {table} (id, name) SELECT -1000000 - count(*), 'marker' FROM history;
         SELECT pg_current_wal_insert_lsn();
         COMMIT;"
    ))
    .expect("marker transaction")
}

fn count(db: &TestDatabase, sql: &str) -> i64 {
    db.psql(sql).expect("count").parse().expect("a number")
}

fn segments(db: &TestDatabase, pipeline: &Pipeline) -> i64 {
    count(db, &format!("SELECT count(*) FROM philotes.segments WHERE pipeline = '{}'", pipeline.name))
}

/// Waits until the capture has everything the source committed up to now in the buffer (adds a change to
/// `table`).
fn wait_buffered(db: &TestDatabase, pipeline: &Pipeline, table: &str) {
    let lsn = marker(db, table);
    wait_for("the changes in the buffer", Duration::from_secs(120), || {
        db.psql(&format!(
            "SELECT coalesce((SELECT commit_lsn >= '{lsn}'::pg_lsn FROM philotes.checkpoints WHERE pipeline = '{}'), false)",
            pipeline.name
        ))
        .is_ok_and(|v| v == "t")
    });
}

/// Waits until everything the source committed up to now is in Iceberg and the buffer is empty (adds a change
/// to `table`); fails early when one of `procs` exits.
fn wait_drained(db: &TestDatabase, pipeline: &Pipeline, table: &str, timeout: Duration, procs: &mut [&mut Proc]) {
    let lsn = marker(db, table);
    wait_for("every change in iceberg", timeout, || {
        for proc in procs.iter_mut() {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("{} exited ({status}):\n{}", proc.log, proc.log(pipeline));
            }
        }
        flush::drained(db, &pipeline.name, &lsn)
    });
}

fn position(row: &Row) -> (i64, i64) {
    let n = |k: &str| row[k].as_str().and_then(|s| s.parse::<i64>().ok()).expect("a number");
    (n("_lsn"), n("_seq"))
}

/// The Iceberg table holds every convertible change of the source's history exactly once, in position order.
async fn assert_exactly_once(db: &TestDatabase, pipeline: &Pipeline, table: &str) -> Vec<Row> {
    let expected = flush::expected_history_where(db, table, CONVERTIBLE);
    let rows = flush::read_with_iceberg_crate(pipeline, table).await;
    let mut seen = HashMap::new();
    for row in &rows {
        *seen.entry(position(row)).or_insert(0) += 1;
    }
    let doubled = seen.values().filter(|n| **n > 1).count();
    assert_eq!(doubled, 0, "{table}: {doubled} changes are in iceberg more than once");
    assert_eq!(rows.len(), expected.len(), "{table}: iceberg has {} changes, the source made {}", rows.len(), expected.len());
    for (i, (got, want)) in rows.iter().zip(&expected).enumerate() {
        assert_eq!(&flush::comparable(got), want, "{table}: change {i}");
    }
    for pair in rows.windows(2) {
        assert!(position(&pair[0]) < position(&pair[1]), "{table}: positions must increase");
    }
    rows
}

/// Walks `table`'s snapshots from the first to the current one: each snapshot's recorded position
/// (`philotes.last-lsn`/`last-seq`) is beyond the previous one's, and the `_lsn` of every row it added lies
/// between the two. Returns (snapshots, rows added in all).
async fn assert_snapshots_in_position_order(pipeline: &Pipeline, table: &str) -> (usize, u64) {
    let catalog = flush_catalog::connect(&pipeline.catalog()).await.expect("catalog");
    let ident = iceberg::TableIdent::from_strs(["lake", table]).expect("ident");
    let loaded = catalog.load_table(&ident).await.expect("table exists");
    let metadata = loaded.metadata();
    let lsn_field = metadata.current_schema().field_by_name("_lsn").expect("_lsn column").id;
    let mut chain = Vec::new();
    let mut snapshot = metadata.current_snapshot().cloned();
    while let Some(current) = snapshot {
        snapshot = current.parent_snapshot_id().and_then(|id| metadata.snapshot_by_id(id).cloned());
        chain.push(current);
    }
    chain.reverse();
    let bound = |bounds: &HashMap<i32, Datum>| match bounds.get(&lsn_field).map(Datum::literal) {
        Some(PrimitiveLiteral::Long(v)) => *v as u64,
        other => panic!("{table}: a data file without an _lsn bound ({other:?})"),
    };
    let mut previous: Option<(u64, u64)> = None;
    let mut added_rows = 0;
    for s in &chain {
        let props = &s.summary().additional_properties;
        let lsn: Lsn = props.get(SUMMARY_LAST_LSN).expect("philotes.last-lsn").parse().expect("an lsn");
        let seq: u64 = props.get(SUMMARY_LAST_SEQ).expect("philotes.last-seq").parse().expect("a seq");
        let last = (lsn.0, seq);
        if let Some(p) = previous {
            assert!(p < last, "{table}: snapshot {} records position {last:?}, not beyond its parent's {p:?}", s.snapshot_id());
        }
        let list = loaded.manifest_list_reader(s).load().await.expect("manifest list");
        for manifest in list.entries().iter().filter(|m| m.added_snapshot_id == s.snapshot_id()) {
            let manifest = manifest.load_manifest(loaded.file_io()).await.expect("manifest");
            for entry in manifest.entries().iter().filter(|e| e.status() == ManifestStatus::Added) {
                let file = entry.data_file();
                added_rows += file.record_count();
                let (lo, hi) = (bound(file.lower_bounds()), bound(file.upper_bounds()));
                if let Some(p) = previous {
                    assert!(lo >= p.0, "{table}: snapshot {} adds _lsn {lo}, below its parent's last {}", s.snapshot_id(), p.0);
                }
                assert!(hi <= last.0, "{table}: snapshot {} adds _lsn {hi}, beyond its own last {}", s.snapshot_id(), last.0);
            }
        }
        previous = Some(last);
    }
    (chain.len(), added_rows)
}

/// Every unconvertible change of `table` is in philotes.dead_letters exactly once, with a reason naming the
/// column.
fn assert_dead_lettered(db: &TestDatabase, pipeline: &Pipeline, table: &str) {
    let want = count(db, &format!("SELECT count(*) FROM history WHERE tbl = '{table}' AND NOT ({CONVERTIBLE})"));
    let (total, distinct) = {
        let text = db
            .psql(&format!(
                "SELECT count(*) || ' ' || count(DISTINCT (commit_lsn, seq)) FROM philotes.dead_letters
                 WHERE pipeline = '{}' AND source_table = '{table}'",
                pipeline.name
            ))
            .expect("dead letters");
        let (a, b) = text.split_once(' ').expect("two numbers");
        (a.parse::<i64>().expect("a number"), b.parse::<i64>().expect("a number"))
    };
    assert_eq!(distinct, want, "{table}: every unconvertible change is dead-lettered");
    assert_eq!(total, want, "{table}: no unconvertible change is dead-lettered twice");
    let reasons = db
        .psql(&format!(
            "SELECT DISTINCT stage || ': ' || reason FROM philotes.dead_letters WHERE pipeline = '{}' AND source_table = '{table}'",
            pipeline.name
        ))
        .expect("reasons");
    assert!(
        reasons.lines().all(|r| r.starts_with("arrow_batch: ") && r.contains("amount")),
        "{table}: the reason names the stage and the column: {reasons}"
    );
}

/// A flusher aborts at `point` while the capture runs; a flusher restarted without the fault repairs.
async fn flusher_crash_at_is_repaired_on_restart(point: &str) {
    let tables = ["orders", "customers"];
    let db = database(&format!("fault_{point}"), &tables);
    let pipeline = pipeline(&db, &tables, "{ workers: 2, max_events: 2000, interval: 200ms }");
    let mut capture = start_capturing(&db, &pipeline, &["--role", "capture"], "capture.log");
    workload(&db, &tables, 1, 3, 200);
    unconvertible(&db, &tables, 1);
    workload(&db, &tables, 1001, 2, 200);
    // The first flush of each table then holds all of this, dead letters included.
    wait_buffered(&db, &pipeline, tables[0]);

    let mut faulty = Proc::flusher(&pipeline, &[("PHILOTES_FAULT", point)], "flusher-faulty.log");
    let status = faulty.wait_exit(&pipeline, Duration::from_secs(90));
    let log = faulty.log(&pipeline);
    assert_eq!(status.signal(), Some(SIGABRT), "the flusher aborts at the fault point ({status}):\n{log}");
    assert!(log.contains(&format!("fault injected at {point}")), "{log}");
    assert!(segments(&db, &pipeline) > 0, "the crashed flush left its segments in the buffer");

    // More changes while no flusher runs, and more while the new one catches up.
    workload(&db, &tables, 2001, 3, 200);
    let mut flusher = Proc::flusher(&pipeline, &[], "flusher.log");
    unconvertible(&db, &tables, 2);
    workload(&db, &tables, 3001, 3, 200);
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(120), &mut [&mut capture, &mut flusher]);
    flusher.stop();
    capture.stop();

    let log = flusher.log(&pipeline);
    assert!(!log.contains("ERROR"), "the restarted flusher logged errors:\n{log}");
    if point != fault::AFTER_PARQUET {
        assert!(log.contains("already in iceberg"), "the restarted flusher repairs the crashed flush:\n{log}");
    }
    for table in tables {
        let rows = assert_exactly_once(&db, &pipeline, table).await;
        let (_, added) = assert_snapshots_in_position_order(&pipeline, table).await;
        assert_eq!(added, rows.len() as u64, "{table}: the snapshots add up to the table");
        let py_rows = flush::read_with_pyiceberg(&pipeline, table);
        assert_eq!(py_rows.len(), rows.len(), "{table}: pyiceberg sees the same rows");
        for (a, b) in rows.iter().zip(&py_rows) {
            assert_eq!(flush::comparable(a), flush::comparable(b), "{table}: pyiceberg row");
            assert_eq!(position(a), position(b), "{table}: pyiceberg position");
        }
        assert_dead_lettered(&db, &pipeline, table);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flusher_killed_after_parquet_written_loses_and_doubles_nothing() {
    flusher_crash_at_is_repaired_on_restart(fault::AFTER_PARQUET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flusher_killed_after_iceberg_commit_writes_nothing_twice() {
    flusher_crash_at_is_repaired_on_restart(fault::AFTER_ICEBERG_COMMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flusher_killed_before_buffer_commit_writes_nothing_twice() {
    flusher_crash_at_is_repaired_on_restart(fault::BEFORE_PG_COMMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_flushers_with_one_killed_midway_write_200k_changes_of_six_tables_exactly_once_in_order() {
    let started = Instant::now();
    let tables = ["t1", "t2", "t3", "t4", "t5", "t6"];
    let db = database("flush_scale", &tables);
    let pipeline = pipeline(&db, &tables, "{ workers: 2, max_events: 20000, interval: 1s }");
    pipeline.rewrite("max_events: 500, max_bytes: 1MiB, max_age: 50ms", "max_events: 5000, max_bytes: 4MiB, max_age: 200ms");
    let mut capture = start_capturing(&db, &pipeline, &["--role", "capture"], "capture.log");
    let mut flushers: Vec<Proc> =
        (0..4).map(|i| Proc::flusher(&pipeline, &[], &format!("flusher-{i}.log"))).collect();

    // 6 tables × 73 transactions × (300 inserts + 100 updates + 60 deletes) = 201,480 changes.
    let sql = workload_sql(&tables, 1, 73, 300);
    let name = db.name().to_string();
    let writer = std::thread::spawn(move || philotes_testkit::shared().psql(&name, &sql).map(|_| ()));
    // Midway: the flushers are at work and much is still to come.
    wait_for("the flushers midway", Duration::from_secs(120), || {
        count(&db, &format!("SELECT count(*) FROM philotes.table_watermarks WHERE pipeline = '{}' AND last_lsn IS NOT NULL", pipeline.name)) >= 3
            && count(&db, "SELECT count(*) FROM history") >= 70_000
    });
    let buffered = segments(&db, &pipeline);
    assert!(!writer.is_finished() || buffered > 0, "a flusher is killed while there is work left");
    flushers[1].kill();
    flushers.push(Proc::flusher(&pipeline, &[], "flusher-1-restarted.log"));
    writer.join().expect("the workload thread").expect("the workload");
    let total = count(&db, "SELECT count(*) FROM history");
    assert!(total >= 200_000, "the workload made {total} changes");
    {
        let mut procs: Vec<&mut Proc> = std::iter::once(&mut capture).chain(flushers.iter_mut().filter(|f| f.log != "flusher-1.log")).collect();
        wait_drained(&db, &pipeline, tables[0], Duration::from_secs(240), &mut procs);
    }
    for flusher in &mut flushers {
        flusher.stop();
    }
    capture.stop();
    for flusher in &flushers {
        let log = flusher.log(&pipeline);
        assert!(!log.contains("ERROR"), "{} logged errors:\n{log}", flusher.log);
    }
    let mut snapshots = 0;
    for table in tables {
        let rows = assert_exactly_once(&db, &pipeline, table).await;
        let (n, added) = assert_snapshots_in_position_order(&pipeline, table).await;
        assert_eq!(added, rows.len() as u64, "{table}: the snapshots add up to the table");
        snapshots += n;
    }
    eprintln!("{total} changes in {snapshots} snapshots, {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_flushers_racing_on_one_tables_commit_write_it_once() {
    let tables = ["orders"];
    let db = database("flush_race", &tables);
    let pipeline = pipeline(&db, &tables, "{ workers: 1, max_events: 100000, interval: 200ms }");
    let mut capture = start_capturing(&db, &pipeline, &["--role", "capture"], "capture.log");
    workload(&db, &tables, 1, 4, 250);
    wait_buffered(&db, &pipeline, tables[0]);

    // A checks the table's position, then holds its commit; meanwhile its lease is broken (its connection
    // ends, as when a flusher's network goes away), B takes the table, checks the same position and commits.
    let mut a = Proc::flusher(&pipeline, &[("PHILOTES_FAULT_DELAY_BEFORE_COMMIT_MS", "15000")], "flusher-a.log");
    wait_for("A holding its commit", Duration::from_secs(60), || a.log(&pipeline).contains("holding the iceberg commit"));
    let broken = count(
        &db,
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = 'philotes_{} flusher {}' AND state LIKE 'idle in transaction%'",
            pipeline.name,
            a.child.id()
        ),
    );
    assert_eq!(broken, 1, "A holds one lease");
    let mut b = Proc::flusher(&pipeline, &[], "flusher-b.log");
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(60), &mut [&mut capture, &mut b]);
    // A wakes up and commits or not; either way its checkpoint finds its lease gone and its flow restarts.
    wait_for("A to give up its lost lease", Duration::from_secs(60), || a.log(&pipeline).contains("flusher restarting"));
    // More changes after the race flow normally (A restarted its flow when its checkpoint found no lease).
    workload(&db, &tables, 5001, 2, 250);
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(90), &mut [&mut capture, &mut b]);
    for proc in [&mut a, &mut b, &mut capture] {
        proc.stop();
    }
    assert!(!b.log(&pipeline).contains("ERROR"), "B logged errors:\n{}", b.log(&pipeline));
    let rows = assert_exactly_once(&db, &pipeline, "orders").await;
    let (_, added) = assert_snapshots_in_position_order(&pipeline, "orders").await;
    assert_eq!(added, rows.len() as u64, "the snapshots add up to the table");
    // A's commit lost because the table had moved since A checked it, not by luck of timing.
    let log = a.log(&pipeline);
    assert!(log.contains("commit conflict"), "A's commit must conflict:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_catalog_is_retried_with_backoff_and_the_buffer_keeps_every_change() {
    let tables = ["orders"];
    let db = database("flush_catalog_down", &tables);
    let catalog_db = philotes_testkit::shared().database("flush_catalog").expect("catalog database");
    let allow = |on: bool| {
        let name = catalog_db.name();
        db.cluster().psql("postgres", &format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {on}")).expect("alter database");
        if !on {
            db.cluster()
                .psql("postgres", &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{name}'"))
                .expect("terminate");
        }
    };
    let mut pipeline = pipeline(&db, &tables, "{ workers: 1, max_events: 100000, interval: 200ms }");
    pipeline.use_catalog(&catalog_db.url());
    let mut capture = start_capturing(&db, &pipeline, &["--role", "capture"], "capture.log");

    // Down from the start: the flusher cannot even open the catalog.
    allow(false);
    let mut flusher = Proc::flusher(&pipeline, &[], "flusher.log");
    workload(&db, &tables, 1, 2, 200);
    wait_for("the flusher to report the catalog", Duration::from_secs(60), || {
        flusher.log(&pipeline).contains("flusher restarting")
    });
    wait_buffered(&db, &pipeline, tables[0]);
    assert!(segments(&db, &pipeline) > 0, "the buffer keeps the changes");
    allow(true);
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(90), &mut [&mut capture, &mut flusher]);

    // Down while running: the flush in flight retries with backoff.
    allow(false);
    workload(&db, &tables, 1001, 2, 200);
    wait_for("the flusher to retry", Duration::from_secs(60), || {
        flusher.log(&pipeline).contains("iceberg catalog or warehouse unavailable; retrying with backoff")
    });
    wait_buffered(&db, &pipeline, tables[0]);
    assert!(segments(&db, &pipeline) > 0, "the buffer keeps the changes");
    allow(true);
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(90), &mut [&mut capture, &mut flusher]);
    flusher.stop();
    capture.stop();

    let rows = assert_exactly_once(&db, &pipeline, "orders").await;
    let (_, added) = assert_snapshots_in_position_order(&pipeline, "orders").await;
    assert_eq!(added, rows.len() as u64, "the snapshots add up to the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_warehouse_is_retried_with_backoff_and_the_buffer_keeps_every_change() {
    let tables = ["orders"];
    let db = database("flush_warehouse_down", &tables);
    let pipeline = pipeline(&db, &tables, "{ workers: 1, max_events: 100000, interval: 200ms }");
    // A file where the warehouse directory must be: nothing can be written under it (even as root).
    std::fs::write(&pipeline.warehouse, "not a directory").expect("file");
    let mut run = start_capturing(&db, &pipeline, &[], "run.log");
    workload(&db, &tables, 1, 3, 200);
    wait_for("the flusher to retry", Duration::from_secs(60), || {
        run.log(&pipeline).contains("iceberg catalog or warehouse unavailable; retrying with backoff")
    });
    wait_buffered(&db, &pipeline, tables[0]);
    assert!(segments(&db, &pipeline) > 0, "the buffer keeps the changes");
    std::fs::remove_file(&pipeline.warehouse).expect("remove the file");
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(120), &mut [&mut run]);
    run.stop();
    let rows = assert_exactly_once(&db, &pipeline, "orders").await;
    let (_, added) = assert_snapshots_in_position_order(&pipeline, "orders").await;
    assert_eq!(added, rows.len() as u64, "the snapshots add up to the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_iceberg_cannot_hold_is_dead_lettered_with_its_reason_and_the_rest_flows() {
    let tables = ["orders", "customers"];
    let db = database("flush_dead_letter", &tables);
    let pipeline = pipeline(&db, &tables, "{ workers: 2, max_events: 100000, interval: 200ms }");
    let mut run = start_capturing(&db, &pipeline, &[], "run.log");
    workload(&db, &tables, 1, 2, 100);
    unconvertible(&db, &tables, 1);
    workload(&db, &tables, 1001, 2, 100);
    // A flush of nothing but unconvertible changes.
    db.psql("INSERT INTO orders (id, amount) VALUES (-100, 'NaN')").expect("insert");
    workload(&db, &tables, 2001, 1, 100);
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(90), &mut [&mut run]);
    run.stop();
    let log = pipeline.log("run.log");
    assert!(!log.contains("ERROR"), "the run logged errors:\n{log}");
    for table in tables {
        assert_exactly_once(&db, &pipeline, table).await;
        assert_dead_lettered(&db, &pipeline, table);
    }
}
