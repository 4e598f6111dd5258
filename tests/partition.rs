//! Partitioned Iceberg tables (`sink.iceberg.tables.<t>.partition`): a real PostgreSQL, the real binary, a real
//! warehouse and the SQL catalog; read back with the iceberg crate, pyiceberg and DuckDB. Besides the rows, each
//! test opens the table's manifests: every data file carries partition values that match each of its rows, and
//! a flush writes one file per partition it touches.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use futures::TryStreamExt;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::spec::{DataContentType, Struct, Transform};
use iceberg::table::Table;
use philotes_stages::fault;
use philotes_testkit::TestDatabase;

use crate::flush::{self, drained, last_commit, python, read_with_duckdb, Pipeline};
use crate::mirror::{assert_compacted_mirror_equals_source, assert_mirror_equals_source, mirror_pipeline};
use crate::snapshot::wait_snapshots_done;
use crate::support::{assert_status_clean, philotes};

/// Gives `table` (of schema `public`) the partition spec `fields` (YAML list items, quoted) in the pipeline file.
pub fn partition(pipeline: &Pipeline, table: &str, fields: &str) {
    let yaml = std::fs::read_to_string(&pipeline.file).expect("pipeline file");
    let entry = format!("      public.{table}: {{ partition: [ {fields} ] }}\n");
    match yaml.contains("    tables:\n") {
        true => pipeline.rewrite("    tables:\n", &format!("    tables:\n{entry}")),
        false => pipeline.rewrite("    namespace: lake\n", &format!("    namespace: lake\n    tables:\n{entry}")),
    }
}

async fn load(pipeline: &Pipeline, table: &str) -> Table {
    let catalog = philotes_stages::catalog::connect(&pipeline.catalog()).await.expect("catalog");
    let ident = iceberg::TableIdent::from_strs(["lake", table]).expect("ident");
    catalog.load_table(&ident).await.expect("table exists")
}

/// A live file of a table as its manifest lists it.
#[derive(Debug)]
struct LiveFile {
    /// The snapshot that added it (one flush).
    snapshot: i64,
    /// Its manifest's partition spec.
    spec: i32,
    partition: Struct,
    content: DataContentType,
    path: String,
}

/// Every live file of `table`'s current snapshot.
async fn live_files(table: &Table) -> Vec<LiveFile> {
    let snapshot = table.metadata().current_snapshot().expect("a snapshot").clone();
    let list = table.manifest_list_reader(&snapshot).load().await.expect("manifest list");
    let mut files = Vec::new();
    for manifest_file in list.entries() {
        let manifest = manifest_file.load_manifest(table.file_io()).await.expect("manifest");
        let spec = manifest.metadata().partition_spec().spec_id();
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            files.push(LiveFile {
                snapshot: entry.snapshot_id().expect("snapshot id"),
                spec,
                partition: entry.data_file().partition().clone(),
                content: entry.data_file().content_type(),
                path: entry.data_file().file_path().to_string(),
            });
        }
    }
    files
}

/// Reads every data file of `table` on its own (no deletes applied) and asserts that each of its rows has the
/// file's partition values under the file's spec (as its manifest lists them); returns the number of rows read.
async fn assert_rows_match_their_files(table: &Table) -> usize {
    let listed: BTreeMap<String, (i32, Struct)> =
        live_files(table).await.into_iter().map(|f| (f.path, (f.spec, f.partition))).collect();
    let tasks: Vec<_> = table.scan().select_all().build().expect("scan").plan_files().await.expect("plan").try_collect().await.expect("tasks");
    let mut rows = 0;
    for mut task in tasks {
        task.deletes.clear();
        let path = task.data_file_path.clone();
        let (spec, partition) = listed.get(&path).cloned().expect("a listed file");
        let spec = table.metadata().partition_spec_by_id(spec).expect("the file's spec").clone();
        let stream = futures::stream::iter(vec![Ok(task)]);
        let batches: Vec<_> = table
            .reader_builder()
            .build()
            .read(Box::pin(stream))
            .expect("read")
            .stream()
            .try_collect()
            .await
            .expect("batches");
        if spec.is_unpartitioned() {
            assert!(partition.fields().is_empty(), "{path}: partition values in an unpartitioned spec");
            rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
            continue;
        }
        let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(table.metadata().current_schema().clone(), spec.clone())
            .expect("splitter");
        for batch in batches {
            rows += batch.num_rows();
            for (key, _) in splitter.split(&batch).expect("split") {
                assert_eq!(key.data(), &partition, "{path}: a row of another partition (spec {})", spec.spec_id());
            }
        }
    }
    rows
}

