//! A snapshot chunk written straight into its Iceberg table (a changelog table, `snapshot.direct: true`, the
//! default) rather than through the buffer. SchemaResolve hands the chunk over at its high watermark, its rows
//! `r` changes at that position (as read, or typed and encoded when its window saw changes); here they become
//! Parquet files (the flush's own builder and writer) and one append whose summary carries the chunk's marker (`philotes.snapshot-chunk`: run,
//! lane, the key the chunk started after, and the progress it makes) with the table's committed position left as
//! it was. Then the chunk's progress moves in the buffer. These are the two steps of every flush, with the marker
//! as the repair: a capture killed between them finds the marker when the lane resumes
//! ([`ChunkLoad::landed`]) and moves the progress instead of reading the chunk again.
//!
//! Why the buffer can be skipped: a changelog table orders its rows by their `_lsn`/`_seq` columns, not by the
//! commit that carries them, and a chunk's rows sit at its high watermark whichever commit carries them. The
//! chunk's commit leaves the table's position (what every flush compares its changes with) unchanged, so the
//! stream's changes around it are neither dropped nor doubled. A mirror table applies its rows in commit order
//! (a key's upsert replaces the key's row): its chunks go through the buffer, in stream order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{NamespaceIdent, TableIdent};
use philotes_engine::RetryPolicy;
use philotes_schemas::TableSchema;
use serde::{Deserialize, Serialize};
use tokio_postgres::Config;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::iceberg_commit::{writer, CommitCatalog, IcebergCommitError};
use crate::arrow_batch::{build_batch, BatchBuilder};
use crate::catalog::table::{Prepared, Tables};
use crate::catalog::{committed_position, pipeline_summaries, GuardedCatalog, SUMMARY_LAST_LSN, SUMMARY_LAST_SEQ, SUMMARY_PIPELINE};
use crate::claim::TargetFn;
use crate::fault;
use crate::position::Lsn;
use crate::resolve::convert::read_fields;
use crate::snapshot::{ChunkFate, ChunkLoad, DirectChunk, DirectRows};
use crate::store::snapshots::{self, ChunkProgress};
use crate::store::{self, schemas as schema_store};
use crate::table_id::TableId;
use crate::telemetry;

/// The snapshot summary property of a chunk's commit: its [`ChunkMarker`] as JSON.
pub const SUMMARY_SNAPSHOT_CHUNK: &str = "philotes.snapshot-chunk";

/// What a chunk's commit records of it: which chunk it is (run, lane, the key it read after) and the progress it
/// makes, so a capture killed before the progress moved in the buffer moves it from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMarker {
    /// The snapshot run.
    pub run: i32,
    /// The lane.
    pub lane: i32,
    /// The lane's key before the chunk (`None`: its first chunk).
    pub after: Option<Vec<String>>,
    /// The chunk's upper key.
    pub last_key: Option<Vec<String>>,
    /// Rows the chunk read.
    pub rows: i64,
    /// Whether it reached its lane's end.
    pub done: bool,
    /// Its high watermark.
    pub lsn: String,
}

impl ChunkMarker {
    fn of(progress: &ChunkProgress, after: Option<Vec<String>>) -> Self {
        Self {
            run: progress.run,
            lane: progress.lane,
            after,
            last_key: progress.last_key.clone(),
            rows: progress.rows,
            done: progress.done,
            lsn: progress.lsn.to_string(),
        }
    }

    fn progress(&self, table: &TableId) -> Option<ChunkProgress> {
        Some(ChunkProgress {
            table: table.clone(),
            run: self.run,
            lane: self.lane,
            last_key: self.last_key.clone(),
            rows: self.rows,
            done: self.done,
            lsn: self.lsn.parse::<Lsn>().ok()?,
        })
    }

    /// Whether this is the chunk of `run`'s `lane` that read after `after`.
    fn is(&self, run: i32, lane: i32, after: Option<&[String]>) -> bool {
        self.run == run && self.lane == lane && self.after.as_deref() == after
    }
}

