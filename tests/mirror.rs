//! Mirror mode: the Iceberg table equals the source table, row for row, read back with the iceberg crate and with
//! DuckDB's iceberg extension (pyiceberg cannot read equality deletes). A real PostgreSQL, the real binary.

use std::collections::BTreeMap;
use std::time::Duration;

use philotes_testkit::TestDatabase;

use crate::flush::{drained, last_commit, read_with_duckdb, read_with_iceberg_crate, read_with_pyiceberg, Pipeline, Row};
use crate::snapshot::{source_rows, wait_snapshots_done};
use crate::support::{philotes, status_json, status_table, Philotes};

/// A pipeline in mirror mode over `tables`, with the initial snapshot (snapshot rows are upserts) and small
/// flushes, so one workload spans many commits.
pub fn mirror_pipeline(db: &TestDatabase, tables: &[&str]) -> Pipeline {
    let pipeline = Pipeline::new(db, tables, "{ workers: 2, max_events: 400, interval: 100ms }");
    pipeline.rewrite("    snapshot: never\n", "    snapshot: initial\n");
    pipeline.rewrite("    namespace: lake\n", "    namespace: lake\n    mode: mirror\n");
    pipeline
}

/// The rows of an Iceberg table by `key` (its columns' text), asserting no key is there twice.
fn by_key(rows: Vec<Row>, key: &[&str], reader: &str, table: &str) -> BTreeMap<Vec<String>, Row> {
    let count = rows.len();
    let keyed: BTreeMap<Vec<String>, Row> = rows
        .into_iter()
        .map(|row| {
            let row: Row = row.into_iter().filter(|(_, v)| !v.is_null()).collect();
            (key.iter().map(|k| row.get(*k).and_then(|v| v.as_str()).unwrap_or("").to_string()).collect(), row)
        })
        .collect();
    assert_eq!(keyed.len(), count, "{table} ({reader}): a key is in the mirror twice");
    keyed
}

/// Asserts that the iceberg crate and DuckDB both read `table` as exactly the source's `select` (columns as text).
pub async fn assert_mirror_equals_source(db: &TestDatabase, pipeline: &Pipeline, table: &str, select: &str, key: &[&str]) {
    let readings = vec![
        ("iceberg crate", read_with_iceberg_crate(pipeline, table).await),
        ("duckdb", read_with_duckdb(pipeline, table)),
    ];
    assert_readings_equal_source(db, table, select, key, readings);
}

/// As [`assert_mirror_equals_source`], and pyiceberg too (a compacted table has no delete file it refuses).
pub async fn assert_compacted_mirror_equals_source(db: &TestDatabase, pipeline: &Pipeline, table: &str, select: &str, key: &[&str]) {
    let readings = vec![
        ("iceberg crate", read_with_iceberg_crate(pipeline, table).await),
        ("duckdb", read_with_duckdb(pipeline, table)),
        ("pyiceberg", read_with_pyiceberg(pipeline, table)),
    ];
    assert_readings_equal_source(db, table, select, key, readings);
}

fn assert_readings_equal_source(db: &TestDatabase, table: &str, select: &str, key: &[&str], readings: Vec<(&str, Vec<Row>)>) {
    let expected = by_key(source_rows(db, select), key, "source", table);
    for (reader, rows) in readings {
        let got = by_key(rows, key, reader, table);
        let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
        let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).take(5).collect();
        assert!(missing.is_empty() && extra.is_empty(), "{table} ({reader}): keys missing {missing:?}, keys not in the source {extra:?}");
        for (id, want) in &expected {
            let have = &got[id];
            if have != want {
                let differing: Vec<_> = want.keys().chain(have.keys()).filter(|c| want.get(*c) != have.get(*c)).collect();
                panic!("{table} ({reader}): row {id:?} differs in {differing:?}");
            }
        }
    }
}

/// The live files of the mirror table `lake.<table>`.
async fn files(pipeline: &Pipeline, table: &str) -> philotes_stages::maintenance::FileCounts {
    let catalog = philotes_stages::catalog::connect(&pipeline.catalog()).await.expect("catalog");
    let ident = iceberg::TableIdent::from_strs(["lake", table]).expect("ident");
    let loaded = catalog.load_table(&ident).await.expect("table exists");
    philotes_stages::maintenance::FileCounts::of(&loaded).await.expect("files")
}

/// A small deterministic generator (xorshift), so a failing workload can be replayed.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const ITEMS: &str = "SELECT id::text AS id, name, amount::text AS amount, big FROM items";
const PAIRS: &str = "SELECT a::text AS a, b, v::text AS v FROM pairs";
const FULL_SET: &str = "SELECT k, v::text AS v FROM full_set";

