//! The snapshot reader: runs beside the capture's stream, in its session. It polls `philotes.snapshots` for
//! tables to read, reads up to `workers` tables at once, one chunk at a time per table, and waits for each chunk
//! to be enqueued before reading the next (so a killed capture reads at most that one chunk again).
//!
//! A table it cannot read (gone, not readable, no usable key) fails alone, with the reason in its progress row;
//! the other tables and the stream go on. A lost source connection ends only that table's reading; it is
//! picked up again at the next poll from its last enqueued chunk.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::{Config, IsolationLevel};
use tokio_util::sync::CancellationToken;

use super::read::{self, ChunkKey, TableShape};
use super::{next_chunk_id, Ack, ChunkFate, Mailbox, ReadChunk, Watermark};
use crate::store::snapshots::{self, SnapshotRow};
use crate::store::{self, source_tables};
use crate::table_id::TableId;

/// How the snapshot reads, from the pipeline file (`snapshot:`).
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    /// Rows per chunk (`snapshot.chunk_rows`).
    pub chunk_rows: usize,
    /// Tables read at once (`snapshot.workers`).
    pub workers: usize,
    /// How often `philotes.snapshots` is polled for requests.
    pub poll: Duration,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        Self { chunk_rows: 50_000, workers: 2, poll: Duration::from_secs(1) }
    }
}

/// Why the reader handed back to the capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderExit {
    /// Asked to stop.
    Cancelled,
    /// A snapshot was requested for tables the capture does not follow yet: the capture restarts to follow them.
    Follow(Vec<TableId>),
}

/// A table's reading failed.
#[derive(Debug, thiserror::Error)]
enum TableError {
    /// For good: recorded in its progress row.
    #[error("{0}")]
    Refused(String),
    /// A database error; a lost connection is tried again at the next poll.
    #[error(transparent)]
    Sql(#[from] tokio_postgres::Error),
    /// The capture session ended under the chunk.
    #[error("the capture session ended")]
    Ended,
}

/// The reader's connections and shared state for one capture session.
#[derive(Clone)]
pub struct Reader {
    /// The pipeline.
    pub pipeline: String,
    /// The source database.
    pub source: Config,
    /// The buffer database.
    pub buffer: Config,
    /// How to read.
    pub settings: SnapshotSettings,
    /// Where chunks wait for their high watermark.
    pub mailbox: Mailbox,
    /// Tables the capture was already restarted to follow: one still not followed is refused, not retried.
    pub requested: Vec<TableId>,
}

impl Reader {
    /// Polls and reads until `cancel` fires or a request names a table not followed.
    pub async fn run(self, cancel: CancellationToken) -> ReaderExit {
        let mut active: HashMap<TableId, i32> = HashMap::new();
        let mut tasks: JoinSet<(TableId, i32, Result<(), TableError>)> = JoinSet::new();
        let mut buffer = None;
        loop {
            while let Some(done) = tasks.try_join_next() {
                self.finished(buffer.as_ref(), &mut active, done).await;
            }
            if buffer.is_none() {
                buffer = store::connect(&self.buffer).await.ok();
            }
            if let Some(client) = &buffer {
                match self.poll(client, &mut active, &mut tasks, &cancel).await {
                    Ok(Some(follow)) => return ReaderExit::Follow(follow),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(error = %crate::report::chain(&error), "snapshot: could not read the requests; trying again");
                        buffer = None;
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return ReaderExit::Cancelled,
                () = tokio::time::sleep(self.settings.poll) => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    self.finished(buffer.as_ref(), &mut active, done).await;
                }
            }
        }
    }