/// Asserts no flush wrote two data files of one partition (nothing here is big enough to roll a file) and at
/// least one wrote several; returns the data files.
fn assert_one_file_per_partition_per_flush<'a>(files: &'a [LiveFile], table: &str) -> Vec<&'a LiveFile> {
    let data: Vec<&LiveFile> = files.iter().filter(|f| f.content == DataContentType::Data).collect();
    let mut seen = HashSet::new();
    let mut per_snapshot: BTreeMap<i64, usize> = BTreeMap::new();
    for file in &data {
        assert!(seen.insert((file.snapshot, file.spec, file.partition.clone())), "{table}: two files of {:?} in one flush", file.partition);
        *per_snapshot.entry(file.snapshot).or_default() += 1;
    }
    assert!(per_snapshot.values().any(|n| *n > 1), "{table}: a flush of rows of many partitions wrote several files: {per_snapshot:?}");
    data
}

/// Asserts `lake.<table>` is partitioned and each of its data files holds only rows of its partition.
pub async fn assert_partitioned(pipeline: &Pipeline, table: &str) {
    let loaded = load(pipeline, table).await;
    assert!(!loaded.metadata().default_partition_spec().is_unpartitioned(), "{table} is partitioned");
    let files = live_files(&loaded).await;
    assert!(files.iter().filter(|f| f.content == DataContentType::Data).all(|f| !f.partition.fields().is_empty()), "{table}: data files carry partition values");
    assert_rows_match_their_files(&loaded).await;
}

/// The files pyiceberg plans for a scan of `table` with `filter`, and for the whole table.
fn planned_files(pipeline: &Pipeline, table: &str, filter: &str) -> (usize, usize) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/plan_files.py");
    let out = Command::new(python())
        .args([script, &pipeline.catalog_url, "philotes", &format!("lake.{table}"), filter])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "plan_files.py: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<usize> = text.split_whitespace().map(|n| n.parse().expect("a count")).collect();
    (counts[0], counts[1])
}