/// One round of random changes, some in multi-statement transactions (two versions of a key in one flush).
async fn round(client: &tokio_postgres::Client, random: &mut Random, round: u64) {
    let base = round * 1000;
    let mut sql = String::new();
    for i in 0..30 {
        sql += &format!("INSERT INTO items VALUES ({}, 'new {round}/{i}', {}.25, NULL);", base + 10_000 + i, random.below(1000));
    }
    for _ in 0..20 {
        let id = random.below(200) + 4;
        sql += &format!("UPDATE items SET name = name || '+', amount = amount + 1 WHERE id = {id};");
    }
    // The rows with a megabyte TOASTed value, updated without touching it (it is not sent), several times.
    for id in 1..=3 {
        sql += &format!("UPDATE items SET amount = amount + {round}, name = 'big {id} r{round}' WHERE id = {id};");
    }
    if round == 2 {
        sql += "UPDATE items SET big = repeat(md5('again' || id), 32768) WHERE id = 2;";
    }
    for _ in 0..3 {
        let id = random.below(200) + 4;
        sql += &format!("UPDATE items SET id = id + 100000 WHERE id = {id};");
    }
    for _ in 0..8 {
        let id = random.below(300) + 4;
        sql += &format!("DELETE FROM items WHERE id = {id};");
    }
    client.batch_execute(&sql).await.expect("items changes");
    // A transaction that changes one key three times (inserted, updated, updated) and one that deletes and
    // inserts a key again.
    let key = base + 20_000;
    client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO items VALUES ({key}, 'a', 1, NULL); UPDATE items SET name = 'b' WHERE id = {key};
             UPDATE items SET name = 'c', amount = 3 WHERE id = {key}; COMMIT;
             BEGIN; DELETE FROM items WHERE id = 5; INSERT INTO items VALUES (5, 'five again {round}', 5, NULL); COMMIT;"
        ))
        .await
        .expect("items transactions");
    let mut sql = String::new();
    for i in 0..20 {
        sql += &format!("INSERT INTO pairs VALUES ({}, 'b{}', {i}) ON CONFLICT DO NOTHING;", random.below(50), random.below(5));
    }
    sql += &format!("UPDATE pairs SET v = v + 1 WHERE a = {};", random.below(50));
    sql += &format!("UPDATE pairs SET b = b || 'x' WHERE a = {};", random.below(50));
    sql += &format!("DELETE FROM pairs WHERE a = {};", random.below(50));
    if round == 3 {
        sql += "TRUNCATE pairs; INSERT INTO pairs VALUES (1, 'after truncate', 1);";
    }
    sql += &format!("INSERT INTO full_set VALUES ('k{round}', {round}), ('k{round}b', {round});");
    sql += &format!("UPDATE full_set SET v = v + 10 WHERE k = 'k{}';", round.saturating_sub(1));
    sql += &format!("DELETE FROM full_set WHERE k = 'k{}b';", round.saturating_sub(1));
    client.batch_execute(&sql).await.expect("pairs and full_set changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_table_equals_the_source_row_for_row_after_any_workload() {
    let db = philotes_testkit::shared().database("mirror_workload").expect("database");
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(12,2), big text);
         ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO items SELECT g, 'item ' || g, g * 1.5, CASE WHEN g <= 3 THEN repeat(md5(g::text), 32768) END
         FROM generate_series(1, 200) g;
         CREATE TABLE pairs (a int, b text, v int, PRIMARY KEY (a, b));
         INSERT INTO pairs SELECT g % 50, 'b' || (g % 5), g FROM generate_series(1, 100) g ON CONFLICT DO NOTHING;
         CREATE TABLE full_set (k text, v int);
         ALTER TABLE full_set REPLICA IDENTITY FULL;
         INSERT INTO full_set VALUES ('before', 0);",
    )
    .expect("schema");
    let pipeline = mirror_pipeline(&db, &["items", "pairs", "full_set"]);
    let port = crate::support::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let run = pipeline.start_streaming(&db, &["--metrics", &metrics], &[], "run.log").await;
    wait_snapshots_done(&db, &pipeline, &run, "INSERT INTO full_set VALUES ('marker', 0)").await;
    let client = db.connect().await.expect("connect");
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let drain = |r: u64| {
        let (db, pipeline, run) = (&db, &pipeline, &run);
        async move {
            let after = last_commit(db, &format!("INSERT INTO full_set VALUES ('marker', {r})"));
            run.wait_until("the round in iceberg", Duration::from_secs(120), || async { drained(db, &pipeline.name, &after) }).await;
        }
    };
    for r in 1..=5 {
        round(&client, &mut random, r).await;
        // Each round in Iceberg before the next: its unchanged TOAST values are then only in Iceberg's files.
        drain(r).await;
    }
    // Everything reachable, nothing stopped: /readyz answers 200 (once its 5-second status poll has run).
    run.wait_until("/readyz ready", Duration::from_secs(30), || async {
        crate::support::http_get(&metrics, "/readyz").await.contains(r#"{"ready":true,"reasons":[]}"#)
    })
    .await;
    let tables = [("items", ITEMS, &["id"][..]), ("pairs", PAIRS, &["a", "b"][..]), ("full_set", FULL_SET, &["k", "v"][..])];
    for (table, select, key) in tables {
        assert_mirror_equals_source(&db, &pipeline, table, select, key).await;
    }

    // Compaction while changes flow (it takes each table's lease between flushes), then once more at rest:
    // every table is one data file and no delete file, which pyiceberg reads too.
    let file = pipeline.file.to_str().expect("utf-8 path").to_string();
    let compact = {
        let file = file.clone();
        move || philotes(&["compact", &file, "--min-files", "1", "--table", "public.items", "--table", "public.pairs", "--table", "public.full_set"], &[])
    };
    let during = tokio::task::spawn_blocking(compact.clone());
    round(&client, &mut random, 6).await;
    let during = during.await.expect("compaction");
    assert!(during.status.success(), "compaction while flushing: {}", String::from_utf8_lossy(&during.stdout));
    drain(6).await;
    let at_rest = compact();
    assert!(at_rest.status.success(), "{}{}", String::from_utf8_lossy(&at_rest.stdout), String::from_utf8_lossy(&at_rest.stderr));
    for (table, select, key) in tables {
        let counts = files(&pipeline, table).await;
        assert_eq!((counts.data, counts.deletes), (1, 0), "{table}: one data file, no delete file after compaction");
        assert_compacted_mirror_equals_source(&db, &pipeline, table, select, key).await;
    }
    // The megabyte values, untouched by updates after the compaction, come from the compacted file.
    round(&client, &mut random, 7).await;
    drain(7).await;
    for (table, select, key) in tables {
        assert_mirror_equals_source(&db, &pipeline, table, select, key).await;
    }
    assert!(!run.log().contains("written NULL"), "every unchanged TOAST value was found:\n{}", run.log());
    run.stop_cleanly().await;
}