/// The marker of `pipeline`'s chunk (`run`, `lane`, read after `after`) in the table's history, if a commit
/// carries it.
fn find_marker(table: &Table, pipeline: &str, run: i32, lane: i32, after: Option<&[String]>) -> Option<ChunkMarker> {
    pipeline_summaries(table, pipeline)
        .filter_map(|props| serde_json::from_str::<ChunkMarker>(props.get(SUMMARY_SNAPSHOT_CHUNK)?).ok())
        .find(|marker| marker.is(run, lane, after))
}

/// Where the loader writes, from the pipeline file.
#[derive(Clone)]
pub struct LoadSettings {
    /// The catalog and warehouse.
    pub catalog: crate::catalog::CatalogSettings,
    /// Source table → Iceberg table.
    pub target: TargetFn,
    /// Parquet target file size.
    pub target_file_size: usize,
    /// `snapshot.direct`: changelog tables' chunks are written here. With `false` the loader only looks for the
    /// markers a direct chunk of an earlier run left (a lane resumed after the key was switched off).
    pub direct: bool,
}

/// Why a chunk was not loaded.
enum NotLoaded {
    /// It cannot be loaded directly (a value the Arrow builder rejects, a table that stops): its table's chunks
    /// go through the buffer, which handles those cases (dead letters, the table's stop).
    Refused(String),
    /// The capture session ended first (nothing in flight: the next session's lanes look for the marker).
    Ended,
}

/// Writes snapshot chunks straight into Iceberg, beside the capture's stream. One per capture (it outlives its
/// sessions): a new session waits for the last one's chunks to end ([`ChunkLoader::settle`]) before its lanes
/// look for their markers.
pub struct ChunkLoader {
    pipeline: String,
    buffer: Config,
    /// Where the catalog is: connected on first use, so the capture never waits for the catalog to start
    /// (only a snapshot does).
    catalog_settings: crate::catalog::CatalogSettings,
    catalogs: tokio::sync::OnceCell<Catalogs>,
    target: TargetFn,
    target_file_size: usize,
    direct: bool,
    /// Tables whose chunks go through the buffer from now on.
    refused: Mutex<HashSet<TableId>>,
    tasks: TaskTracker,
    /// Cancelled when a new session settles: the old session's chunks stop between attempts.
    session: Mutex<CancellationToken>,
    /// A buffer session kept between chunks (schema versions, progress); dropped when it fails.
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    /// Held from a commit's table load to its end: the catalog's guard holds one expected state per table, so
    /// two lanes' commits to one table must not interleave (an unguarded commit would be applied by the crate
    /// on a newer table state than the one whose position its summary carries).
    commits: tokio::sync::Mutex<()>,
}

