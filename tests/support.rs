//! Shared helpers of the integration tests: test databases and pipeline files, the real `philotes` binary as a
//! child process ([`Philotes`]: start, wait for a condition, stop), the one polling helper ([`wait_for`]),
//! `philotes status --json`, and reading the buffer back.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use philotes_stages::position::Lsn;
use philotes_stages::segment::{self, SegmentEvent};
use philotes_stages::store::{checkpoints, segments};
use philotes_testkit::TestDatabase;
use tokio_postgres::types::PgLsn;

/// A fresh database of the shared test cluster, dropped with the value.
pub fn database(hint: &str) -> TestDatabase {
    philotes_testkit::shared().database(hint).expect("test database")
}

/// Connects to the test database.
pub async fn connect(db: &TestDatabase) -> tokio_postgres::Client {
    db.connect().await.expect("connect to the test database")
}

/// Writes a pipeline file for a capture of `tables` in `db` (source and buffer both `db`). The pipeline is
/// named after the database, so slots (which are cluster-wide) never collide between tests. `source_extra`
/// and `segment` are YAML fragments: extra `source.postgres` keys and the `buffer.segment` mapping.
pub fn pipeline_file(db: &TestDatabase, tables: &[&str], source_extra: &[&str], segment: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("philotes-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut yaml = format!(
        "pipeline: {name}\nsource:\n  postgres:\n    url: {url}\n    tables: [{tables}]\n    snapshot: never\n    status_interval: 1s\n",
        name = db.name(),
        url = db.url(),
        tables = tables.join(", "),
    );
    for line in source_extra {
        yaml.push_str(&format!("    {line}\n"));
    }
    yaml.push_str(&format!("buffer:\n  segment: {segment}\n"));
    yaml.push_str("sink:\n  iceberg:\n    warehouse: file:///tmp/philotes-tests-warehouse\n");
    let path = dir.join(format!("{}.yaml", db.name()));
    std::fs::write(&path, yaml).expect("write pipeline file");
    path
}

/// The slot name of a pipeline named after `db` (every pipeline of these tests is).
pub fn slot_name(db: &TestDatabase) -> String {
    format!("philotes_{}", db.name())
}

/// Runs the `philotes` binary to its end (`validate`, `status`, `migrate`, …) from the repository root.
pub fn philotes(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_philotes"));
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("philotes runs")
}

