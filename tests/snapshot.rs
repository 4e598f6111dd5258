//! Snapshots: the rows a table already has reach Iceberg as `_op = 'r'`, interleaved with the stream by
//! watermarks, resumable by chunk. A real PostgreSQL, the real binary, read back with the iceberg crate and
//! pyiceberg. The reference: the latest image per key in Iceberg equals the source table, row for row.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use philotes_testkit::TestDatabase;

use crate::flush::{drained, last_commit, read_with_duckdb, read_with_iceberg_crate, read_with_pyiceberg, Pipeline, Row};
use crate::support::{wait_for, Philotes};

/// The source table as rows of text values keyed by `key` (a JSON object per row from `select`).
pub fn source_rows(db: &TestDatabase, select: &str) -> Vec<Row> {
    let text = db.psql(&format!("SELECT row_to_json(s) FROM ({select}) s")).expect("source rows");
    text.lines().map(|l| to_text(serde_json::from_str(l).expect("json"))).collect()
}

/// Every value as text (as the Iceberg readers render them; an array as a list of texts), nulls left out.
fn to_text(row: BTreeMap<String, serde_json::Value>) -> Row {
    row.into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let text = |v: serde_json::Value| match v {
                serde_json::Value::String(s) => serde_json::Value::String(s),
                other => serde_json::Value::String(other.to_string()),
            };
            // An array stays a list of texts, as the readers render Iceberg lists.
            let value = match v {
                serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(text).collect()),
                other => text(other),
            };
            (k, value)
        })
        .collect()
}

/// The bookkeeping position of a changelog row.
fn position(row: &Row) -> (i64, i64) {
    let n = |k: &str| row[k].as_str().and_then(|s| s.parse::<i64>().ok()).unwrap_or_else(|| panic!("{k} in {row:?}"));
    (n("_lsn"), n("_seq"))
}

/// The latest image per key of a changelog (`r`/`I`/`U` set the row, `D` removes it, `T` empties the table),
/// applied in position order, with the `columns` of the source kept. Asserts that no position is doubled.
fn latest_per_key(mut rows: Vec<Row>, key: &[&str], columns: &[&str]) -> BTreeMap<Vec<String>, Row> {
    rows.sort_by_key(position);
    let positions: BTreeSet<(i64, i64)> = rows.iter().map(position).collect();
    assert_eq!(positions.len(), rows.len(), "no (_lsn, _seq) is doubled");
    let mut table = BTreeMap::new();
    for row in rows {
        let op = row["_op"].as_str().expect("_op").to_string();
        if op == "T" {
            table.clear();
            continue;
        }
        let id: Vec<String> = key.iter().map(|k| row.get(*k).and_then(|v| v.as_str()).unwrap_or("").to_string()).collect();
        match op.as_str() {
            "D" => {
                table.remove(&id);
            }
            "r" | "I" | "U" => {
                let kept: Row = row.into_iter().filter(|(k, v)| columns.contains(&k.as_str()) && !v.is_null()).collect();
                table.insert(id, kept);
            }
            other => panic!("unexpected _op {other}"),
        }
    }
    table
}

/// Asserts that both readers' latest image per key of `table` equals the source's `select`.
async fn assert_latest_equals_source(db: &TestDatabase, pipeline: &Pipeline, table: &str, select: &str, key: &[&str], columns: &[&str]) -> Vec<Row> {
    let expected: BTreeMap<Vec<String>, Row> = source_rows(db, select)
        .into_iter()
        .map(|row| (key.iter().map(|k| row.get(*k).and_then(|v| v.as_str()).unwrap_or("").to_string()).collect(), row))
        .collect();
    let crate_rows = read_with_iceberg_crate(pipeline, table).await;
    let py_rows = read_with_pyiceberg(pipeline, table);
    assert_eq!(crate_rows.len(), py_rows.len(), "{table}: both readers see the same number of rows");
    for (reader, rows) in [("iceberg crate", crate_rows.clone()), ("pyiceberg", py_rows)] {
        let latest = latest_per_key(rows, key, columns);
        assert_eq!(latest.len(), expected.len(), "{table} ({reader}): keys in Iceberg vs rows in the source");
        for (id, want) in &expected {
            assert_eq!(latest.get(id), Some(want), "{table} ({reader}): row {id:?}");
        }
    }
    crate_rows
}

