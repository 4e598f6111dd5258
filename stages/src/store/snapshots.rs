//! `philotes.snapshots`: snapshot progress per source table (migration 0006), and `philotes.snapshot_lanes`:
//! the key ranges a run reads side by side (migration 0007).
//!
//! A row is `pending` until the capture starts reading it (`running`), and `done` once the chunk that found the
//! end of its last lane is enqueued. [`advance`] runs in the transaction that enqueues a chunk, with the checkpoint: the
//! progress a restart resumes from is exactly what the buffer holds. Every write of a run names its `run`, so a
//! new request (`philotes snapshot`) is never moved by an older run's chunk still in flight.

use tokio_postgres::types::PgLsn;
use tokio_postgres::GenericClient;

use super::pg_lsn;
use crate::position::Lsn;
use crate::table_id::TableId;

/// A table's snapshot state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// Requested, not started.
    Pending,
    /// Being read, chunk by chunk.
    Running,
    /// Every row was enqueued.
    Done,
    /// Stopped with an error (the table's changes still stream).
    Failed,
    /// Not copied: `snapshot: never`, or the pipeline streamed the table before snapshots existed.
    Skipped,
}

impl SnapshotState {
    /// The name stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Pending => "pending",
            SnapshotState::Running => "running",
            SnapshotState::Done => "done",
            SnapshotState::Failed => "failed",
            SnapshotState::Skipped => "skipped",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "pending" => SnapshotState::Pending,
            "running" => SnapshotState::Running,
            "done" => SnapshotState::Done,
            "skipped" => SnapshotState::Skipped,
            _ => SnapshotState::Failed,
        }
    }
}

impl std::fmt::Display for SnapshotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One table's snapshot progress.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRow {
    /// The table (its identity).
    pub table: TableId,
    /// Where it stands.
    pub state: SnapshotState,
    /// Which request this is (1 for the initial snapshot, one more per `philotes snapshot`).
    pub run: i32,
    /// The chunk key's columns (`["ctid"]` for a table without a primary key); `None` before the first chunk.
    pub key_columns: Option<Vec<String>>,
    /// The upper key of the last enqueued chunk, in text form; `None` before the first.
    pub last_key: Option<Vec<String>>,
    /// Rows read by the chunks enqueued so far.
    pub rows_done: i64,
    /// `pg_class.reltuples` when the run started (`None`: never analyzed).
    pub rows_estimate: Option<i64>,
    /// Chunks enqueued.
    pub chunks: i64,
    /// Chunks read (more than `chunks` when a restart lost a chunk read but not enqueued).
    pub reads: i64,
    /// The high watermark of the last enqueued chunk.
    pub snapshot_lsn: Option<Lsn>,
    /// Why the snapshot failed.
    pub error: Option<String>,
    /// Seconds since the run started reading (`None`: not started).
    pub running_seconds: Option<f64>,
}

impl SnapshotRow {
    /// Rows per second over the run so far.
    pub fn rate(&self) -> Option<f64> {
        let seconds = self.running_seconds.filter(|s| *s > 0.0)?;
        Some(self.rows_done as f64 / seconds)
    }
}

const COLUMNS: &str = "source_schema, source_table, state, run, key_columns, last_key, rows_done, rows_estimate, chunks, \
                       reads, snapshot_lsn, error, \
                       extract(epoch FROM coalesce(finished_at, now()) - started_at)::float8";

fn row(r: &tokio_postgres::Row) -> SnapshotRow {
    SnapshotRow {
        table: TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)),
        state: SnapshotState::parse(r.get(2)),
        run: r.get(3),
        key_columns: r.get(4),
        last_key: r.get(5),
        rows_done: r.get(6),
        rows_estimate: r.get(7),
        chunks: r.get(8),
        reads: r.get(9),
        snapshot_lsn: r.get::<_, Option<PgLsn>>(10).map(super::lsn),
        error: r.get(11),
        running_seconds: r.get(12),
    }
}

/// Every snapshot row of the pipeline, by table.
pub async fn list(client: &impl GenericClient, pipeline: &str) -> Result<Vec<SnapshotRow>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM philotes.snapshots WHERE pipeline = $1 ORDER BY source_schema, source_table"
    );
    Ok(client.query(&sql, &[&pipeline]).await?.iter().map(row).collect())
}

