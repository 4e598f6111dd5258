//! `philotes dead-letters FILE retry`: a dead letter's change, enqueued again once its cause is fixed, lands in
//! Iceberg exactly once: with its original position although that is behind the table's watermark, once even
//! when the flusher is killed between the Iceberg commit and the buffer checkpoint, and dead-lettered again
//! (with the reason) when it still fails. Real PostgreSQL, the real binary, a real warehouse; the tables are
//! read back with the `iceberg` crate and with pyiceberg.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use philotes_stages::catalog::{self as flush_catalog, SUMMARY_RETRY};
use philotes_stages::fault;
use philotes_testkit::TestDatabase;

use crate::flush::{self, Pipeline, Row};
use crate::support::wait_for;

/// `dl`: a two-dimensional array in its `int[]` column cannot be converted (philotes maps one dimension).
const TABLE: &str = "CREATE TABLE dl (id int PRIMARY KEY, arr int[], note text)";
/// The change that is dead-lettered: id 2.
const ROWS: &str = "INSERT INTO dl VALUES (1, '{1,2}', 'a'), (2, '{{1,2},{3,4}}', 'b'), (3, '{3}', 'c')";

fn database(hint: &str) -> TestDatabase {
    let db = philotes_testkit::shared().database(hint).expect("database");
    db.psql(TABLE).expect("schema");
    db
}

