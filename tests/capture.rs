//! The capture role's basics end to end: a real source PostgreSQL, the real `philotes run --role capture` binary
//! as a child process, and the buffer read back with the stages' own store and segment decoder: truncates,
//! rollbacks, unmappable types carried as text, a column added mid-stream, a dead-lettered value, and `philotes
//! status --json` after a run. Every type and image is in `capture_types`, crashes and lost connections in
//! `capture_faults`, a million-row transaction in `capture_big`.

use std::time::Duration;

use philotes_schemas::Value;
use tokio_postgres::types::PgLsn;

use crate::support::{
    checkpoint, connect, database, durable_events, lsn, pipeline_file, start_capture, status_json, wait_durable,
    wait_for, Stored, DEFAULT_SEGMENT,
};

// ---------------------------------------------------------------------------------------------------------
// 5. Truncate, rollback, unmappable types, schema changes, dead letters.
// ---------------------------------------------------------------------------------------------------------

fn summary(stored: &[Stored]) -> Vec<(String, char, Option<Value>)> {
    stored
        .iter()
        .map(|s| {
            let key = s.event.new.as_ref().or(s.event.old.as_ref()).map(|r| r[0].clone());
            (s.table.clone(), s.event.op.code(), key)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_is_captured_per_table_and_a_rolled_back_transaction_enqueues_nothing() {
    let db = database("cap_truncate");
    db.psql("CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY)").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.a", "public.b"], &[], DEFAULT_SEGMENT);
    let capture = start_capture(&db, &file).await;
    client.batch_execute("INSERT INTO a VALUES (1, 'x'), (2, 'y'); INSERT INTO b VALUES (1)").await.expect("inserts");
    client.batch_execute("BEGIN; INSERT INTO a VALUES (99, 'never'); INSERT INTO b VALUES (99); ROLLBACK").await.expect("rollback");
    client.batch_execute("TRUNCATE a, b").await.expect("truncate");
    client.batch_execute("INSERT INTO a VALUES (3, 'z')").await.expect("insert");
    wait_durable(&client, db.name(), 6, &capture).await;
    capture.stop_cleanly().await;

    let mut stored = durable_events(&client, db.name()).await;
    stored.sort_by_key(|s| s.event.position());
    let a = || "public.a".to_string();
    assert_eq!(
        summary(&stored),
        vec![
            (a(), 'I', Some(Value::Int32(1))),
            (a(), 'I', Some(Value::Int32(2))),
            ("public.b".into(), 'I', Some(Value::Int32(1))),
            (a(), 'T', None),
            ("public.b".into(), 'T', None),
            (a(), 'I', Some(Value::Int32(3))),
        ]
    );
    let truncate = &stored[3..5];
    assert_eq!(truncate[0].event.commit_lsn, truncate[1].event.commit_lsn, "one TRUNCATE, one transaction");
    assert!(truncate.iter().all(|s| s.event.old.is_none() && s.event.new.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmappable_type_is_carried_as_text_when_the_pipeline_says_so() {
    let db = database("cap_unmapped_text");
    db.psql("CREATE TABLE geo (id int PRIMARY KEY, location point, doc tsvector)").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.geo"], &["unmapped_types: text"], DEFAULT_SEGMENT);
    let capture = start_capture(&db, &file).await;
    client.batch_execute("INSERT INTO geo VALUES (1, '(1,2)', to_tsvector('simple', 'a fat cat'))").await.expect("insert");
    wait_durable(&client, db.name(), 1, &capture).await;
    capture.stop_cleanly().await;
    let stored = durable_events(&client, db.name()).await;
    assert_eq!(
        stored[0].event.new,
        Some(vec![Value::Int32(1), Value::Text("(1,2)".into()), Value::Text("'a':1 'cat':3 'fat':2".into())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_mid_stream_makes_a_new_schema_version_and_later_events_carry_it() {
    let db = database("cap_add_column");
    db.psql("CREATE TABLE evo (id int PRIMARY KEY, a text)").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.evo"], &[], DEFAULT_SEGMENT);
    let capture = start_capture(&db, &file).await;
    client.batch_execute("INSERT INTO evo VALUES (1, 'before')").await.expect("insert");
    client.batch_execute("ALTER TABLE evo ADD COLUMN extra int DEFAULT 7").await.expect("alter");
    client.batch_execute("INSERT INTO evo VALUES (2, 'after', 8); UPDATE evo SET a = 'updated' WHERE id = 1").await.expect("after");
    wait_durable(&client, db.name(), 3, &capture).await;
    capture.stop_cleanly().await;

    let versions = client
        .query(
            "SELECT version, description FROM philotes.schemas WHERE pipeline = $1 AND source_table = 'evo' ORDER BY version",
            &[&db.name()],
        )
        .await
        .expect("schemas");
    let versions: Vec<(i32, String)> = versions.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(!versions[0].1.contains("extra") && versions[1].1.contains("extra integer"), "{versions:?}");

    let mut stored = durable_events(&client, db.name()).await;
    stored.sort_by_key(|s| s.event.position());
    let rows: Vec<(i32, Option<Vec<Value>>)> = stored.iter().map(|s| (s.schema_version, s.event.new.clone())).collect();
    assert_eq!(
        rows,
        vec![
            (1, Some(vec![Value::Int32(1), Value::Text("before".into())])),
            (2, Some(vec![Value::Int32(2), Value::Text("after".into()), Value::Int32(8)])),
            (2, Some(vec![Value::Int32(1), Value::Text("updated".into()), Value::Int32(7)])),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_cannot_be_converted_is_dead_lettered_with_its_reason_and_the_rest_flows() {
    let db = database("cap_dead_letter");
    db.psql("CREATE TABLE dl (id int PRIMARY KEY, arr int[])").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.dl"], &[], DEFAULT_SEGMENT);
    let capture = start_capture(&db, &file).await;
    // A two-dimensional array in an int[] column: Postgres accepts it, philotes maps only one dimension.
    client
        .batch_execute("BEGIN; INSERT INTO dl VALUES (1, '{1,2}'), (2, '{{1,2},{3,4}}'), (3, '{3}'); COMMIT; INSERT INTO dl VALUES (4, NULL)")
        .await
        .expect("inserts");
    wait_durable(&client, db.name(), 3, &capture).await;
    wait_for("the dead letter", Duration::from_secs(30), || async {
        let n: i64 = client.query_one("SELECT count(*) FROM philotes.dead_letters", &[]).await.expect("count").get(0);
        (n > 0).then_some(())
    })
    .await;
    capture.stop_cleanly().await;

    let mut stored = durable_events(&client, db.name()).await;
    stored.sort_by_key(|s| s.event.position());
    let ids: Vec<Option<Value>> = summary(&stored).into_iter().map(|(_, _, k)| k).collect();
    assert_eq!(ids, vec![Some(Value::Int32(1)), Some(Value::Int32(3)), Some(Value::Int32(4))]);
    let letters = client
        .query("SELECT stage, source_schema, source_table, commit_lsn, seq, reason, payload FROM philotes.dead_letters WHERE pipeline = $1", &[&db.name()])
        .await
        .expect("dead letters");
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    let reason: String = letter.get(5);
    assert_eq!(letter.get::<_, String>(0), "schema_resolve");
    assert_eq!((letter.get::<_, String>(1), letter.get::<_, String>(2)), ("public".into(), "dl".into()));
    assert_eq!(lsn(letter.get::<_, PgLsn>(3)), stored[0].event.commit_lsn, "the dead letter's position");
    assert_eq!(letter.get::<_, i64>(4), 1, "the second change of its transaction");
    assert!(reason.contains("arr") && reason.contains("multi-dimensional"), "{reason}");
    assert!(letter.get::<_, String>(6).contains("{{1,2},{3,4}}"), "the payload shows the change");
}

// ---------------------------------------------------------------------------------------------------------
// 6. Status.
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_shows_slot_lag_checkpoint_and_buffer_depth_after_a_capture_run() {
    let db = database("cap_status");
    db.psql("CREATE TABLE s (id int PRIMARY KEY)").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.s"], &[], DEFAULT_SEGMENT);
    let capture = start_capture(&db, &file).await;
    client.batch_execute("INSERT INTO s SELECT generate_series(1, 6); INSERT INTO s VALUES (7), (8), (9), (10)").await.expect("inserts");
    wait_durable(&client, db.name(), 10, &capture).await;
    capture.stop_cleanly().await;

    let status = status_json(&file);
    assert_eq!(status["errors"], serde_json::json!([]), "status reads every part: {status}");
    let (commit, _) = checkpoint(&client, db.name()).await.expect("a checkpoint");
    assert_eq!(status["pipeline"], db.name());
    assert_eq!(status["slot_exists"], true);
    assert_eq!(status["checkpoint_lsn"], commit.to_string());
    assert_eq!(status["buffer_events"], 10);
    assert!(status["buffer_segments"].as_i64().is_some_and(|n| n >= 1), "{status}");
    assert!(status["buffer_bytes"].as_i64().is_some_and(|n| n > 0), "{status}");
    assert!(status["replication_lag_bytes"].as_i64().is_some_and(|n| n >= 0), "{status}");
    assert!(status["slot_confirmed_lsn"].is_string(), "{status}");
    assert_eq!(status["dead_letters"], 0);
}