/// The snapshots still to read (pending or running), oldest request first.
pub async fn open(client: &impl GenericClient, pipeline: &str) -> Result<Vec<SnapshotRow>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM philotes.snapshots WHERE pipeline = $1 AND state IN ('pending', 'running')
         ORDER BY requested_at, source_schema, source_table"
    );
    Ok(client.query(&sql, &[&pipeline]).await?.iter().map(row).collect())
}

/// Records `state` (pending or skipped) for each table that has no row yet; tables with one keep it. Returns
/// how many rows were added.
pub async fn ensure(
    client: &impl GenericClient,
    pipeline: &str,
    tables: &[TableId],
    state: SnapshotState,
) -> Result<u64, tokio_postgres::Error> {
    let (schemas, names): (Vec<&str>, Vec<&str>) = tables.iter().map(|t| (t.schema.as_str(), t.name.as_str())).unzip();
    client
        .execute(
            "INSERT INTO philotes.snapshots (pipeline, source_schema, source_table, state, finished_at)
             SELECT $1, s, t, $4, CASE WHEN $4 = 'pending' THEN NULL ELSE now() END
             FROM unnest($2::text[], $3::text[]) AS u(s, t)
             ON CONFLICT DO NOTHING",
            &[&pipeline, &schemas, &names, &state.as_str()],
        )
        .await
}

/// Asks for a (new) snapshot of `table`: a pending row of the next run, whatever the last run did. Returns the run.
pub async fn request(client: &impl GenericClient, pipeline: &str, table: &TableId) -> Result<i32, tokio_postgres::Error> {
    let row = client
        .query_one(
            "INSERT INTO philotes.snapshots (pipeline, source_schema, source_table) VALUES ($1, $2, $3)
             ON CONFLICT (pipeline, source_schema, source_table) DO UPDATE SET
                 state = 'pending', run = philotes.snapshots.run + 1, key_columns = NULL, last_key = NULL,
                 rows_done = 0, rows_estimate = NULL, chunks = 0, reads = 0, snapshot_lsn = NULL, error = NULL,
                 requested_at = now(), started_at = NULL, updated_at = now(), finished_at = NULL
             RETURNING run",
            &[&pipeline, &table.schema, &table.name],
        )
        .await?;
    Ok(row.get(0))
}

/// The run starts (or goes on after a restart) reading with this chunk key; the estimate is set once.
pub async fn start(
    client: &impl GenericClient,
    pipeline: &str,
    table: &TableId,
    run: i32,
    key_columns: &[String],
    rows_estimate: Option<i64>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE philotes.snapshots SET state = 'running', key_columns = $5,
                 rows_estimate = coalesce(rows_estimate, $6), started_at = coalesce(started_at, now()), updated_at = now()
             WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3 AND run = $4 AND state IN ('pending', 'running')",
            &[&pipeline, &table.schema, &table.name, &run, &key_columns, &rows_estimate],
        )
        .await?;
    Ok(())
}

/// Counts one chunk read (on its own: a read that no enqueue follows still counts).
pub async fn count_read(client: &impl GenericClient, pipeline: &str, table: &TableId, run: i32) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE philotes.snapshots SET reads = reads + 1, updated_at = now()
             WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3 AND run = $4",
            &[&pipeline, &table.schema, &table.name, &run],
        )
        .await?;
    Ok(())
}

/// One key range of a run, read chunk by chunk beside the others (`philotes.snapshot_lanes`, migration 0007).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// Its number in the run, from 0 in key order.
    pub lane: i32,
    /// The leading key column's value it starts after (ctid: the heap block it starts at); `None`: the start.
    pub lower: Option<String>,
    /// The leading key column's value it ends at, inclusive (ctid: the block it ends before); `None`: the end.
    pub upper: Option<String>,
    /// The upper key of its last enqueued chunk; `None` before the first.
    pub last_key: Option<Vec<String>>,
    /// Whether its last chunk reached its end.
    pub done: bool,
}

/// The lanes of `table`'s run `run`, in order (empty: not cut yet, or cut for another run).
pub async fn lanes(client: &impl GenericClient, pipeline: &str, table: &TableId, run: i32) -> Result<Vec<Lane>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT lane, lower_key, upper_key, last_key, done FROM philotes.snapshot_lanes
             WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3 AND run = $4 ORDER BY lane",
            &[&pipeline, &table.schema, &table.name, &run],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Lane { lane: r.get(0), lower: r.get(1), upper: r.get(2), last_key: r.get(3), done: r.get(4) })
        .collect())
}