/// The changelog and mirror layouts are not interchangeable: a pipeline switched to mirror on a changelog
/// table stops that table with a reason naming both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changelog_table_asked_to_mirror_stops_with_the_reason() {
    let db = philotes_testkit::shared().database("mirror_switch").expect("database");
    db.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');").expect("schema");
    let pipeline = Pipeline::new(&db, &["t"], "{ workers: 1, max_events: 400, interval: 100ms }");
    pipeline.rewrite("    snapshot: never\n", "    snapshot: initial\n");
    let run = pipeline.start_streaming(&db, &[], &[], "changelog.log").await;
    wait_snapshots_done(&db, &pipeline, &run, "INSERT INTO t VALUES (2, 'marker')").await;
    run.stop_cleanly().await;
    pipeline.rewrite("    namespace: lake\n", "    namespace: lake\n    mode: mirror\n");
    let run: Philotes = pipeline.start_streaming(&db, &[], &[], "mirror.log").await;
    db.psql("UPDATE t SET v = 'b'").expect("update");
    let file = pipeline.file.clone();
    let error = run
        .wait_until("t stopped", Duration::from_secs(60), || {
            let file = file.clone();
            async move { status_table(&status_json(&file), "public.t")["error"].as_str().map(str::to_string) }
        })
        .await;
    assert!(error.contains("made by mode changelog") && error.contains("asks for mode mirror"), "{error}");
    run.stop_cleanly().await;
}

