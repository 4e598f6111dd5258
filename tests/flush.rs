//! The whole pipeline into Iceberg: a real PostgreSQL, the real `philotes` binary, a real warehouse on disk
//! and the SQL catalog in Postgres; the tables are read back with the `iceberg` crate and with pyiceberg.
//!
//! The reference is the source: a trigger (on tables the pipeline does not capture) records every change in
//! `history` as the workload makes it; the Iceberg changelog must equal it row for row.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, Decimal128Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use futures::TryStreamExt;
use philotes_stages::catalog::{self, CatalogSettings};
use philotes_testkit::TestDatabase;

use crate::support::{assert_status_clean, slot_name, wait_for, Philotes};

/// One changelog row, every value rendered as text (the same rendering as tests/python/read_iceberg.py).
pub type Row = BTreeMap<String, serde_json::Value>;

/// A pipeline of the whole product (capture + flushers) on one test database, with its own warehouse.
pub struct Pipeline {
    pub file: PathBuf,
    pub warehouse: PathBuf,
    /// The S3-compatible store holding the warehouse instead of `warehouse` (see [`Pipeline::use_s3`]).
    pub s3: Option<S3Warehouse>,
    /// The SQL catalog's database (the buffer database unless a test points it elsewhere).
    pub catalog_url: String,
    pub name: String,
}

/// A passing test leaves no warehouse behind (a failing one keeps it, with the logs, for a look).
impl Drop for Pipeline {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            if let Some(dir) = self.file.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

impl Pipeline {
    pub fn new(db: &TestDatabase, tables: &[&str], flush: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("philotes-flush-{}", db.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let warehouse = dir.join("warehouse");
        let yaml = format!(
            "pipeline: {name}\n\
             source:\n  postgres:\n    url: {url}\n    tables: [{tables}]\n    snapshot: never\n    status_interval: 1s\n\
             buffer:\n  segment: {{ max_events: 500, max_bytes: 1MiB, max_age: 50ms }}\n\
             sink:\n  iceberg:\n    warehouse: file://{warehouse}\n    namespace: lake\n\
             flush: {flush}\n",
            name = db.name(),
            url = db.url(),
            tables = tables.join(", "),
            warehouse = warehouse.display(),
        );
        let file = dir.join("pipeline.yaml");
        std::fs::write(&file, yaml).expect("pipeline file");
        Self { file, warehouse, s3: None, catalog_url: db.url(), name: db.name().to_string() }
    }

    /// Replaces `from` (which must be there) with `to` in the pipeline file.
    pub fn rewrite(&self, from: &str, to: &str) {
        let yaml = std::fs::read_to_string(&self.file).expect("pipeline file");
        assert!(yaml.contains(from), "the pipeline file has no {from:?}:\n{yaml}");
        std::fs::write(&self.file, yaml.replace(from, to)).expect("pipeline file");
    }

    /// Puts the SQL catalog into another database.
    pub fn use_catalog(&mut self, url: &str) {
        self.rewrite("    namespace: lake\n", &format!("    namespace: lake\n    catalog: {{ type: sql, name: philotes, url: {url} }}\n"));
        self.catalog_url = url.to_string();
    }

    /// Reads from the source at `url` while the buffer (and catalog) stay in the test database.
    pub fn use_source(&self, url: &str, buffer: &str) {
        self.rewrite(&format!("    url: {buffer}\n"), &format!("    url: {url}\n"));
        self.rewrite("buffer:\n", &format!("buffer:\n  url: {buffer}\n"));
    }

    /// Starts `philotes run FILE` with extra arguments and environment; stderr goes to `log` beside the file.
    pub fn start(&self, args: &[&str], env: &[(&str, &str)], log: &str) -> Philotes {
        // Flushes of many parts (a part per segment of up to 500 changes), as a flush of a busy table has.
        let env: Vec<(&str, &str)> = std::iter::once(("PHILOTES_PART_EVENTS", "400")).chain(env.iter().copied()).collect();
        Philotes::start(&self.file, args, &env, self.file.with_file_name(log))
    }

    /// [`Pipeline::start`] of a process that captures (the capture role or every role), waiting until it streams
    /// from its slot: changes committed before that would not be streamed.
    pub async fn start_streaming(&self, db: &TestDatabase, args: &[&str], env: &[(&str, &str)], log: &str) -> Philotes {
        let process = self.start(args, env, log);
        process.wait_streaming(db, &slot_name(db)).await;
        process
    }

    /// Puts the warehouse into the S3-compatible store `s3` (the pipeline file's `s3:` block).
    pub fn use_s3(&mut self, s3: &S3Warehouse) {
        self.rewrite(
            &format!("    warehouse: file://{}\n", self.warehouse.display()),
            &format!(
                "    warehouse: {}\n    s3: {{ region: us-east-1, endpoint: \"{}\", access_key_id: test, \
                 secret_access_key: test, path_style: true }}\n",
                s3.location(),
                s3.endpoint
            ),
        );
        self.s3 = Some(s3.clone());
    }

    pub fn catalog(&self) -> CatalogSettings {
        let (warehouse, props) = match &self.s3 {
            Some(s3) => (s3.location(), s3.properties().into_iter().collect()),
            None => (format!("file://{}", self.warehouse.display()), Default::default()),
        };
        CatalogSettings::Sql { name: "philotes".into(), uri: self.catalog_url.clone(), warehouse, props }
    }
}

/// A bucket in an S3-compatible store.
#[derive(Debug, Clone)]
pub struct S3Warehouse {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
}

impl S3Warehouse {
    /// The warehouse location in the bucket.
    pub fn location(&self) -> String {
        format!("s3://{}/warehouse", self.bucket)
    }

