//! The processes a measurement times: the release `philotes` binary (one role per process, as deployed),
//! `pg_recvlogical` and the plain-Parquet baseline binary (benches/arrow-writer), plus the pipeline files.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio_postgres::Client;

use crate::workload::PUBLICATION;

/// One pipeline file of the bench: source and buffer are the same database (the default), the catalog is the
/// SQL catalog in it (the default), the warehouse a local directory; every other key keeps its default.
pub struct PipelineFile {
    /// The file.
    pub path: PathBuf,
}

impl PipelineFile {
    /// Writes `<dir>/<file_name>.yaml` for the source tables `public.<t>` of `tables`, reading from slot
    /// [`slot`]`(pipeline)`. `flush_workers: None` keeps the default `flush.workers`. Every file gets a metrics
    /// port of its own, so two processes of one pipeline each need a file of their own.
    pub fn write(
        dir: &Path,
        file_name: &str,
        pipeline: &str,
        url: &str,
        tables: &[&str],
        namespace: &str,
        flush_workers: Option<usize>,
    ) -> anyhow::Result<Self> {
        let warehouse = dir.join("warehouse");
        std::fs::create_dir_all(&warehouse)?;
        let flush = flush_workers.map(|w| format!("flush: {{ workers: {w} }}\n")).unwrap_or_default();
        let tables = tables.iter().map(|t| format!("public.{t}")).collect::<Vec<_>>().join(", ");
        let yaml = format!(
            "pipeline: {pipeline}\n\
             source:\n  postgres:\n    url: {url}\n    publication: {PUBLICATION}\n    slot: {slot}\n\
             \x20   tables: [{tables}]\n    snapshot: never\n\
             sink:\n  iceberg:\n    warehouse: file://{warehouse}\n    namespace: {namespace}\n\
             {flush}\
             telemetry: {{ metrics: 127.0.0.1:{port} }}\n",
            slot = slot(pipeline),
            warehouse = warehouse.display(),
            port = free_port()?,
        );
        let path = dir.join(format!("{file_name}.yaml"));
        std::fs::write(&path, yaml)?;
        Ok(Self { path })
    }
}

impl PipelineFile {
    /// Sets `flush.interval` (the file has no `flush:` section yet: written with `flush_workers: None`).
    pub fn flush_interval(self, interval: &str) -> anyhow::Result<Self> {
        let yaml = std::fs::read_to_string(&self.path)?;
        if yaml.contains("\nflush:") {
            bail!("{} has a `flush` section already", self.path.display());
        }
        std::fs::write(&self.path, format!("{yaml}flush: {{ interval: {interval} }}\n"))?;
        Ok(self)
    }

    /// The `telemetry.metrics` address written into the file.
    pub fn metrics_addr(&self) -> anyhow::Result<String> {
        let yaml = std::fs::read_to_string(&self.path)?;
        yaml.split("telemetry: { metrics: ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .map(str::to_string)
            .with_context(|| format!("no telemetry.metrics in {}", self.path.display()))
    }

    /// The `sink.iceberg.warehouse` location written into the file.
    pub fn warehouse(&self) -> anyhow::Result<String> {
        let yaml = std::fs::read_to_string(&self.path)?;
        yaml.split("warehouse: ")
            .nth(1)
            .and_then(|rest| rest.lines().next())
            .map(str::to_string)
            .with_context(|| format!("no sink.iceberg.warehouse in {}", self.path.display()))
    }

    /// Turns the file into a mirror pipeline (`sink.iceberg.mode: mirror`).
    pub fn mirror(self) -> anyhow::Result<Self> {
        let yaml = std::fs::read_to_string(&self.path)?;
        let sink = "sink:\n  iceberg:\n";
        if !yaml.contains(sink) {
            bail!("{} has no `sink.iceberg` section", self.path.display());
        }
        std::fs::write(&self.path, yaml.replacen(sink, &format!("{sink}    mode: mirror\n"), 1))?;
        Ok(self)
    }

    /// Partitions `public.<table>` by `fields` (YAML list items).
    pub fn partition(self, table: &str, fields: &str) -> anyhow::Result<Self> {
        let yaml = std::fs::read_to_string(&self.path)?;
        let sink = "sink:\n  iceberg:\n";
        if !yaml.contains(sink) {
            bail!("{} has no `sink.iceberg` section", self.path.display());
        }
        let tables = format!("{sink}    tables:\n      public.{table}: {{ partition: [ {fields} ] }}\n");
        std::fs::write(&self.path, yaml.replacen(sink, &tables, 1))?;
        Ok(self)
    }

    /// Turns the file into one that reads the tables' existing rows first: `source.postgres.snapshot: initial`
    /// and a top-level `snapshot: { chunk_rows, workers }` section (the other bench files say `never`).
    pub fn snapshot_initial(self, chunk_rows: usize, workers: usize) -> anyhow::Result<Self> {
        let yaml = std::fs::read_to_string(&self.path)?;
        let never = "    snapshot: never\n";
        if !yaml.contains(never) {
            bail!("{} has no `{}` to turn into `initial`", self.path.display(), never.trim());
        }
        let yaml = yaml.replacen(never, "    snapshot: initial\n", 1)
            + &format!("snapshot: {{ chunk_rows: {chunk_rows}, workers: {workers} }}\n");
        std::fs::write(&self.path, yaml)?;
        Ok(self)
    }
}

/// philotes' replication slot of `pipeline` (the scenarios create it before the workload).
pub fn slot(pipeline: &str) -> String {
    format!("{pipeline}_philotes")
}

/// A port nobody listens on now, for the pipeline's `/metrics` (several bench processes, and other people's tests
/// on this machine, must not collide on the default 9464).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The `philotes` binary cargo built for this bench (release settings: the `bench` profile).
pub fn philotes_bin() -> &'static str {
    env!("CARGO_BIN_EXE_philotes")
}