impl ChunkLoader {
    /// A loader for `pipeline`'s changelog tables (no connection yet).
    pub fn new(pipeline: &str, buffer: Config, settings: &LoadSettings) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            buffer,
            catalog_settings: settings.catalog.clone(),
            catalogs: tokio::sync::OnceCell::new(),
            target: settings.target.clone(),
            target_file_size: settings.target_file_size,
            direct: settings.direct,
            refused: Mutex::new(HashSet::new()),
            tasks: TaskTracker::new(),
            session: Mutex::new(CancellationToken::new()),
            client: tokio::sync::Mutex::new(None),
            commits: tokio::sync::Mutex::new(()),
        }
    }

    /// The catalog and the table preparation, connected on first use (a failure is tried again next time).
    async fn catalogs(&self) -> Result<&Catalogs, iceberg::Error> {
        self.catalogs
            .get_or_try_init(|| async {
                let catalog = Arc::new(GuardedCatalog::new(crate::catalog::connect(&self.catalog_settings).await?));
                let commits = CommitCatalog::new(&self.catalog_settings).map_err(|e| {
                    iceberg::Error::new(iceberg::ErrorKind::Unexpected, format!("SQL catalog database: {}", crate::report::chain(&e)))
                })?;
                let tables = Tables::new(&self.pipeline, catalog.clone(), Arc::new(commits));
                Ok(Catalogs { catalog, tables })
            })
            .await
    }

    fn ident(&self, table: &TableId) -> TableIdent {
        let target = (self.target)(table);
        TableIdent::new(NamespaceIdent::new(target.namespace), target.name)
    }

    /// Ends the chunks of an earlier session: they stop between attempts and are waited for, so nothing is in
    /// flight when this session's lanes look for their markers.
    pub async fn settle(&self) {
        if let Ok(session) = self.session.lock() {
            session.cancel();
        }
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
        if let Ok(mut session) = self.session.lock() {
            *session = CancellationToken::new();
        }
    }

    /// Writes the chunk's files, waits for the lane's chunk before it, commits the files (unless its marker is
    /// there already), then moves its progress. Catalog, warehouse and buffer failures are retried with backoff
    /// until the session ends.
    async fn load(&self, chunk: &DirectChunk, session: &CancellationToken) -> Result<(), NotLoaded> {
        let table = &chunk.progress.table;
        let started = Instant::now();
        let written = self.retried(chunk, session, "writing a snapshot chunk's files", || self.write(chunk)).await?;
        // The lane's chunks land in order: a chunk after one that was dropped must not land (the lane reads
        // again from the dropped one's start).
        if let Some(previous) = &chunk.previous {
            let mut previous = previous.clone();
            let durable = tokio::select! {
                fate = previous.wait_for(|f| matches!(f, ChunkFate::Durable | ChunkFate::Dropped)) => {
                    fate.is_ok_and(|f| *f == ChunkFate::Durable)
                }
                () = session.cancelled() => false,
            };
            if !durable {
                return Err(NotLoaded::Ended);
            }
        }
        if let Some(written) = &written {
            self.retried(chunk, session, "committing a snapshot chunk", || self.commit(chunk, written)).await?;
            fault::hit(fault::AFTER_CHUNK_COMMIT);
        }
        self.retried(chunk, session, "moving a snapshot chunk's progress (the chunk is in iceberg)", || async {
            let mut client = self.client.lock().await;
            let session = self.buffer_session(&mut client).await?;
            let moved = snapshots::advance(session, &self.pipeline, &chunk.progress).await;
            moved.map_err(|e| Self::failed(&mut client, e))
        })
        .await?;
        let rows = written.as_ref().map_or(0, |w| w.rows);
        let attributes = telemetry::table(table);
        let metrics = telemetry::metrics();
        metrics.snapshot_rows.add(rows, &attributes);
        metrics.cdc_events_read.add(rows, &attributes);
        tracing::debug!(table = %table, lane = chunk.progress.lane, rows, ms = started.elapsed().as_millis() as u64, "snapshot chunk loaded");
        Ok(())
    }

    /// Runs `attempt` until it succeeds, is refused, or the session ends; a conflict is tried again at once,
    /// any other failure after a backoff.
    async fn retried<T, F, Fut>(&self, chunk: &DirectChunk, session: &CancellationToken, what: &str, attempt: F) -> Result<T, NotLoaded>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let backoff = RetryPolicy { base: Duration::from_millis(200), cap: Duration::from_secs(10), max_attempts: u32::MAX };
        let mut failures = 0;
        loop {
            if session.is_cancelled() {
                return Err(NotLoaded::Ended);
            }
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(Attempt::Refused(reason)) => return Err(NotLoaded::Refused(reason)),
                Err(Attempt::Failed(e)) if crate::catalog::is_conflict(&e) => {
                    tracing::debug!(table = %chunk.progress.table, "snapshot chunk commit conflict; checking the table again");
                }
                Err(Attempt::Failed(e)) => {
                    failures += 1;
                    tracing::warn!(table = %chunk.progress.table, error = %crate::report::chain(&e), "{what} failed; retrying with backoff");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.delay(failures)) => {}
                        () = session.cancelled() => return Err(NotLoaded::Ended),
                    }
                }
            }
        }
    }

    /// The table made ready and the chunk's files written (`None`: no row to write).
    async fn write(&self, chunk: &DirectChunk) -> Result<Option<Written>, Attempt> {
        let source = &chunk.progress.table;
        let rows = chunk.rows.len();
        if rows == 0 {
            return Ok(None);
        }
        let ident = self.ident(source);
        let number = chunk.rows.table().version;
        let versions = self.versions(source).await?;
        let target = (self.target)(source);
        let used = [(number, chunk.progress.lsn)];
        let (table, named) = match self.catalogs().await?.tables.prepare(&ident, source, &versions, &used, false, &target.partition).await? {
            Prepared::Stopped(reason) => return Err(Attempt::Refused(reason)),
            Prepared::Ready { table, versions, .. } => (table, versions),
        };
        let version = named.get(&number).cloned().unwrap_or_else(|| Arc::new(chunk.rows.table().schema.clone()));
        let batch = build(&table, &version, &chunk.rows, chunk.progress.lsn)?;
        let mut writer = writer::open(&self.pipeline, &table, &batch, self.target_file_size).await?;
        writer.write(batch).await?;
        let files = writer.close().await?;
        let marker = serde_json::to_string(&ChunkMarker::of(&chunk.progress, chunk.after.clone()))
            .map_err(|e| Attempt::Refused(format!("the chunk's marker cannot be written: {e}")))?;
        Ok(Some(Written { ident, files, marker, rows: rows as u64 }))
    }

    /// Commits the written files on the table as it is now, its position carried over, unless the chunk's marker
    /// is there already (an earlier attempt landed). A conflict is tried again with the same files (new by
    /// name, holding only this chunk's rows).
    async fn commit(&self, chunk: &DirectChunk, written: &Written) -> Result<(), Attempt> {
        let (run, lane, after) = (chunk.progress.run, chunk.progress.lane, chunk.after.as_deref());
        let started = Instant::now();
        let ident = &written.ident;
        let catalog = &self.catalogs().await?.catalog;
        let _one_at_a_time = self.commits.lock().await;
        let table = catalog.load_unguarded(ident).await?;
        if find_marker(&table, &self.pipeline, run, lane, after).is_some() {
            return Ok(());
        }
        let mut properties = HashMap::from([
            (SUMMARY_PIPELINE.to_string(), self.pipeline.clone()),
            (SUMMARY_SNAPSHOT_CHUNK.to_string(), written.marker.clone()),
        ]);
        if let Some(position) = committed_position(&table, &self.pipeline) {
            properties.insert(SUMMARY_LAST_LSN.to_string(), position.commit_lsn.to_string());
            properties.insert(SUMMARY_LAST_SEQ.to_string(), position.seq.to_string());
        }
        let tx = Transaction::new(&table);
        let append = tx.fast_append().with_check_duplicate(false);
        let tx = append.add_data_files(written.files.clone()).set_snapshot_properties(properties).apply(tx)?;
        catalog.guard(ident, table.metadata().current_snapshot_id());
        let result = tx.commit(catalog.as_ref()).await;
        catalog.unguard(ident);
        result?;
        let attributes = telemetry::table(&chunk.progress.table);
        let metrics = telemetry::metrics();
        metrics.rows_written.add(written.rows, &attributes);
        metrics.files_written.add(written.files.len() as u64, &attributes);
        metrics.snapshots.add(1, &attributes);
        metrics.cdc_batches_written.add(1, &attributes);
        metrics.cdc_events_processed.add(written.rows, &attributes);
        // Not `cdc_commit_to_iceberg_seconds`: a snapshot row was read, not committed, on the source.
        metrics.commit_seconds.record(started.elapsed().as_secs_f64(), &attributes);
        Ok(())
    }

    /// The kept buffer session, connected when there is none.
    async fn buffer_session<'c>(&self, client: &'c mut Option<tokio_postgres::Client>) -> Result<&'c tokio_postgres::Client, Attempt> {
        if client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *client = Some(store::connect(&self.buffer).await.map_err(Attempt::buffer)?);
        }
        client.as_ref().ok_or_else(|| Attempt::Refused("no buffer session".into()))
    }

    /// A failed statement: the session is dropped (the next attempt connects again).
    fn failed(client: &mut Option<tokio_postgres::Client>, error: tokio_postgres::Error) -> Attempt {
        *client = None;
        Attempt::buffer(error)
    }

    /// Every recorded schema version of `table`.
    async fn versions(&self, table: &TableId) -> Result<std::collections::BTreeMap<i32, Arc<TableSchema>>, Attempt> {
        let rows = {
            let mut client = self.client.lock().await;
            let session = self.buffer_session(&mut client).await?;
            let read = schema_store::versions(session, &self.pipeline, &table.schema, &table.name).await;
            read.map_err(|e| Self::failed(&mut client, e))?
        };
        let mut versions = std::collections::BTreeMap::new();
        for row in rows {
            let schema = row
                .schema()
                .map_err(|e| Attempt::Refused(format!("schema version {} of {table} cannot be read: {e}", row.version)))?;
            versions.insert(row.version, Arc::new(schema));
        }
        Ok(versions)
    }
}