/// A pipeline with `snapshot: initial` and the given `snapshot:` section.
fn snapshot_pipeline(db: &TestDatabase, tables: &[&str], snapshot: &str) -> Pipeline {
    let pipeline = Pipeline::new(db, tables, "{ workers: 2, max_events: 200000, interval: 200ms }");
    pipeline.rewrite("    snapshot: never\n", "    snapshot: initial\n");
    pipeline.rewrite("buffer:\n", &format!("snapshot: {snapshot}\nbuffer:\n"));
    pipeline.rewrite("{ max_events: 500, max_bytes: 1MiB, max_age: 50ms }", "{ max_events: 10000, max_bytes: 8MiB, max_age: 50ms }");
    pipeline
}

/// Slices as large as a flush's segments (the flush tests' small slices would only slow these tests down).
const ENV: &[(&str, &str)] = &[("PHILOTES_PART_EVENTS", "50000")];

/// Waits until every listed table's snapshot is done and everything up to a last marker transaction is in Iceberg.
pub async fn wait_snapshots_done(db: &TestDatabase, pipeline: &Pipeline, run: &Philotes, marker: &str) {
    let name = pipeline.name.clone();
    run.wait_until("every snapshot done", Duration::from_secs(300), || async {
        let failed = db
            .psql(&format!("SELECT string_agg(source_table || ': ' || error, '; ') FROM philotes.snapshots WHERE pipeline = '{name}' AND state = 'failed'"))
            .unwrap_or_default();
        assert!(failed.is_empty(), "a snapshot failed: {failed}");
        db.psql(&format!(
            "SELECT count(*) = 0 FROM philotes.snapshots WHERE pipeline = '{name}' AND state NOT IN ('done', 'skipped')"
        ))
        .map(|v| v == "t")
        .unwrap_or(false)
    })
    .await;
    let after = last_commit(db, marker);
    run.wait_until("every change in iceberg", Duration::from_secs(300), || async { drained(db, &pipeline.name, &after) }).await;
}