/// `philotes migrate FILE`, untimed, so that a timed start finds the buffer schema in place.
pub fn migrate(file: &PipelineFile) -> anyhow::Result<()> {
    let out = Command::new(philotes_bin()).arg("migrate").arg(&file.path).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("philotes migrate failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `philotes compact FILE --table public.<table> --min-files 1`, timed (seconds) and checked to succeed.
pub fn compact(file: &PipelineFile, table: &str) -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    let out = Command::new(philotes_bin())
        .arg("compact")
        .arg(&file.path)
        .args(["--table", &format!("public.{table}"), "--min-files", "1"])
        .stdin(Stdio::null())
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("philotes compact failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(seconds)
}

/// `philotes run FILE --role ROLE` as a child process, its log in a file next to the pipeline file.
pub struct Philotes {
    child: Child,
    log: PathBuf,
    what: String,
}

impl Philotes {
    /// Starts the process (exporting every span to [`otlp_sink`] when `BENCH_OTLP` is set).
    pub fn start(file: &PipelineFile, role: &str, log_name: &str) -> anyhow::Result<Self> {
        let log = file.path.with_file_name(format!("{log_name}.log"));
        let stderr = File::create(&log)?;
        let mut command = Command::new(philotes_bin());
        if let Some(endpoint) = otlp_sink()? {
            command.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint).env("OTEL_TRACES_SAMPLER", "always_on");
        }
        let child = command
            .arg("run")
            .arg(&file.path)
            .args(["--role", role])
            // `BENCH_RUST_LOG` (e.g. `info,philotes_stages=debug`) for a look at where a run's time goes.
            .env("RUST_LOG", std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info,tokio_postgres=warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting philotes")?;
        Ok(Self { child, log, what: format!("philotes run --role {role}") })
    }

    /// Fails (with the end of its log) when the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early ({status}); its log ends with:\n{}", self.what, self.log_tail(40));
        }
        Ok(())
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The process's peak resident set so far (`VmHWM` of `/proc/PID/status`), in bytes. Read it before
    /// [`Self::stop`]: once the process has exited the figure is gone.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no VmHWM in {path} (has {} exited?)", self.what))?;
        Ok(kib * 1024)
    }

    /// SIGTERM (drain, last checkpoint) and wait up to a minute; SIGKILL after that.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("{} did not stop within 60 s of SIGTERM; its log ends with:\n{}", self.what, self.log_tail(40))
    }
}

