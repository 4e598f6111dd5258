//! `philotes status`: what a person (or a script, with `--json`) needs to know about a running pipeline —
//! slot lag, source checkpoint, buffer depth, dead letters, snapshot progress. Each part is read on its own: with the source down the
//! buffer's part is still shown, and what could not be read is marked and listed in `errors`.

use std::time::Duration;

use philotes_stages::report;
use philotes_stages::source::setup::{self, SlotStatus};
use philotes_stages::source::SourceError;
use philotes_stages::store::snapshots::{self, SnapshotRow};
use philotes_stages::store::{self, checkpoints, dead_letters, segments, source_tables, watermarks};
use serde::Serialize;
use tokio_postgres::Config;

use crate::config::{PipelineConfig, TableId};
use crate::progress::{self, Figures};

/// A snapshot of a pipeline's state. A part that could not be read (the source down, the buffer unreachable) is
/// `null` and named in [`Status::errors`]; the rest is still shown.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The pipeline name.
    pub pipeline: String,
    /// The slot name.
    pub slot: String,
    /// Whether the slot exists (`null`: the source could not be read).
    pub slot_exists: Option<bool>,
    /// Whether a capture streams from it now.
    pub slot_active: Option<bool>,
    /// The slot's confirmed position.
    pub slot_confirmed_lsn: Option<String>,
    /// `reserved` … `lost`.
    pub slot_wal_status: Option<String>,
    /// The source's current WAL position.
    pub source_current_lsn: Option<String>,
    /// WAL bytes the capture is behind.
    pub replication_lag_bytes: Option<i64>,
    /// WAL bytes the slot keeps on the source (from its restart position).
    pub slot_retained_wal_bytes: Option<i64>,
    /// Above this many retained bytes philotes warns (`source.postgres.max_retained_wal`, or 80% of the server's
    /// `max_slot_wal_keep_size`); `null`: no limit.
    pub slot_retained_wal_limit_bytes: Option<i64>,
    /// Commit LSN of the last transaction fully in the buffer.
    pub checkpoint_lsn: Option<String>,
    /// Seconds since the checkpoint was last written (how stale the buffer's view of the source is).
    pub checkpoint_age_seconds: Option<f64>,
    /// Segments waiting in the buffer (`null`: the buffer could not be read).
    pub buffer_segments: Option<i64>,
    /// Changes waiting in the buffer.
    pub buffer_events: Option<i64>,
    /// Payload bytes waiting in the buffer.
    pub buffer_bytes: Option<i64>,
    /// Seconds from the source commit of the oldest change waiting in the buffer to now: how far Iceberg is
    /// behind the source for what the buffer holds (`null`: nothing waits, or the buffer could not be read).
    pub buffer_lag_seconds: Option<f64>,
    /// Changes that could not be converted.
    pub dead_letters: Option<i64>,
    /// Per table: the last position committed to Iceberg, and why it stopped if it did.
    pub tables: Vec<TableStatus>,
    /// Per table with a snapshot row: the copy of its existing rows (initial, or asked by `philotes snapshot`).
    pub snapshots: Vec<SnapshotStatus>,
    /// What could not be read, and why; empty when the status is complete (`philotes status` then exits 0).
    pub errors: Vec<StatusProblem>,
}

/// A part of the status that could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct StatusProblem {
    /// `source` (slot and lag) or `buffer` (checkpoint, depth, dead letters, tables).
    pub part: &'static str,
    /// Why, with every cause.
    pub error: String,
}

/// One table's flush state.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    /// `schema.table` at the source.
    pub table: String,
    /// Last position in Iceberg (`lsn#seq`), `None` before its first flush.
    pub committed: Option<String>,
    /// Set when the table stopped (an incompatible schema change, an unmappable column): the reason.
    pub error: Option<String>,
    /// Set while the table's flush keeps failing and is retried (catalog or warehouse unusable): the last cause.
    /// Cleared by its next successful flush.
    pub failing: Option<String>,
    /// When the current run of failures began (RFC 3339, UTC).
    pub failing_since: Option<String>,
    /// The table's name on the source now, when it was renamed (it keeps flowing under its first name).
    pub renamed_to: Option<String>,
    /// Why the capture does not follow the table (a keyless table it refused to publish).
    pub problem: Option<String>,
}