#[async_trait::async_trait]
impl ChunkLoad for ChunkLoader {
    /// Whether `table`'s chunks are loaded here (`snapshot.direct`, a changelog table whose chunks were not
    /// refused).
    fn takes(&self, table: &TableId) -> bool {
        self.direct && self.may_hold_markers(table) && self.refused.lock().is_ok_and(|r| !r.contains(table))
    }

    /// Whether `table` can hold chunk markers (a changelog table: a mirror's chunks never come here).
    fn may_hold_markers(&self, table: &TableId) -> bool {
        !(self.target)(table).mirror
    }

    /// Sends `table`'s chunks through the buffer from now on (a chunk of it cannot be written straight into
    /// Iceberg: a value goes to the dead letters, or the table stops, which only the buffer path handles).
    fn refuse(&self, table: &TableId, reason: &str) {
        tracing::warn!(table = %table, reason = %reason,
            "snapshot chunk cannot be written straight into iceberg: the table's chunks go through the buffer");
        if let Ok(mut refused) = self.refused.lock() {
            refused.insert(table.clone());
        }
    }

    /// The progress of `run`'s `lane` chunk read after `after`, if its commit landed in Iceberg (the capture was
    /// killed before the progress moved). `Err`: the catalog could not be read.
    async fn landed(&self, table: &TableId, run: i32, lane: i32, after: Option<&[String]>) -> Result<Option<ChunkProgress>, String> {
        let found = async {
            let ident = self.ident(table);
            let catalog = &self.catalogs().await?.catalog;
            if !catalog.inner().table_exists(&ident).await? {
                return Ok(None);
            }
            let loaded = catalog.load_unguarded(&ident).await?;
            Ok::<_, iceberg::Error>(find_marker(&loaded, &self.pipeline, run, lane, after).and_then(|m| m.progress(table)))
        };
        found.await.map_err(|e| crate::report::catalog_failure(&e))
    }