/// `(state, rows_done, chunks, reads)` of a table's snapshot.
fn progress(db: &TestDatabase, pipeline: &str, table: &str) -> (String, i64, i64, i64) {
    let out = db
        .psql(&format!(
            "SELECT state || ',' || rows_done || ',' || chunks || ',' || reads FROM philotes.snapshots
             WHERE pipeline = '{pipeline}' AND source_table = '{table}'"
        ))
        .expect("progress");
    let parts: Vec<&str> = out.trim().split(',').collect();
    assert_eq!(parts.len(), 4, "progress row of {table}: {out:?}");
    (parts[0].to_string(), parts[1].parse().unwrap(), parts[2].parse().unwrap(), parts[3].parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_rows_of_every_key_kind_reach_iceberg_once() {
    every_key_kind("snap_kinds", "{ chunk_rows: 1000, workers: 2 }").await;
}

/// The same through the buffer and the flushers (`snapshot.direct: false`, and how a mirror table's chunks go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_rows_of_every_key_kind_reach_iceberg_once_through_the_buffer() {
    every_key_kind("snap_kinds_buffer", "{ chunk_rows: 1000, workers: 2, direct: false }").await;
}

async fn every_key_kind(hint: &str, snapshot: &str) {
    let db = philotes_testkit::shared().database(hint).expect("database");
    db.psql(
        "CREATE TABLE composite (a int, b text, v text, PRIMARY KEY (a, b));
         INSERT INTO composite SELECT g % 7, 'k' || g, 'v' || g FROM generate_series(1, 2500) g;
         CREATE TABLE texts (id text PRIMARY KEY, v int);
         INSERT INTO texts SELECT 'key ''' || g || E'\\t\\n' || repeat('é', g % 5), g FROM generate_series(1, 1500) g;
         CREATE TABLE uuids (id uuid PRIMARY KEY, v int);
         INSERT INTO uuids SELECT md5(g::text)::uuid, g FROM generate_series(1, 1200) g;
         CREATE TABLE keyless (v int, w text);
         ALTER TABLE keyless REPLICA IDENTITY FULL;
         INSERT INTO keyless SELECT g, 'w' || g FROM generate_series(1, 3000) g;
         CREATE TABLE stamps (at timestamptz, n numeric, v int, PRIMARY KEY (at, n));
         INSERT INTO stamps SELECT timestamptz '2020-01-01 00:00:00.5+00' + g * interval '1.25 second', g / 3.0, g
           FROM generate_series(1, 2200) g;
         CREATE TABLE empty (id int PRIMARY KEY, v text);
         CREATE TABLE toasted (id int PRIMARY KEY, big text, small text);
         INSERT INTO toasted SELECT g, CASE WHEN g = 2 THEN repeat(md5(g::text), 327680) END, 's' || g FROM generate_series(1, 3) g;",
    )
    .expect("tables");
    let tables = ["public.composite", "public.texts", "public.uuids", "public.stamps", "public.keyless", "public.empty", "public.toasted"];
    let pipeline = snapshot_pipeline(&db, &tables, snapshot);
    let run = pipeline.start_streaming(&db, &[], ENV, "run.log").await;
    wait_snapshots_done(&db, &pipeline, &run, "INSERT INTO empty VALUES (1, 'after')").await;
    run.stop_cleanly().await;

    assert_latest_equals_source(&db, &pipeline, "composite", "SELECT a::text, b, v FROM composite", &["a", "b"], &["a", "b", "v"]).await;
    assert_latest_equals_source(&db, &pipeline, "texts", "SELECT id, v::text FROM texts", &["id"], &["id", "v"]).await;
    assert_latest_equals_source(&db, &pipeline, "uuids", "SELECT id::text, v::text FROM uuids", &["id"], &["id", "v"]).await;
    assert_latest_equals_source(&db, &pipeline, "stamps", "SELECT v::text FROM stamps", &["v"], &["v"]).await;
    assert_latest_equals_source(&db, &pipeline, "keyless", "SELECT v::text, w FROM keyless", &["v", "w"], &["v", "w"]).await;
    assert_latest_equals_source(&db, &pipeline, "empty", "SELECT id::text, v FROM empty", &["id"], &["id", "v"]).await;
    let toasted =
        assert_latest_equals_source(&db, &pipeline, "toasted", "SELECT id::text, big, small FROM toasted", &["id"], &["id", "big", "small"]).await;
    assert!(toasted.iter().any(|r| r.get("big").and_then(|v| v.as_str()).is_some_and(|s| s.len() == 10 * 1024 * 1024)));
    // Every row of a table without a change was read once, as 'r'.
    for (table, rows) in [("composite", 2500), ("texts", 1500), ("uuids", 1200), ("stamps", 2200), ("keyless", 3000), ("empty", 0), ("toasted", 3)] {
        let (state, done, chunks, reads) = progress(&db, &pipeline.name, table);
        assert_eq!((state.as_str(), done), ("done", rows), "{table}: progress");
        assert_eq!(chunks, reads, "{table}: no chunk read twice");
    }
    let composite = read_with_iceberg_crate(&pipeline, "composite").await;
    assert_eq!(composite.iter().filter(|r| r["_op"] == "r").count(), 2500, "composite: one 'r' row per source row");
}

/// Values of every kind the snapshot reads in binary (and of some it reads as text), snapshotted into one table
/// and streamed as inserts into another: both arrive in Iceberg with the same values, row for row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_types_every_value_exactly_as_the_stream_does() {
    let db = philotes_testkit::shared().database("snap_types").expect("database");
    let columns = "id int PRIMARY KEY, b bool, i2 int2, i8 int8, f4 real, f8 double precision, n numeric(12,2),
                   nu numeric, t text, vc varchar(10), c char(5), by bytea, d date, tm time, ts timestamp,
                   tz timestamptz, u uuid, js json, jb jsonb, iv interval, arr int[], ip inet, mood mood";
    db.psql(&format!(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE typed_read ({columns});
         CREATE TABLE typed_streamed ({columns});
         INSERT INTO typed_read VALUES
           (1, true, -32768, -9223372036854775808, 'NaN', 'Infinity', -0.5, 'NaN', E'tab\there\nnew \\ é', 'vc', 'ab',
            '\\x00ff10', '2024-02-29', '23:59:59.999999', '0001-01-01 00:00:00 BC', 'infinity', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            '{{\"a\": [1, 2.50]}}', '{{\"k\": \"\\u00e9\", \"n\": {{\"x\": null}}}}', '1 year 2 mons 3 days 04:05:06.7', '{{1,NULL,3}}', '10.0.0.1', 'happy'),
           (2, false, 32767, 9223372036854775807, '-Infinity', '-0', 1234567890.12, '123456789012345678901234567890.123456789',
            '', 'x', 'abcde', '', '-infinity', '00:00:00.000001', '2262-04-11 23:47:16.854775', '1999-12-31 23:59:59.999999+05:30',
            '00000000-0000-0000-0000-000000000000', '[]', '[]', '-00:00:01', '{{}}', '::1/128', 'sad'),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
         INSERT INTO typed_read SELECT g, g % 2 = 0, g % 300, g::int8 * 1000003, g / 7.0, g * 1.1e-5, g * 0.37, (g ^ 3)::numeric / 9,
                'row ' || g, 'v' || g % 1000, 'c' || g % 100, decode(md5(g::text), 'hex'), date '2000-01-01' + g,
                time '00:00' + g * interval '1 second', timestamp '1970-01-01' + g * interval '1 hour',
                timestamptz '2020-01-01 00:00+00' + g * interval '1 minute', md5(g::text)::uuid,
                json_build_object('g', g), jsonb_build_object('g', g, 's', 'x' || g), g * interval '1 minute',
                ARRAY[g, g + 1], ('10.0.' || g % 256 || '.1')::inet, (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::mood
           FROM generate_series(4, 3000) g;"
    ))
    .expect("tables");
    let pipeline = snapshot_pipeline(&db, &["public.typed_read", "public.typed_streamed"], "{ chunk_rows: 1000, workers: 2 }");
    let run = pipeline.start_streaming(&db, &[], ENV, "run.log").await;
    db.psql("INSERT INTO typed_streamed SELECT * FROM typed_read").expect("stream the same rows");
    wait_snapshots_done(&db, &pipeline, &run, "INSERT INTO typed_streamed (id) VALUES (100000)").await;
    run.stop_cleanly().await;
    let rejected = db.psql("SELECT string_agg(source_table || ': ' || reason, E'\\n') FROM philotes.dead_letters").expect("dead letters");
    assert_eq!(rejected, "", "no value was refused");

    let data = |rows: Vec<Row>| -> BTreeMap<String, Row> {
        rows.into_iter()
            .filter(|r| r["id"].as_str() != Some("100000"))
            .map(|r| {
                let id = r["id"].as_str().expect("id").to_string();
                (id, r.into_iter().filter(|(k, _)| !k.starts_with('_')).collect())
            })
            .collect()
    };
    for (reader, read, streamed) in [
        ("iceberg crate", read_with_iceberg_crate(&pipeline, "typed_read").await, read_with_iceberg_crate(&pipeline, "typed_streamed").await),
        // DuckDB as the independent reader: pyarrow's to_pylist() cannot hold BC dates or infinities.
        ("duckdb", read_with_duckdb(&pipeline, "typed_read"), read_with_duckdb(&pipeline, "typed_streamed")),
    ] {
        assert!(read.iter().all(|r| r["_op"] == "r"), "{reader}: typed_read arrived by its snapshot only");
        let (read, streamed) = (data(read), data(streamed));
        assert_eq!(read.len(), 3000, "{reader}: every row read");
        assert_eq!(streamed.len(), 3000, "{reader}: every row streamed");
        for (id, row) in &streamed {
            assert_eq!(read.get(id), Some(row), "{reader}: row {id} read by the snapshot vs streamed");
        }
    }
}

/// Random changes to `big` until `stop`: inserts past the end and into deleted gaps, updates and deletes of
/// random rows, and updates and deletes of the rows around the upper key of a lane's current chunk. (No key changes: a
/// changelog `U` row holds the new image only, so the old key's end cannot be read back from it.)
async fn write_randomly(client: tokio_postgres::Client, pipeline: String, stop: Arc<AtomicBool>) -> u64 {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: i64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as i64 + 1
    };
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        let near: Option<i64> = client
            .query_opt(
                "SELECT (last_key[1])::int8 FROM philotes.snapshot_lanes WHERE pipeline = $1 AND source_table = 'big'
                 AND last_key IS NOT NULL AND NOT done ORDER BY random() LIMIT 1",
                &[&pipeline],
            )
            .await
            .ok()
            .flatten()
            .and_then(|r| r.get(0));
        let around = near.unwrap_or(1);
        let statements = [
            format!("INSERT INTO big VALUES ({}, 'new', 1.5, 'ins') ON CONFLICT (id) DO UPDATE SET name = 'reinserted'", 300_000 + next(50_000)),
            format!("UPDATE big SET amount = amount + 1, note = 'upd' WHERE id = {}", next(300_000)),
            format!("DELETE FROM big WHERE id = {}", next(300_000)),
            format!("UPDATE big SET name = name || '+' WHERE id BETWEEN {} AND {}", around - 3, around + 3 + next(20)),
            format!("DELETE FROM big WHERE id = {}", around + next(100)),
            format!("INSERT INTO big VALUES ({}, 'gap', 2.5, 'gap') ON CONFLICT (id) DO NOTHING", around + next(100)),
        ];
        for sql in &statements {
            if client.batch_execute(sql).await.is_ok() {
                done += 1;
            }
        }
        // A steady writer, not a flood: the changelog it leaves must stay small enough to read back in the test.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done
}