/// One table's snapshot: the copy of its existing rows, chunk by chunk.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotStatus {
    /// `schema.table` at the source.
    pub table: String,
    /// `pending`, `running`, `done`, `failed` or `skipped`.
    pub state: String,
    /// Which request (1 for the first, one more per `philotes snapshot`).
    pub run: i32,
    /// Rows read and enqueued so far.
    pub rows_done: i64,
    /// The table's row estimate (`pg_class.reltuples`) when the run started; `null` before it starts or when the
    /// table was never analyzed.
    pub rows_estimate: Option<i64>,
    /// `rows_done` of `rows_estimate` in percent (capped at 100); `null` without an estimate.
    pub percent: Option<f64>,
    /// Rows per second over the run (start to now, or to its end).
    pub rows_per_second: Option<f64>,
    /// Seconds left at that rate to reach the estimate; only while running.
    pub eta_seconds: Option<f64>,
    /// Seconds since the run started reading (to its end once it ended); `null` before it starts.
    pub elapsed_seconds: Option<f64>,
    /// Chunks enqueued.
    pub chunks: i64,
    /// Chunks read (more than `chunks` when a restart read a chunk again).
    pub reads: i64,
    /// The high watermark of the last enqueued chunk.
    pub snapshot_lsn: Option<String>,
    /// Why the snapshot failed.
    pub error: Option<String>,
}

impl From<&SnapshotRow> for SnapshotStatus {
    fn from(row: &SnapshotRow) -> Self {
        let figures = Figures::of(row);
        let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
        Self {
            table: row.table.to_string(),
            state: row.state.to_string(),
            run: row.run,
            rows_done: row.rows_done,
            rows_estimate: row.rows_estimate,
            percent: figures.percent.map(|p| round(p, 2)),
            rows_per_second: figures.rate.map(|r| round(r, 1)),
            eta_seconds: figures.eta_seconds.map(|e| round(e, 1)),
            elapsed_seconds: row.running_seconds.map(|s| round(s, 3)),
            chunks: row.chunks,
            reads: row.reads,
            snapshot_lsn: row.snapshot_lsn.map(|l| l.to_string()),
            error: row.error.clone(),
        }
    }
}

impl SnapshotStatus {
    /// The human line's text after the table name.
    fn describe(&self) -> String {
        let chunks = format!("{}, {}", plural(self.chunks, "chunk"), plural(self.reads, "read"));
        match self.state.as_str() {
            "pending" => format!("pending (run {}): waiting for the capture to start it", self.run),
            "running" => format!("running (run {}): {}; {chunks}", self.run, self.progress_line()),
            "done" => {
                let mut text = format!("done (run {}): {} rows", self.run, progress::count(self.rows_done));
                if let Some(seconds) = self.elapsed_seconds {
                    text.push_str(&format!(" in {}", progress::duration(seconds)));
                }
                if let Some(rate) = self.rows_per_second {
                    text.push_str(&format!(" ({} rows/s)", progress::count(rate.round() as i64)));
                }
                format!("{text}; {chunks}")
            }
            "failed" => format!(
                "FAILED (run {}) after {} rows, {chunks}: {}",
                self.run,
                progress::count(self.rows_done),
                self.error.as_deref().unwrap_or("no reason recorded")
            ),
            _ => format!("{} (existing rows not copied; `philotes snapshot` copies them)", self.state),
        }
    }

    /// `120,000/300,000 rows (40%), 45,000 rows/s, ETA 4s`.
    fn progress_line(&self) -> String {
        let figures = Figures { percent: self.percent, rate: self.rows_per_second, eta_seconds: self.eta_seconds };
        progress::line(self.rows_done, self.rows_estimate, figures)
    }
}

/// Adds what the capture knows of each table (renames, refusals) to the flush states; a refused table that
/// never flowed gets a line of its own.
fn add_source_tables(tables: &mut Vec<TableStatus>, followed: Vec<source_tables::SourceTable>) {
    for row in followed {
        let renamed_to = row.renamed().then(|| TableId { schema: row.schema_now, name: row.table_now }.to_string());
        let name = TableId { schema: row.source_schema, name: row.source_table }.to_string();
        match tables.iter_mut().find(|t| t.table == name) {
            Some(table) => {
                table.renamed_to = renamed_to;
                table.problem = row.problem;
            }
            None => tables.push(TableStatus {
                table: name,
                committed: None,
                error: None,
                failing: None,
                failing_since: None,
                renamed_to,
                problem: row.problem,
            }),
        }
    }
}