    /// Loads `chunk` in a task of its own (the stream goes on); the chunk's ack says how it ended.
    fn hand_over(self: Arc<Self>, chunk: DirectChunk) {
        let loader = self.clone();
        let session = self.session.lock().map(|s| s.clone()).unwrap_or_default();
        self.tasks.spawn(async move {
            let fate = match loader.load(&chunk, &session).await {
                Ok(()) => ChunkFate::Durable,
                Err(NotLoaded::Ended) => ChunkFate::Dropped,
                Err(NotLoaded::Refused(reason)) => {
                    loader.refuse(&chunk.progress.table, &reason);
                    ChunkFate::Dropped
                }
            };
            chunk.ack.send(fate);
        });
    }
}

/// The chunk's rows as one batch in the table's current schema (`version` is the rows' schema version under the
/// table's column names), with the flush's builder; a row the builder would reject (a dead letter) refuses the
/// chunk: the buffer path stores dead letters.
fn build(table: &Table, version: &Arc<TableSchema>, rows: &DirectRows, lsn: Lsn) -> Result<arrow::array::RecordBatch, Attempt> {
    let schema = table.metadata().current_schema();
    let refused = |e: crate::changelog::SchemaError| Attempt::Refused(e.to_string());
    let output = match rows {
        DirectRows::Read { table: typed_as, rows, commit_ts } => {
            let mut builder = BatchBuilder::new::<&[_]>(schema, rows.len(), &[]).map_err(refused)?;
            let appended = builder
                .append_reads(schema, version, rows, lsn.as_u64(), *commit_ts, |row, out| read_fields(typed_as, row, out))
                .map_err(refused)?;
            appended.map_err(|reason| Attempt::Refused(format!("a row cannot be written: {reason}")))?;
            builder.finish().map_err(refused)?
        }
        DirectRows::Typed { events, .. } => build_batch(schema, &[(version.clone(), events.as_slice())]).map_err(refused)?,
    };
    if let Some(first) = output.rejected.first() {
        return Err(Attempt::Refused(format!("a row cannot be written: {}", first.reason)));
    }
    Ok(output.batch)
}