/// Asserts pyiceberg's scan with `filter` plans fewer files than the table has.
fn assert_scan_prunes(pipeline: &Pipeline, table: &str, filter: &str) {
    let (filtered, all) = planned_files(pipeline, table, filter);
    assert!(filtered >= 1 && filtered < all, "{table}: a scan with {filter:?} planned {filtered} of {all} files");
    eprintln!("{table}: pyiceberg planned {filtered} of {all} data files for {filter:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_changelog_table_holds_every_change_in_one_file_per_partition_per_flush() {
    let db = philotes_testkit::shared().database("partition_changelog").expect("database");
    db.psql(flush::SCHEMA).expect("schema");
    flush::create_table(&db, "orders");
    flush::create_table(&db, "customers");
    let pipeline = Pipeline::new(&db, &["public.orders", "public.customers"], "{ workers: 2, max_events: 1000, interval: 200ms }");
    partition(&pipeline, "orders", "\"day(created)\", \"bucket(4, id)\"");
    let validate = philotes(&["validate", pipeline.file.to_str().expect("utf-8")], &[]);
    assert!(validate.status.success(), "the file validates: {}", String::from_utf8_lossy(&validate.stderr));
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    flush::workload(&db);
    // A row without `created` lands in the null partition of the day field.
    let after = last_commit(&db, "INSERT INTO orders (id, name) VALUES (5000, 'no date'); UPDATE orders SET note = 'n' WHERE id = 5000");
    run.wait_until("every change in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;

    let (crate_rows, _) = flush::assert_both_readers_see_the_source(&db, &pipeline, "orders").await;
    assert_eq!(read_with_duckdb(&pipeline, "orders").len(), crate_rows.len(), "DuckDB reads every row");
    flush::assert_both_readers_see_the_source(&db, &pipeline, "customers").await;

    let table = load(&pipeline, "orders").await;
    let spec = table.metadata().default_partition_spec();
    let fields: Vec<_> = spec.fields().iter().map(|f| (f.name.as_str(), f.transform)).collect();
    assert_eq!(fields, [("created_day", Transform::Day), ("id_bucket", Transform::Bucket(4))]);
    let files = live_files(&table).await;
    let data = assert_one_file_per_partition_per_flush(&files, "orders");
    assert!(data.iter().all(|f| f.spec == spec.spec_id() && f.partition.fields().len() == 2), "every file in the spec");
    assert_eq!(assert_rows_match_their_files(&table).await, crate_rows.len());
    assert!(data.iter().any(|f| f.partition.fields()[0].is_none()), "the rows without `created` are in the null partition");
    assert_scan_prunes(&pipeline, "orders", "id = 5");
    assert_scan_prunes(&pipeline, "orders", "created >= '2024-03-12T00:00:00+00:00' and created < '2024-03-13T00:00:00+00:00'");
    // The unpartitioned table next to it is as before.
    let customers = load(&pipeline, "customers").await;
    assert!(customers.metadata().default_partition_spec().is_unpartitioned());
}

/// One round of random changes to `events`: inserts on random days, updates that move a row to another day
/// (another partition) or change its key, deletes, and transactions changing one key several times.
async fn round(client: &tokio_postgres::Client, random: &mut u64, round: u64) {
    let mut next = |n: u64| {
        *random ^= *random << 13;
        *random ^= *random >> 7;
        *random ^= *random << 17;
        *random % n
    };
    let base = round * 1000;
    let mut sql = String::new();
    for i in 0..40 {
        sql += &format!(
            "INSERT INTO events VALUES ({}, '2026-01-01 00:00:00+00'::timestamptz + {} * interval '1 hour', 'k{}', {i});",
            base + 10_000 + i,
            next(24 * 10),
            next(3)
        );
    }
    for _ in 0..20 {
        sql += &format!("UPDATE events SET v = v + 1 WHERE id = {};", next(300) + 1);
    }
    for _ in 0..10 {
        sql += &format!("UPDATE events SET created = created + {} * interval '1 day' WHERE id = {};", next(5) + 1, next(300) + 1);
    }
    for _ in 0..3 {
        sql += &format!("UPDATE events SET id = id + 100000 WHERE id = {};", next(300) + 1);
    }
    for _ in 0..10 {
        sql += &format!("DELETE FROM events WHERE id = {};", next(400) + 1);
    }
    client.batch_execute(&sql).await.expect("changes");
    let key = base + 20_000;
    client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO events VALUES ({key}, '2026-01-02 00:00:00+00', 'a', 1);
             UPDATE events SET created = created + interval '3 days' WHERE id = {key};
             UPDATE events SET v = 3 WHERE id = {key}; COMMIT;
             BEGIN; DELETE FROM events WHERE id = 7; INSERT INTO events VALUES (7, '2026-01-0{} 12:00:00+00', 'again', {round}); COMMIT;",
            round % 9 + 1
        ))
        .await
        .expect("transactions");
}

const EVENTS: &str = "SELECT id::text AS id, to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' AS created,
                             kind, v::text AS v FROM events";