/// How long status waits for a server that does not answer (a connection URL without `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the pipeline's state from the source and the buffer: whatever can be read, with the rest in `errors`.
pub async fn read(config: &PipelineConfig) -> Status {
    let mut status = Status {
        pipeline: config.pipeline.clone(),
        slot: config.source.postgres.slot.clone(),
        slot_exists: None,
        slot_active: None,
        slot_confirmed_lsn: None,
        slot_wal_status: None,
        source_current_lsn: None,
        replication_lag_bytes: None,
        slot_retained_wal_bytes: None,
        slot_retained_wal_limit_bytes: None,
        checkpoint_lsn: None,
        checkpoint_age_seconds: None,
        buffer_segments: None,
        buffer_events: None,
        buffer_lag_seconds: None,
        buffer_bytes: None,
        dead_letters: None,
        tables: Vec::new(),
        snapshots: Vec::new(),
        errors: Vec::new(),
    };
    let source = config.source.postgres.url.config();
    match read_source(source, &config.source.postgres.slot).await {
        Ok(slot) => {
            status.slot_exists = Some(slot.is_some());
            status.slot_active = Some(slot.as_ref().is_some_and(|s| s.active));
            status.slot_confirmed_lsn = slot.as_ref().and_then(|s| s.confirmed_flush).map(|l| l.to_string());
            status.slot_wal_status = slot.as_ref().and_then(|s| s.wal_status.clone());
            status.source_current_lsn = slot.as_ref().map(|s| s.current.to_string());
            status.replication_lag_bytes = slot.as_ref().and_then(|s| s.lag_bytes);
            status.slot_retained_wal_bytes = slot.as_ref().and_then(|s| s.retained_bytes);
            let server_limit = slot.as_ref().and_then(|s| s.keep_size_bytes).map(|keep| keep / 10 * 8);
            let ours = config.source.postgres.max_retained_wal.and_then(|b| i64::try_from(b).ok());
            status.slot_retained_wal_limit_bytes = ours.or(server_limit);
        }
        Err(e) => status.errors.push(StatusProblem {
            part: "source",
            error: format!("{}: {}", store::describe(source), report::chain(&e)),
        }),
    }
    let buffer = config.buffer.url.config();
    if let Err(e) = read_buffer(buffer, &config.pipeline, &mut status).await {
        status.errors.push(StatusProblem {
            part: "buffer",
            error: format!("{}: {}", store::describe(buffer), report::chain(&e)),
        });
    }
    status
}

/// Connects with a timeout when the URL sets none.
async fn connect(config: &Config) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    store::connect(&config).await
}

async fn read_source(config: &Config, slot: &str) -> Result<Option<SlotStatus>, SourceError> {
    let source = connect(config).await?;
    setup::slot_status(&source, slot).await
}