/// A key Iceberg cannot delete by (double precision under REPLICA IDENTITY FULL) stops that table alone, with
/// the reason and the fix; the other table flows on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_whose_key_iceberg_cannot_delete_by_stops_alone() {
    let db = philotes_testkit::shared().database("mirror_floaty").expect("database");
    db.psql(
        "CREATE TABLE floaty (k int, x double precision); ALTER TABLE floaty REPLICA IDENTITY FULL;
         INSERT INTO floaty VALUES (1, 1.5);
         CREATE TABLE fine (id int PRIMARY KEY, v text); INSERT INTO fine VALUES (1, 'a');",
    )
    .expect("schema");
    let pipeline = mirror_pipeline(&db, &["floaty", "fine"]);
    let port = crate::support::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let run = pipeline.start_streaming(&db, &["--metrics", &metrics], &[], "run.log").await;
    db.psql("INSERT INTO fine VALUES (2, 'b'); UPDATE fine SET v = 'c' WHERE id = 1; INSERT INTO floaty VALUES (2, 2.5);")
        .expect("changes");
    let file = pipeline.file.clone();
    let error = run
        .wait_until("floaty stopped", Duration::from_secs(60), || {
            let file = file.clone();
            async move { status_table(&status_json(&file), "public.floaty")["error"].as_str().map(str::to_string) }
        })
        .await;
    assert!(error.contains("column \"x\"") && error.contains("equality-delete key"), "{error}");
    // /readyz says the pipeline is not ready, and why (the status poll runs every 5 s).
    let ready = run
        .wait_until("/readyz to name the stopped table", Duration::from_secs(30), || async {
            let answer = crate::support::http_get(&metrics, "/readyz").await;
            answer.contains("table public.floaty stopped").then_some(answer)
        })
        .await;
    assert!(ready.starts_with("HTTP/1.1 503") && ready.contains(r#""ready":false"#), "{ready}");
    let fine = "SELECT id::text AS id, v FROM fine";
    let expected = source_rows(&db, fine).len();
    run.wait_until("fine mirrored", Duration::from_secs(60), || async {
        let committed = !status_table(&status_json(&pipeline.file), "public.fine")["committed"].is_null();
        let buffered = db.psql("SELECT count(*) FROM philotes.segments WHERE source_table = 'fine'").unwrap_or_default();
        committed && buffered == "0" && read_with_duckdb(&pipeline, "fine").len() == expected
    })
    .await;
    assert_mirror_equals_source(&db, &pipeline, "fine", fine, &["id"]).await;
    run.stop_cleanly().await;
}

/// Two commits race on one mirror table: an outside commit lands while the flush holds its own (staged on the
/// state before). The compare-and-set refuses the flush's; it is built again on the new state and lands; the
/// outside snapshot stays in the table's history and the mirror still equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_commit_that_loses_the_race_is_built_again_on_the_new_state() {
    use philotes_stages::iceberg_commit::row_delta::{commit_row_delta_sql, RowDelta};

    let db = philotes_testkit::shared().database("mirror_race").expect("database");
    db.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;")
        .expect("schema");
    let pipeline = mirror_pipeline(&db, &["t"]);
    let run = pipeline.start_streaming(&db, &[], &[], "first.log").await;
    wait_snapshots_done(&db, &pipeline, &run, "INSERT INTO t VALUES (1000, 'marker')").await;
    run.stop_cleanly().await;

    let run = pipeline.start_streaming(&db, &[], &[("PHILOTES_FAULT_DELAY_BEFORE_COMMIT_MS", "4000")], "race.log").await;
    let after = last_commit(&db, "UPDATE t SET v = 'changed' WHERE id <= 50; DELETE FROM t WHERE id > 90 AND id < 1000");
    run.wait_until("the flush holding its commit", Duration::from_secs(60), || async {
        run.log().contains("holding the iceberg commit")
    })
    .await;
    let catalog = philotes_stages::catalog::connect(&pipeline.catalog()).await.expect("catalog");
    let ident = iceberg::TableIdent::from_strs(["lake", "t"]).expect("ident");
    let base = catalog.load_table(&ident).await.expect("table");
    let client = db.connect().await.expect("catalog connection");
    let outside = RowDelta { properties: [("by".to_string(), "an outside writer".to_string())].into(), ..RowDelta::default() };
    let landed = commit_row_delta_sql(&client, "philotes", &base, outside).await.expect("the outside commit lands first");
    let outside_id = landed.metadata().current_snapshot_id().expect("a snapshot");

    run.wait_until("the flush in iceberg", Duration::from_secs(60), || async { drained(&db, &pipeline.name, &after) }).await;
    assert!(run.log().contains("commit conflict"), "the flush's first commit lost the race:\n{}", run.log());
    assert_mirror_equals_source(&db, &pipeline, "t", "SELECT id::text AS id, v FROM t", &["id"]).await;
    let table = catalog.load_table(&ident).await.expect("table");
    let current = table.metadata().current_snapshot().expect("a snapshot");
    assert_eq!(current.parent_snapshot_id(), Some(outside_id), "the flush was built on the outside commit");
    run.stop_cleanly().await;
}
