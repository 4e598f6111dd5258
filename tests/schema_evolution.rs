//! Schema evolution mid-stream (issue 13): promotions, renames, drops and a re-added column while changes flow,
//! several versions waiting in the buffer at once; read back with the iceberg crate, pyiceberg and DuckDB. And a
//! change no Iceberg table can follow: that table alone stops, with the column, both types and the LSN, until the
//! operator makes the Iceberg table again and resumes it.

use std::time::Duration;

use philotes_stages::catalog;
use serde_json::json;

use crate::flush::{drained, last_commit, read_with_duckdb, read_with_iceberg_crate, read_with_pyiceberg, Pipeline, Row};
use crate::support::{assert_status_clean, database, philotes, status_json, status_table};

/// The source columns of a reading, by the final names, and `_op`; in `_lsn`, `_seq` order.
fn project(rows: &[Row], columns: &[&str]) -> Vec<Vec<serde_json::Value>> {
    rows.iter().map(|r| columns.iter().map(|c| r.get(*c).cloned().unwrap_or(serde_json::Value::Null)).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotions_renames_drops_and_a_re_added_column_mid_stream_reach_every_reader() {
    let db = database("schema_evo");
    db.psql("CREATE TABLE evo (id int PRIMARY KEY, a int, b real, d numeric(10,2), s varchar(10), gone text)").expect("table");
    // Flushes of a second: the first steps below wait in the buffer together, as several schema versions.
    let pipeline = Pipeline::new(&db, &["public.evo"], "{ workers: 1, max_events: 100000, interval: 1s }");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    for sql in [
        "INSERT INTO evo VALUES (1, 1, 1.5, 1.25, 'one', 'g1'), (2, 2, 2.5, 2.5, 'two', 'g2')",
        "ALTER TABLE evo ALTER a TYPE bigint, ALTER b TYPE double precision, ALTER d TYPE numeric(14,2), ALTER s TYPE text",
        "INSERT INTO evo VALUES (3, 5000000000, 3.25, 123456789012.34, 'three', 'g3')",
        "ALTER TABLE evo RENAME s TO title",
        "INSERT INTO evo VALUES (4, 4, 4.5, 4.5, 'four', 'g4')",
        "ALTER TABLE evo DROP gone",
        "INSERT INTO evo VALUES (5, 5, 5.5, 5.5, 'five')",
        "ALTER TABLE evo ADD gone int",
        "INSERT INTO evo VALUES (6, 6, 6.5, 6.5, 'six', 66)",
    ] {
        db.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let after = last_commit(&db, "UPDATE evo SET title = 'one!' WHERE id = 1");
    run.wait_until("the versions in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    // A rename once every row of the column is in Iceberg: the field is renamed all the same.
    db.psql("ALTER TABLE evo RENAME title TO headline").expect("rename");
    let after = last_commit(&db, "INSERT INTO evo VALUES (7, 7, 7.5, 7.5, 'seven', 77)");
    run.wait_until("the renamed column in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;

    // The table: same field ids for the promoted and renamed columns, the dropped one kept aside, a new field for
    // the re-added name, one schema per change.
    let catalog = catalog::connect(&pipeline.catalog()).await.expect("catalog");
    let table = catalog.load_table(&iceberg::TableIdent::from_strs(["lake", "evo"]).expect("ident")).await.expect("table");
    let schema = table.metadata().current_schema();
    let field = |name: &str| schema.field_by_name(name).unwrap_or_else(|| panic!("field {name} in {schema:?}")).clone();
    let types: Vec<(i32, String, String)> = ["id", "a", "b", "d", "headline", "gone__dropped", "gone"]
        .iter()
        .map(|n| { let f = field(n); (f.id, f.name.clone(), f.field_type.to_string()) })
        .collect();
    assert_eq!(
        types[..6],
        [
            (1, "id".into(), "int".into()),
            (2, "a".into(), "long".into()),
            (3, "b".into(), "double".into()),
            (4, "d".into(), "decimal(14, 2)".into()),
            (5, "headline".into(), "string".into()),
            (6, "gone__dropped".into(), "string".into()),
        ]
    );
    assert!(types[6].0 > schema.as_struct().fields().iter().filter(|f| f.name.starts_with('_')).map(|f| f.id).max().unwrap_or(0));
    assert_eq!(types[6].2, "int");
    assert!(schema.field_by_name("s").is_none() && schema.field_by_name("title").is_none(), "renamed, not added: {schema:?}");
    assert!(table.metadata().schemas_iter().count() >= 4, "each change is a schema of its own");

    // Every reader: the whole history under the final names, old files read through promotions and renames.
    let columns = ["_op", "id", "a", "b", "d", "headline", "gone__dropped", "gone"];
    let n = serde_json::Value::Null;
    let expected = vec![
        vec![json!("I"), json!("1"), json!("1"), json!("1.5"), json!("1.25"), json!("one"), json!("g1"), n.clone()],
        vec![json!("I"), json!("2"), json!("2"), json!("2.5"), json!("2.50"), json!("two"), json!("g2"), n.clone()],
        vec![json!("I"), json!("3"), json!("5000000000"), json!("3.25"), json!("123456789012.34"), json!("three"), json!("g3"), n.clone()],
        vec![json!("I"), json!("4"), json!("4"), json!("4.5"), json!("4.50"), json!("four"), json!("g4"), n.clone()],
        vec![json!("I"), json!("5"), json!("5"), json!("5.5"), json!("5.50"), json!("five"), n.clone(), n.clone()],
        vec![json!("I"), json!("6"), json!("6"), json!("6.5"), json!("6.50"), json!("six"), n.clone(), json!("66")],
        vec![json!("U"), json!("1"), json!("1"), json!("1.5"), json!("1.25"), json!("one!"), n.clone(), n.clone()],
        vec![json!("I"), json!("7"), json!("7"), json!("7.5"), json!("7.50"), json!("seven"), n.clone(), json!("77")],
    ];
    let sorted = |mut rows: Vec<Row>| {
        let key = |r: &Row| ["_lsn", "_seq"].map(|k| r.get(k).and_then(|v| v.as_str()).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0));
        rows.sort_by_key(key);
        rows
    };
    let readings = [
        ("iceberg crate", read_with_iceberg_crate(&pipeline, "evo").await),
        ("pyiceberg", sorted(read_with_pyiceberg(&pipeline, "evo"))),
        ("duckdb", sorted(read_with_duckdb(&pipeline, "evo"))),
    ];
    for (reader, rows) in &readings {
        assert_eq!(project(rows, &columns), expected, "{reader}");
    }
    // The source equals the latest image of each key.
    let source = db.psql("SELECT string_agg(concat_ws('|', id, a, b, d, headline, gone), ';' ORDER BY id) FROM evo").expect("source");
    let mut latest = std::collections::BTreeMap::new();
    for row in &expected {
        latest.insert(row[1].as_str().unwrap().parse::<i32>().unwrap(), row);
    }
    let lake: Vec<String> = latest
        .values()
        .map(|r| {
            let v = |i: usize| r[i].as_str().map(str::to_string);
            [v(1), v(2), v(3), v(4), v(5), v(7)].into_iter().flatten().collect::<Vec<_>>().join("|")
        })
        .collect();
    assert_eq!(lake.join(";"), source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_iceberg_cannot_follow_stops_that_table_until_it_is_made_again_and_resumed() {
    let db = database("schema_stop");
    db.psql("CREATE TABLE evo (id int PRIMARY KEY, v text); CREATE TABLE other (id int PRIMARY KEY)").expect("tables");
    let pipeline = Pipeline::new(&db, &["public.evo", "public.other"], "{ workers: 2, max_events: 100000, interval: 200ms }");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    let after = last_commit(&db, "INSERT INTO evo VALUES (1, 'one'), (2, 'two')");
    run.wait_until("the first rows in iceberg", Duration::from_secs(60), || async { drained(&db, &pipeline.name, &after) }).await;
    db.psql("ALTER TABLE evo ALTER v TYPE int USING length(v)").expect("text to int");
    let changed_at = last_commit(&db, "INSERT INTO evo VALUES (3, 33)");
    db.psql("INSERT INTO other VALUES (1), (2)").expect("other");
    let status = run
        .wait_until("evo stopped", Duration::from_secs(60), || async {
            let status = status_json(&pipeline.file);
            status_table(&status, "public.evo")["error"].is_string().then_some(status)
        })
        .await;
    run.wait_until("other flows on", Duration::from_secs(60), || async {
        db.psql("SELECT count(*) FROM philotes.segments WHERE source_table = 'other'").is_ok_and(|c| c == "0")
    })
    .await;
    run.assert_running();
    run.stop_cleanly().await;
    let error = status_table(&status, "public.evo")["error"].as_str().expect("error").to_string();
    for needle in ["public.evo", "\"v\"", "string", "integer", "LSN", "philotes resume"] {
        assert!(error.contains(needle), "the stop names {needle}: {error}");
    }
    let lsn = error.split("LSN ").nth(1).and_then(|rest| rest.split(')').next()).expect("an LSN in the error");
    let at_or_after = db.psql(&format!("SELECT '{lsn}'::pg_lsn >= '{changed_at}'::pg_lsn")).expect("compare");
    assert_eq!(at_or_after, "t", "the LSN {lsn} is the changed version's first change (at or after {changed_at})");
    assert_eq!(read_with_iceberg_crate(&pipeline, "other").await.len(), 2, "the other table went on");
    assert_eq!(read_with_iceberg_crate(&pipeline, "evo").await.len(), 2, "nothing of the new version was written");

    // The operator makes the Iceberg table again (dropped here; philotes makes it from the new schema) and resumes.
    let catalog = catalog::connect(&pipeline.catalog()).await.expect("catalog");
    catalog.drop_table(&iceberg::TableIdent::from_strs(["lake", "evo"]).expect("ident")).await.expect("drop");
    let out = philotes(&["resume", pipeline.file.to_str().expect("utf-8"), "--table", "public.evo"], &[]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let run = pipeline.start_streaming(&db, &[], &[], "run-2.log").await;
    let after = last_commit(&db, "INSERT INTO evo VALUES (4, 44)");
    run.wait_until("evo flows again", Duration::from_secs(60), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    let rows = read_with_iceberg_crate(&pipeline, "evo").await;
    let values: Vec<_> = rows.iter().map(|r| (r["id"].clone(), r["v"].clone())).collect();
    assert_eq!(values, vec![(json!("3"), json!("33")), (json!("4"), json!("44"))], "the waiting change and the next, as integers");
}

/// A flusher aborts at `point` in the flush that brings a promotion and a rename (with `mirror`, of a mirror
/// table); a flusher restarted without the fault repairs: every change once, under the evolved schema.
async fn a_flusher_killed_in_a_flush_with_a_schema_change_is_repaired(point: &str, mirror: bool) {
    let db = database(&format!("schema_fault_{}{}", point.replace('-', "_"), if mirror { "_mirror" } else { "" }));
    db.psql("CREATE TABLE evo (id int PRIMARY KEY, a int, s text)").expect("table");
    let pipeline = Pipeline::new(&db, &["public.evo"], "{ workers: 1, max_events: 100000, interval: 200ms }");
    if mirror {
        pipeline.rewrite("    namespace: lake\n", "    namespace: lake\n    mode: mirror\n");
    }
    let capture = pipeline.start_streaming(&db, &["--role", "capture"], &[], "capture.log").await;
    let flusher = pipeline.start(&["--role", "flusher"], &[], "flusher-1.log");
    let after = last_commit(&db, "INSERT INTO evo SELECT g, g, 's' || g FROM generate_series(1, 100) g");
    flusher.wait_until("version 1 in iceberg", Duration::from_secs(60), || async { drained(&db, &pipeline.name, &after) }).await;
    flusher.stop_cleanly().await;

    db.psql("ALTER TABLE evo ALTER a TYPE bigint").expect("promote");
    db.psql("ALTER TABLE evo RENAME s TO t").expect("rename");
    db.psql("INSERT INTO evo SELECT g, g::bigint * 100000000, 't' || g FROM generate_series(101, 200) g").expect("version 2 rows");
    let after = last_commit(&db, "UPDATE evo SET a = a + 10000000000, t = t || '+' WHERE id % 10 = 0");
    capture.wait_until("the changes in the buffer", Duration::from_secs(60), || async {
        db.psql(&format!("SELECT commit_lsn >= '{after}'::pg_lsn FROM philotes.checkpoints WHERE pipeline = '{}'", pipeline.name))
            .is_ok_and(|v| v == "t")
    })
    .await;
    let faulty = pipeline.start(&["--role", "flusher"], &[("PHILOTES_FAULT", point)], "flusher-faulty.log");
    let status = faulty.wait_exit(Duration::from_secs(90)).await;
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(6), "aborted at {point} ({status}):\n{}", faulty.log());
    let restarted = pipeline.start(&["--role", "flusher"], &[], "flusher-2.log");
    let after = last_commit(&db, "INSERT INTO evo VALUES (201, 201, 'last')");
    restarted.wait_until("every change in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    restarted.stop_cleanly().await;
    capture.stop_cleanly().await;

    let catalog = catalog::connect(&pipeline.catalog()).await.expect("catalog");
    let table = catalog.load_table(&iceberg::TableIdent::from_strs(["lake", "evo"]).expect("ident")).await.expect("table");
    let schema = table.metadata().current_schema();
    assert_eq!(schema.field_by_name("a").map(|f| (f.id, f.field_type.to_string())), Some((2, "long".to_string())));
    assert_eq!(schema.field_by_name("t").map(|f| f.id), Some(3), "renamed, same field");
    assert!(schema.field_by_name("s").is_none());
    let rows = read_with_iceberg_crate(&pipeline, "evo").await;
    let source = db.psql("SELECT string_agg(concat_ws('|', id, a, t), ';' ORDER BY id) FROM evo").expect("source");
    if mirror {
        let mut lake: Vec<(i64, String)> = rows
            .iter()
            .map(|r| {
                let v = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (v("id").parse().expect("id"), [v("id"), v("a"), v("t")].join("|"))
            })
            .collect();
        lake.sort();
        assert_eq!(lake.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>().join(";"), source, "the mirror equals the source");
        return;
    }
    // Changelog: 100 + 100 inserts, 20 updates, 1 insert; no position twice; the latest image per key is the source.
    let mut positions = std::collections::HashSet::new();
    for r in &rows {
        assert!(positions.insert((r["_lsn"].clone(), r["_seq"].clone())), "a change twice: {r:?}");
    }
    assert_eq!(rows.len(), 221, "every change once");
    let mut latest = std::collections::BTreeMap::new();
    for r in &rows {
        let v = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        latest.insert(v("id").parse::<i64>().expect("id"), [v("id"), v("a"), v("t")].join("|"));
    }
    assert_eq!(latest.values().cloned().collect::<Vec<_>>().join(";"), source, "the latest images equal the source");
    assert_eq!(read_with_pyiceberg(&pipeline, "evo").len(), 221, "pyiceberg reads them too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flusher_killed_after_the_schema_commit_is_repaired() {
    a_flusher_killed_in_a_flush_with_a_schema_change_is_repaired(philotes_stages::fault::AFTER_SCHEMA_COMMIT, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flusher_killed_after_parquet_in_a_schema_change_is_repaired() {
    a_flusher_killed_in_a_flush_with_a_schema_change_is_repaired(philotes_stages::fault::AFTER_PARQUET, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flusher_killed_after_the_iceberg_commit_in_a_schema_change_is_repaired() {
    a_flusher_killed_in_a_flush_with_a_schema_change_is_repaired(philotes_stages::fault::AFTER_ICEBERG_COMMIT, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flusher_killed_before_the_buffer_commit_in_a_schema_change_is_repaired() {
    a_flusher_killed_in_a_flush_with_a_schema_change_is_repaired(philotes_stages::fault::BEFORE_PG_COMMIT, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_flusher_killed_after_the_schema_commit_is_repaired() {
    a_flusher_killed_in_a_flush_with_a_schema_change_is_repaired(philotes_stages::fault::AFTER_SCHEMA_COMMIT, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_flusher_killed_after_the_iceberg_commit_in_a_schema_change_is_repaired() {
    a_flusher_killed_in_a_flush_with_a_schema_change_is_repaired(philotes_stages::fault::AFTER_ICEBERG_COMMIT, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_whose_key_changes_stops_alone_and_a_renamed_key_column_does_not() {
    let db = database("schema_mirror_key");
    db.psql("CREATE TABLE m (id int PRIMARY KEY, k int NOT NULL, v text); CREATE TABLE other (id int PRIMARY KEY)").expect("tables");
    let pipeline = Pipeline::new(&db, &["public.m", "public.other"], "{ workers: 2, max_events: 100000, interval: 200ms }");
    pipeline.rewrite("    namespace: lake\n", "    namespace: lake\n    mode: mirror\n");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    let after = last_commit(&db, "INSERT INTO m VALUES (1, 10, 'a'), (2, 20, 'b')");
    run.wait_until("the first rows in iceberg", Duration::from_secs(60), || async { drained(&db, &pipeline.name, &after) }).await;
    // A renamed key column is the same key: the mirror goes on, its deletes by the renamed field.
    db.psql("ALTER TABLE m RENAME id TO ident").expect("rename the key");
    let after = last_commit(&db, "UPDATE m SET v = 'a2' WHERE ident = 1");
    run.wait_until("the update in iceberg", Duration::from_secs(60), || async { drained(&db, &pipeline.name, &after) }).await;
    let rows = read_with_iceberg_crate(&pipeline, "m").await;
    let mut values: Vec<(String, String)> =
        rows.iter().map(|r| (r["ident"].as_str().unwrap_or("?").to_string(), r["v"].as_str().unwrap_or("?").to_string())).collect();
    values.sort();
    assert_eq!(values, [("1".to_string(), "a2".to_string()), ("2".to_string(), "b".to_string())], "one row per key, renamed");
    // Another key: that table stops, the other flows.
    db.psql("ALTER TABLE m DROP CONSTRAINT m_pkey, ADD PRIMARY KEY (ident, k)").expect("new key");
    db.psql("UPDATE m SET v = 'a3' WHERE ident = 1").expect("update");
    db.psql("INSERT INTO other VALUES (1)").expect("other");
    let status = run
        .wait_until("m stopped", Duration::from_secs(60), || async {
            let status = status_json(&pipeline.file);
            status_table(&status, "public.m")["error"].is_string().then_some(status)
        })
        .await;
    run.wait_until("other flows on", Duration::from_secs(60), || async {
        db.psql("SELECT count(*) FROM philotes.segments WHERE source_table = 'other'").is_ok_and(|c| c == "0")
    })
    .await;
    run.stop_cleanly().await;
    let error = status_table(&status, "public.m")["error"].as_str().expect("error").to_string();
    assert!(error.contains("key changed from (ident) to (ident, k)"), "{error}");
    assert_eq!(read_with_iceberg_crate(&pipeline, "other").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_rest_catalog_a_promotion_and_a_rename_are_commit_requests_of_their_own() {
    let db = database("schema_rest");
    db.psql("CREATE TABLE evo (id int PRIMARY KEY, a int, s text)").expect("table");
    let pipeline = Pipeline::new(&db, &["public.evo"], "{ workers: 1, max_events: 100000, interval: 200ms }");
    let server = crate::rest::RestCatalogServer::start(&pipeline, &[]).await;
    crate::rest::use_rest_catalog(&pipeline, server.uri(), "");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    let after = last_commit(&db, "INSERT INTO evo VALUES (1, 1, 'one')");
    run.wait_until("version 1 in iceberg", Duration::from_secs(60), || async { drained(&db, &pipeline.name, &after) }).await;
    db.psql("ALTER TABLE evo ALTER a TYPE bigint").expect("promote");
    db.psql("ALTER TABLE evo RENAME s TO t").expect("rename");
    let after = last_commit(&db, "INSERT INTO evo VALUES (2, 5000000000, 'two')");
    run.wait_until("version 3 in iceberg", Duration::from_secs(60), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    assert!(!server.log().contains(" 500"), "the server never failed; its log:\n{}", server.log());
    let rest = crate::rest::rest_settings(&pipeline, server.uri(), &[]);
    let table = catalog::connect(&rest).await.expect("REST catalog");
    let table = table.load_table(&iceberg::TableIdent::from_strs(["lake", "evo"]).expect("ident")).await.expect("REST load");
    let schema = table.metadata().current_schema();
    assert_eq!(schema.field_by_name("a").map(|f| (f.id, f.field_type.to_string())), Some((2, "long".to_string())));
    assert_eq!(schema.field_by_name("t").map(|f| f.id), Some(3));
    let rows = read_with_pyiceberg(&pipeline, "evo");
    let mut values: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| ["id", "a", "t"].map(|k| r[k].as_str().unwrap_or("?").to_string()).into())
        .collect();
    values.sort();
    assert_eq!(values, [("1".into(), "1".into(), "one".into()), ("2".into(), "5000000000".into(), "two".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_follows_promotions_renames_drops_and_a_re_added_column_mid_stream() {
    let db = database("schema_evo_mirror");
    db.psql("CREATE TABLE evo (id int PRIMARY KEY, a int, b real, d numeric(10,2), s varchar(10), gone text)").expect("table");
    let pipeline = Pipeline::new(&db, &["public.evo"], "{ workers: 1, max_events: 100000, interval: 1s }");
    pipeline.rewrite("    namespace: lake\n", "    namespace: lake\n    mode: mirror\n");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    for sql in [
        "INSERT INTO evo VALUES (1, 1, 1.5, 1.25, 'one', 'g1'), (2, 2, 2.5, 2.5, 'two', 'g2'), (3, 3, 3.5, 3.5, 'three', 'g3'),
                                (4, 4, 4.5, 4.5, 'four', 'g4')",
        "ALTER TABLE evo ALTER a TYPE bigint, ALTER b TYPE double precision, ALTER d TYPE numeric(14,2)",
        "INSERT INTO evo VALUES (5, 5000000000, 5.25, 123456789012.34, 'five', 'g5')",
        "UPDATE evo SET a = 6000000000 WHERE id = 1",
        "ALTER TABLE evo RENAME s TO title",
        "UPDATE evo SET title = 'two!' WHERE id = 2",
        "DELETE FROM evo WHERE id = 3",
        "ALTER TABLE evo DROP gone",
        "INSERT INTO evo VALUES (6, 6, 6.5, 6.5, 'six')",
        "UPDATE evo SET b = 4.75 WHERE id = 4",
        "ALTER TABLE evo ADD gone int",
        "INSERT INTO evo VALUES (7, 7, 7.5, 7.5, 'seven', 77)",
    ] {
        db.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let after = last_commit(&db, "UPDATE evo SET gone = 55 WHERE id = 5");
    run.wait_until("the versions in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;

    // The current rows under the final names. A row not written since the drop keeps its old value in the kept
    // field (nothing is rewritten); every row written after it has NULL there.
    let columns = ["id", "a", "b", "d", "title", "gone__dropped", "gone"];
    let n = serde_json::Value::Null;
    let expected = vec![
        vec![json!("1"), json!("6000000000"), json!("1.5"), json!("1.25"), json!("one"), json!("g1"), n.clone()],
        vec![json!("2"), json!("2"), json!("2.5"), json!("2.50"), json!("two!"), json!("g2"), n.clone()],
        vec![json!("4"), json!("4"), json!("4.75"), json!("4.50"), json!("four"), n.clone(), n.clone()],
        vec![json!("5"), json!("5000000000"), json!("5.25"), json!("123456789012.34"), json!("five"), n.clone(), json!("55")],
        vec![json!("6"), json!("6"), json!("6.5"), json!("6.50"), json!("six"), n.clone(), n.clone()],
        vec![json!("7"), json!("7"), json!("7.5"), json!("7.50"), json!("seven"), n.clone(), json!("77")],
    ];
    let by_id = |rows: Vec<Row>| {
        let mut rows = project(&rows, &columns);
        rows.sort_by_key(|r| r[0].as_str().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0));
        rows
    };
    assert_eq!(by_id(read_with_iceberg_crate(&pipeline, "evo").await), expected, "iceberg crate");
    assert_eq!(by_id(read_with_duckdb(&pipeline, "evo")), expected, "duckdb");
    // And the source agrees on every column it still has.
    let source = db.psql("SELECT string_agg(concat_ws('|', id, a, b, d, title, gone), ';' ORDER BY id) FROM evo").expect("source");
    let lake: Vec<String> = expected
        .iter()
        .map(|r| [0, 1, 2, 3, 4, 6].iter().filter_map(|&i| r[i].as_str().map(str::to_string)).collect::<Vec<_>>().join("|"))
        .collect();
    assert_eq!(lake.join(";"), source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_partition_column_keeps_the_spec_and_the_table_flowing() {
    let db = database("schema_partition_rename");
    db.psql("CREATE TABLE ev (id int PRIMARY KEY, ts timestamptz, n bigint)").expect("table");
    let pipeline = Pipeline::new(&db, &["public.ev"], "{ workers: 1, max_events: 100000, interval: 200ms }");
    crate::partition::partition(&pipeline, "ev", "\"day(ts)\"");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    let after = last_commit(&db, "INSERT INTO ev VALUES (1, '2026-01-01 10:00+00', 1), (2, '2026-01-02 10:00+00', 2)");
    run.wait_until("the first rows in iceberg", Duration::from_secs(60), || async { drained(&db, &pipeline.name, &after) }).await;
    // The pipeline file still says day(ts): the spec binds the field by id, so nothing needs to change.
    db.psql("ALTER TABLE ev RENAME ts TO happened_at").expect("rename");
    let after = last_commit(&db, "INSERT INTO ev VALUES (3, '2026-01-03 10:00+00', 3)");
    run.wait_until("the row after the rename in iceberg", Duration::from_secs(60), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    let catalog = catalog::connect(&pipeline.catalog()).await.expect("catalog");
    let table = catalog.load_table(&iceberg::TableIdent::from_strs(["lake", "ev"]).expect("ident")).await.expect("table");
    let metadata = table.metadata();
    assert_eq!(metadata.partition_specs_iter().count(), 1, "no new spec");
    let spec = metadata.default_partition_spec();
    let source = metadata.current_schema().field_by_name("happened_at").expect("renamed field").id;
    assert_eq!(spec.fields().iter().map(|f| f.source_id).collect::<Vec<_>>(), [source], "the spec follows the renamed column");
    let rows = read_with_iceberg_crate(&pipeline, "ev").await;
    assert_eq!(rows.iter().filter(|r| r.get("happened_at").is_some_and(|v| !v.is_null())).count(), 3);
}