/// Cuts run `run` of `table` into lanes: one per range between consecutive `splits` (ascending values of the
/// leading key column, or heap blocks), the first starting after `resume` (a run's `last_key` from before lanes
/// existed). Replaces the lanes of any earlier run or cut. Returns them.
pub async fn plan(
    client: &mut tokio_postgres::Client,
    pipeline: &str,
    table: &TableId,
    run: i32,
    splits: &[String],
    resume: Option<&[String]>,
) -> Result<Vec<Lane>, tokio_postgres::Error> {
    let bounds: Vec<Option<String>> = std::iter::once(None).chain(splits.iter().cloned().map(Some)).chain(std::iter::once(None)).collect();
    let lanes: Vec<Lane> = bounds
        .windows(2)
        .enumerate()
        .map(|(i, pair)| Lane {
            lane: i as i32,
            lower: pair[0].clone(),
            upper: pair[1].clone(),
            last_key: if i == 0 { resume.map(<[String]>::to_vec) } else { None },
            done: false,
        })
        .collect();
    let tx = client.transaction().await?;
    tx.execute(
        "DELETE FROM philotes.snapshot_lanes WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3",
        &[&pipeline, &table.schema, &table.name],
    )
    .await?;
    for lane in &lanes {
        tx.execute(
            "INSERT INTO philotes.snapshot_lanes (pipeline, source_schema, source_table, run, lane, lower_key, upper_key, last_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&pipeline, &table.schema, &table.name, &run, &lane.lane, &lane.lower, &lane.upper, &lane.last_key],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(lanes)
}

/// What enqueuing one chunk moves forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkProgress {
    /// The table.
    pub table: TableId,
    /// The run the chunk belongs to.
    pub run: i32,
    /// The lane it was read in.
    pub lane: i32,
    /// The chunk's upper key (text form), where the next chunk starts; `None` for an empty chunk.
    pub last_key: Option<Vec<String>>,
    /// Rows the chunk read (before the rows a change replaced were dropped).
    pub rows: i64,
    /// Whether the chunk found its lane's end.
    pub done: bool,
    /// Its high watermark.
    pub lsn: Lsn,
}

/// Moves a table's progress past one chunk: its lane's, and the table's totals (`done` with its last lane).
/// Call it in the transaction that enqueues the chunk, with the checkpoint; a chunk of an older run changes
/// nothing.
pub async fn advance(client: &impl GenericClient, pipeline: &str, chunk: &ChunkProgress) -> Result<(), tokio_postgres::Error> {
    // The lane's UPDATE is a CTE, so the table's row does not see it: its own lane is left out of the check.
    client
        .execute(
            "WITH lane AS (
                 UPDATE philotes.snapshot_lanes SET last_key = coalesce($5, last_key), rows_done = rows_done + $6, done = $8
                 WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3 AND run = $4 AND lane = $9
                   AND EXISTS (SELECT 1 FROM philotes.snapshots WHERE pipeline = $1 AND source_schema = $2
                               AND source_table = $3 AND run = $4 AND state = 'running')),
             last AS (
                 SELECT $8 AND NOT EXISTS (SELECT 1 FROM philotes.snapshot_lanes l
                                           WHERE l.pipeline = $1 AND l.source_schema = $2 AND l.source_table = $3
                                             AND l.run = $4 AND l.lane <> $9 AND NOT l.done) AS finished)
             UPDATE philotes.snapshots s SET last_key = coalesce($5, last_key), rows_done = rows_done + $6,
                 chunks = chunks + 1, snapshot_lsn = $7, updated_at = now(),
                 state = CASE WHEN last.finished THEN 'done' ELSE state END,
                 finished_at = CASE WHEN last.finished THEN now() ELSE finished_at END
             FROM last
             WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3 AND run = $4 AND state = 'running'",
            &[
                &pipeline,
                &chunk.table.schema,
                &chunk.table.name,
                &chunk.run,
                &chunk.last_key,
                &chunk.rows,
                &pg_lsn(chunk.lsn),
                &chunk.done,
                &chunk.lane,
            ],
        )
        .await?;
    Ok(())
}

/// Stops a run with the reason (the table cannot be read); the stream and the other tables go on.
pub async fn fail(
    client: &impl GenericClient,
    pipeline: &str,
    table: &TableId,
    run: i32,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE philotes.snapshots SET state = 'failed', error = $5, updated_at = now(), finished_at = now()
             WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3 AND run = $4",
            &[&pipeline, &table.schema, &table.name, &run, &error],
        )
        .await?;
    Ok(())
}
