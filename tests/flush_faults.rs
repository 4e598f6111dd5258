//! Fault and scale tests of the flusher: real PostgreSQL, real `philotes` child processes (capture and flushers
//! apart, as a scaled-out deployment runs them), a real warehouse on disk and the SQL catalog in Postgres.
//!
//! Every test ends with the same reference check as tests/flush.rs: each Iceberg table, read back, equals the
//! source's change history (recorded by a trigger) row for row — nothing lost, nothing doubled — and the buffer
//! is empty. Crashes are real (`PHILOTES_FAULT` aborts the process, or SIGKILL), so is every outage.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use iceberg::spec::{Datum, ManifestStatus, PrimitiveLiteral};
use philotes_stages::fault;
use philotes_stages::catalog::{self as flush_catalog, SUMMARY_LAST_LSN, SUMMARY_LAST_SEQ};
use philotes_stages::position::Lsn;
use philotes_testkit::TestDatabase;

use crate::flush::{self, Pipeline, Row};
use crate::support::{assert_status_clean, status_json, status_table, wait_for, Philotes};

/// Changes whose `amount` is numeric `NaN`: a decimal column cannot hold them, so they are dead-lettered.
const CONVERTIBLE: &str = "amount IS DISTINCT FROM 'NaN'";
const SIGABRT: i32 = 6;