    /// Starts reading the requested tables (up to `workers` at once); returns the requested tables that are not
    /// followed yet.
    async fn poll(
        &self,
        buffer: &tokio_postgres::Client,
        active: &mut HashMap<TableId, i32>,
        tasks: &mut JoinSet<(TableId, i32, Result<(), TableError>)>,
        cancel: &CancellationToken,
    ) -> Result<Option<Vec<TableId>>, tokio_postgres::Error> {
        let requests = snapshots::open(buffer, &self.pipeline).await?;
        if requests.is_empty() {
            return Ok(None);
        }
        let followed = source_tables::list(buffer, &self.pipeline).await?;
        let mut unfollowed = Vec::new();
        for request in requests {
            if active.contains_key(&request.table) {
                continue;
            }
            let Some(table) = followed.iter().find(|t| t.source_schema == request.table.schema && t.source_table == request.table.name)
            else {
                if self.requested.contains(&request.table) {
                    let reason = format!("the pipeline cannot follow {} (not a user table it may capture)", request.table);
                    tracing::error!(table = %request.table, "snapshot not possible: {reason}");
                    snapshots::fail(buffer, &self.pipeline, &request.table, request.run, &reason).await?;
                } else {
                    unfollowed.push(request.table.clone());
                }
                continue;
            };
            if let Some(problem) = &table.problem {
                let reason = format!("the pipeline does not capture {}: {problem}", request.table);
                tracing::error!(table = %request.table, "snapshot not possible: {reason}");
                snapshots::fail(buffer, &self.pipeline, &request.table, request.run, &reason).await?;
                continue;
            }
            if active.len() >= self.settings.workers.max(1) {
                continue;
            }
            active.insert(request.table.clone(), request.run);
            let (reader, relid, cancel) = (self.clone(), table.relid, cancel.clone());
            tasks.spawn(async move {
                let (table, run) = (request.table.clone(), request.run);
                let result = tokio::select! {
                    result = reader.read_table(&request, relid) => result,
                    () = cancel.cancelled() => Err(TableError::Ended),
                };
                (table, run, result)
            });
        }
        Ok((!unfollowed.is_empty()).then_some(unfollowed))
    }

    /// Records how a table's reading ended (its worker is free again).
    async fn finished(
        &self,
        buffer: Option<&tokio_postgres::Client>,
        active: &mut HashMap<TableId, i32>,
        done: Result<(TableId, i32, Result<(), TableError>), tokio::task::JoinError>,
    ) {
        let Ok((table, run, result)) = done else { return };
        active.remove(&table);
        let reason = match result {
            Ok(()) => {
                tracing::info!(table = %table, "snapshot done");
                return;
            }
            Err(TableError::Ended) => return,
            Err(TableError::Sql(error)) if store::connection_lost(&error) => {
                tracing::warn!(table = %table, error = %crate::report::chain(&error),
                    "snapshot lost its connection; it goes on from its last enqueued chunk");
                return;
            }
            Err(TableError::Refused(reason)) => reason,
            Err(TableError::Sql(error)) => format!("reading the table failed: {}", crate::report::chain(&error)),
        };
        tracing::error!(table = %table, "snapshot failed: {reason}");
        if let Some(buffer) = buffer {
            if let Err(error) = snapshots::fail(buffer, &self.pipeline, &table, run, &reason).await {
                tracing::warn!(%error, table = %table, "could not record the failed snapshot");
            }
        }
    }

    /// Reads one table chunk by chunk from where its progress row stands, until its end.
    async fn read_table(&self, request: &SnapshotRow, relid: u32) -> Result<(), TableError> {
        let table = &request.table;
        let mut source = store::connect(&self.source).await?;
        let buffer = store::connect(&self.buffer).await?;
        let shape = self.usable_shape(&source, table, relid).await?;
        let mut after = request.last_key.clone();
        if after.is_some() && request.key_columns.as_ref() != Some(&shape.chunk_key.names()) {
            tracing::warn!(table = %table, "the table's key changed since its snapshot started: reading it from its start again");
            after = None;
        }
        snapshots::start(&buffer, &self.pipeline, table, request.run, &shape.chunk_key.names(), shape.estimate).await?;
        if after.is_none() {
            tracing::info!(table = %table, rows_estimate = ?shape.estimate, key = %shape.chunk_key.names().join(", "), "snapshot starting");
        } else {
            tracing::info!(table = %table, rows_done = request.rows_done, "snapshot resuming after its last enqueued chunk");
        }
        loop {
            let (fate, chunk) = self.read_chunk(&mut source, &buffer, request, relid, after.as_deref()).await?;
            match fate {
                ChunkFate::Durable => {
                    if chunk.done {
                        return Ok(());
                    }
                    after = chunk.last_key.or(after);
                }
                ChunkFate::Dropped | ChunkFate::Waiting => {
                    tracing::debug!(table = %table, "chunk not placed by the stream; reading it again");
                }
            }
        }
    }

    /// The table's shape, refused with a clear reason when the snapshot cannot read it.
    async fn usable_shape(&self, source: &tokio_postgres::Client, table: &TableId, relid: u32) -> Result<TableShape, TableError> {
        let Some(shape) = read::describe(source, relid).await? else {
            return Err(TableError::Refused(format!("table {table} no longer exists on the source")));
        };
        if !shape.readable {
            return Err(TableError::Refused(format!(
                "permission denied: the source user cannot read {} (GRANT SELECT ON {} TO the pipeline's user)",
                shape.quoted, shape.quoted
            )));
        }
        if shape.match_key.is_empty() {
            return Err(TableError::Refused(format!(
                "{table} has no primary key and its replica identity names no columns: its rows cannot be told apart"
            )));
        }
        if shape.chunk_key == ChunkKey::Ctid && shape.kind == 'p' {
            return Err(TableError::Refused(format!(
                "{table} is partitioned and has no primary key: add one, or set a replica identity index, to snapshot it"
            )));
        }
        Ok(shape)
    }