async fn read_buffer(config: &Config, pipeline: &str, status: &mut Status) -> Result<(), tokio_postgres::Error> {
    let buffer = connect(config).await?;
    let migrated: bool = buffer
        .query_one("SELECT to_regclass('philotes.checkpoints') IS NOT NULL", &[])
        .await?
        .get(0);
    if !migrated {
        // Nothing written yet: an empty buffer, not an unknown one.
        (status.buffer_segments, status.buffer_events, status.buffer_bytes, status.dead_letters) =
            (Some(0), Some(0), Some(0), Some(0));
        return Ok(());
    }
    let checkpoint = checkpoints::load(&buffer, pipeline).await?;
    status.checkpoint_lsn = checkpoint.map(|c| c.commit_lsn.to_string());
    status.checkpoint_age_seconds = checkpoints::age_seconds(&buffer, pipeline).await?;
    let depth = segments::depth(&buffer, pipeline).await?;
    (status.buffer_segments, status.buffer_events, status.buffer_bytes) =
        (Some(depth.segments), Some(depth.events), Some(depth.bytes));
    status.buffer_lag_seconds = depth.oldest_commit_age_seconds;
    status.dead_letters = Some(dead_letters::count(&buffer, pipeline).await?);
    status.tables = watermarks::all(&buffer, pipeline)
        .await?
        .into_iter()
        .map(|t| TableStatus {
            // As the pipeline file writes it (`public."t.dot"`), so it can be pasted back.
            table: TableId { schema: t.source_schema, name: t.source_table }.to_string(),
            committed: t.committed.map(|p| p.to_string()),
            error: t.error,
            failing_since: t.failing.as_ref().map(|f| f.since.clone()),
            failing: t.failing.map(|f| f.error),
            renamed_to: None,
            problem: None,
        })
        .collect();
    add_source_tables(&mut status.tables, source_tables::list(&buffer, pipeline).await?);
    // A buffer migrated by an older philotes has no snapshot table yet: no snapshots, not an error.
    let has_snapshots: bool = buffer
        .query_one("SELECT to_regclass('philotes.snapshots') IS NOT NULL", &[])
        .await?
        .get(0);
    if has_snapshots {
        status.snapshots = snapshots::list(&buffer, pipeline).await?.iter().map(SnapshotStatus::from).collect();
    }
    Ok(())
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let unreadable = |part: &str| if self.errors.iter().any(|e| e.part == part) { "UNKNOWN (see errors below)" } else { "-" };
        writeln!(f, "pipeline     {}", self.pipeline)?;
        match self.slot_exists {
            Some(true) => {
                writeln!(
                    f,
                    "slot         {} ({}, wal {})",
                    self.slot,
                    if self.slot_active == Some(true) { "streaming" } else { "idle" },
                    or_none(&self.slot_wal_status)
                )?;
                writeln!(
                    f,
                    "  confirmed  {}   source at {}   lag {}   WAL kept {}{}",
                    or_none(&self.slot_confirmed_lsn),
                    or_none(&self.source_current_lsn),
                    self.replication_lag_bytes.map_or_else(|| "-".into(), human_bytes),
                    self.slot_retained_wal_bytes.map_or_else(|| "-".into(), human_bytes),
                    match (self.slot_retained_wal_bytes, self.slot_retained_wal_limit_bytes) {
                        (Some(kept), Some(limit)) if kept > limit => format!(" (OVER the limit of {})", human_bytes(limit)),
                        (_, Some(limit)) => format!(" (limit {})", human_bytes(limit)),
                        _ => String::new(),
                    }
                )?;
            }
            Some(false) => writeln!(f, "slot         {} (not created yet: `philotes run` creates it)", self.slot)?,
            None => writeln!(f, "slot         {} {}", self.slot, unreadable("source"))?,
        }
        match (&self.checkpoint_lsn, self.buffer_segments) {
            (None, None) => writeln!(f, "checkpoint   {}", unreadable("buffer"))?,
            (checkpoint, _) => writeln!(f, "checkpoint   {}", or_none(checkpoint))?,
        }
        match (self.buffer_segments, self.buffer_events, self.buffer_bytes) {
            (Some(segments), Some(events), Some(bytes)) => {
                let behind = match self.buffer_lag_seconds {
                    Some(seconds) => format!("; the oldest committed on the source {seconds:.1}s ago"),
                    None => String::new(),
                };
                writeln!(f, "buffer       {segments} segments, {events} changes, {}{behind}", human_bytes(bytes))?;
            }
            _ => writeln!(f, "buffer       {}", unreadable("buffer"))?,
        }
        match self.dead_letters {
            Some(dead) => write!(f, "dead letters {dead}")?,
            None => write!(f, "dead letters {}", unreadable("buffer"))?,
        }
        for table in &self.tables {
            let mut state = match (&table.problem, &table.error, &table.committed) {
                (Some(problem), _, _) => format!("NOT CAPTURED: {problem}"),
                (None, Some(error), _) => format!("STOPPED: {error}"),
                (None, None, Some(position)) => format!("in iceberg up to {position}"),
                (None, None, None) => "not flushed yet".to_string(),
            };
            if let (None, Some(failing)) = (&table.error, &table.failing) {
                let since = table.failing_since.as_deref().unwrap_or("-");
                state.push_str(&format!("; FAILING since {since}, retrying: {failing}"));
            }
            write!(f, "\ntable        {}  {state}", table.table)?;
            if let Some(now) = &table.renamed_to {
                write!(f, "\n  renamed    on the source to {now} (its changes keep flowing into the same Iceberg table)")?;
            }
        }
        let width = self.snapshots.iter().map(|s| s.table.chars().count()).max().unwrap_or(0);
        for snapshot in &self.snapshots {
            write!(f, "\nsnapshot     {:width$}  {}", snapshot.table, snapshot.describe())?;
        }
        for problem in &self.errors {
            write!(f, "\nerror        {}: {}", problem.part, problem.error)?;
        }
        Ok(())
    }
}

/// `1 chunk`, `12 chunks`.
fn plural(n: i64, word: &str) -> String {
    format!("{} {word}{}", progress::count(n), if n == 1 { "" } else { "s" })
}

fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
