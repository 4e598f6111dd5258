//! The snapshot reader: runs beside the capture's stream, in its session. It polls `philotes.snapshots` for
//! tables to read and reads up to `workers` tables at once. A table is cut into up to `workers` key ranges
//! (lanes, `philotes.snapshot_lanes`) read side by side, one chunk at a time per lane, and at most `workers`
//! chunks are in flight in the whole pipeline: a chunk holds a worker from its low watermark until it is
//! enqueued, so a killed capture reads at most `workers` chunks again.
//!
//! A table it cannot read (gone, not readable, no usable key) fails alone, with the reason in its progress row;
//! the other tables and the stream go on. A lost source connection ends only that table's reading; it is
//! picked up again at the next poll from its last enqueued chunk.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::Arc;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_postgres::{Config, IsolationLevel};
use tokio_util::sync::CancellationToken;

use super::read::{self, ChunkKey, KeyRange, TableShape};
use super::{next_chunk_id, Ack, ChunkFate, ChunkLoad, Direct, Mailbox, ReadChunk, Watermark};
use crate::store::snapshots::{self, Lane, SnapshotRow};
use crate::store::{self, source_tables};
use crate::table_id::TableId;

/// How the snapshot reads, from the pipeline file (`snapshot:`).
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    /// Rows per chunk (`snapshot.chunk_rows`).
    pub chunk_rows: usize,
    /// Chunks read at once, from as many tables or key ranges of a table (`snapshot.workers`).
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
    /// The Iceberg catalog could not be read (tried again at the next poll).
    #[error("iceberg catalog: {0}")]
    Catalog(String),
}

impl From<read::CopyError> for TableError {
    fn from(error: read::CopyError) -> Self {
        match error {
            read::CopyError::Sql(error) => TableError::Sql(error),
            read::CopyError::Format(_) => TableError::Refused(error.to_string()),
        }
    }
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
    /// Writes the chunks of changelog tables straight into Iceberg (`snapshot.direct`), and finds the markers of
    /// those whose progress did not move; `None` (tests of the reader alone): every chunk goes through the buffer.
    pub load: Option<Arc<dyn ChunkLoad>>,
}