    /// The FileIO properties of the `iceberg` crate and of pyiceberg (the same names).
    pub fn properties(&self) -> Vec<(String, String)> {
        [
            ("s3.endpoint", self.endpoint.as_str()),
            ("s3.region", "us-east-1"),
            ("s3.access-key-id", "test"),
            ("s3.secret-access-key", "test"),
            ("s3.path-style-access", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// A local S3-compatible server: moto's, from the venv `.ci/run` makes (next to `PHILOTES_PYTHON`). Stopped on
/// drop.
pub struct S3Server {
    child: Child,
    /// Its endpoint.
    pub endpoint: String,
}

impl S3Server {
    /// Starts the server on a free port and waits until it answers.
    pub async fn start() -> Self {
        let python = python();
        let server = Path::new(&python).with_file_name("moto_server");
        assert!(server.exists(), "{} is needed for the S3 test: run `bash .ci/run` once (it makes the venv)", server.display());
        let port = crate::support::free_port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let server = Self { child, endpoint: format!("http://127.0.0.1:{port}") };
        wait_for("the S3 server", Duration::from_secs(60), || async { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() }).await;
        server
    }

    /// Creates `bucket` and returns it as a warehouse.
    pub fn bucket(&self, bucket: &str) -> S3Warehouse {
        let out = Command::new(python())
            .args([
                "-c",
                "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test', \
                 aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket=sys.argv[2])",
                &self.endpoint,
                bucket,
            ])
            .output()
            .expect("python runs");
        assert!(out.status.success(), "creating bucket {bucket}: {}", String::from_utf8_lossy(&out.stderr));
        S3Warehouse { endpoint: self.endpoint.clone(), bucket: bucket.to_string() }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The venv's Python (`PHILOTES_PYTHON`, default the venv `.ci/run` makes).
pub fn python() -> String {
    std::env::var("PHILOTES_PYTHON").unwrap_or_else(|_| "/var/tmp/philotes-venv/bin/python".into())
}

/// Runs `sql` in a transaction and returns a WAL position taken inside it, before its commit: the commit LSN of
/// that transaction is at or after it (later WAL of other databases does not matter).
pub fn last_commit(db: &TestDatabase, sql: &str) -> String {
    let out = db.psql(&format!("BEGIN; {sql}; SELECT pg_current_wal_insert_lsn(); COMMIT;")).expect("last transaction");
    out.lines().find(|l| l.contains('/')).expect("an LSN").trim().to_string()
}

/// Whether everything up to the transaction marked by `after` (see [`last_commit`]) is in Iceberg: the
/// capture checkpoint reached it and the buffer is empty.
pub fn drained(db: &TestDatabase, pipeline: &str, after: &str) -> bool {
    let sql = format!(
        "SELECT (SELECT coalesce(commit_lsn >= '{after}'::pg_lsn, false) FROM philotes.checkpoints WHERE pipeline = '{pipeline}')
                AND NOT EXISTS (SELECT 1 FROM philotes.segments WHERE pipeline = '{pipeline}')"
    );
    db.psql(&sql).map(|v| v == "t").unwrap_or(false)
}

/// Renders one Arrow value as the test's canonical text (see tests/python/read_iceberg.py).
fn render(column: &dyn Array, row: usize) -> serde_json::Value {
    use serde_json::Value as J;
    if column.is_null(row) {
        return J::Null;
    }
    match column.data_type() {
        DataType::Boolean => J::String(column.as_boolean().value(row).to_string()),
        DataType::Int32 => J::String(column.as_primitive::<Int32Type>().value(row).to_string()),
        DataType::Int64 => J::String(column.as_primitive::<Int64Type>().value(row).to_string()),
        // Python's repr of a float (`2.0`, `1.5`) is Rust's Debug form for the values tests use.
        DataType::Float64 => J::String(format!("{:?}", column.as_primitive::<arrow::datatypes::Float64Type>().value(row))),
        DataType::Float32 => J::String(format!("{:?}", column.as_primitive::<arrow::datatypes::Float32Type>().value(row))),
        DataType::Utf8 => J::String(column.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => J::String(column.as_string::<i64>().value(row).to_string()),
        DataType::Decimal128(_, scale) => {
            let v = column.as_primitive::<Decimal128Type>().value(row);
            J::String(decimal(v, *scale))
        }
        DataType::Date32 => {
            let (y, m, d) = philotes_schemas::civil_from_days(i64::from(column.as_primitive::<Date32Type>().value(row)));
            J::String(format!("{y:04}-{m:02}-{d:02}"))
        }
        DataType::Timestamp(TimeUnit::Microsecond, zone) => {
            let micros = column.as_primitive::<TimestampMicrosecondType>().value(row);
            let text = timestamp(micros);
            J::String(if zone.is_some() { format!("{text}+00") } else { text })
        }
        DataType::FixedSizeBinary(16) => {
            // A uuid, as PostgreSQL and pyiceberg print it.
            let hex: String = column.as_fixed_size_binary().value(row).iter().map(|b| format!("{b:02x}")).collect();
            J::String(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
        }
        DataType::List(_) => {
            let list = column.as_list::<i32>().value(row);
            J::Array((0..list.len()).map(|i| render(list.as_ref(), i)).collect())
        }
        other => J::String(format!("<{other}>")),
    }
}

fn decimal(unscaled: i128, scale: i8) -> String {
    let negative = unscaled < 0;
    let digits = unscaled.unsigned_abs().to_string();
    let scale = usize::try_from(scale).unwrap_or(0);
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    let sign = if negative { "-" } else { "" };
    if scale == 0 { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") }
}

fn timestamp(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    let rem = micros.rem_euclid(86_400_000_000);
    let (y, m, d) = philotes_schemas::civil_from_days(days);
    let (h, mi, s, us) = (rem / 3_600_000_000, rem / 60_000_000 % 60, rem / 1_000_000 % 60, rem % 1_000_000);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
}

/// Every batch of the Iceberg table `lake.<table>`, read with the `iceberg` crate.
pub async fn read_batches(pipeline: &Pipeline, table: &str) -> Vec<RecordBatch> {
    let catalog = catalog::connect(&pipeline.catalog()).await.expect("catalog");
    let ident = iceberg::TableIdent::from_strs(["lake", table]).expect("ident");
    let table = catalog.load_table(&ident).await.expect("table exists");
    table
        .scan()
        .select_all()
        .build()
        .expect("scan")
        .to_arrow()
        .await
        .expect("arrow stream")
        .try_collect()
        .await
        .expect("batches")
}

/// Every row of an Iceberg table read with the `iceberg` crate, ordered by (_lsn, _seq).
pub async fn read_with_iceberg_crate(pipeline: &Pipeline, table: &str) -> Vec<Row> {
    let batches = read_batches(pipeline, table).await;
    let mut rows = Vec::new();
    for batch in &batches {
        for i in 0..batch.num_rows() {
            let mut row = Row::new();
            for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
                row.insert(field.name().clone(), render(column.as_ref(), i));
            }
            rows.push(row);
        }
    }
    let key = |r: &Row| {
        let n = |k: &str| r.get(k).and_then(|v| v.as_str()).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
        (n("_lsn"), n("_seq"))
    };
    rows.sort_by_key(key);
    rows
}

/// Every row of an Iceberg table read with pyiceberg and pyarrow's `to_pylist()` (the venv .ci/run makes;
/// `PHILOTES_PYTHON`).
pub fn read_with_pyiceberg(pipeline: &Pipeline, table: &str) -> Vec<Row> {
    read_with_python(pipeline, table, &[])
}

/// Every row of an Iceberg table read with DuckDB's `iceberg_scan` (local warehouses; the pinned extensions of
/// the venv .ci/run makes). A missing DuckDB fails the test.
pub fn read_with_duckdb(pipeline: &Pipeline, table: &str) -> Vec<Row> {
    read_with_python(pipeline, table, &["--duckdb"])
}

fn read_with_python(pipeline: &Pipeline, table: &str, flags: &[&str]) -> Vec<Row> {
    let python = python();
    assert!(
        Path::new(&python).exists(),
        "pyiceberg is needed as the independent reader: run `bash .ci/run` once (it makes the venv) or set PHILOTES_PYTHON"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/read_iceberg.py");
    let mut command = Command::new(python);
    command.arg(script).args(flags).args([&pipeline.catalog_url, "philotes", &format!("lake.{table}")]);
    if let Some(s3) = &pipeline.s3 {
        command.args(s3.properties().into_iter().map(|(k, v)| format!("{k}={v}")));
    }
    let out = command.output().expect("python runs");
    assert!(out.status.success(), "{} {flags:?} failed: {}", "read_iceberg.py", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json row"))
        .collect()
}

/// The rows of the `history` table for `table`, as the changelog must hold them.
pub fn expected_history(db: &TestDatabase, table: &str) -> Vec<Row> {
    expected_history_where(db, table, "true")
}

/// [`expected_history`] of the changes that also match the SQL condition `filter` (on `history`'s columns).
pub fn expected_history_where(db: &TestDatabase, table: &str, filter: &str) -> Vec<Row> {
    expected_history_matching(db, &format!("tbl = '{table}' AND ({filter})"))
}

/// The history rows of every table in `tables` (a renamed table, a partitioned table's partitions), in order.
pub fn expected_history_of(db: &TestDatabase, tables: &[&str]) -> Vec<Row> {
    let list = tables.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
    expected_history_matching(db, &format!("tbl IN ({list})"))
}

/// The history rows that match the SQL condition `condition` (on `history`'s columns), in order.
fn expected_history_matching(db: &TestDatabase, condition: &str) -> Vec<Row> {
    let text = db
        .psql(&format!(
            "SELECT json_build_object('_op', op, 'id', id::text, 'name', name, 'amount', amount::text,
                    'flag', flag::text, 'created', to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00',
                    'payload', payload::text, 'tags', to_json(tags), 'note', note)
             FROM history WHERE {condition} ORDER BY n"
        ))
        .expect("history");
    text.lines()
        .map(|l| {
            let mut row: Row = serde_json::from_str(l).expect("json");
            // `created` of a NULL timestamp renders as NULL through to_char || '+00'.
            row.retain(|_, v| !v.is_null());
            row
        })
        .collect()
}

/// Source columns and `_op` of a changelog row (the other bookkeeping columns are checked separately).
pub fn comparable(row: &Row) -> Row {
    row.iter()
        .filter(|(k, v)| !v.is_null() && !matches!(k.as_str(), "_lsn" | "_seq" | "_xid" | "_commit_ts" | "_unchanged"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub const SCHEMA: &str = "
CREATE TABLE history (n bigserial PRIMARY KEY, tbl text, op text, id bigint, name text, amount numeric(12,2),
                      flag boolean, created timestamptz, payload jsonb, tags text[], note text);
CREATE FUNCTION record_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO history (tbl, op) VALUES (TG_TABLE_NAME, 'T');
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO history (tbl, op, id, name, amount, flag, created, payload, tags, note)
    VALUES (TG_TABLE_NAME, 'D', OLD.id, OLD.name, OLD.amount, OLD.flag, OLD.created, OLD.payload, OLD.tags, OLD.note);
  ELSE
    INSERT INTO history (tbl, op, id, name, amount, flag, created, payload, tags, note)
    VALUES (TG_TABLE_NAME, left(TG_OP, 1), NEW.id, NEW.name, NEW.amount, NEW.flag, NEW.created, NEW.payload, NEW.tags, NEW.note);
  END IF;
  RETURN NULL;
END $$;
";

/// Creates table `name` of schema `public` (taken literally: `t.dot` is one name) with its history triggers.
pub fn create_table(db: &TestDatabase, name: &str) {
    let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let (table, rows, truncate) = (quoted(name), quoted(&format!("{name}_rows")), quoted(&format!("{name}_truncate")));
    db.psql(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, amount numeric(12,2), flag boolean, created timestamptz,
                             payload jsonb, tags text[], note text);
         ALTER TABLE {table} REPLICA IDENTITY FULL;
         CREATE TRIGGER {rows} AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION record_change();
         CREATE TRIGGER {truncate} AFTER TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION record_change();"
    ))
    .expect("create table");
}

/// Reads `table` with the iceberg crate and with pyiceberg and asserts that each equals the source's recorded
/// history row for row; returns both readings (crate, pyiceberg).
pub async fn assert_both_readers_see_the_source(db: &TestDatabase, pipeline: &Pipeline, table: &str) -> (Vec<Row>, Vec<Row>) {
    assert_both_readers_hold(pipeline, table, &expected_history(db, table)).await
}

/// Reads the Iceberg table `table` with the iceberg crate and with pyiceberg and asserts that each holds
/// `expected` row for row; returns both readings (crate, pyiceberg).
pub async fn assert_both_readers_hold(pipeline: &Pipeline, table: &str, expected: &[Row]) -> (Vec<Row>, Vec<Row>) {
    let crate_rows = read_with_iceberg_crate(pipeline, table).await;
    let py_rows = read_with_pyiceberg(pipeline, table);
    assert_eq!(crate_rows.len(), expected.len(), "{table}: iceberg crate row count");
    assert_eq!(py_rows.len(), expected.len(), "{table}: pyiceberg row count");
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&comparable(&crate_rows[i]), want, "{table} row {i} (iceberg crate)");
        assert_eq!(&comparable(&py_rows[i]), want, "{table} row {i} (pyiceberg)");
    }
    (crate_rows, py_rows)
}

/// A workload of inserts, updates, deletes, a rolled-back transaction, NULLs, a TOASTed value and a TRUNCATE
/// over `orders` and `customers`; returns the WAL position of its last transaction (see [`last_commit`]).
pub fn workload(db: &TestDatabase) -> String {
    // One psql call per transaction: a multi-statement `psql -c` is one implicit transaction, so a ROLLBACK
    // inside it would undo everything before it.
    for sql in [
        "INSERT INTO orders SELECT g, 'order ' || g, g * 1.25, g % 2 = 0,
                '2024-03-10 01:59:59.123456-05'::timestamptz + g * interval '1 hour',
                jsonb_build_object('g', g), ARRAY['a' || g, NULL], repeat('x', 10) FROM generate_series(1, 300) g",
        "INSERT INTO customers VALUES (1, 'ann', 0.01, true, '1969-12-31 23:59:59.999999+00', '{\"vip\": true}', '{}',
                repeat('long text ', 200000))",
        "UPDATE orders SET amount = amount + 1, flag = NOT flag WHERE id % 7 = 0",
        "UPDATE customers SET name = 'ann b' WHERE id = 1",
        "DELETE FROM orders WHERE id > 290",
        "BEGIN; INSERT INTO orders VALUES (999, 'rolled back'); ROLLBACK",
        "INSERT INTO customers VALUES (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
        "TRUNCATE customers",
    ] {
        db.psql(sql).expect("workload");
    }
    last_commit(db, "INSERT INTO customers VALUES (3, 'after truncate', -5.50, false, now(), '[1, 2]', ARRAY['x'], 'y')")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_iceberg_exactly_as_the_source_made_them_for_both_readers() {
    let db = philotes_testkit::shared().database("flush_e2e").expect("database");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    create_table(&db, "customers");
    let pipeline = Pipeline::new(&db, &["public.orders", "public.customers"], "{ workers: 2, max_events: 1000, interval: 200ms }");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    let after = workload(&db);
    run.wait_until("every change in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;

    for table in ["orders", "customers"] {
        let (crate_rows, py_rows) = assert_both_readers_see_the_source(&db, &pipeline, table).await;
        // Positions strictly increase, and both readers agree on the bookkeeping columns too.
        for pair in crate_rows.windows(2) {
            let pos = |r: &Row| {
                let n = |k: &str| r[k].as_str().and_then(|s| s.parse::<i64>().ok()).expect("number");
                (n("_lsn"), n("_seq"))
            };
            assert!(pos(&pair[0]) < pos(&pair[1]), "{table}: positions must increase");
        }
        for (a, b) in crate_rows.iter().zip(&py_rows) {
            assert_eq!(a.get("_lsn"), b.get("_lsn"));
            assert_eq!(a.get("_seq"), b.get("_seq"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_in_s3_compatible_storage_holds_exactly_the_source_changes_for_both_readers() {
    let s3 = S3Server::start().await;
    let db = philotes_testkit::shared().database("flush_s3").expect("database");
    db.psql(SCHEMA).expect("schema");
    create_table(&db, "orders");
    let mut pipeline = Pipeline::new(&db, &["public.orders"], "{ workers: 1, max_events: 1000, interval: 200ms }");
    pipeline.use_s3(&s3.bucket("lake"));
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    for sql in [
        "INSERT INTO orders SELECT g, 'order ' || g, g * 1.25, g % 2 = 0, '2024-03-10 01:59:59.123456-05'::timestamptz,
                jsonb_build_object('g', g), ARRAY['a' || g], repeat('x', 10) FROM generate_series(1, 1500) g",
        "UPDATE orders SET amount = amount + 1 WHERE id % 7 = 0",
        "DELETE FROM orders WHERE id > 1400",
    ] {
        db.psql(sql).expect("workload");
    }
    let after = last_commit(&db, "INSERT INTO orders VALUES (9999, 'last', 1.00)");
    run.wait_until("every change in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    assert!(!pipeline.warehouse.exists(), "nothing went to the local warehouse directory");

    assert_both_readers_see_the_source(&db, &pipeline, "orders").await;
}