/// `philotes dead-letters FILE ARGS…`: exit code and stdout + stderr.
fn cli(pipeline: &Pipeline, args: &[&str]) -> (Option<i32>, String) {
    let file = pipeline.file.to_str().expect("utf-8 path");
    let out = crate::support::philotes(&[&["dead-letters", file], args].concat(), &[]);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// The pipeline's dead letters as `list --json` gives them.
fn letters(pipeline: &Pipeline) -> Vec<serde_json::Value> {
    let (code, out) = cli(pipeline, &["list", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    serde_json::from_str::<serde_json::Value>(&out).expect("json").as_array().expect("a list").clone()
}

/// Runs `sql` and waits until it, and everything before it, is through the buffer and in Iceberg (retries
/// included: the buffer is empty).
async fn commit_and_drain(db: &TestDatabase, pipeline: &Pipeline, sql: &str) {
    let lsn = flush::last_commit(db, sql);
    wait_for("every change in iceberg", Duration::from_secs(90), || async { flush::drained(db, &pipeline.name, &lsn) }).await;
}

/// The Iceberg rows of `dl` with this id, read with the iceberg crate.
async fn rows_of(pipeline: &Pipeline, id: &str) -> Vec<Row> {
    flush::read_with_iceberg_crate(pipeline, "dl").await.into_iter().filter(|r| r["id"] == id).collect()
}

/// The dead letter's position (`lsn#seq`) as the `_lsn`/`_seq` columns hold it.
fn position_columns(db: &TestDatabase, id: i64) -> (String, String) {
    let text = db
        .psql(&format!(
            "SELECT (commit_lsn - '0/0'::pg_lsn)::bigint || ' ' || seq FROM philotes.dead_letters WHERE id = {id}"
        ))
        .expect("position");
    let (lsn, seq) = text.split_once(' ').expect("two numbers");
    (lsn.to_string(), seq.to_string())
}

/// The stored dead letter of `dl` (there is one), waiting for it.
async fn the_dead_letter(db: &TestDatabase) -> i64 {
    wait_for("the dead letter", Duration::from_secs(60), || async {
        db.psql("SELECT id FROM philotes.dead_letters").ok().and_then(|v| v.parse::<i64>().ok())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_retried_after_its_cause_is_fixed_lands_in_iceberg_once_with_its_position() {
    let db = database("retry_fixed");
    let pipeline = Pipeline::new(&db, &["public.dl"], "{ workers: 1, max_events: 1000, interval: 200ms }");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    commit_and_drain(&db, &pipeline, ROWS).await;
    let first = the_dead_letter(&db).await;
    let (lsn, seq) = position_columns(&db, first);
    assert_eq!(letters(&pipeline)[0]["retryable"], true, "the dead letter keeps its change");

    // Before the cause is fixed, a retry converts the change again, fails again, and says so: a new dead letter
    // with the reason takes the old one's place, and nothing is enqueued.
    let (code, out) = cli(&pipeline, &["retry", &first.to_string()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("still fails") && out.contains("multi-dimensional"), "{out}");
    let again = letters(&pipeline);
    assert_eq!(again.len(), 1, "{again:?}");
    let second = again[0]["id"].as_i64().expect("id");
    assert_ne!(second, first, "a new dead letter");
    assert!(again[0]["reason"].as_str().expect("reason").contains("multi-dimensional"), "{again:?}");
    assert_eq!(position_columns(&db, second), (lsn.clone(), seq.clone()), "the same change");
    assert_eq!(db.psql("SELECT count(*) FROM philotes.segments").expect("segments"), "0");

    // The fix: the column philotes cannot carry is dropped (a new schema version, with the next change).
    commit_and_drain(&db, &pipeline, "ALTER TABLE dl DROP COLUMN arr; INSERT INTO dl VALUES (4, 'd')").await;
    assert!(rows_of(&pipeline, "2").await.is_empty(), "not in iceberg before the retry");
    let (code, out) = cli(&pipeline, &["retry"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("retried 1 dead letter;") && out.contains("public.dl"), "{out}");
    assert!(letters(&pipeline).is_empty(), "the retried dead letter is gone");
    commit_and_drain(&db, &pipeline, "INSERT INTO dl VALUES (5, 'e')").await;
    run.stop_cleanly().await;

    // In Iceberg once, as the change it was: its own position (behind the watermark), op and values.
    let retried = rows_of(&pipeline, "2").await;
    assert_eq!(retried.len(), 1, "{retried:?}");
    let row = &retried[0];
    assert_eq!((row["_op"].as_str(), row["note"].as_str(), &row["arr"]), (Some("I"), Some("b"), &serde_json::Value::Null));
    assert_eq!((row["_lsn"].as_str(), row["_seq"].as_str()), (Some(lsn.as_str()), Some(seq.as_str())));
    let ids = |rows: &[Row]| {
        let mut ids: Vec<String> = rows.iter().map(|r| r["id"].as_str().expect("id").to_string()).collect();
        ids.sort();
        ids
    };
    let want = ["1", "2", "3", "4", "5"];
    assert_eq!(ids(&flush::read_with_iceberg_crate(&pipeline, "dl").await), want);
    assert_eq!(ids(&flush::read_with_pyiceberg(&pipeline, "dl")), want, "the independent reader agrees");
    // The watermark did not move back: the table's position is the last normal change's.
    let watermark = db.psql("SELECT (last_lsn - '0/0'::pg_lsn)::bigint FROM philotes.table_watermarks").expect("watermark");
    assert!(watermark.parse::<u64>().expect("lsn") > lsn.parse::<u64>().expect("lsn"), "{watermark} after {lsn}");

    // Nothing left to retry; an id that does not exist is refused by name.
    let (code, out) = cli(&pipeline, &["retry"]);
    assert!(code == Some(0) && out.contains("retried 0 dead letters"), "{out}");
    let (code, out) = cli(&pipeline, &["retry", "999999"]);
    assert!(code == Some(1) && out.contains("no dead letter with this id") && out.contains("999999"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flusher_killed_between_the_iceberg_commit_and_the_checkpoint_of_a_retry_writes_it_once() {
    let db = database("retry_killed");
    let pipeline = Pipeline::new(&db, &["public.dl"], "{ workers: 1, max_events: 1000, interval: 200ms }");
    let capture = pipeline.start_streaming(&db, &["--role", "capture"], &[], "capture.log").await;
    let flusher = pipeline.start(&["--role", "flusher"], &[], "flusher.log");
    commit_and_drain(&db, &pipeline, ROWS).await;
    commit_and_drain(&db, &pipeline, "ALTER TABLE dl DROP COLUMN arr; INSERT INTO dl VALUES (4, 'd')").await;
    flusher.stop_cleanly().await;
    let id = the_dead_letter(&db).await;
    let (lsn, _) = position_columns(&db, id);
    let watermark = db.psql("SELECT last_lsn || ' ' || last_seq FROM philotes.table_watermarks").expect("watermark");

    let (code, out) = cli(&pipeline, &["retry", &id.to_string()]);
    assert!(code == Some(0) && out.contains("retried 1 dead letter;"), "{out}");
    // The retry's flush commits to Iceberg and dies before its checkpoint.
    let faulty = pipeline.start(&["--role", "flusher"], &[("PHILOTES_FAULT", fault::AFTER_ICEBERG_COMMIT)], "faulty.log");
    let status = faulty.wait_exit(Duration::from_secs(90)).await;
    assert_eq!(status.signal(), Some(6), "the flusher aborts after the commit ({status}):\n{}", faulty.log());
    let catalog = flush_catalog::connect(&pipeline.catalog()).await.expect("catalog");
    let ident = iceberg::TableIdent::from_strs(["lake", "dl"]).expect("ident");
    let table = catalog.load_table(&ident).await.expect("table");
    let summary = &table.metadata().current_snapshot().expect("a snapshot").summary().additional_properties;
    assert!(summary.contains_key(SUMMARY_RETRY), "the retry's snapshot carries its token: {summary:?}");
    assert_eq!(rows_of(&pipeline, "2").await.len(), 1, "the retried change is in iceberg");
    assert_eq!(db.psql("SELECT count(*) FROM philotes.segments WHERE retry IS NOT NULL").expect("segments"), "1", "not checkpointed");
    assert_eq!(db.psql("SELECT last_lsn || ' ' || last_seq FROM philotes.table_watermarks").expect("watermark"), watermark);

    // A flusher without the fault finds the token in the table's history and only checkpoints; the table flows.
    let flusher = pipeline.start(&["--role", "flusher"], &[], "flusher-2.log");
    commit_and_drain(&db, &pipeline, "INSERT INTO dl VALUES (5, 'e')").await;
    flusher.stop_cleanly().await;
    capture.stop_cleanly().await;
    let rows = flush::read_with_iceberg_crate(&pipeline, "dl").await;
    let mut ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().expect("id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["1", "2", "3", "4", "5"], "every change once");
    let retried: Vec<&Row> = rows.iter().filter(|r| r["id"] == "2").collect();
    assert_eq!(retried[0]["_lsn"].as_str(), Some(lsn.as_str()));
    let python = flush::read_with_pyiceberg(&pipeline, "dl");
    assert_eq!(python.iter().filter(|r| r["id"] == "2").count(), 1, "the independent reader sees it once");
    assert_eq!(db.psql("SELECT count(*) FROM philotes.dead_letters").expect("dead letters"), "0");
    assert!(flusher.log().contains("already in iceberg"), "the restarted flush recognised the retry:\n{}", flusher.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_change_iceberg_still_cannot_hold_is_dead_lettered_again_and_the_table_flows() {
    let db = philotes_testkit::shared().database("retry_nan").expect("database");
    db.psql(flush::SCHEMA).expect("schema");
    flush::create_table(&db, "orders");
    let pipeline = Pipeline::new(&db, &["public.orders"], "{ workers: 1, max_events: 1000, interval: 200ms }");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    commit_and_drain(&db, &pipeline, "INSERT INTO orders (id, name, amount) VALUES (1, 'a', 1.5), (2, 'nan', 'NaN')").await;
    let first = the_dead_letter(&db).await;
    let (code, out) = cli(&pipeline, &["retry", &first.to_string()]);
    assert!(code == Some(0) && out.contains("retried 1 dead letter;"), "{out}");
    commit_and_drain(&db, &pipeline, "INSERT INTO orders (id, name, amount) VALUES (3, 'b', 2.5)").await;
    run.stop_cleanly().await;

    let again = letters(&pipeline);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0]["id"].as_i64(), Some(first), "a new dead letter");
    assert_eq!(again[0]["stage"], "arrow_batch");
    assert_eq!(again[0]["retryable"], true, "it keeps its change for the next retry");
    assert!(again[0]["reason"].as_str().expect("reason").contains("amount"), "{again:?}");
    let mut ids: Vec<String> = flush::read_with_iceberg_crate(&pipeline, "orders")
        .await
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["1", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_refuses_unknown_ids_letters_without_their_change_and_mirror_tables() {
    let db = database("retry_refused");
    let pipeline = Pipeline::new(&db, &["public.dl"], "{ workers: 1, max_events: 1000, interval: 200ms }");
    let file = pipeline.file.to_str().expect("utf-8 path");
    let out = crate::support::philotes(&["migrate", file], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // One as a philotes before retries stored it (no change kept), one with a change.
    let insert = |stage: &str, lsn: &str, event: &str| {
        db.psql(&format!(
            "INSERT INTO philotes.dead_letters (pipeline, stage, source_schema, source_table, commit_lsn, seq, reason, payload,
                                                schema_version, event)
             VALUES ('{}', '{stage}', 'public', 'dl', '{lsn}', 0, 'a reason', 'I …', {event}) RETURNING id",
            pipeline.name
        ))
        .expect("dead letter")
    };
    let old = insert("schema_resolve", "0/10", "NULL, NULL");
    let new = insert("arrow_batch", "0/20", "1, '\\x90'");
    let (old, new) = (old.as_str(), new.as_str());

    let (code, out) = cli(&pipeline, &["retry", old, new, "424242"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("dead letter {old}: it keeps no change to retry")), "{out}");
    assert!(out.contains("dead letter 424242: pipeline") && out.contains("no dead letter with this id"), "{out}");
    assert_eq!(letters(&pipeline).len(), 2, "nothing retried, nothing deleted");

    // Without ids, the letter without a change is kept and said so.
    pipeline.rewrite("    namespace: lake\n", "    namespace: lake\n    mode: mirror\n");
    let (code, out) = cli(&pipeline, &["retry", new]);
    assert!(code == Some(1) && out.contains("mode mirror"), "a mirror table is refused: {out}");
    let (code, out) = cli(&pipeline, &["retry"]);
    assert!(code == Some(0) && out.contains("retried 0 dead letters") && out.contains("kept"), "{out}");
    let (code, out) = cli(&pipeline, &["retry", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["retried"], serde_json::json!([]), "{report}");
    let kept: Vec<i64> = report["kept"].as_array().expect("kept").iter().map(|k| k["id"].as_i64().expect("id")).collect();
    assert_eq!(kept, [old.parse::<i64>().expect("id"), new.parse::<i64>().expect("id")], "{report}");
    assert_eq!(letters(&pipeline).len(), 2);
    let (_, shown) = cli(&pipeline, &["show", old]);
    assert!(shown.contains("retry     no"), "{shown}");
}