impl Drop for Philotes {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `sql` (one boolean, no parameters) every 20 ms until it is true; the time since `started`. Fails when
/// one of `processes` exits or `timeout` passes.
pub async fn wait_true(
    client: &Client,
    sql: &str,
    processes: &mut [Philotes],
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<f64> {
    loop {
        let done: bool = client.query_one(sql, &[]).await.context("polling progress")?.get(0);
        if done {
            return Ok(started.elapsed().as_secs_f64());
        }
        for process in processes.iter_mut() {
            process.ensure_running()?;
        }
        if started.elapsed() > timeout {
            let logs: Vec<String> =
                processes.iter().map(|p| format!("{} ({}) log ends with:\n{}", p.what, p.log.display(), p.log_tail(40))).collect();
            bail!("timed out after {timeout:?} waiting for `{sql}`; {}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drains `slot` with `pg_recvlogical` (pgoutput, proto 1, the bench publication) to /dev/null until `end_lsn`;
/// the wall time from start to exit.
pub async fn recvlogical(pg_bin: &Path, port: u16, database: &str, slot: &str, end_lsn: &str, timeout: Duration) -> anyhow::Result<f64> {
    let program = pg_bin.join("pg_recvlogical");
    let started = Instant::now();
    let child = tokio::process::Command::new(&program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", database])
        .arg(format!("--slot={slot}"))
        .args(["--start", "--no-loop", "--plugin=pgoutput", "-o", "proto_version=1"])
        .arg("-o")
        .arg(format!("publication_names={PUBLICATION}"))
        .arg(format!("--endpos={end_lsn}"))
        .args(["--fsync-interval=0", "-f", "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| format!("pg_recvlogical did not reach {end_lsn} within {timeout:?}"))??;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("pg_recvlogical failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(seconds)
}

/// Builds the plain-Parquet baseline (benches/arrow-writer, a workspace of its own) once, in a target directory
/// of its own next to this bench's (cargo holds the outer target directory's lock while the bench runs).
pub fn build_arrow_writer() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/arrow-writer/Cargo.toml");
    let exe = std::env::current_exe()?;
    // <target>/release/deps/pipeline-<hash>
    let target = exe.ancestors().nth(3).context("locating the target directory")?.join("bench-arrow-writer");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the ArrowWriter baseline (benches/arrow-writer) into {}", target.display());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .status()
        .context("running cargo for benches/arrow-writer")?;
    if !status.success() {
        bail!("building benches/arrow-writer failed ({status})");
    }
    Ok(target.join("release/arrow-writer-baseline"))
}

/// What the ArrowWriter baseline reported.
#[derive(Debug, Clone, Copy)]
pub struct ArrowWriterRun {
    /// Rows written (all rows of the input files).
    pub rows: u64,
    /// Seconds of `ArrowWriter` (create, write every batch, close).
    pub seconds: f64,
    /// Size of the file it wrote.
    pub bytes: u64,
}

/// Runs the baseline on the Parquet files under `table_dir`.
pub fn arrow_writer(helper: &Path, table_dir: &Path, scratch: &Path) -> anyhow::Result<ArrowWriterRun> {
    let out = Command::new(helper).arg(table_dir).arg(scratch.join("arrow-writer-baseline.parquet")).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("arrow-writer-baseline failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |key: &str| -> anyhow::Result<&str> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .with_context(|| format!("no {key}= in the baseline's output: {line}"))
    };
    Ok(ArrowWriterRun { rows: field("rows")?.parse()?, seconds: field("seconds")?.parse()?, bytes: field("bytes")?.parse()? })
}

/// Requests and body bytes the OTLP sink received.
static OTLP_RECEIVED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// With `BENCH_OTLP` set: the endpoint of an OTLP/HTTP sink in this process that answers 200 to every export and
/// keeps nothing (started on first use), so `philotes run` pays for making and sending every span (sampler
/// `always_on`) and the collector's cost stays out of the measurement. `None` without `BENCH_OTLP`.
pub fn otlp_sink() -> anyhow::Result<Option<&'static str>> {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    if std::env::var_os("BENCH_OTLP").is_none_or(|v| v.is_empty() || v == "0") {
        return Ok(None);
    }
    if let Some(endpoint) = ENDPOINT.get() {
        return Ok(Some(endpoint));
    }
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the OTLP sink")?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = sink_connection(stream);
            });
        }
    });
    Ok(Some(ENDPOINT.get_or_init(|| endpoint)))
}

/// `(requests, bytes)` the OTLP sink received so far.
pub fn otlp_received() -> (u64, u64) {
    (OTLP_RECEIVED[0].load(Ordering::Relaxed), OTLP_RECEIVED[1].load(Ordering::Relaxed))
}

/// Answers the HTTP/1.1 requests of one keep-alive connection with an empty 200, reading and dropping bodies.
fn sink_connection(stream: std::net::TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        std::io::copy(&mut (&mut reader).take(length as u64), &mut std::io::sink())?;
        OTLP_RECEIVED[0].fetch_add(1, Ordering::Relaxed);
        OTLP_RECEIVED[1].fetch_add(length as u64, Ordering::Relaxed);
        writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")?;
    }
}