/// `philotes status FILE --json`, parsed (with whatever exit code: 2 means a part could not be read).
pub fn status_json(file: &Path) -> serde_json::Value {
    let out = philotes(&["status", file.to_str().expect("utf-8 path"), "--json"], &[]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("status prints JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// The entry of source table `table` (`schema.name`) in a `status --json` output.
pub fn status_table(status: &serde_json::Value, table: &str) -> serde_json::Value {
    let found = status["tables"].as_array().expect("tables").iter().find(|t| t["table"] == table).cloned();
    found.unwrap_or_else(|| panic!("status lists {table}: {status}"))
}

/// Status reads every part, and no table is stopped, failing or left out: what a run without errors leaves.
pub fn assert_status_clean(file: &Path) {
    let status = status_json(file);
    assert_eq!(status["errors"], serde_json::json!([]), "status reads every part: {status}");
    for table in status["tables"].as_array().expect("tables") {
        for key in ["error", "failing", "problem"] {
            assert!(table[key].is_null(), "{} has {key}: {status}", table["table"]);
        }
    }
}

/// What a [`wait_for`] check returns: done or not (`bool`), or done with a value (`Option`).
pub trait Outcome {
    /// What the wait returns once done.
    type Value;
    /// `Some` once the condition holds.
    fn done(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn done(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn done(self) -> Option<T> {
        self
    }
}

/// How often [`wait_for`] checks.
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it holds, failing the test with `what` after `timeout`: the one way these tests wait.
pub async fn wait_for<R, F, Fut>(what: &str, timeout: Duration, mut check: F) -> R::Value
where
    R: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await.done() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// The real `philotes` binary as a child process, its stderr kept in a log file (left on disk for a look after
/// a failure and quoted in every failure message about the process). Killed (SIGKILL) when dropped while it runs,
/// so a failing test never leaves a process behind.
pub struct Philotes {
    /// Behind a lock so waiting on it needs no `&mut` (checks of [`wait_for`] borrow it shared).
    child: Mutex<Child>,
    log: PathBuf,
}

impl Philotes {
    /// Starts `philotes run FILE ARGS…` (`--role capture`, `--role flusher`, or none for every role) with extra
    /// environment; stderr goes to `log`.
    pub fn start(file: &Path, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Self {
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_philotes"));
        cmd.args(["run", file.to_str().expect("utf-8 path")]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let filter = std::env::var("PHILOTES_TEST_LOG").unwrap_or_else(|_| "info,tokio_postgres=warn,philotes_engine=warn".into());
        let child = cmd.env("RUST_LOG", filter).stdout(Stdio::null()).stderr(stderr).spawn().expect("philotes starts");
        Self { child: Mutex::new(child), log }
    }

    /// `philotes run FILE --role capture`; `run` keeps the log files of successive runs apart
    /// (`FILE.capture-RUN.log`).
    pub fn capture(file: &Path, run: usize) -> Self {
        Self::start(file, &["--role", "capture"], &[], file.with_extension(format!("capture-{run}.log")))
    }

    /// The process id (for /proc, signals and `application_name`).
    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The log file's name, to tell processes apart in messages.
    pub fn name(&self) -> String {
        self.log.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited, and how.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child().try_wait().expect("try_wait")
    }

    /// Fails the test, with the log, if the process has exited.
    pub fn assert_running(&self) {
        if let Some(status) = self.exited() {
            panic!("{} exited early ({status}); log:\n{}", self.name(), self.log());
        }
    }

    /// [`wait_for`] `check`, failing early (with the log) if the process exits meanwhile.
    pub async fn wait_until<R, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> R::Value
    where
        R: Outcome,
        F: FnMut() -> Fut,
        Fut: Future<Output = R>,
    {
        wait_for(what, timeout, || {
            self.assert_running();
            check()
        })
        .await
    }

    /// Waits until a walsender streams from `slot` for this process (it created the slot, which then has its
    /// consistent point, and started): only changes committed after this are certain to be captured.
    pub async fn wait_streaming(&self, db: &TestDatabase, slot: &str) {
        // A walsender, not the SQL session that is still creating the slot (it holds the slot meanwhile).
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
                            WHERE s.slot_name = '{slot}' AND a.backend_type = 'walsender' AND s.confirmed_flush_lsn IS NOT NULL)"
        );
        self.wait_until("the capture to stream from its slot", Duration::from_secs(60), || async {
            db.psql(&sql).is_ok_and(|v| v == "t")
        })
        .await;
    }

    /// Waits for the process to exit on its own, up to `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let what = format!("{} to exit; log:\n{}", self.name(), self.log());
        wait_for(&what, timeout, || async { self.exited() }).await
    }

    /// SIGKILL and reap: no drain, no last checkpoint, sockets closed by the kernel.
    pub fn kill(&self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM (a clean stop: drain, last checkpoint) and waits up to 30 s for the exit, which it returns.
    pub async fn stop(&self) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        // Until its handler is installed, SIGTERM would simply kill it: a clean stop is only asked of a process
        // that catches SIGTERM (bit 15 of SigCgt in /proc/PID/status).
        wait_for("the SIGTERM handler", Duration::from_secs(30), || async {
            self.exited().is_some() || self.catches_sigterm()
        })
        .await;
        let sent = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM could not be sent");
        let what = format!("{} to stop on SIGTERM; log:\n{}", self.name(), self.log());
        wait_for(&what, Duration::from_secs(30), || async { self.exited() }).await
    }

    /// [`Philotes::stop`], asserting a clean exit (0).
    pub async fn stop_cleanly(&self) {
        let status = self.stop().await;
        assert!(status.success(), "{} did not stop cleanly ({status}); log:\n{}", self.name(), self.log());
    }

    fn catches_sigterm(&self) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
    }

    /// Peak resident set size (VmHWM) in KiB, while the process is alive.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

impl Drop for Philotes {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// A change read back from the buffer, with the segment it came from.
#[derive(Debug, Clone)]
pub struct Stored {
    /// `schema.table`.
    pub table: String,
    /// The schema version of its segment.
    pub schema_version: i32,
    /// The change.
    pub event: SegmentEvent,
}

/// The pipeline's checkpoint `(commit_lsn, end_lsn)`.
pub async fn checkpoint(client: &tokio_postgres::Client, pipeline: &str) -> Option<(Lsn, Lsn)> {
    checkpoints::load(client, pipeline).await.expect("checkpoint").map(|c| (c.commit_lsn, c.end_lsn))
}

/// Every change in the buffer at or below the checkpoint (what flushers may take), in queue order.
pub async fn durable_events(client: &tokio_postgres::Client, pipeline: &str) -> Vec<Stored> {
    let Some((commit, _)) = checkpoint(client, pipeline).await else { return Vec::new() };
    let mut out = Vec::new();
    for stored in segments::all(client, pipeline).await.expect("segments") {
        if stored.row.last.commit_lsn > commit {
            continue;
        }
        let events = segment::decode(&stored.row.payload).expect("segment decodes");
        assert_eq!(events.len(), stored.row.events as usize, "segment {} event count", stored.id);
        for event in events {
            out.push(Stored {
                table: format!("{}.{}", stored.row.source_schema, stored.row.source_table),
                schema_version: stored.row.schema_version,
                event,
            });
        }
    }
    out
}

/// How many changes the buffer holds at or below the checkpoint (cheap: no payload decoded).
pub async fn durable_count(client: &tokio_postgres::Client, pipeline: &str) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(s.events), 0)::bigint FROM philotes.segments s
             JOIN philotes.checkpoints c ON c.pipeline = s.pipeline
             WHERE s.pipeline = $1 AND s.last_lsn <= c.commit_lsn",
            &[&pipeline],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

/// Waits until at least `expected` changes are durable in the buffer, while the capture keeps running.
pub async fn wait_durable(client: &tokio_postgres::Client, pipeline: &str, expected: i64, capture: &Philotes) {
    let what = format!("{expected} changes in the buffer");
    capture
        .wait_until(&what, Duration::from_secs(120), || async { durable_count(client, pipeline).await >= expected })
        .await;
}

/// An LSN from a `pg_lsn` column.
pub fn lsn(value: PgLsn) -> Lsn {
    Lsn(u64::from(value))
}

/// The buffer's segment limits of the capture tests that do not test them.
pub const DEFAULT_SEGMENT: &str = "{ max_events: 10000, max_bytes: 8MiB, max_age: 200ms }";

/// Starts a capture of the pipeline file `file` (written by [`pipeline_file`] for `db`) and waits until it
/// streams from its slot.
pub async fn start_capture(db: &TestDatabase, file: &Path) -> Philotes {
    let capture = Philotes::capture(file, 0);
    capture.wait_streaming(db, &slot_name(db)).await;
    capture
}

/// `GET path` on `addr` (`host:port`), the whole response as text (empty when nothing answers).
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    if stream.write_all(request.as_bytes()).await.is_err() || stream.read_to_end(&mut response).await.is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// A TCP port on the loopback where nothing listens now (for a `--metrics` address, or a dead endpoint).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}