/// A flusher process (`--role flusher`) of `pipeline` with extra environment, logging to `log`.
fn flusher(pipeline: &Pipeline, env: &[(&str, &str)], log: &str) -> Philotes {
    pipeline.start(&["--role", "flusher"], env, log)
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
async fn wait_buffered(db: &TestDatabase, pipeline: &Pipeline, table: &str) {
    let lsn = marker(db, table);
    wait_for("the changes in the buffer", Duration::from_secs(120), || async {
        db.psql(&format!(
            "SELECT coalesce((SELECT commit_lsn >= '{lsn}'::pg_lsn FROM philotes.checkpoints WHERE pipeline = '{}'), false)",
            pipeline.name
        ))
        .is_ok_and(|v| v == "t")
    })
    .await;
}

/// Waits until everything the source committed up to now is in Iceberg and the buffer is empty (adds a change
/// to `table`); fails early when one of `procs` exits.
async fn wait_drained(db: &TestDatabase, pipeline: &Pipeline, table: &str, timeout: Duration, procs: &[&Philotes]) {
    let lsn = marker(db, table);
    wait_for("every change in iceberg", timeout, || async {
        procs.iter().for_each(|p| p.assert_running());
        flush::drained(db, &pipeline.name, &lsn)
    })
    .await;
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
/// column. In a mirror, a delete needs the key only, so no delete is dead-lettered.
fn assert_dead_lettered(db: &TestDatabase, pipeline: &Pipeline, table: &str, mirror: bool) {
    let deletes = if mirror { "op <> 'D'" } else { "true" };
    let want = count(db, &format!("SELECT count(*) FROM history WHERE tbl = '{table}' AND NOT ({CONVERTIBLE}) AND {deletes}"));
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

/// Whether the Iceberg table `lake.<table>` exists and has a snapshot.
async fn has_snapshot(pipeline: &Pipeline, table: &str) -> bool {
    let catalog = flush_catalog::connect(&pipeline.catalog()).await.expect("catalog");
    let ident = iceberg::TableIdent::from_strs(["lake", table]).expect("ident");
    catalog.load_table(&ident).await.is_ok_and(|t| t.metadata().current_snapshot().is_some())
}

/// The names of the Parquet files under the warehouse directory.
fn parquet_files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(parquet_files(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// The names of the data files any snapshot of `lake.<table>` added.
async fn committed_files(pipeline: &Pipeline, table: &str) -> std::collections::HashSet<String> {
    let catalog = flush_catalog::connect(&pipeline.catalog()).await.expect("catalog");
    let ident = iceberg::TableIdent::from_strs(["lake", table]).expect("ident");
    let loaded = catalog.load_table(&ident).await.expect("table exists");
    let mut names = std::collections::HashSet::new();
    for snapshot in loaded.metadata().snapshots() {
        let list = loaded.manifest_list_reader(snapshot).load().await.expect("manifest list");
        for manifest in list.entries() {
            let manifest = manifest.load_manifest(loaded.file_io()).await.expect("manifest");
            for entry in manifest.entries() {
                let path = entry.data_file().file_path();
                names.insert(path.rsplit('/').next().unwrap_or(path).to_string());
            }
        }
    }
    names
}

/// The current rows of a table of [`flush::create_table`] as the readers render them (for a mirror).
fn current_rows_sql(table: &str) -> String {
    format!(
        "SELECT id::text AS id, name, amount::text AS amount, flag::text AS flag,
                to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' AS created,
                payload::text AS payload, tags, note FROM {table}"
    )
}

/// A flusher aborts at `point` while the capture runs; a flusher restarted without the fault repairs. With
/// `mirror`, the tables are mirrors (keyed on their primary key under REPLICA IDENTITY FULL); with `rest`, the
/// catalog is the tests' REST catalog server (over the same SQL catalog, which the checks read).
async fn flusher_crash_at_is_repaired_on_restart(point: &str, mirror: bool, rest: bool) {
    crash_at_is_repaired_on_restart(point, mirror, rest, None).await;
}

/// [`flusher_crash_at_is_repaired_on_restart`], with both tables partitioned by `partition` (YAML list items)
/// when given.
pub(crate) async fn crash_at_is_repaired_on_restart(point: &str, mirror: bool, rest: bool, partition: Option<&str>) {
    let tables = ["orders", "customers"];
    let hint = format!(
        "fault_{point}{}{}{}",
        if mirror { "_mirror" } else { "" },
        if rest { "_rest" } else { "" },
        if partition.is_some() { "_part" } else { "" }
    );
    let db = database(&hint, &tables);
    let pipeline = pipeline(&db, &tables, "{ workers: 2, max_events: 2000, interval: 200ms }");
    if mirror {
        pipeline.rewrite("    namespace: lake\n", "    namespace: lake\n    mode: mirror\n");
    }
    if let Some(fields) = partition {
        for table in tables {
            crate::partition::partition(&pipeline, table, fields);
        }
    }
    let server = match rest {
        true => {
            let server = crate::rest::RestCatalogServer::start(&pipeline, &[]).await;
            crate::rest::use_rest_catalog(&pipeline, server.uri(), "");
            Some(server)
        }
        false => None,
    };
    let capture = pipeline.start_streaming(&db, &["--role", "capture"], &[], "capture.log").await;
    workload(&db, &tables, 1, 3, 200);
    unconvertible(&db, &tables, 1);
    workload(&db, &tables, 1001, 2, 200);
    // The first flush of each table then holds all of this, dead letters included.
    wait_buffered(&db, &pipeline, tables[0]).await;

    let faulty = flusher(&pipeline, &[("PHILOTES_FAULT", point)], "flusher-faulty.log");
    let status = faulty.wait_exit(Duration::from_secs(90)).await;
    assert_eq!(status.signal(), Some(SIGABRT), "the flusher aborts at the fault point ({status}):\n{}", faulty.log());
    assert!(segments(&db, &pipeline) > 0, "the crashed flush left its segments in the buffer");
    // Where it stopped shows in the lake: before its commit nothing is in Iceberg; after it, a snapshot holds
    // changes the buffer still has, which the restarted flusher must recognise instead of writing them again.
    let mut committed = false;
    for table in tables {
        committed |= has_snapshot(&pipeline, table).await;
    }
    assert_eq!(committed, point != fault::AFTER_PARQUET, "a snapshot exists after a crash at {point} exactly when it follows the commit");

    // More changes while no flusher runs, and more while the new one catches up.
    workload(&db, &tables, 2001, 3, 200);
    let restarted = flusher(&pipeline, &[], "flusher.log");
    unconvertible(&db, &tables, 2);
    workload(&db, &tables, 3001, 3, 200);
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(120), &[&capture, &restarted]).await;
    assert_status_clean(&pipeline.file);
    restarted.stop_cleanly().await;
    capture.stop_cleanly().await;

    if let Some(server) = &server {
        assert!(server.answered("POST /v1/namespaces/lake/tables/orders ", 200), "commits went through REST:\n{}", server.log());
    }
    // The repair (no change written twice, snapshots in position order) is what the checks below read.
    for table in tables {
        if partition.is_some() {
            crate::partition::assert_partitioned(&pipeline, table).await;
        }
        if mirror {
            // No key twice, none missing, every value as the source has it now.
            crate::mirror::assert_mirror_equals_source(&db, &pipeline, table, &current_rows_sql(table), &["id"]).await;
            assert_dead_lettered(&db, &pipeline, table, true);
            continue;
        }
        let rows = assert_exactly_once(&db, &pipeline, table).await;
        let (_, added) = assert_snapshots_in_position_order(&pipeline, table).await;
        assert_eq!(added, rows.len() as u64, "{table}: the snapshots add up to the table");
        let py_rows = flush::read_with_pyiceberg(&pipeline, table);
        assert_eq!(py_rows.len(), rows.len(), "{table}: pyiceberg sees the same rows");
        for (a, b) in rows.iter().zip(&py_rows) {
            assert_eq!(flush::comparable(a), flush::comparable(b), "{table}: pyiceberg row");
            assert_eq!(position(a), position(b), "{table}: pyiceberg position");
        }
        assert_dead_lettered(&db, &pipeline, table, false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flusher_killed_after_parquet_written_loses_and_doubles_nothing() {
    flusher_crash_at_is_repaired_on_restart(fault::AFTER_PARQUET, false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flusher_killed_after_iceberg_commit_writes_nothing_twice() {
    flusher_crash_at_is_repaired_on_restart(fault::AFTER_ICEBERG_COMMIT, false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flusher_killed_before_buffer_commit_writes_nothing_twice() {
    flusher_crash_at_is_repaired_on_restart(fault::BEFORE_PG_COMMIT, false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_flusher_killed_after_parquet_written_loses_and_doubles_nothing() {
    flusher_crash_at_is_repaired_on_restart(fault::AFTER_PARQUET, true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_flusher_killed_after_iceberg_commit_writes_nothing_twice() {
    flusher_crash_at_is_repaired_on_restart(fault::AFTER_ICEBERG_COMMIT, true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_flusher_killed_before_buffer_commit_writes_nothing_twice() {
    flusher_crash_at_is_repaired_on_restart(fault::BEFORE_PG_COMMIT, true, false).await;
}

/// Four flushers drain `tables` while `transactions` workload transactions of 300 rows each run; one flusher is
/// SIGKILLed once `midway` changes are recorded and the flushers are at work, and restarted. Returns when
/// everything is in Iceberg and every process has stopped cleanly.
async fn four_flushers_with_one_killed(hint: &str, tables: &[&str], transactions: i64, mirror: bool, midway: i64) -> (TestDatabase, Pipeline) {
    let db = database(hint, tables);
    let pipeline = pipeline(&db, tables, "{ workers: 2, max_events: 20000, interval: 1s }");
    pipeline.rewrite("max_events: 500, max_bytes: 1MiB, max_age: 50ms", "max_events: 5000, max_bytes: 4MiB, max_age: 200ms");
    if mirror {
        pipeline.rewrite("    namespace: lake\n", "    namespace: lake\n    mode: mirror\n");
    }
    let capture = pipeline.start_streaming(&db, &["--role", "capture"], &[], "capture.log").await;
    let mut flushers: Vec<Philotes> = (0..4).map(|i| flusher(&pipeline, &[], &format!("flusher-{i}.log"))).collect();

    let sql = workload_sql(tables, 1, transactions, 300);
    let name = db.name().to_string();
    let writer = std::thread::spawn(move || philotes_testkit::shared().psql(&name, &sql).map(|_| ()));
    // Midway: the flushers are at work and much is still to come.
    wait_for("the flushers midway", Duration::from_secs(120), || async {
        count(&db, &format!("SELECT count(*) FROM philotes.table_watermarks WHERE pipeline = '{}' AND last_lsn IS NOT NULL", pipeline.name)) >= tables.len() as i64 / 2
            && count(&db, "SELECT count(*) FROM history") >= midway
    })
    .await;
    let buffered = segments(&db, &pipeline);
    assert!(!writer.is_finished() || buffered > 0, "a flusher is killed while there is work left");
    let killed = flushers.remove(1);
    killed.kill();
    flushers.push(flusher(&pipeline, &[], "flusher-1-restarted.log"));
    writer.join().expect("the workload thread").expect("the workload");
    let procs: Vec<&Philotes> = std::iter::once(&capture).chain(&flushers).collect();
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(240), &procs).await;
    assert_status_clean(&pipeline.file);
    for flusher in &flushers {
        flusher.stop_cleanly().await;
    }
    capture.stop_cleanly().await;
    (db, pipeline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_flushers_with_one_killed_midway_write_200k_changes_of_six_tables_exactly_once_in_order() {
    let started = Instant::now();
    let tables = ["t1", "t2", "t3", "t4", "t5", "t6"];
    // 6 tables × 73 transactions × (300 inserts + 100 updates + 60 deletes) = 201,480 changes.
    let (db, pipeline) = four_flushers_with_one_killed("flush_scale", &tables, 73, false, 70_000).await;
    let total = count(&db, "SELECT count(*) FROM history");
    assert!(total >= 200_000, "the workload made {total} changes");
    let mut snapshots = 0;
    for table in tables {
        let rows = assert_exactly_once(&db, &pipeline, table).await;
        let (n, added) = assert_snapshots_in_position_order(&pipeline, table).await;
        assert_eq!(added, rows.len() as u64, "{table}: the snapshots add up to the table");
        snapshots += n;
    }
    eprintln!("{total} changes in {snapshots} snapshots, {:?}", started.elapsed());
}

/// Mirror tables under four flushers, one SIGKILLed midway: every table equals its source, no key twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mirror_flushers_with_one_killed_midway_leave_every_table_equal_to_the_source() {
    let tables = ["m1", "m2", "m3", "m4"];
    // 4 tables × 30 transactions × (300 inserts + 100 updates + 60 deletes) = 55,200 changes.
    let (db, pipeline) = four_flushers_with_one_killed("flush_scale_mirror", &tables, 30, true, 20_000).await;
    for table in tables {
        crate::mirror::assert_mirror_equals_source(&db, &pipeline, table, &current_rows_sql(table), &["id"]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_flushers_racing_on_one_tables_commit_write_it_once() {
    let tables = ["orders"];
    let db = database("flush_race", &tables);
    let pipeline = pipeline(&db, &tables, "{ workers: 1, max_events: 100000, interval: 200ms }");
    let capture = pipeline.start_streaming(&db, &["--role", "capture"], &[], "capture.log").await;
    workload(&db, &tables, 1, 4, 250);
    wait_buffered(&db, &pipeline, tables[0]).await;

    // A checks the table's position, then holds its commit; meanwhile its lease is broken (its connection
    // ends, as when a flusher's network goes away), B takes the table, checks the same position and commits.
    let a = flusher(&pipeline, &[("PHILOTES_FAULT_DELAY_BEFORE_COMMIT_MS", "15000")], "flusher-a.log");
    // A has written its Parquet files (so it is at its commit, held for 15 s) and still holds its lease.
    let lease = format!(
        "SELECT count(*) FROM pg_stat_activity
         WHERE application_name = 'philotes_{} flusher {}' AND state LIKE 'idle in transaction%'",
        pipeline.name,
        a.pid()
    );
    a.wait_until("A holding its commit", Duration::from_secs(60), || async {
        !parquet_files(&pipeline.warehouse).is_empty() && count(&db, &lease) == 1
    })
    .await;
    let broken = count(&db, &lease.replace("count(*)", "count(pg_terminate_backend(pid))"));
    assert_eq!(broken, 1, "A holds one lease");
    let b = flusher(&pipeline, &[], "flusher-b.log");
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(60), &[&capture, &b]).await;
    // A wakes up and commits or not; either way its checkpoint finds its lease gone and its flow restarts.
    // Kept on the log: nothing but A's log records that its flow gave up the lost lease.
    a.wait_until("A to give up its lost lease", Duration::from_secs(60), || async { a.log().contains("flusher restarting") })
        .await;
    // More changes after the race flow normally (A restarted its flow when its checkpoint found no lease).
    workload(&db, &tables, 5001, 2, 250);
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(90), &[&capture, &b]).await;
    assert_status_clean(&pipeline.file);
    for proc in [&a, &b, &capture] {
        proc.stop_cleanly().await;
    }
    let rows = assert_exactly_once(&db, &pipeline, "orders").await;
    let (_, added) = assert_snapshots_in_position_order(&pipeline, "orders").await;
    assert_eq!(added, rows.len() as u64, "the snapshots add up to the table");
    // A's commit lost because the table had moved since A checked it: the files A wrote are in no snapshot.
    let committed = committed_files(&pipeline, "orders").await;
    let orphans: Vec<String> = parquet_files(&pipeline.warehouse).into_iter().filter(|f| !committed.contains(f)).collect();
    assert!(!orphans.is_empty(), "A wrote files that no snapshot took");
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
    let capture = pipeline.start_streaming(&db, &["--role", "capture"], &[], "capture.log").await;

    // Down from the start: the flusher cannot even open the catalog.
    allow(false);
    let flusher = flusher(&pipeline, &[], "flusher.log");
    workload(&db, &tables, 1, 2, 200);
    // Kept on the log: a flusher that cannot open its catalog has claimed no table, so status has nothing to show.
    flusher
        .wait_until("the flusher to report the catalog", Duration::from_secs(60), || async {
            flusher.log().contains("flusher restarting")
        })
        .await;
    wait_buffered(&db, &pipeline, tables[0]).await;
    assert!(segments(&db, &pipeline) > 0, "the buffer keeps the changes");
    allow(true);
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(90), &[&capture, &flusher]).await;

    // Down while running: the flush in flight retries with backoff, and status says so.
    allow(false);
    workload(&db, &tables, 1001, 2, 200);
    wait_failing(&flusher, &pipeline, "public.orders").await;
    wait_buffered(&db, &pipeline, tables[0]).await;
    assert!(segments(&db, &pipeline) > 0, "the buffer keeps the changes");
    allow(true);
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(90), &[&capture, &flusher]).await;

    // Down when the flusher is asked to stop, deep in its backoff: it stops at once and cleanly (it does not
    // wait for the catalog), and the next flusher writes what waited in the buffer.
    allow(false);
    workload(&db, &tables, 2001, 2, 200);
    wait_failing(&flusher, &pipeline, "public.orders").await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let asked = std::time::Instant::now();
    flusher.stop_cleanly().await;
    assert!(asked.elapsed() < Duration::from_secs(5), "the stop waited {:?} for the backoff", asked.elapsed());
    assert!(segments(&db, &pipeline) > 0, "the buffer keeps the changes");
    allow(true);
    let restarted = self::flusher(&pipeline, &[], "flusher-2.log");
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(90), &[&capture, &restarted]).await;
    assert_status_clean(&pipeline.file);
    restarted.stop_cleanly().await;
    capture.stop_cleanly().await;

    let rows = assert_exactly_once(&db, &pipeline, "orders").await;
    let (_, added) = assert_snapshots_in_position_order(&pipeline, "orders").await;
    assert_eq!(added, rows.len() as u64, "the snapshots add up to the table");
}

/// Waits until `philotes status` shows `table`'s flush failing and retried, while `process` runs.
async fn wait_failing(process: &Philotes, pipeline: &Pipeline, table: &str) {
    process
        .wait_until("status to show the flush retried", Duration::from_secs(60), || async {
            status_table(&status_json(&pipeline.file), table)["failing"].is_string()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_warehouse_is_retried_with_backoff_and_the_buffer_keeps_every_change() {
    let tables = ["orders"];
    let db = database("flush_warehouse_down", &tables);
    let pipeline = pipeline(&db, &tables, "{ workers: 1, max_events: 100000, interval: 200ms }");
    // A file where the warehouse directory must be: nothing can be written under it (even as root).
    std::fs::write(&pipeline.warehouse, "not a directory").expect("file");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    workload(&db, &tables, 1, 3, 200);
    wait_failing(&run, &pipeline, "public.orders").await;
    wait_buffered(&db, &pipeline, tables[0]).await;
    assert!(segments(&db, &pipeline) > 0, "the buffer keeps the changes");
    std::fs::remove_file(&pipeline.warehouse).expect("remove the file");
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(120), &[&run]).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    let rows = assert_exactly_once(&db, &pipeline, "orders").await;
    let (_, added) = assert_snapshots_in_position_order(&pipeline, "orders").await;
    assert_eq!(added, rows.len() as u64, "the snapshots add up to the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_iceberg_cannot_hold_is_dead_lettered_with_its_reason_and_the_rest_flows() {
    let tables = ["orders", "customers"];
    let db = database("flush_dead_letter", &tables);
    let pipeline = pipeline(&db, &tables, "{ workers: 2, max_events: 100000, interval: 200ms }");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    workload(&db, &tables, 1, 2, 100);
    unconvertible(&db, &tables, 1);
    workload(&db, &tables, 1001, 2, 100);
    // A flush of nothing but unconvertible changes.
    db.psql("INSERT INTO orders (id, amount) VALUES (-100, 'NaN')").expect("insert");
    workload(&db, &tables, 2001, 1, 100);
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(90), &[&run]).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    for table in tables {
        assert_exactly_once(&db, &pipeline, table).await;
        assert_dead_lettered(&db, &pipeline, table, false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_rest_a_flusher_killed_at_each_crash_point_is_repaired_in_both_modes() {
    for mirror in [false, true] {
        for point in [fault::AFTER_PARQUET, fault::AFTER_ICEBERG_COMMIT, fault::BEFORE_PG_COMMIT] {
            flusher_crash_at_is_repaired_on_restart(point, mirror, true).await;
        }
    }
}

/// `philotes dead-letters FILE list|show|drop`: the unconvertible changes are listed with their reason and
/// position, one is shown whole, dropped ones are gone, an unknown id is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_dropped_by_the_cli() {
    let tables = ["orders"];
    let db = database("dead_letter_cli", &tables);
    let pipeline = pipeline(&db, &tables, "{ workers: 1, max_events: 2000, interval: 200ms }");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    unconvertible(&db, &tables, 1);
    wait_drained(&db, &pipeline, tables[0], Duration::from_secs(60), &[&run]).await;
    run.stop_cleanly().await;
    let file = pipeline.file.to_str().expect("utf-8 path");
    let cli = |args: &[&str]| {
        let out = crate::support::philotes(&[&["dead-letters", file], args].concat(), &[]);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, list) = cli(&["list"]);
    assert_eq!(code, Some(0), "{list}");
    assert!(list.contains("3 dead letters in pipeline") && list.contains("public.orders") && list.contains("amount"), "{list}");
    let letters: serde_json::Value = serde_json::from_str(&cli(&["list", "--json"]).1).expect("json");
    let ids: Vec<i64> = letters.as_array().expect("a list").iter().map(|l| l["id"].as_i64().expect("id")).collect();
    assert_eq!(ids.len(), 3, "{letters}");
    let (code, shown) = cli(&["show", &ids[0].to_string()]);
    assert!(code == Some(0) && shown.contains("reason") && shown.contains("NaN"), "{shown}");
    let (code, dropped) = cli(&["drop", &ids[0].to_string(), &ids[1].to_string()]);
    assert!(code == Some(0) && dropped.contains("dropped 2 dead letters"), "{dropped}");
    let (code, missing) = cli(&["show", &ids[0].to_string()]);
    assert!(code == Some(1) && missing.contains(&format!("no dead letter {}", ids[0])), "{missing}");
    assert!(cli(&["list"]).1.contains("1 dead letter in pipeline"));
    let (code, all) = cli(&["drop", "--all"]);
    assert!(code == Some(0) && all.contains("dropped 1 dead letter"), "{all}");
}