/// The loader's catalog connection.
struct Catalogs {
    catalog: Arc<GuardedCatalog>,
    tables: Tables,
}

/// A chunk's files, written and not yet committed.
struct Written {
    ident: TableIdent,
    files: Vec<iceberg::spec::DataFile>,
    marker: String,
    rows: u64,
}

/// How one attempt failed.
enum Attempt {
    /// Not loadable directly.
    Refused(String),
    /// Retried.
    Failed(iceberg::Error),
}

impl Attempt {
    fn buffer(error: tokio_postgres::Error) -> Self {
        Attempt::Failed(iceberg::Error::new(iceberg::ErrorKind::Unexpected, format!("buffer database: {}", crate::report::chain(&error))))
    }
}

impl From<iceberg::Error> for Attempt {
    fn from(error: iceberg::Error) -> Self {
        Attempt::Failed(error)
    }
}

impl From<IcebergCommitError> for Attempt {
    fn from(error: IcebergCommitError) -> Self {
        match error {
            IcebergCommitError::Iceberg(e) => Attempt::Failed(e),
            other => Attempt::Failed(iceberg::Error::new(iceberg::ErrorKind::Unexpected, other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_names_its_chunk_and_gives_back_its_progress() {
        let table = TableId::new("public", "t");
        let progress = ChunkProgress {
            table: table.clone(),
            run: 2,
            lane: 1,
            last_key: Some(vec!["a".into(), "7".into()]),
            rows: 50_000,
            done: false,
            lsn: Lsn(0x16B_3F28),
        };
        let marker = ChunkMarker::of(&progress, Some(vec!["a".into(), "3".into()]));
        let text = serde_json::to_string(&marker).unwrap();
        let back: ChunkMarker = serde_json::from_str(&text).unwrap();
        assert_eq!(back.progress(&table), Some(progress));
        assert!(back.is(2, 1, Some(&["a".to_string(), "3".to_string()])));
        assert!(!back.is(2, 1, None));
        assert!(!back.is(1, 1, Some(&["a".to_string(), "3".to_string()])));
        assert!(!back.is(2, 0, Some(&["a".to_string(), "3".to_string()])));
    }
}