/// A database with `events` (300 rows over ten days) and `marks` (markers), and a mirror pipeline of both.
fn events_mirror(hint: &str) -> (TestDatabase, Pipeline) {
    let db = philotes_testkit::shared().database(hint).expect("database");
    db.psql(
        "CREATE TABLE events (id bigint PRIMARY KEY, created timestamptz, kind text, v int);
         INSERT INTO events SELECT g, '2026-01-01 00:00:00+00'::timestamptz + g * interval '50 minutes', 'k' || (g % 3), g
         FROM generate_series(1, 300) g;
         CREATE TABLE marks (n serial PRIMARY KEY, k text);",
    )
    .expect("schema");
    let pipeline = mirror_pipeline(&db, &["events", "marks"]);
    (db, pipeline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_mirror_table_equals_the_source_and_compacts_per_partition() {
    let (db, pipeline) = events_mirror("partition_mirror");
    partition(&pipeline, "events", "\"day(created)\", \"bucket(4, id)\"");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    wait_snapshots_done(&db, &pipeline, &run, "INSERT INTO marks (k) VALUES ('marker')").await;
    let client = db.connect().await.expect("connect");
    let mut random = 0x9e37_79b9_7f4a_7c15_u64;
    for r in 1..=4 {
        round(&client, &mut random, r).await;
        let after = last_commit(&db, &format!("INSERT INTO marks (k) VALUES ('round {r}')"));
        run.wait_until("the round in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    }
    assert_mirror_equals_source(&db, &pipeline, "events", EVENTS, &["id"]).await;

    let table = load(&pipeline, "events").await;
    let files = live_files(&table).await;
    assert_one_file_per_partition_per_flush(&files, "events");
    let default = table.metadata().default_partition_spec_id();
    let deletes: Vec<_> = files.iter().filter(|f| f.content == DataContentType::EqualityDeletes).collect();
    assert!(!deletes.is_empty(), "updates and deletes wrote equality deletes");
    for file in &deletes {
        let spec = table.metadata().partition_spec_by_id(file.spec).expect("the delete file's spec");
        assert!(spec.is_unpartitioned() && file.spec != default && file.partition.fields().is_empty(), "a global delete: {file:?}");
    }
    assert!(files.iter().filter(|f| f.content == DataContentType::Data).all(|f| f.spec == default));
    assert_rows_match_their_files(&table).await;

    // Compaction rewrites the table in its spec: one file per partition, no deletes; pyiceberg reads it too and
    // prunes by partition.
    let file = pipeline.file.to_str().expect("utf-8 path").to_string();
    let compact = philotes(&["compact", &file, "--min-files", "1", "--table", "public.events"], &[]);
    assert!(compact.status.success(), "{}{}", String::from_utf8_lossy(&compact.stdout), String::from_utf8_lossy(&compact.stderr));
    let table = load(&pipeline, "events").await;
    let files = live_files(&table).await;
    assert!(files.iter().all(|f| f.content == DataContentType::Data && f.spec == default), "only data files, in the default spec");
    let partitions: HashSet<_> = files.iter().map(|f| f.partition.clone()).collect();
    assert_eq!(partitions.len(), files.len(), "one file per partition after compaction");
    assert!(files.len() > 10, "the rows span many partitions: {}", files.len());
    assert_rows_match_their_files(&table).await;
    assert_compacted_mirror_equals_source(&db, &pipeline, "events", EVENTS, &["id"]).await;
    assert_scan_prunes(&pipeline, "events", "id = 5");

    // Changes after the compaction still land (deletes of keys whose rows are in compacted files).
    round(&client, &mut random, 5).await;
    let after = last_commit(&db, "INSERT INTO marks (k) VALUES ('round 5')");
    run.wait_until("the round in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_mirror_equals_source(&db, &pipeline, "events", EVENTS, &["id"]).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_partition_spec_takes_new_files_while_old_files_keep_theirs() {
    let db = philotes_testkit::shared().database("partition_respec").expect("database");
    db.psql(flush::SCHEMA).expect("schema");
    flush::create_table(&db, "orders");
    let pipeline = Pipeline::new(&db, &["public.orders"], "{ workers: 1, max_events: 1000, interval: 200ms }");
    partition(&pipeline, "orders", "\"day(created)\"");
    let insert = |from: i64| {
        format!(
            "INSERT INTO orders (id, name, created) SELECT g, 'o' || g, '2026-01-01 00:00:00+00'::timestamptz + g * interval '3 hours'
             FROM generate_series({from}, {from} + 99) g"
        )
    };
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    db.psql(&insert(1)).expect("rows");
    let after = last_commit(&db, "UPDATE orders SET name = 'first' WHERE id = 1");
    run.wait_until("the first rows in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    run.stop_cleanly().await;
    let before = load(&pipeline, "orders").await.metadata().default_partition_spec_id();

    // The same table, now bucketed by id: a new spec, the old files untouched.
    pipeline.rewrite("{ partition: [ \"day(created)\" ] }", "{ partition: [ \"bucket(4, id)\", \"month(created)\" ] }");
    let run = pipeline.start_streaming(&db, &[], &[], "run2.log").await;
    db.psql(&insert(101)).expect("rows");
    db.psql("UPDATE orders SET name = 'moved' WHERE id % 10 = 0").expect("updates");
    let after = last_commit(&db, "DELETE FROM orders WHERE id = 2");
    run.wait_until("the new rows in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;

    let table = load(&pipeline, "orders").await;
    let metadata = table.metadata();
    let now = metadata.default_partition_spec_id();
    assert_ne!(now, before, "a new spec id");
    let fields: Vec<_> = metadata.default_partition_spec().fields().iter().map(|f| (f.name.as_str(), f.transform)).collect();
    assert_eq!(fields, [("id_bucket", Transform::Bucket(4)), ("created_month", Transform::Month)]);
    let old = metadata.partition_spec_by_id(before).expect("the old spec stays");
    assert_eq!(old.fields().iter().map(|f| f.transform).collect::<Vec<_>>(), [Transform::Day]);
    let files = live_files(&table).await;
    let specs: HashSet<i32> = files.iter().map(|f| f.spec).collect();
    assert_eq!(specs, HashSet::from([before, now]), "old files keep their spec, new ones have the new one");
    for file in &files {
        let arity = if file.spec == before { 1 } else { 2 };
        assert_eq!(file.partition.fields().len(), arity, "{file:?}");
    }
    let (crate_rows, _) = flush::assert_both_readers_see_the_source(&db, &pipeline, "orders").await;
    assert_eq!(assert_rows_match_their_files(&table).await, crate_rows.len());
    assert_eq!(read_with_duckdb(&pipeline, "orders").len(), crate_rows.len(), "DuckDB reads every row");

    // Without `partition`, new files are unpartitioned again (a third spec: unpartitioned, not spec 0's day).
    pipeline.rewrite("    tables:\n      public.orders: { partition: [ \"bucket(4, id)\", \"month(created)\" ] }\n", "");
    let run = pipeline.start_streaming(&db, &[], &[], "run3.log").await;
    db.psql(&insert(201)).expect("rows");
    let after = last_commit(&db, "DELETE FROM orders WHERE id = 3");
    run.wait_until("the last rows in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    let table = load(&pipeline, "orders").await;
    let last = table.metadata().default_partition_spec();
    assert!(last.is_unpartitioned() && ![before, now].contains(&last.spec_id()), "a new unpartitioned spec: {}", last.spec_id());
    let specs: HashSet<i32> = live_files(&table).await.iter().map(|f| f.spec).collect();
    assert_eq!(specs, HashSet::from([before, now, last.spec_id()]));
    let (crate_rows, _) = flush::assert_both_readers_see_the_source(&db, &pipeline, "orders").await;
    assert_eq!(assert_rows_match_their_files(&table).await, crate_rows.len());
    assert_eq!(read_with_duckdb(&pipeline, "orders").len(), crate_rows.len(), "DuckDB reads every row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_spec_the_table_cannot_take_stops_that_table_alone() {
    let db = philotes_testkit::shared().database("partition_refused").expect("database");
    db.psql(flush::SCHEMA).expect("schema");
    flush::create_table(&db, "orders");
    flush::create_table(&db, "customers");
    let pipeline = Pipeline::new(&db, &["public.orders", "public.customers"], "{ workers: 2, max_events: 1000, interval: 200ms }");
    partition(&pipeline, "orders", "\"hour(name)\"");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    db.psql("INSERT INTO orders (id, name) VALUES (1, 'a'); INSERT INTO customers (id, name) VALUES (1, 'b')").expect("rows");
    let status = run
        .wait_until("orders stopped", Duration::from_secs(120), || async {
            let status = crate::support::status_json(&pipeline.file);
            let orders = crate::support::status_table(&status, "public.orders");
            orders["error"].as_str().map(str::to_string)
        })
        .await;
    assert!(
        status.contains("hour(name)") && status.contains("lake.orders") && status.contains("\"name\"") && status.contains("string"),
        "the reason names the expression, table, column and type: {status}"
    );
    run.wait_until("customers in iceberg", Duration::from_secs(60), || async {
        db.psql(&format!("SELECT count(*) = 0 FROM philotes.segments WHERE pipeline = '{}' AND source_table = 'customers'", pipeline.name))
            .is_ok_and(|v| v == "t")
    })
    .await;
    run.stop_cleanly().await;
    assert_eq!(flush::read_with_iceberg_crate(&pipeline, "customers").await.len(), 1, "the other table goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_flusher_killed_after_parquet_written_loses_and_doubles_nothing() {
    crate::flush_faults::crash_at_is_repaired_on_restart(fault::AFTER_PARQUET, false, false, Some(BY_BUCKET_AND_DAY)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_mirror_flusher_killed_after_iceberg_commit_writes_nothing_twice() {
    crate::flush_faults::crash_at_is_repaired_on_restart(fault::AFTER_ICEBERG_COMMIT, true, false, Some(BY_BUCKET_AND_DAY)).await;
}

/// The crash tests' spec: their rows are seconds apart on one day, so the buckets spread them.
const BY_BUCKET_AND_DAY: &str = "\"bucket(4, id)\", \"day(created)\"";

/// `examples/partitions.yaml` runs as it is against the quick start's tables (`scripts/quickstart` makes them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partitions_example_runs_against_the_quickstart_tables() {
    let db = philotes_testkit::shared().database("partition_example").expect("database");
    db.psql(
        "CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL, tags text[]);
         INSERT INTO public.customers (name, tags) SELECT 'customer-' || g, ARRAY['tier' || (g % 3)] FROM generate_series(1, 10) g;
         CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                                     created_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO public.orders (customer, amount, created_at)
         SELECT 'customer-' || g, (g * 7 % 1000) / 10.0, now() - g * interval '7 hours' FROM generate_series(1, 100) g;",
    )
    .expect("quick-start tables");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/partitions.yaml");
    let dir = std::env::temp_dir().join(format!("philotes-partition-example-{}", db.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let warehouse = format!("file://{}", dir.join("warehouse").display());
    let env = [("SOURCE_URL", db.url()), ("WAREHOUSE", warehouse.clone())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = crate::support::Philotes::start(std::path::Path::new(example), &["--metrics", "127.0.0.1:0"], &env, dir.join("run.log"));
    let name = "quickstart_partitions";
    run.wait_until("the snapshots in iceberg", Duration::from_secs(120), || async {
        db.psql(&format!("SELECT count(*) = 2 FROM philotes.snapshots WHERE pipeline = '{name}' AND state = 'done'")).is_ok_and(|v| v == "t")
    })
    .await;
    db.psql("UPDATE public.orders SET amount = amount + 1 WHERE id % 3 = 0; DELETE FROM public.orders WHERE id % 10 = 0;")
        .expect("changes");
    let after = last_commit(&db, "UPDATE public.customers SET name = name || '!' WHERE id = 1");
    run.wait_until("the changes in iceberg", Duration::from_secs(120), || async { drained(&db, name, &after) }).await;
    run.stop_cleanly().await;

    let settings = philotes_stages::catalog::CatalogSettings::Sql {
        name: "philotes".into(),
        uri: db.url(),
        warehouse,
        props: Default::default(),
    };
    let catalog = philotes_stages::catalog::connect(&settings).await.expect("catalog");
    for (table, rows) in [("orders", 90), ("customers_changes", 11)] {
        let ident = iceberg::TableIdent::from_strs(["partitioned", table]).expect("ident");
        let loaded = catalog.load_table(&ident).await.expect("table exists");
        assert!(!loaded.metadata().default_partition_spec().is_unpartitioned(), "{table} is partitioned");
        let data = live_files(&loaded).await.into_iter().filter(|f| f.content == DataContentType::Data).collect::<Vec<_>>();
        assert!(data.iter().all(|f| !f.partition.fields().is_empty()), "{table}: files carry partition values");
        // The orders were created over 29 days: a file per day at least.
        assert!(table != "orders" || data.len() >= 29, "{table}: a file per partition, {} files", data.len());
        assert_rows_match_their_files(&loaded).await;
        let read: usize = loaded
            .scan()
            .select_all()
            .build()
            .expect("scan")
            .to_arrow()
            .await
            .expect("stream")
            .try_fold(0, |n, b| async move { Ok(n + b.num_rows()) })
            .await
            .expect("rows");
        assert_eq!(read, rows, "{table}: rows read back");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same through a REST catalog: the table created with its spec, the unpartitioned spec for the deletes
/// added by a commit request, row deltas committed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_mirror_flusher_on_a_rest_catalog_killed_after_parquet_written_loses_and_doubles_nothing() {
    crate::flush_faults::crash_at_is_repaired_on_restart(fault::AFTER_PARQUET, true, true, Some(BY_BUCKET_AND_DAY)).await;
}

/// A mirror table made unpartitioned and partitioned later: its first spec (unpartitioned) keeps the old data
/// files and takes the new equality deletes, which still hit rows of every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_table_partitioned_later_stays_equal_to_the_source() {
    let (db, pipeline) = events_mirror("partition_mirror_respec");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    wait_snapshots_done(&db, &pipeline, &run, "INSERT INTO marks (k) VALUES ('marker')").await;
    let client = db.connect().await.expect("connect");
    let mut random = 0x2545_f491_4f6c_dd1d_u64;
    round(&client, &mut random, 1).await;
    let after = last_commit(&db, "INSERT INTO marks (k) VALUES ('round 1')");
    run.wait_until("round 1 in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    run.stop_cleanly().await;

    partition(&pipeline, "events", "\"day(created)\"");
    let run = pipeline.start_streaming(&db, &[], &[], "run2.log").await;
    for r in 2..=3 {
        round(&client, &mut random, r).await;
        let after = last_commit(&db, &format!("INSERT INTO marks (k) VALUES ('round {r}')"));
        run.wait_until("the round in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    }
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    assert_mirror_equals_source(&db, &pipeline, "events", EVENTS, &["id"]).await;

    let table = load(&pipeline, "events").await;
    let default = table.metadata().default_partition_spec_id();
    assert_ne!(default, 0, "a new spec");
    let files = live_files(&table).await;
    let data_specs: HashSet<i32> = files.iter().filter(|f| f.content == DataContentType::Data).map(|f| f.spec).collect();
    assert_eq!(data_specs, HashSet::from([0, default]), "old data files in spec 0, new ones in the new spec");
    assert!(files.iter().filter(|f| f.content == DataContentType::EqualityDeletes).all(|f| f.spec == 0), "deletes are global");
    assert_eq!(table.metadata().partition_specs_iter().count(), 2, "no second unpartitioned spec");
    assert_rows_match_their_files(&table).await;

    // Compaction rewrites the files of both specs into the new one.
    let file = pipeline.file.to_str().expect("utf-8 path").to_string();
    let compact = philotes(&["compact", &file, "--min-files", "1", "--table", "public.events"], &[]);
    assert!(compact.status.success(), "{}{}", String::from_utf8_lossy(&compact.stdout), String::from_utf8_lossy(&compact.stderr));
    let table = load(&pipeline, "events").await;
    assert!(live_files(&table).await.iter().all(|f| f.content == DataContentType::Data && f.spec == default), "all in the new spec");
    assert_rows_match_their_files(&table).await;
    assert_compacted_mirror_equals_source(&db, &pipeline, "events", EVENTS, &["id"]).await;
}
