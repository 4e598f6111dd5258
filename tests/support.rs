//! Shared helpers of the integration tests: pipeline files, the real `philotes` binary as a child process,
//! polling with a deadline, and reading the buffer back.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use philotes_stages::position::Lsn;
use philotes_stages::segment::{self, SegmentEvent};
use philotes_stages::store::{checkpoints, segments};
use philotes_testkit::TestDatabase;
use tokio_postgres::types::PgLsn;

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

/// The slot name of a pipeline written by [`pipeline_file`].
pub fn slot_name(db: &TestDatabase) -> String {
    format!("philotes_{}", db.name())
}

/// `philotes run FILE --role capture` as a real child process, its stderr kept in a file.
pub struct CaptureProcess {
    child: Child,
    log: PathBuf,
}

impl CaptureProcess {
    /// Starts the capture; `run` is a number that keeps the log files of successive runs apart.
    pub fn start(file: &std::path::Path, run: usize) -> Self {
        let log = file.with_extension(format!("capture-{run}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_philotes"))
            .args(["run", file.to_str().expect("utf-8 path"), "--role", "capture"])
            .env("RUST_LOG", std::env::var("PHILOTES_TEST_LOG").unwrap_or_else(|_| "info,tokio_postgres=warn,philotes_engine=warn".into()))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("philotes starts");
        Self { child, log }
    }

    /// The process id (for /proc and signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no drain, no last checkpoint, sockets closed by the kernel.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to exit on its own, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(Instant::now() < deadline, "capture did not exit within {timeout:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (a clean shutdown: drain, last checkpoint) and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        // Until its handler is installed (it logs "starting" right after), SIGTERM would simply kill it: a clean
        // stop is only asked of a process that has started.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains("starting") && self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let sent = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM could not be sent");
        self.wait_exit(Duration::from_secs(30))
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

impl Drop for CaptureProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing the test with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a walsender streams from the slot (the capture created it and started): only changes committed
/// after this are certain to be captured.
pub async fn wait_streaming(client: &tokio_postgres::Client, slot: &str, capture: &mut CaptureProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = capture.exited() {
            panic!("capture exited early ({status}); log:\n{}", capture.log());
        }
        // A walsender, not the SQL session that is still creating the slot (it holds the slot meanwhile).
        let streaming: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
                                WHERE s.slot_name = $1 AND a.backend_type = 'walsender')",
                &[&slot],
            )
            .await
            .expect("slot query")
            .get(0);
        if streaming {
            return;
        }
        assert!(Instant::now() < deadline, "the capture did not stream from its slot within 60 s; log:\n{}", capture.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
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
pub async fn wait_durable(client: &tokio_postgres::Client, pipeline: &str, expected: i64, capture: &mut CaptureProcess) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = capture.exited() {
            panic!("capture exited early ({status}); log:\n{}", capture.log());
        }
        let count = durable_count(client, pipeline).await;
        if count >= expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {count} of {expected} changes reached the buffer within 120 s; log:\n{}",
            capture.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An LSN from a `pg_lsn` column.
pub fn lsn(value: PgLsn) -> Lsn {
    Lsn(u64::from(value))
}

/// Connects to the test database.
pub async fn connect(db: &TestDatabase) -> tokio_postgres::Client {
    db.connect().await.expect("connect to the test database")
}