async fn big_table_with_writer(hint: &str, kills: usize) {
    let db = philotes_testkit::shared().database(hint).expect("database");
    db.psql(
        "CREATE TABLE big (id bigint PRIMARY KEY, name text, amount numeric(12,2), note text);
         INSERT INTO big SELECT g, 'row ' || g, g * 0.25, NULL FROM generate_series(1, 300000) g;
         ANALYZE big;",
    )
    .expect("table");
    let pipeline = snapshot_pipeline(&db, &["public.big"], "{ chunk_rows: 20000, workers: 2 }");
    let mut run = pipeline.start_streaming(&db, &[], ENV, "run-0.log").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, name, stop) = (crate::support::connect(&db).await, pipeline.name.clone(), stop.clone());
        tokio::spawn(write_randomly(client, name, stop))
    };
    for kill in 1..=kills {
        let name = pipeline.name.clone();
        let target = kill as i64 * 3;
        run.wait_until(&format!("{target} chunks enqueued"), Duration::from_secs(300), || async {
            progress(&db, &name, "big").2 >= target
        })
        .await;
        run.kill();
        run = pipeline.start_streaming(&db, &[], ENV, &format!("run-{kill}.log")).await;
    }
    let name = pipeline.name.clone();
    run.wait_until("the snapshot done", Duration::from_secs(300), || async { progress(&db, &name, "big").0 == "done" }).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.expect("writer");
    assert!(writes > 100, "the writer kept writing during the snapshot ({writes} statements)");
    wait_snapshots_done(&db, &pipeline, &run, "INSERT INTO big VALUES (5000000, 'last', 0, 'last')").await;
    run.stop_cleanly().await;

    let rows = assert_latest_equals_source(
        &db,
        &pipeline,
        "big",
        "SELECT id::text, name, amount::text, note FROM big",
        &["id"],
        &["id", "name", "amount", "note"],
    )
    .await;
    let (_, rows_done, chunks, reads) = progress(&db, &pipeline.name, "big");
    // The equality above is the check that every row was read; this one only says the snapshot read the table
    // (the writer deletes rows just ahead of the chunks, and inserts new ones, so the count moves either way:
    // 299,988 was seen).
    assert!(rows_done >= 295_000, "the table was read ({rows_done})");
    // Two lanes of `big` read side by side, each with at most two chunks in flight (one being read, one being
    // written straight into Iceberg): a kill makes at most those four be read again.
    assert!(reads - chunks <= 4 * kills as i64, "at most two chunks per lane read again per kill: {reads} reads, {chunks} chunks, {kills} kills");
    let lanes = db
        .psql(&format!(
            "SELECT count(*) || ',' || bool_and(done) || ',' || sum(rows_done) FROM philotes.snapshot_lanes
             WHERE pipeline = '{}' AND source_table = 'big'",
            pipeline.name
        ))
        .expect("lanes");
    assert_eq!(lanes, format!("2,true,{rows_done}"), "big was read in two lanes, each to its end");
    let read_rows = rows.iter().filter(|r| r["_op"] == "r").count();
    assert!(read_rows > 250_000, "most rows arrived as 'r' ({read_rows})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_concurrent_writes_leaves_the_latest_image_of_every_key_equal_to_the_source() {
    big_table_with_writer("snap_writes", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_killed_three_times_resumes_at_its_next_chunk_and_still_equals_the_source() {
    big_table_with_writer("snap_kills", 3).await;
}

/// A capture killed right after a chunk's commit straight into Iceberg, before the chunk's progress moved in the
/// buffer: the restarted capture finds the chunk's marker in the table's history, moves the progress from it and
/// does not read or write the chunk again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_killed_between_a_chunks_commit_and_its_progress_writes_the_chunk_once() {
    let db = philotes_testkit::shared().database("snap_marker").expect("database");
    db.psql(
        "CREATE TABLE marked (id bigint PRIMARY KEY, v text);
         INSERT INTO marked SELECT g, 'v' || g FROM generate_series(1, 40000) g;
         ANALYZE marked;",
    )
    .expect("table");
    let pipeline = snapshot_pipeline(&db, &["public.marked"], "{ chunk_rows: 5000, workers: 2 }");
    let env: Vec<(&str, &str)> = ENV.iter().copied().chain([("PHILOTES_FAULT", "after-chunk-commit")]).collect();
    let faulty = pipeline.start(&[], &env, "faulty.log");
    let status = faulty.wait_exit(Duration::from_secs(120)).await;
    assert!(!status.success(), "the fault aborted the process");
    assert!(faulty.log().contains("fault injected at after-chunk-commit"), "{}", faulty.log());
    let (_, _, chunks_before, _) = progress(&db, &pipeline.name, "marked");
    let committed = read_with_iceberg_crate(&pipeline, "marked").await.len();
    assert!(committed >= 5000, "a chunk was committed before the abort ({committed} rows)");
    assert!((chunks_before as usize) * 5000 < committed, "the abort left a committed chunk without its progress");

    let run = pipeline.start_streaming(&db, &[], ENV, "run.log").await;
    wait_snapshots_done(&db, &pipeline, &run, "INSERT INTO marked VALUES (1000000, 'last')").await;
    run.stop_cleanly().await;
    assert!(run.log().contains("snapshot chunk found in iceberg"), "the restart moved the progress from the marker");
    let rows = assert_latest_equals_source(&db, &pipeline, "marked", "SELECT id::text, v FROM marked", &["id"], &["id", "v"]).await;
    let read = rows.iter().filter(|r| r["_op"] == "r").count();
    assert_eq!(read, 40_000, "every row once as 'r'");
    let (state, done, chunks, _) = progress(&db, &pipeline.name, "marked");
    // Two lanes of 20,000 rows: four full chunks each and the empty one that finds the lane's end.
    assert_eq!((state.as_str(), done, chunks), ("done", 40_000, 10), "the progress counts every chunk once");
}

/// A row the Iceberg table cannot hold (NaN in a decimal column) goes to the dead letters with its reason, and
/// every other row arrives once: the direct path sends such a chunk (and the table's later ones) through the
/// buffer, whose flush stores dead letters with its checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_row_iceberg_cannot_hold_goes_to_the_dead_letters_and_the_rest_arrives_once() {
    let db = philotes_testkit::shared().database("snap_letters").expect("database");
    db.psql(
        "CREATE TABLE odd (id int PRIMARY KEY, amount numeric(12,2));
         INSERT INTO odd SELECT g, g * 0.5 FROM generate_series(1, 6000) g;
         UPDATE odd SET amount = 'NaN' WHERE id = 4500;
         ANALYZE odd;",
    )
    .expect("table");
    let pipeline = snapshot_pipeline(&db, &["public.odd"], "{ chunk_rows: 1000, workers: 2 }");
    let run = pipeline.start_streaming(&db, &[], ENV, "run.log").await;
    wait_snapshots_done(&db, &pipeline, &run, "INSERT INTO odd VALUES (100000, 1)").await;
    run.wait_until("the dead letter stored", Duration::from_secs(60), || async {
        db.psql("SELECT count(*) FROM philotes.dead_letters").map(|n| n == "1").unwrap_or(false)
    })
    .await;
    run.stop_cleanly().await;
    assert!(run.log().contains("snapshot chunk cannot be written straight into iceberg"), "the direct path refused the chunk");
    let letter = db.psql("SELECT source_table || '|' || reason || '|' || payload FROM philotes.dead_letters").expect("dead letter");
    assert!(letter.starts_with("odd|") && letter.contains("4500"), "the dead letter names the table and holds the row: {letter}");
    let rows = read_with_iceberg_crate(&pipeline, "odd").await;
    let ids: Vec<&str> = rows.iter().filter(|r| r["_op"] == "r").filter_map(|r| r["id"].as_str()).collect();
    let distinct: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!((ids.len(), distinct.len()), (5999, 5999), "every other row once as 'r'");
    assert!(!distinct.contains("4500"));
    let (state, done, _, _) = progress(&db, &pipeline.name, "odd");
    assert_eq!((state.as_str(), done), ("done", 6000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_while_the_pipeline_runs_joins_with_every_row_once_on_request() {
    let db = philotes_testkit::shared().database("snap_request").expect("database");
    db.psql(
        "CREATE TABLE first (id int PRIMARY KEY, v text);
         INSERT INTO first SELECT g, 'f' || g FROM generate_series(1, 100) g;
         CREATE TABLE later (id int PRIMARY KEY, v text);
         INSERT INTO later SELECT g, 'l' || g FROM generate_series(1, 5000) g;",
    )
    .expect("tables");
    let pipeline = snapshot_pipeline(&db, &["public.first"], "{ chunk_rows: 1000, workers: 2 }");
    let run = pipeline.start_streaming(&db, &[], ENV, "run.log").await;
    wait_snapshots_done(&db, &pipeline, &run, "INSERT INTO first VALUES (101, 'after')").await;
    // The table joins the file's tables; the running pipeline is asked to snapshot it.
    pipeline.rewrite("tables: [public.first]", "tables: [public.first, public.later]");
    let file = pipeline.file.to_str().expect("path").to_string();
    let out = crate::support::philotes(&["snapshot", &file, "--table", "public.later"], &[]);
    assert!(out.status.success(), "philotes snapshot: {}", String::from_utf8_lossy(&out.stderr));
    wait_for("the requested snapshot done", Duration::from_secs(120), || async {
        db.psql(&format!("SELECT state FROM philotes.snapshots WHERE pipeline = '{}' AND source_table = 'later'", pipeline.name))
            .map(|v| v == "done")
            .unwrap_or(false)
    })
    .await;
    // Changes after the request stream in as well.
    db.psql("UPDATE later SET v = 'changed' WHERE id <= 10").expect("update");
    wait_snapshots_done(&db, &pipeline, &run, "DELETE FROM later WHERE id = 5000").await;
    run.stop_cleanly().await;
    let rows =
        assert_latest_equals_source(&db, &pipeline, "later", "SELECT id::text, v FROM later", &["id"], &["id", "v"]).await;
    assert_eq!(rows.iter().filter(|r| r["_op"] == "r").count(), 5000, "every row once, as 'r'");
    assert_latest_equals_source(&db, &pipeline, "first", "SELECT id::text, v FROM first", &["id"], &["id", "v"]).await;
}

/// A table the snapshot cannot read fails alone, with its reason in its progress row and in `status`: here one
/// dropped while it is being read, and one without a key or replica identity (its rows cannot be told apart).
/// The other table's snapshot and the stream go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_snapshot_cannot_read_fails_alone_and_the_rest_goes_on() {
    let db = philotes_testkit::shared().database("snap_bad").expect("database");
    db.psql(
        "CREATE TABLE good (id int PRIMARY KEY, v text);
         INSERT INTO good SELECT g, 'g' || g FROM generate_series(1, 3000) g;
         CREATE TABLE nokey (v int, w text);
         INSERT INTO nokey SELECT g, 'n' || g FROM generate_series(1, 10) g;
         CREATE TABLE doomed (id int PRIMARY KEY, v text);
         INSERT INTO doomed SELECT g, 'd' || g FROM generate_series(1, 200000) g;",
    )
    .expect("tables");
    let pipeline = snapshot_pipeline(&db, &["public.good", "public.nokey", "public.doomed"], "{ chunk_rows: 1000, workers: 1 }");
    let run = pipeline.start_streaming(&db, &[], ENV, "run.log").await;
    let name = pipeline.name.clone();
    let state = |table: &'static str| {
        let (db, name) = (&db, name.clone());
        move || {
            db.psql(&format!(
                "SELECT state || ':' || coalesce(error, '') FROM philotes.snapshots WHERE pipeline = '{name}' AND source_table = '{table}'"
            ))
            .unwrap_or_default()
        }
    };
    run.wait_until("doomed being read", Duration::from_secs(120), || async { progress(&db, &name, "doomed").2 >= 1 }).await;
    db.psql("DROP TABLE doomed").expect("drop");
    let doomed = state("doomed");
    run.wait_until("doomed failed", Duration::from_secs(120), || async { doomed().starts_with("failed:") }).await;
    assert!(doomed().contains("doomed") && doomed().contains("no longer exists"), "the reason names the table: {}", doomed());
    // A table whose rows cannot be told apart is not captured at all (its UPDATEs would fail once published):
    // no snapshot is requested for it, and `status` names it with the reason and the fix.
    assert_eq!(state("nokey")(), "", "no snapshot of nokey");
    let file = pipeline.file.to_str().expect("path").to_string();
    let status = crate::support::philotes(&["status", &file], &[]);
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        status.lines().any(|l| l.contains("nokey") && l.contains("primary key")),
        "status names nokey and why it is not captured:\n{status}"
    );
    assert!(status.lines().any(|l| l.contains("doomed") && l.contains("no longer exists")), "status shows the failed snapshot:\n{status}");
    let good = state("good");
    run.wait_until("good done", Duration::from_secs(120), || async { good().starts_with("done:") }).await;
    // The stream goes on.
    db.psql("UPDATE good SET v = 'changed' WHERE id <= 10").expect("update");
    let after = last_commit(&db, "INSERT INTO good VALUES (3001, 'after')");
    run.wait_until("every change in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    run.stop_cleanly().await;
    let rows = assert_latest_equals_source(&db, &pipeline, "good", "SELECT id::text, v FROM good", &["id"], &["id", "v"]).await;
    assert_eq!(rows.iter().filter(|r| r["_op"] == "r").count(), 3000, "every row of good once, as 'r'");
}