impl Reader {
    /// Polls and reads until `cancel` fires or a request names a table not followed.
    pub async fn run(self, cancel: CancellationToken) -> ReaderExit {
        let mut active: HashMap<TableId, i32> = HashMap::new();
        let mut tasks: JoinSet<(TableId, i32, Result<(), TableError>)> = JoinSet::new();
        let mut buffer = None;
        let workers = Arc::new(Semaphore::new(self.settings.workers.max(1)));
        loop {
            while let Some(done) = tasks.try_join_next() {
                self.finished(buffer.as_ref(), &mut active, done).await;
            }
            if buffer.is_none() {
                buffer = store::connect(&self.buffer).await.ok();
            }
            if let Some(client) = &buffer {
                match self.poll(client, &mut active, &mut tasks, &workers, &cancel).await {
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
        workers: &Arc<Semaphore>,
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
            let (reader, relid, workers, cancel) = (self.clone(), table.relid, workers.clone(), cancel.clone());
            tasks.spawn(async move {
                let (table, run) = (request.table.clone(), request.run);
                // A panic (a bug) fails this table alone, with its message, instead of leaving it active for good.
                let reading = std::panic::AssertUnwindSafe(reader.read_table(&request, relid, &workers));
                let result = tokio::select! {
                    result = futures::FutureExt::catch_unwind(reading) => result.unwrap_or_else(|panic| {
                        let message = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        Err(TableError::Refused(format!("reading the table failed (internal error: {message})")))
                    }),
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
            Err(TableError::Catalog(error)) => {
                tracing::warn!(table = %table, %error, "snapshot could not read its iceberg table; it goes on from its last chunk");
                return;
            }
            Err(TableError::Sql(error)) if store::connection_lost(&error) => {
                tracing::warn!(table = %table, error = %crate::report::chain(&error),
                    "snapshot lost its connection; it goes on from its last enqueued chunk");
                return;
            }
            Err(TableError::Refused(reason)) => reason,
            // Dropped between the chunk's description (its snapshot still sees the table) and its read.
            Err(TableError::Sql(error)) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                format!("table {table} no longer exists on the source ({})", crate::report::chain(&error))
            }
            Err(TableError::Sql(error)) => format!("reading the table failed: {}", crate::report::chain(&error)),
        };
        tracing::error!(table = %table, "snapshot failed: {reason}");
        if let Some(buffer) = buffer {
            if let Err(error) = snapshots::fail(buffer, &self.pipeline, &table, run, &reason).await {
                tracing::warn!(%error, table = %table, "could not record the failed snapshot");
            }
        }
    }

    /// Reads one table from where its progress stands, its lanes side by side, until every lane's end.
    async fn read_table(&self, request: &SnapshotRow, relid: u32, workers: &Semaphore) -> Result<(), TableError> {
        let table = &request.table;
        let source = store::connect(&self.source).await?;
        let mut buffer = store::connect(&self.buffer).await?;
        let shape = self.usable_shape(&source, table, relid).await?;
        let key = shape.chunk_key.names();
        let mut lanes = snapshots::lanes(&buffer, &self.pipeline, table, request.run).await?;
        let mut resume = request.last_key.clone();
        if request.key_columns.is_some() && request.key_columns.as_ref() != Some(&key) {
            tracing::warn!(table = %table, "the table's key changed since its snapshot started: reading it from its start again");
            (lanes, resume) = (Vec::new(), None);
        }
        snapshots::start(&buffer, &self.pipeline, table, request.run, &key, shape.estimate).await?;
        if lanes.is_empty() {
            // A run that started before lanes existed goes on as one lane from its last key.
            let splits = match resume {
                Some(_) => Vec::new(),
                None => read::split_points(&source, &shape, self.lanes_for(&source, &shape).await?).await?,
            };
            lanes = snapshots::plan(&mut buffer, &self.pipeline, table, request.run, &splits, resume.as_deref()).await?;
            tracing::info!(table = %table, rows_estimate = ?shape.estimate, key = %key.join(", "), lanes = lanes.len(), "snapshot starting");
        } else {
            tracing::info!(table = %table, rows_done = request.rows_done, lanes = lanes.iter().filter(|l| !l.done).count(),
                "snapshot resuming after its last enqueued chunks");
        }
        drop(source);
        let lanes = lanes.into_iter().filter(|lane| !lane.done).map(|lane| self.read_lane(&buffer, request, relid, lane, workers));
        futures::future::try_join_all(lanes).await?;
        Ok(())
    }

    /// How many lanes a table is cut into: one per worker, but no lane of less than a chunk. A table never
    /// analyzed has no estimate: its rows are counted, up to what the workers' lanes would need.
    async fn lanes_for(&self, source: &tokio_postgres::Client, shape: &TableShape) -> Result<usize, tokio_postgres::Error> {
        let (workers, chunk) = (self.settings.workers.max(1), self.settings.chunk_rows.max(1));
        let rows = match shape.estimate {
            Some(rows) => rows,
            None if workers > 1 => read::rows_up_to(source, shape, (workers * chunk) as i64).await?,
            None => 0,
        };
        Ok(workers.min((rows.max(0) as usize / chunk).max(1)))
    }

    /// Reads one lane chunk by chunk, each chunk holding a worker until it is enqueued (or handed to the direct
    /// path, which writes it while the next one is read: at most one chunk of a lane is written in the
    /// background, and the lane's chunks land in order).
    async fn read_lane(
        &self,
        buffer: &tokio_postgres::Client,
        request: &SnapshotRow,
        relid: u32,
        mut lane: Lane,
        workers: &Semaphore,
    ) -> Result<(), TableError> {
        let mut source = store::connect(&self.source).await?;
        // Chunks written straight into Iceberg whose progress did not move (the capture was killed between the
        // two): their commits' markers move it now, and they are not read again.
        // Also with `snapshot.direct` switched off since: the markers are there all the same.
        if let Some(load) = self.load.as_ref().filter(|l| l.may_hold_markers(&request.table)) {
            loop {
                let landed = load.landed(&request.table, request.run, lane.lane, lane.last_key.as_deref()).await;
                let Some(progress) = landed.map_err(TableError::Catalog)? else { break };
                tracing::info!(table = %request.table, lane = lane.lane, rows = progress.rows,
                    "snapshot chunk found in iceberg: moving its progress, not reading it again");
                snapshots::advance(buffer, &self.pipeline, &progress).await?;
                if progress.done {
                    return Ok(());
                }
                lane.last_key = progress.last_key.or(lane.last_key);
            }
        }
        // The chunk being written in the background: its ack, and the lane's key before it.
        let mut writing: Option<(watch::Receiver<ChunkFate>, Option<Vec<String>>)> = None;
        loop {
            // Decided once per chunk: a table the loader stopped taking reads through the buffer, and only once
            // nothing of its lane is still written in the background (its progress must move in order).
            let loader = self.load.as_ref().filter(|l| l.takes(&request.table));
            if loader.is_none() {
                if let Some((earlier, start)) = writing.take() {
                    if final_fate(&earlier).await? != ChunkFate::Durable {
                        lane.last_key = start;
                    }
                }
            }
            let Ok(worker) = workers.acquire().await else { return Err(TableError::Ended) };
            let before = lane.last_key.clone();
            let direct = loader.map(|loader| Direct {
                loader: loader.clone(),
                after: before.clone(),
                previous: writing.as_ref().map(|(fate, _)| fate.clone()),
            });
            let (fate, chunk, ack) = self.read_chunk(&mut source, buffer, request, relid, &lane, direct).await?;
            drop(worker);
            match fate {
                // Through the buffer, or written directly already (then the one before it was durable first).
                ChunkFate::Durable => writing = None,
                ChunkFate::Handed => {
                    // The one before it must be durable first; if it was dropped, this one is dropped too (it
                    // waits for it) and the lane reads again from the dropped one's start.
                    let dropped_at = match writing.replace((ack, before)) {
                        Some((earlier, start)) if final_fate(&earlier).await? != ChunkFate::Durable => Some(start),
                        _ => None,
                    };
                    if dropped_at.is_some() || chunk.done {
                        if let Some((this, start)) = writing.take() {
                            let this = final_fate(&this).await?;
                            match dropped_at {
                                Some(start) => lane.last_key = start,
                                None if this == ChunkFate::Durable => return Ok(()),
                                None => lane.last_key = start,
                            }
                        }
                        continue;
                    }
                }
                ChunkFate::Dropped | ChunkFate::Waiting => {
                    tracing::debug!(table = %request.table, lane = lane.lane, "chunk not placed by the stream; reading it again");
                    continue;
                }
            }
            if fate == ChunkFate::Durable && chunk.done {
                return Ok(());
            }
            lane.last_key = chunk.last_key.or(lane.last_key);
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

    /// One chunk of `lane`: low watermark, wait, read, mailbox, high watermark; then waits for the stream to
    /// enqueue it.
    async fn read_chunk(
        &self,
        source: &mut tokio_postgres::Client,
        buffer: &tokio_postgres::Client,
        request: &SnapshotRow,
        relid: u32,
        lane: &Lane,
        direct: Option<Direct>,
    ) -> Result<(ChunkFate, ChunkOutcome, watch::Receiver<ChunkFate>), TableError> {
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
            lane: lane.lane,
        };
        read::emit(source, &watermark).await?;
        let read = self.read_rows(source, request, relid, &shape, lane).await;
        let (relation, rows, outcome) = match read {
            Ok(Some(read)) => read,
            Ok(None) => return Ok((ChunkFate::Dropped, ChunkOutcome::default(), Ack::new().1)),
            Err(error) => {
                // Closes the chunk's window in the stream (best effort: the connection may be what failed).
                watermark.high = true;
                let _ = read::emit(source, &watermark).await;
                return Err(error);
            }
        };
        let (ack, fate) = Ack::new();
        self.mailbox.put(
            chunk,
            ReadChunk {
                table: table.clone(),
                run: request.run,
                lane: lane.lane,
                relation,
                rows,
                last_key: outcome.last_key.clone(),
                done: outcome.done,
                read_at: unix_micros(),
                ack,
                direct,
            },
        );
        watermark.high = true;
        if let Err(error) = read::emit(source, &watermark).await {
            self.mailbox.take(chunk);
            return Err(error.into());
        }
        snapshots::count_read(buffer, &self.pipeline, table, request.run).await?;
        let mut waiting = fate.clone();
        let fate = wait_for_fate(&mut waiting).await?;
        Ok((fate, outcome, waiting))
    }

    /// The chunk's rows, after its low watermark: waits for the transactions running then, and reads them in a
    /// transaction of its own. `None` when the table's key changed since the watermark (the chunk's window
    /// matched the old key: read it again).
    async fn read_rows(
        &self,
        source: &mut tokio_postgres::Client,
        request: &SnapshotRow,
        relid: u32,
        shape: &TableShape,
        lane: &Lane,
    ) -> Result<Option<(crate::decode::Relation, Vec<crate::decode::TupleData>, ChunkOutcome)>, TableError> {
        let table = &request.table;
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
            tx.commit().await?;
            return Ok(None);
        }
        let (rows, done, last_key) = match &now.chunk_key {
            ChunkKey::Columns(_) => {
                let range = KeyRange { after: lane.last_key.as_deref(), lower: lane.lower.as_deref(), upper: lane.upper.as_deref() };
                let read = read::copy_rows(&tx, &now, &read::chunk_copy(&now, range, self.settings.chunk_rows, None)).await?;
                let done = read.rows.len() < self.settings.chunk_rows;
                (read.rows, done, read.last_key)
            }
            ChunkKey::Ctid => {
                // A lane of blocks [lower, upper); the last one runs to the table's end as it is now.
                let total = read::blocks(&tx, relid).await?;
                let block = |text: Option<&String>| text.and_then(|b| b.parse::<u64>().ok());
                let from = block(lane.last_key.as_ref().and_then(|k| k.first())).or(block(lane.lower.as_ref())).unwrap_or(0);
                let end = block(lane.upper.as_ref());
                let per_block = now.estimate.filter(|e| *e > 0).map_or(100.0, |e| e as f64 / total.max(1) as f64);
                let span = ((self.settings.chunk_rows as f64 / per_block.max(1.0)) as u64).max(1);
                let to = from + span;
                let (to, done) = match end {
                    Some(end) => (Some(to.min(end)), to >= end),
                    None => ((to < total).then_some(to), to >= total),
                };
                let read = read::copy_rows(&tx, &now, &read::chunk_copy(&now, KeyRange::default(), 0, Some((from, to)))).await?;
                (read.rows, done, Some(vec![to.unwrap_or(total).to_string()]))
            }
        };
        tx.commit().await?;
        Ok(Some((now.relation, rows, ChunkOutcome { done, last_key })))
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

/// Waits for the end of a chunk handed to the direct path: `Durable` or `Dropped` (the sender gone: the capture
/// session ended).
async fn final_fate(fate: &watch::Receiver<ChunkFate>) -> Result<ChunkFate, TableError> {
    match fate.clone().wait_for(|f| matches!(f, ChunkFate::Durable | ChunkFate::Dropped)).await {
        Ok(f) => Ok(*f),
        Err(_) => Err(TableError::Ended),
    }
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
