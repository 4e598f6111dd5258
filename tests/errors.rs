//! Errors that say what happened: which server, which address, what was being done, and the cause, once. Every
//! test runs the real binary against a real PostgreSQL and reads what a person would read (the log, stderr,
//! `philotes status`).

use std::time::Duration;

use crate::flush::{create_table, Pipeline, SCHEMA};
use crate::support::{database, philotes, status_json, wait_for};

// This module is about the wording of errors: its log and stderr assertions check the product itself (what a
// person reads), so they stay; status is read beside them wherever it holds the same fact.

/// Runs `role` of `pipeline` until its log names `needle` (within 20 s), stops it cleanly, and returns the log.
async fn log_until(pipeline: &Pipeline, role: &str, needle: &str) -> String {
    let run = pipeline.start(&["--role", role], &[], "run.log");
    run.wait_until(needle, Duration::from_secs(20), || async { run.log().contains(needle) }).await;
    run.stop_cleanly().await;
    run.log()
}

/// No message may say a cause twice ("db error: db error", tokio-postgres' "error connecting to server" twice).
fn assert_said_once(text: &str) {
    for repeated in ["db error: db error", "error connecting to server: error connecting to server"] {
        assert!(!text.contains(repeated), "{repeated:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_catalog_database_is_named_with_its_address_and_cause_within_seconds() {
    let db = database("err_catalog");
    let mut pipeline = Pipeline::new(&db, &["public.t"], "{ workers: 1, interval: 200ms }");
    let port = crate::support::free_port();
    pipeline.use_catalog(&format!("postgres://postgres@127.0.0.1:{port}/nowhere"));
    let log = log_until(&pipeline, "flusher", &format!("127.0.0.1:{port}/nowhere")).await;
    assert!(log.contains("Connection refused"), "the cause is missing:\n{log}");
    assert!(log.contains("SQL catalog database"), "what failed is missing:\n{log}");
    assert_said_once(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_is_logged_with_its_address_and_the_refusal() {
    let db = database("err_source");
    let pipeline = Pipeline::new(&db, &["public.t"], "{ workers: 1, interval: 200ms }");
    let port = crate::support::free_port();
    // The buffer stays reachable (its URL defaults to the source's, so it is set to the test database).
    pipeline.use_source(&format!("postgres://postgres@127.0.0.1:{port}/src"), &db.url());
    let log = log_until(&pipeline, "capture", &format!("connecting to 127.0.0.1:{port}/src")).await;
    assert!(log.contains("Connection refused"), "the cause is missing:\n{log}");
    assert_said_once(&log);
}

#[test]
fn a_publication_the_source_user_may_not_create_is_named_in_the_error() {
    let db = database("err_publication");
    let role = format!("{}_limited", db.name());
    db.psql(&format!("CREATE ROLE {role} LOGIN REPLICATION")).expect("role");
    // The user owns the table but may not create anything in the database: CREATE PUBLICATION is refused.
    db.psql(&format!("CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO {role}")).expect("table");
    let pipeline = Pipeline::new(&db, &["public.t"], "{ workers: 1, interval: 200ms }");
    let limited = format!("postgres://{role}@127.0.0.1:{}/{}", db.cluster().port(), db.name());
    pipeline.use_source(&limited, &db.url());
    let out = philotes(&["run", pipeline.file.to_str().expect("utf-8"), "--role", "capture"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the capture cannot run:\n{stderr}");
    let last = stderr.lines().rfind(|l| l.starts_with("philotes: ")).unwrap_or_else(|| panic!("no final error:\n{stderr}"));
    assert!(
        last.contains(&format!("creating or extending the publication \"philotes_{}\"", db.name()))
            && last.contains("permission denied for database"),
        "{last}"
    );
    assert_said_once(&stderr);
    drop(db);
    philotes_testkit::shared().psql("postgres", &format!("DROP ROLE {role}")).expect("drop role");
}

#[test]
fn status_with_the_source_down_shows_the_buffer_and_lists_what_it_could_not_read() {
    let db = database("err_status");
    let pipeline = Pipeline::new(&db, &["public.t"], "{ workers: 1, interval: 200ms }");
    let port = crate::support::free_port();
    pipeline.use_source(&format!("postgres://postgres@127.0.0.1:{port}/src"), &db.url());
    let file = pipeline.file.to_str().expect("utf-8");
    assert!(philotes(&["migrate", file], &[]).status.success());

    let out = philotes(&["status", file, "--json"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("status prints JSON even with the source down");
    assert_eq!(status["slot_exists"], serde_json::Value::Null, "{status}");
    assert_eq!(status["buffer_segments"], 0, "{status}");
    assert_eq!(status["dead_letters"], 0, "{status}");
    let errors = status["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{status}");
    assert_eq!(errors[0]["part"], "source");
    let error = errors[0]["error"].as_str().expect("text");
    assert!(error.contains(&format!("127.0.0.1:{port}/src")) && error.contains("Connection refused"), "{error}");

    let out = philotes(&["status", file], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("UNKNOWN") && text.contains("buffer       0 segments"), "{text}");
    assert!(text.contains("error        source:") && text.contains("Connection refused"), "{text}");
    assert_said_once(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_below_a_regular_file_is_named_in_the_log_and_in_status() {
    let db = database("err_warehouse");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    let pipeline = Pipeline::new(&db, &["public.orders"], "{ workers: 1, max_events: 1000, interval: 200ms }");
    let blocker = pipeline.warehouse.with_file_name("blocker");
    std::fs::write(&blocker, "a regular file").expect("blocker file");
    let below = blocker.join("warehouse");
    pipeline.rewrite(
        &format!("    warehouse: file://{}\n", pipeline.warehouse.display()),
        &format!("    warehouse: file://{}\n", below.display()),
    );
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    db.psql("INSERT INTO orders (id, name) VALUES (1, 'one')").expect("insert");
    // The store names paths relative to the root (`tmp/…`).
    let blocker_text = blocker.display().to_string().trim_start_matches('/').to_string();
    run.wait_until("the warehouse failure in the log", Duration::from_secs(60), || async {
        let log = run.log();
        log.contains("lake.orders") && log.contains(&blocker_text)
    })
    .await;
    // While the flusher retries, status names the table's failure.
    let file = pipeline.file.to_str().expect("utf-8");
    let mut shown = String::new();
    wait_for("status to show the failure", Duration::from_secs(30), || {
        shown = String::from_utf8_lossy(&philotes(&["status", file], &[]).stdout).into_owned();
        let done = shown.contains("public.orders") && shown.contains(&blocker_text);
        async move { done }
    })
    .await;
    let json = status_json(&pipeline.file);
    let table = &json["tables"][0];
    assert_eq!(table["table"], "public.orders", "{json}");
    assert!(table["failing"].as_str().is_some_and(|f| f.contains(&blocker_text)), "{json}");
    assert_eq!(table["error"], serde_json::Value::Null, "a failing write does not stop the table: {json}");

    // Once the path is usable, the table flows and the failure is gone from status.
    std::fs::remove_file(&blocker).expect("remove blocker");
    run.wait_until("the table to flush", Duration::from_secs(60), || async {
        let json = status_json(&pipeline.file);
        json["tables"][0]["committed"].is_string() && json["tables"][0]["failing"].is_null()
    })
    .await;
    run.stop_cleanly().await;
    assert_said_once(&run.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushers_starting_together_on_a_fresh_catalog_create_its_tables_without_a_conflict() {
    let db = database("err_catalog_race");
    // Rounds of several flushers at once, each round on a catalog database nobody has used yet.
    for round in 0..2 {
        let catalog = database(&format!("err_catalog_fresh_{round}"));
        let mut pipeline = Pipeline::new(&db, &["public.t"], "{ workers: 1, interval: 200ms }");
        pipeline.use_catalog(&catalog.url());
        let file = pipeline.file.to_str().expect("utf-8").to_string();
        assert!(philotes(&["migrate", &file], &[]).status.success());
        let logs: Vec<String> = (0..4).map(|i| format!("flusher-{round}-{i}.log")).collect();
        let flushers: Vec<_> =
            logs.iter().map(|log| pipeline.start(&["--role", "flusher", "--metrics", "127.0.0.1:0"], &[], log)).collect();
        wait_for("the catalog tables", Duration::from_secs(30), || async {
            catalog.psql("SELECT to_regclass('iceberg_tables') IS NOT NULL AND to_regclass('iceberg_namespace_properties') IS NOT NULL").is_ok_and(|v| v == "t")
        })
        .await;
        // Time for every flusher to get past its catalog connection (a loser of the race restarts after a backoff).
        tokio::time::sleep(Duration::from_secs(3)).await;
        for flusher in &flushers {
            flusher.stop_cleanly().await;
        }
        // Kept on the log: a flusher that lost the race restarts without a trace anywhere else (it has claimed
        // no table, so status has nothing to show).
        for flusher in &flushers {
            let text = flusher.log();
            for bad in ["duplicate key", "pg_type", "restarting", "ERROR"] {
                assert!(!text.contains(bad), "{} says {bad:?}:\n{text}", flusher.name());
            }
        }
    }
}
