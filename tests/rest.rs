//! The REST catalog path: a real Iceberg REST catalog server (tests/python/rest_catalog.py, the REST spec on top
//! of pyiceberg's SqlCatalog in the test database), the real `philotes` binary configured with
//! `catalog: { type: rest, … }`, and the tables read back through the SQL catalog on the same rows (the iceberg
//! crate and pyiceberg) and loaded through REST.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use philotes_stages::catalog::{self, CatalogSettings};

use crate::flush::{
    assert_both_readers_see_the_source, comparable, create_table, drained, expected_history, last_commit, read_with_iceberg_crate,
    read_with_pyiceberg, workload, Pipeline, SCHEMA,
};
use crate::mirror::{assert_mirror_equals_source, mirror_pipeline};
use crate::snapshot::wait_snapshots_done;
use crate::support::{assert_status_clean, philotes, status_json, status_table};

/// A REST catalog server for one test: `tests/python/rest_catalog.py` in the venv `.ci/run` makes
/// (`PHILOTES_PYTHON`), serving the SQL catalog `philotes` of a pipeline's catalog database and its warehouse.
/// Its request log (stderr) is kept beside the pipeline file. Killed on drop.
pub struct RestCatalogServer {
    child: Child,
    uri: String,
    log: PathBuf,
}