    /// One chunk: low watermark, wait, read, mailbox, high watermark; then waits for the stream to enqueue it.
    async fn read_chunk(
        &self,
        source: &mut tokio_postgres::Client,
        buffer: &tokio_postgres::Client,
        request: &SnapshotRow,
        relid: u32,
        after: Option<&[String]>,
    ) -> Result<(ChunkFate, ChunkOutcome), TableError> {
        let table = &request.table;
        let shape = self.usable_shape(source, table, relid).await?;
        let chunk = next_chunk_id();
        let mut watermark = Watermark {
            pipeline: self.pipeline.clone(),
            chunk,
            high: false,
            schema: table.schema.clone(),
            table: table.name.clone(),
            key: shape.match_key.clone(),
        };
        read::emit(source, &watermark).await?;
        wait_for_running(source, table).await?;

        let tx = source
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let Some(now) = read::describe(&tx, relid).await? else {
            return Err(TableError::Refused(format!("table {table} no longer exists on the source")));
        };
        if now.match_key != shape.match_key {
            // The key changed between the watermark and the read: this chunk's window matched the old key.
            tx.commit().await?;
            return Ok((ChunkFate::Dropped, ChunkOutcome::default()));
        }
        let (rows, done, last_key) = match &now.chunk_key {
            ChunkKey::Columns(_) => {
                let rows = read::copy_rows(&tx, &read::chunk_copy(&now, after, self.settings.chunk_rows, None)).await?;
                let done = rows.len() < self.settings.chunk_rows;
                let last_key = rows.last().and_then(|row| read::key_of(&now, row));
                (rows, done, last_key)
            }
            ChunkKey::Ctid => {
                let total = read::blocks(&tx, relid).await?;
                let from = after.and_then(|k| k.first()).and_then(|b| b.parse::<u64>().ok()).unwrap_or(0);
                let per_block = now.estimate.filter(|e| *e > 0).map_or(100.0, |e| e as f64 / total.max(1) as f64);
                let span = ((self.settings.chunk_rows as f64 / per_block.max(1.0)) as u64).max(1);
                let to = (from + span < total).then_some(from + span);
                let rows = read::copy_rows(&tx, &read::chunk_copy(&now, None, 0, Some((from, to)))).await?;
                (rows, to.is_none(), Some(vec![to.unwrap_or(total).to_string()]))
            }
        };
        tx.commit().await?;
        let (ack, mut fate) = Ack::new();
        self.mailbox.put(
            chunk,
            ReadChunk {
                table: table.clone(),
                run: request.run,
                relation: now.relation,
                rows,
                last_key: last_key.clone(),
                done,
                read_at: unix_micros(),
                ack,
            },
        );
        watermark.high = true;
        if let Err(error) = read::emit(source, &watermark).await {
            self.mailbox.take(chunk);
            return Err(error.into());
        }
        snapshots::count_read(buffer, &self.pipeline, table, request.run).await?;
        let fate = wait_for_fate(&mut fate).await?;
        Ok((fate, ChunkOutcome { done, last_key }))
    }
}

/// What a chunk read found.
#[derive(Debug, Default)]
struct ChunkOutcome {
    done: bool,
    last_key: Option<Vec<String>>,
}

/// Waits until the transactions running at the low watermark have ended (see the module doc of `snapshot`).
async fn wait_for_running(source: &tokio_postgres::Client, table: &TableId) -> Result<(), TableError> {
    let running = read::running_transactions(source).await?;
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut warned = Duration::ZERO;
    while read::still_running(source, &running).await? > 0 {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
        if started.elapsed() >= warned + Duration::from_secs(10) {
            warned = started.elapsed();
            tracing::warn!(table = %table, waited_s = warned.as_secs(),
                "snapshot chunk waits for transactions that were running at its low watermark to end \
                 (a long transaction holding an xid delays the snapshot, never the stream)");
        }
    }
    Ok(())
}

/// Waits for Enqueue's word on a chunk (the sender gone: the capture session ended).
async fn wait_for_fate(fate: &mut watch::Receiver<ChunkFate>) -> Result<ChunkFate, TableError> {
    loop {
        let now = *fate.borrow_and_update();
        if now != ChunkFate::Waiting {
            return Ok(now);
        }
        if fate.changed().await.is_err() {
            return Err(TableError::Ended);
        }
    }
}

fn unix_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
