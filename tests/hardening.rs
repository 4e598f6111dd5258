//! Nothing lost silently in ordinary situations (issue 8): renames, partitioned tables, `tables: all` on the
//! buffer's own database, keyless tables, an unmappable column, generated columns, two tables for one Iceberg
//! table. Each test runs the real binary on a real PostgreSQL and reads the lake back.

use std::time::Duration;

use philotes_testkit::TestDatabase;

use crate::flush::{
    assert_both_readers_hold, create_table, drained, expected_history_of, last_commit, read_with_iceberg_crate, Pipeline, SCHEMA,
};
use crate::support::{assert_status_clean, database, philotes, pipeline_file, status_json, status_table, Philotes};

const FLUSH: &str = "{ workers: 2, max_events: 1000, interval: 200ms }";

/// Waits until `run` has everything up to the transaction marked by `after` (see [`last_commit`]) in Iceberg.
async fn wait_drained(run: &Philotes, db: &TestDatabase, pipeline: &Pipeline, after: &str) {
    run.wait_until("the changes in iceberg", Duration::from_secs(90), || async { drained(db, &pipeline.name, after) }).await;
}

/// The Iceberg tables of the pipeline's catalog, as `namespace.table`.
fn iceberg_tables(db: &TestDatabase) -> Vec<String> {
    db.psql("SELECT table_namespace || '.' || table_name FROM iceberg_tables ORDER BY 1")
        .expect("catalog")
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_table_keeps_flowing_into_the_same_iceberg_table_also_after_a_restart() {
    let db = database("hard_rename");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    let pipeline = Pipeline::new(&db, &["public.orders"], FLUSH);
    let run = pipeline.start_streaming(&db, &[], &[], "run-1.log").await;
    db.psql("INSERT INTO orders (id, name) SELECT g, 'before ' || g FROM generate_series(1, 3) g").expect("insert");
    db.psql("ALTER TABLE orders RENAME TO orders_v2").expect("rename");
    db.psql("INSERT INTO orders_v2 (id, name) VALUES (4, 'after'), (5, 'after')").expect("insert after rename");
    let after = last_commit(&db, "UPDATE orders_v2 SET name = 'renamed and updated' WHERE id = 1");
    wait_drained(&run, &db, &pipeline, &after).await;
    let status = status_json(&pipeline.file);
    assert_eq!(status_table(&status, "public.orders")["renamed_to"], "public.orders_v2", "status shows the rename: {status}");
    run.stop_cleanly().await;

    // A restart finds the table by its OID (its configured name is gone) and goes on: it keeps running, and the
    // change made after it reaches Iceberg.
    let run = pipeline.start_streaming(&db, &[], &[], "run-2.log").await;
    let after = last_commit(&db, "DELETE FROM orders_v2 WHERE id = 5");
    wait_drained(&run, &db, &pipeline, &after).await;
    let status = status_json(&pipeline.file);
    run.stop_cleanly().await;
    let table = status_table(&status, "public.orders");
    assert_eq!(table["renamed_to"], "public.orders_v2", "status shows the rename: {status}");
    assert!(table["error"].is_null() && table["problem"].is_null(), "the restart found the renamed table: {status}");

    // The file follows the rename: the table keeps its first name, and its Iceberg table.
    pipeline.rewrite("tables: [public.orders]", "tables: [public.orders_v2]");
    let run = pipeline.start_streaming(&db, &[], &[], "run-3.log").await;
    let after = last_commit(&db, "INSERT INTO orders_v2 (id, name) VALUES (6, 'listed under its new name')");
    wait_drained(&run, &db, &pipeline, &after).await;
    run.stop_cleanly().await;

    assert_both_readers_hold(&pipeline, "orders", &expected_history_of(&db, &["orders", "orders_v2"])).await;
    assert_eq!(iceberg_tables(&db), vec!["lake.orders"], "no second Iceberg table for the new name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_arrives_under_its_root_with_partitions_attached_later_and_starts_again() {
    let db = database("hard_partitioned");
    db.psql(SCHEMA).expect("schema");
    db.psql(
        "CREATE TABLE m (id bigint PRIMARY KEY, name text, amount numeric(12,2), flag boolean, created timestamptz,
                         payload jsonb, tags text[], note text) PARTITION BY RANGE (id);
         CREATE TABLE m_low PARTITION OF m FOR VALUES FROM (0) TO (100);
         CREATE TABLE m_high PARTITION OF m FOR VALUES FROM (100) TO (200);
         ALTER TABLE m REPLICA IDENTITY FULL; ALTER TABLE m_low REPLICA IDENTITY FULL; ALTER TABLE m_high REPLICA IDENTITY FULL;
         CREATE TRIGGER m_rows AFTER INSERT OR UPDATE OR DELETE ON m FOR EACH ROW EXECUTE FUNCTION record_change();",
    )
    .expect("partitioned table");
    let pipeline = Pipeline::new(&db, &["public.m"], FLUSH);
    let run = pipeline.start_streaming(&db, &[], &[], "run-1.log").await;
    db.psql("INSERT INTO m (id, name) SELECT g, 'row ' || g FROM generate_series(95, 104) g").expect("insert");
    db.psql("CREATE TABLE m_later PARTITION OF m FOR VALUES FROM (200) TO (300); ALTER TABLE m_later REPLICA IDENTITY FULL")
        .expect("partition attached later");
    db.psql("INSERT INTO m (id, name) VALUES (250, 'in the later partition')").expect("insert later");
    let after = last_commit(&db, "UPDATE m SET name = 'moved' WHERE id = 99");
    wait_drained(&run, &db, &pipeline, &after).await;
    run.stop_cleanly().await;

    // The second start used to fail with "relation … is already member of publication".
    let run = pipeline.start_streaming(&db, &[], &[], "run-2.log").await;
    let after = last_commit(&db, "DELETE FROM m WHERE id IN (100, 250)");
    wait_drained(&run, &db, &pipeline, &after).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;

    assert_both_readers_hold(&pipeline, "m", &expected_history_of(&db, &["m_low", "m_high", "m_later"])).await;
    assert_eq!(iceberg_tables(&db), vec!["lake.m"], "partitions never become tables of their own");

    // Listing a partition itself is refused with the way out.
    let db2 = database("hard_partition_listed");
    db2.psql("CREATE TABLE p (id int PRIMARY KEY) PARTITION BY RANGE (id); CREATE TABLE p_1 PARTITION OF p FOR VALUES FROM (0) TO (10)")
        .expect("schema");
    let file = pipeline_file(&db2, &["public.p_1"], &[], "{ max_events: 10 }");
    let capture = Philotes::capture(&file, 0);
    let status = capture.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success());
    let log = capture.log();
    // Kept on the log: the refusal is the product here, and its wording names the way out.
    assert!(log.contains("public.p_1 is a partition of public.p") && log.contains("list public.p"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_all_takes_every_user_table_never_philotes_own_and_is_quiet_while_the_source_is() {
    let db = database("hard_all");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    db.psql("CREATE TABLE nokey (id int, v text)").expect("keyless table");
    let pipeline = Pipeline::new(&db, &["all"], FLUSH);
    pipeline.rewrite("tables: [all]", "tables: all");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    db.psql("INSERT INTO orders (id, name) SELECT g, 'order ' || g FROM generate_series(1, 5) g").expect("insert");
    // A keyless table is never published: the application's own UPDATE and DELETE keep working.
    db.psql("INSERT INTO nokey VALUES (1, 'a'); UPDATE nokey SET v = 'b'; DELETE FROM nokey").expect("the application's writes on a keyless table");
    // A table created while the pipeline runs joins it.
    create_table(&db, "later");
    tokio::time::sleep(Duration::from_secs(3)).await;
    db.psql("INSERT INTO later (id, name) VALUES (1, 'created after start')").expect("insert later");
    let after = last_commit(&db, "UPDATE orders SET name = 'x' WHERE id = 1");
    run.wait_until("every change in iceberg", Duration::from_secs(90), || async {
        drained(&db, &pipeline.name, &after) && iceberg_tables(&db).contains(&"lake.later".to_string())
    })
    .await;

    // Idle: no segment, no checkpoint write, nothing of philotes' own captured.
    let checkpoint = |db: &TestDatabase| db.psql(&format!("SELECT updated_at FROM philotes.checkpoints WHERE pipeline = '{}'", pipeline.name)).expect("checkpoint");
    let before = checkpoint(&db);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(checkpoint(&db), before, "an idle source makes no checkpoint writes (philotes does not feed on its own writes)");
    let segments = db.psql("SELECT count(*) FROM philotes.segments").expect("segments");
    assert_eq!(segments, "0");
    let status = status_json(&pipeline.file);
    run.stop_cleanly().await;
    assert_eq!(iceberg_tables(&db), vec!["lake.history", "lake.later", "lake.orders"], "only user tables with a key");
    let problem = status_table(&status, "public.nokey")["problem"].as_str().map(str::to_string);
    assert!(problem.is_some_and(|p| p.contains("REPLICA IDENTITY FULL")), "status names the keyless table with the fix: {status}");

    assert_both_readers_hold(&pipeline, "orders", &expected_history_of(&db, &["orders"])).await;
    assert_both_readers_hold(&pipeline, "later", &expected_history_of(&db, &["later"])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_listed_table_is_refused_by_name_the_others_flow_and_it_joins_once_fixed() {
    let db = database("hard_keyless");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    create_table(&db, "nokey");
    db.psql("ALTER TABLE nokey DROP CONSTRAINT nokey_pkey; ALTER TABLE nokey REPLICA IDENTITY DEFAULT").expect("keyless");
    let pipeline = Pipeline::new(&db, &["public.orders", "public.nokey"], FLUSH);
    let run = pipeline.start_streaming(&db, &[], &[], "run-1.log").await;
    db.psql("INSERT INTO nokey (id, name) VALUES (1, 'a'); UPDATE nokey SET name = 'b'").expect("the application's UPDATE works");
    let after = last_commit(&db, "INSERT INTO orders (id, name) VALUES (1, 'flows')");
    wait_drained(&run, &db, &pipeline, &after).await;
    let status = status_json(&pipeline.file);
    run.stop_cleanly().await;
    let problem = status_table(&status, "public.nokey")["problem"].as_str().map(str::to_string);
    assert!(problem.is_some_and(|p| p.contains("primary key") && p.contains("REPLICA IDENTITY FULL")), "{status}");

    // Fixed by the user: the next start adds it.
    db.psql("ALTER TABLE nokey REPLICA IDENTITY FULL").expect("fix");
    db.psql("DELETE FROM history WHERE tbl = 'nokey'").expect("forget what was never published");
    let run = pipeline.start_streaming(&db, &[], &[], "run-2.log").await;
    db.psql("INSERT INTO nokey (id, name) VALUES (2, 'c')").expect("insert");
    let after = last_commit(&db, "UPDATE nokey SET name = 'd' WHERE id = 2");
    wait_drained(&run, &db, &pipeline, &after).await;
    run.stop_cleanly().await;
    assert_both_readers_hold(&pipeline, "nokey", &expected_history_of(&db, &["nokey"])).await;
    assert_both_readers_hold(&pipeline, "orders", &expected_history_of(&db, &["orders"])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmappable_column_stops_its_table_only_naming_type_table_and_column_and_generated_columns_are_warned() {
    let db = database("hard_unmapped");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    db.psql(
        "CREATE TYPE pair AS (a int, b int);
         CREATE TABLE geo (id int PRIMARY KEY, location point, twin pair);
         CREATE TABLE calc (id int PRIMARY KEY, x int, doubled int GENERATED ALWAYS AS (x * 2) STORED)",
    )
    .expect("schema");
    let pipeline = Pipeline::new(&db, &["public.orders", "public.geo", "public.calc"], FLUSH);
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    db.psql("INSERT INTO geo VALUES (1, '(1,2)', ROW(1, 2))").expect("insert geo");
    db.psql("INSERT INTO calc (id, x) VALUES (1, 21)").expect("insert calc");
    let after = last_commit(&db, "INSERT INTO orders (id, name) VALUES (1, 'flows')");
    run.wait_until("orders in iceberg", Duration::from_secs(60), || async {
        let sql = format!(
            "SELECT (SELECT commit_lsn >= '{after}'::pg_lsn FROM philotes.checkpoints WHERE pipeline = '{p}')
                    AND NOT EXISTS (SELECT 1 FROM philotes.segments WHERE pipeline = '{p}' AND source_table <> 'geo')",
            p = pipeline.name
        );
        db.psql(&sql).is_ok_and(|v| v == "t")
    })
    .await;
    let status = status_json(&pipeline.file);
    run.assert_running();
    run.stop_cleanly().await;
    let log = run.log();

    let error = status_table(&status, "public.geo")["error"].as_str().map(str::to_string);
    let error = error.unwrap_or_else(|| panic!("geo stopped in status: {status}"));
    for needle in ["location", "point", "unmapped_types: text"] {
        assert!(error.contains(needle), "the stop names {needle}: {error}");
    }
    assert!(!error.contains("oid "), "types are named, not numbered: {error}");
    assert_eq!(db.psql("SELECT count(*) FROM philotes.segments WHERE source_table = 'geo'").expect("geo"), "1", "geo's change waits in the buffer");
    // Kept on the log: the warning is the product, and nothing else records the generated columns left out.
    assert!(log.contains("doubled") && log.contains("generated"), "generated columns are named at start:\n{log}");
    assert_both_readers_hold(&pipeline, "orders", &expected_history_of(&db, &["orders"])).await;
    let calc = read_with_iceberg_crate(&pipeline, "calc").await;
    assert_eq!(calc.len(), 1, "calc flows (without its generated column)");

    // The operator chooses text and resumes the table: what waited in the buffer reaches Iceberg.
    pipeline.rewrite("    snapshot: never\n", "    snapshot: never\n    unmapped_types: text\n");
    let out = philotes(&["resume", pipeline.file.to_str().expect("utf-8"), "--table", "public.geo"], &[]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let run = pipeline.start_streaming(&db, &[], &[], "run-2.log").await;
    let after = last_commit(&db, "INSERT INTO geo VALUES (2, '(3,4)', ROW(3, 4))");
    wait_drained(&run, &db, &pipeline, &after).await;
    run.stop_cleanly().await;
    let geo = read_with_iceberg_crate(&pipeline, "geo").await;
    let locations: Vec<_> = geo.iter().map(|r| r["location"].clone()).collect();
    assert_eq!(locations, vec![serde_json::json!("(1,2)"), serde_json::json!("(3,4)")], "{geo:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_all_with_two_schemas_holding_one_name_is_refused_naming_both() {
    let db = database("hard_all_clash");
    db.psql("CREATE SCHEMA s2; CREATE TABLE public.orders (id int PRIMARY KEY); CREATE TABLE s2.orders (id int PRIMARY KEY)")
        .expect("schema");
    let pipeline = Pipeline::new(&db, &["all"], FLUSH);
    pipeline.rewrite("tables: [all]", "tables: all");
    let run = pipeline.start(&["--role", "capture"], &[], "run.log");
    let exited = run.wait_exit(Duration::from_secs(60)).await;
    let log = run.log();
    assert!(!exited.success(), "the capture refuses to start:\n{log}");
    // Kept on the log: the refusal is the product here, naming both tables and the key that resolves it.
    assert!(log.contains("public.orders") && log.contains("s2.orders") && log.contains("sink.iceberg.tables"), "{log}");
}