impl RestCatalogServer {
    /// Starts the server for `pipeline` (its catalog database and warehouse, local or S3) with extra
    /// arguments (`--token T`, `--credential ID:SECRET`, `--prefix P`) and waits for its `ready` line.
    pub async fn start(pipeline: &Pipeline, args: &[&str]) -> Self {
        let python = python();
        assert!(
            Path::new(&python).exists(),
            "{python} is needed for the REST catalog server: run `bash .ci/run` once (it makes the venv) or set PHILOTES_PYTHON"
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/rest_catalog.py");
        let (warehouse, props) = match &pipeline.s3 {
            Some(s3) => (s3.location(), s3.properties()),
            None => (format!("file://{}", pipeline.warehouse.display()), Vec::new()),
        };
        let log = pipeline.file.with_file_name("rest-catalog.log");
        let stderr = std::fs::File::create(&log).expect("rest catalog log file");
        let mut command = Command::new(&python);
        command
            .arg(script)
            .args(["--port", "0", "--catalog-uri", &pipeline.catalog_url, "--catalog-name", "philotes", "--warehouse", &warehouse])
            .args(args);
        for (key, value) in props {
            command.args(["--property", &format!("{key}={value}")]);
        }
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr).spawn().expect("the REST catalog server starts");
        let stdout = child.stdout.take().expect("stdout");
        // The first stdout line, read off the async runtime: `ready http://127.0.0.1:PORT`.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .expect("waiting for the ready line");
        let mut server = Self { child, uri: String::new(), log };
        match line.as_deref().map(str::trim).ok().and_then(|l| l.strip_prefix("ready ")) {
            Some(uri) => server.uri = uri.to_string(),
            None => panic!("the REST catalog server did not say ready ({line:?}); its log:\n{}", server.log()),
        }
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Its request log so far: one line `METHOD PATH STATUS` per request, and the traceback of any 500.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the log has a request line that starts with `request` (`POST /v1/namespaces`) and answered
    /// `status`.
    pub fn answered(&self, request: &str, status: u16) -> bool {
        self.log().lines().any(|l| l.starts_with(request) && l.ends_with(&format!(" {status}")))
    }
}

impl Drop for RestCatalogServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The venv's Python (`PHILOTES_PYTHON`, default the venv `.ci/run` makes).
fn python() -> String {
    std::env::var("PHILOTES_PYTHON").unwrap_or_else(|_| "/var/tmp/philotes-venv/bin/python".into())
}

/// Points the pipeline's sink at the REST catalog `uri` with extra catalog keys (`token: …`).
pub fn use_rest_catalog(pipeline: &Pipeline, uri: &str, extra: &str) {
    pipeline.rewrite(
        "    namespace: lake\n",
        &format!("    namespace: lake\n    catalog: {{ type: rest, name: philotes, uri: \"{uri}\"{extra} }}\n"),
    );
}

/// The same catalog as the pipeline's, through REST (for loading tables the way a flusher does).
pub fn rest_settings(pipeline: &Pipeline, uri: &str, props: &[(&str, &str)]) -> CatalogSettings {
    CatalogSettings::Rest {
        name: "philotes".into(),
        uri: uri.to_string(),
        warehouse: Some(format!("file://{}", pipeline.warehouse.display())),
        props: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// Asserts that the table `lake.<table>` loaded through REST is the very state the SQL catalog holds (same
/// metadata file, same current snapshot), and that its snapshots carry the pipeline's position.
async fn assert_rest_and_sql_agree(pipeline: &Pipeline, rest: &CatalogSettings, table: &str) {
    let ident = iceberg::TableIdent::from_strs(["lake", table]).expect("ident");
    let sql = catalog::connect(&pipeline.catalog()).await.expect("SQL catalog").load_table(&ident).await.expect("SQL load");
    let over_rest = catalog::connect(rest).await.expect("REST catalog").load_table(&ident).await.expect("REST load");
    assert_eq!(over_rest.metadata_location(), sql.metadata_location(), "{table}: REST and SQL see one metadata file");
    assert_eq!(over_rest.metadata().current_snapshot_id(), sql.metadata().current_snapshot_id(), "{table}: current snapshot");
    assert!(sql.metadata().current_snapshot_id().is_some(), "{table}: has snapshots");
    assert!(
        catalog::committed_position(&over_rest, &pipeline.name).is_some(),
        "{table}: the snapshot summary carries the pipeline's position"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_catalog_gets_exactly_the_source_changes() {
    let db = philotes_testkit::shared().database("rest_e2e").expect("database");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    create_table(&db, "customers");
    // Small flushes: each table gets several commits through REST.
    let pipeline = Pipeline::new(&db, &["public.orders", "public.customers"], "{ workers: 2, max_events: 100, interval: 100ms }");
    let server = RestCatalogServer::start(&pipeline, &[]).await;
    use_rest_catalog(&pipeline, server.uri(), "");

    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    let after = workload(&db);
    run.wait_until("every change in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    // A column added while the tables exist: the crate's schema update (add-schema, set-current-schema), committed
    // through REST as well.
    db.psql("ALTER TABLE orders ADD COLUMN extra text").expect("add column");
    let after = last_commit(&db, "INSERT INTO orders (id, name, extra) VALUES (5000, 'evolved', 'added later')");
    run.wait_until("the evolved row in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;

    // The tables were made and committed through REST, not behind its back.
    for request in ["POST /v1/namespaces ", "POST /v1/namespaces/lake/tables ", "POST /v1/namespaces/lake/tables/orders "] {
        assert!(server.answered(request, 200), "the server answered {request}with 200; its log:\n{}", server.log());
    }
    let commits = server.log().lines().filter(|l| l.starts_with("POST /v1/namespaces/lake/tables/orders ")).count();
    assert!(commits >= 3, "orders was committed several times through REST ({commits}); its log:\n{}", server.log());
    assert!(!server.log().contains(" 500"), "the server never failed; its log:\n{}", server.log());
    let rest = rest_settings(&pipeline, server.uri(), &[]);
    assert_both_readers_see_the_source(&db, &pipeline, "customers").await;
    assert_rest_and_sql_agree(&pipeline, &rest, "customers").await;

    // orders: the source history, plus the added column on the one row that has it.
    let expected = expected_history(&db, "orders");
    let readings = [("iceberg crate", read_with_iceberg_crate(&pipeline, "orders").await), ("pyiceberg", read_with_pyiceberg(&pipeline, "orders"))];
    for (reader, rows) in readings {
        assert_eq!(rows.len(), expected.len(), "orders ({reader}): row count");
        for (i, (row, want)) in rows.iter().zip(&expected).enumerate() {
            let mut have = comparable(row);
            let extra = have.remove("extra");
            let want_extra = (want.get("id") == Some(&serde_json::json!("5000"))).then(|| serde_json::json!("added later"));
            assert_eq!(extra, want_extra, "orders row {i} ({reader}): the added column");
            assert_eq!(&have, want, "orders row {i} ({reader})");
        }
    }
    assert_rest_and_sql_agree(&pipeline, &rest, "orders").await;
    let ident = iceberg::TableIdent::from_strs(["lake", "orders"]).expect("ident");
    let orders = catalog::connect(&rest).await.expect("REST catalog").load_table(&ident).await.expect("REST load");
    assert!(orders.metadata().current_schema().field_by_name("extra").is_some(), "the REST table has the added column");
    assert!(orders.metadata().schemas_iter().count() >= 2, "the column came as a new schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_rest_catalog_token_fails_clearly_and_the_right_one_delivers_every_change() {
    const TOKEN: &str = "right-token-4c1d9e7a";
    const WRONG: &str = "wrong-token-b83f20d5";
    let db = philotes_testkit::shared().database("rest_token").expect("database");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    create_table(&db, "customers");
    let pipeline = Pipeline::new(&db, &["public.orders", "public.customers"], "{ workers: 2, max_events: 1000, interval: 200ms }");
    let server = RestCatalogServer::start(&pipeline, &["--token", TOKEN]).await;
    use_rest_catalog(&pipeline, server.uri(), &format!(", token: {WRONG}"));

    // The wrong token: the flush fails and is retried, status says why, the buffer keeps every change.
    let wrong = pipeline.start_streaming(&db, &[], &[], "wrong.log").await;
    let after = workload(&db);
    let failing = wrong
        .wait_until("status to show the catalog refusing the flush", Duration::from_secs(60), || async {
            let status = status_json(&pipeline.file);
            status_table(&status, "public.orders")["failing"].as_str().map(str::to_string)
        })
        .await;
    assert!(failing.contains("401") && failing.contains("refused the credentials"), "the failure names the HTTP status 401 and what to check: {failing}");
    assert!(failing.contains("missing or wrong bearer token"), "the failure quotes the server's message: {failing}");
    assert!(!drained(&db, &pipeline.name, &after), "nothing could have been flushed");
    assert!(server.answered("GET /v1/config", 401), "the server refused the token; its log:\n{}", server.log());
    let text_status = philotes(&["status", pipeline.file.to_str().expect("utf-8 path")], &[]);
    let text_status = String::from_utf8_lossy(&text_status.stdout).into_owned();
    assert!(text_status.contains("FAILING"), "status shows the table failing:\n{text_status}");
    wrong.stop_cleanly().await;
    for (what, text) in [("the log", wrong.log()), ("status", text_status), ("status --json", status_json(&pipeline.file).to_string())] {
        assert!(!text.contains(WRONG), "{what} leaks the token:\n{text}");
    }
    let sql_catalog = catalog::connect(&pipeline.catalog()).await.expect("SQL catalog");
    let orders = iceberg::TableIdent::from_strs(["lake", "orders"]).expect("ident");
    assert!(!sql_catalog.table_exists(&orders).await.expect("table_exists"), "no table was made with the wrong token");

    // The right token: every change buffered meanwhile reaches Iceberg exactly once.
    pipeline.rewrite(&format!("token: {WRONG}"), &format!("token: {TOKEN}"));
    let right = pipeline.start(&[], &[], "right.log");
    right.wait_until("every change in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    right.stop_cleanly().await;
    assert!(!right.log().contains(TOKEN), "the log leaks the token:\n{}", right.log());
    let rest = rest_settings(&pipeline, server.uri(), &[("token", TOKEN)]);
    for table in ["orders", "customers"] {
        assert_both_readers_see_the_source(&db, &pipeline, table).await;
        assert_rest_and_sql_agree(&pipeline, &rest, table).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_client_credentials_and_a_path_prefix_reach_the_rest_catalog() {
    let db = philotes_testkit::shared().database("rest_oauth").expect("database");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    create_table(&db, "customers");
    let pipeline = Pipeline::new(&db, &["public.orders", "public.customers"], "{ workers: 2, max_events: 1000, interval: 200ms }");
    let server = RestCatalogServer::start(&pipeline, &["--credential", "philotes-test:s3cr3t-5e9a", "--prefix", "lakehouse"]).await;
    use_rest_catalog(&pipeline, server.uri(), ", credential: \"philotes-test:s3cr3t-5e9a\"");

    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    let after = workload(&db);
    run.wait_until("every change in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    assert!(!run.log().contains("s3cr3t-5e9a"), "the log leaks the secret:\n{}", run.log());

    assert!(server.answered("POST /v1/oauth/tokens", 200), "the credential was exchanged; log:\n{}", server.log());
    assert!(server.answered("POST /v1/lakehouse/namespaces/lake/tables/orders ", 200), "commits used the prefix; log:\n{}", server.log());
    let rest = rest_settings(&pipeline, server.uri(), &[("credential", "philotes-test:s3cr3t-5e9a")]);
    for table in ["orders", "customers"] {
        assert_both_readers_see_the_source(&db, &pipeline, table).await;
        assert_rest_and_sql_agree(&pipeline, &rest, table).await;
    }
}

/// An outside commit lands on `lake.<table>` (through the SQL catalog, on the row the REST server also
/// serves) while the flush holds its commit (`PHILOTES_FAULT_DELAY_BEFORE_COMMIT_MS`): the flush's commit through
/// REST must lose and be made again on the new state, so the table holds every change once. Returns the outside
/// snapshot's id.
async fn race_an_outside_commit(pipeline: &Pipeline, run: &crate::support::Philotes, table: &str) -> i64 {
    use philotes_stages::iceberg_commit::row_delta::{commit_row_delta_sql, RowDelta};

    run.wait_until("the flush holding its commit", Duration::from_secs(60), || async {
        run.log().contains("holding the iceberg commit")
    })
    .await;
    let catalog = catalog::connect(&pipeline.catalog()).await.expect("SQL catalog");
    let ident = iceberg::TableIdent::from_strs(["lake", table]).expect("ident");
    let base = catalog.load_table(&ident).await.expect("table");
    let (client, connection) = tokio_postgres::connect(&pipeline.catalog_url, tokio_postgres::NoTls).await.expect("catalog connection");
    tokio::spawn(connection);
    let outside = RowDelta { properties: [("by".to_string(), "an outside writer".to_string())].into(), ..RowDelta::default() };
    let landed = commit_row_delta_sql(&client, "philotes", &base, outside).await.expect("the outside commit lands first");
    landed.metadata().current_snapshot_id().expect("a snapshot")
}

/// The snapshot the flush committed after the race is a child of the outside commit.
async fn assert_built_on(pipeline: &Pipeline, table: &str, outside: i64) {
    let catalog = catalog::connect(&pipeline.catalog()).await.expect("SQL catalog");
    let ident = iceberg::TableIdent::from_strs(["lake", table]).expect("ident");
    let loaded = catalog.load_table(&ident).await.expect("table");
    let current = loaded.metadata().current_snapshot().expect("a snapshot");
    assert_eq!(current.parent_snapshot_id(), Some(outside), "{table}: the flush was built on the outside commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changelog_commit_through_rest_that_loses_the_race_lands_once_on_the_new_state() {
    let db = philotes_testkit::shared().database("rest_race").expect("database");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    let pipeline = Pipeline::new(&db, &["public.orders"], "{ workers: 1, max_events: 1000, interval: 100ms }");
    let server = RestCatalogServer::start(&pipeline, &[]).await;
    use_rest_catalog(&pipeline, server.uri(), "");
    let run = pipeline.start_streaming(&db, &[], &[], "first.log").await;
    let after = last_commit(&db, "INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 50) g");
    run.wait_until("the first rows in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    run.stop_cleanly().await;

    let run = pipeline.start_streaming(&db, &[], &[("PHILOTES_FAULT_DELAY_BEFORE_COMMIT_MS", "4000")], "race.log").await;
    let after = last_commit(&db, "UPDATE orders SET amount = 1 WHERE id <= 20; DELETE FROM orders WHERE id > 40");
    // The commit guard sees the moved snapshot when the crate's commit reloads the table (before any request
    // is sent); the append's assert-ref-snapshot-id would be the server's 409 if it moved later still.
    let outside = race_an_outside_commit(&pipeline, &run, "orders").await;
    run.wait_until("the flush in iceberg", Duration::from_secs(60), || async { drained(&db, &pipeline.name, &after) }).await;
    assert!(run.log().contains("commit conflict"), "the flush's first commit lost the race:\n{}", run.log());
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    assert_both_readers_see_the_source(&db, &pipeline, "orders").await;
    assert_built_on(&pipeline, "orders", outside).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_table_through_rest_equals_the_source_and_a_lost_race_is_committed_again() {
    let db = philotes_testkit::shared().database("rest_mirror").expect("database");
    db.psql("CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(12,2)); INSERT INTO t SELECT g, 'v' || g, g * 0.5 FROM generate_series(1, 300) g;")
        .expect("schema");
    let pipeline = mirror_pipeline(&db, &["t"]);
    let server = RestCatalogServer::start(&pipeline, &[]).await;
    use_rest_catalog(&pipeline, server.uri(), "");
    const SELECT: &str = "SELECT id::text AS id, v, n::text AS n FROM t";

    let run = pipeline.start_streaming(&db, &[], &[], "first.log").await;
    wait_snapshots_done(&db, &pipeline, &run, "INSERT INTO t VALUES (1000, 'marker')").await;
    for sql in [
        "UPDATE t SET v = 'updated ' || id WHERE id % 3 = 0",
        "DELETE FROM t WHERE id % 5 = 0",
        // One transaction (last_commit wraps it): two versions of a key in one flush.
        "INSERT INTO t VALUES (2000, 'twice'); UPDATE t SET v = 'twice, updated' WHERE id = 2000; DELETE FROM t WHERE id = 1",
        "INSERT INTO t SELECT g, 'new ' || g, NULL FROM generate_series(301, 400) g",
    ] {
        let after = last_commit(&db, sql);
        run.wait_until("the change in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    }
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    assert_mirror_equals_source(&db, &pipeline, "t", SELECT, &["id"]).await;
    assert!(server.answered("POST /v1/namespaces/lake/tables/t ", 200), "mirror commits went through REST; log:\n{}", server.log());

    // The row delta's commit request asserts main's snapshot: an outside commit in between is a 409, and the
    // delta is built again on the new state.
    let run = pipeline.start_streaming(&db, &[], &[("PHILOTES_FAULT_DELAY_BEFORE_COMMIT_MS", "4000")], "race.log").await;
    let after = last_commit(&db, "UPDATE t SET v = 'changed' WHERE id <= 50; DELETE FROM t WHERE id > 390 AND id < 1000");
    let outside = race_an_outside_commit(&pipeline, &run, "t").await;
    run.wait_until("the flush in iceberg", Duration::from_secs(60), || async { drained(&db, &pipeline.name, &after) }).await;
    assert!(run.log().contains("commit conflict"), "the flush's first commit lost the race:\n{}", run.log());
    assert!(server.answered("POST /v1/namespaces/lake/tables/t ", 409), "the server refused the stale commit; log:\n{}", server.log());
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    assert_mirror_equals_source(&db, &pipeline, "t", SELECT, &["id"]).await;
    assert_built_on(&pipeline, "t", outside).await;

    // Compaction and expiry through REST: the replace snapshot and the removal of old snapshots are commit
    // requests too; afterwards pyiceberg (no equality deletes) reads the mirror.
    pipeline.rewrite("    mode: mirror\n", "    mode: mirror\n    retention: 1s\n");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let file = pipeline.file.to_str().expect("utf-8 path");
    let out = philotes(&["compact", file, "--table", "public.t", "--min-files", "1"], &[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("compacted") && text.contains("expired"), "{text}");
    assert!(server.answered("POST /v1/namespaces/lake/tables/t ", 200), "{}", server.log());
    let ident = iceberg::TableIdent::from_strs(["lake", "t"]).expect("ident");
    let table = catalog::connect(&pipeline.catalog()).await.expect("catalog").load_table(&ident).await.expect("table");
    let files = philotes_stages::maintenance::FileCounts::of(&table).await.expect("files");
    assert_eq!((files.data, files.deletes), (1, 0), "one data file, no delete file");
    assert!(table.metadata().snapshots().count() < 5, "old snapshots expired: {}", table.metadata().snapshots().count());
    assert!(catalog::committed_position(&table, &pipeline.name).is_some(), "the position survives compaction and expiry");
    let expected = crate::snapshot::source_rows(&db, SELECT).len();
    assert_eq!(crate::flush::read_with_pyiceberg(&pipeline, "t").len(), expected, "pyiceberg reads the compacted mirror");
    assert_mirror_equals_source(&db, &pipeline, "t", SELECT, &["id"]).await;
}
