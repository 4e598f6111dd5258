//! IcebergCommit: writes a flush job's rows as Parquet data files through the `iceberg` crate and commits one
//! snapshot whose summary carries `philotes.pipeline`, `philotes.last-lsn` and `philotes.last-seq`.
//!
//! A job arrives as built slices (keyed mode: all slices of one job on one worker, in order); each slice's rows
//! are written into the job's open writer as they come, and the last slice closes it and commits. Every commit
//! attempt reloads the table and compares its committed position with the job first, and commits only on
//! exactly that table state ([`crate::catalog::GuardedCatalog`]); a conflict or an unreachable catalog is
//! retried with backoff by the engine, each retry starting from that check again. A job whose files written
//! ahead cannot be used is written again from the buffer ([`FlushJob::build`]: the lease holds its segments).
//! Files written by an attempt that did not commit stay in the warehouse unreferenced (an orphan-file cleanup
//! removes them).
//!
//! A mirror table's job (`mode: mirror`) is kept slice by slice and committed at its end as one row delta
//! (`mirror.rs`): folded per key, data files plus equality-delete files, through the commit of our own
//! (`row_delta`), since the crate cannot commit delete files.

mod dictionary;
mod mirror;
pub mod row_delta;
pub(crate) mod writer;

pub use mirror::CommitCatalog;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::IcebergWriter;
use philotes_engine::{Emitter, Mode, Stage, StageError};

use crate::catalog::table::Prepared;
use crate::catalog::{
    committed_position, has_retry, is_conflict, GuardedCatalog, SUMMARY_LAST_LSN, SUMMARY_LAST_SEQ, SUMMARY_PIPELINE, SUMMARY_RETRY,
};
use crate::claim::job::{BuiltSlice, Committed, FlushJob, Outcome, SliceRows};
use crate::fault;
use crate::position::Position;
use crate::store::dead_letters::DeadLetter;
use crate::telemetry::{self, CommitTimes};

/// The stage's name in metrics, spans and YAML (`stages.iceberg_commit`).
pub const NAME: &str = "iceberg_commit";

/// Why a commit attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum IcebergCommitError {
    /// The catalog, the warehouse or a concurrent commit got in the way (retried).
    #[error("iceberg_commit: {0}")]
    Iceberg(#[from] iceberg::Error),
    /// Arrow could not filter the batch.
    #[error("iceberg_commit: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The batch lacks the position columns.
    #[error("iceberg_commit: the batch has no {0} column")]
    MissingColumn(&'static str),
    /// Building the job again from the buffer failed (already classified by the builder).
    #[error(transparent)]
    Rebuild(StageError),
    /// A mirror flush's row delta failed (a stale base is a conflict: retried).
    #[error("iceberg_commit: {0}")]
    RowDelta(#[from] row_delta::RowDeltaError),
    /// A mirror flush's unchanged TOAST values could not be filled.
    #[error("iceberg_commit: {0}")]
    Fill(#[from] crate::mirror::toast::FillError),
    /// The SQL catalog's database could not be reached for a row delta's compare-and-set.
    #[error("iceberg_commit: SQL catalog database: {0}")]
    CatalogDatabase(tokio_postgres::Error),
}

impl IcebergCommitError {
    /// Whether another commit landed first (retried at once, logged without alarm).
    pub(crate) fn is_conflict(&self) -> bool {
        match self {
            IcebergCommitError::Iceberg(e) => is_conflict(e),
            IcebergCommitError::RowDelta(e) => matches!(e, row_delta::RowDeltaError::StaleBase { .. }),
            _ => false,
        }
    }

    /// Whether the catalog or the warehouse failed (retried with backoff, recorded for `philotes status`).
    fn is_unavailable(&self) -> bool {
        use crate::mirror::toast::FillError;
        use row_delta::RowDeltaError;
        matches!(
            self,
            IcebergCommitError::Iceberg(_)
                | IcebergCommitError::CatalogDatabase(_)
                | IcebergCommitError::RowDelta(RowDeltaError::Iceberg(_) | RowDeltaError::Catalog { .. } | RowDeltaError::Rest { .. })
                | IcebergCommitError::Fill(FillError::Iceberg(_))
        )
    }
}

/// The snapshot summary of a job's commit: the pipeline and the table's position afterwards (the job's last
/// change); for a retry, its token and the position the table had (a retry's changes are behind it, and the
/// position must stay what the normal flushes check).
fn summary(pipeline: &str, job: &FlushJob, committed: Option<Position>) -> HashMap<String, String> {
    let mut properties = HashMap::from([(SUMMARY_PIPELINE.to_string(), pipeline.to_string())]);
    let position = match &job.retry {
        Some(token) => {
            properties.insert(SUMMARY_RETRY.to_string(), token.clone());
            committed
        }
        None => Some(job.last),
    };
    if let Some(p) = position {
        properties.insert(SUMMARY_LAST_LSN.to_string(), p.commit_lsn.to_string());
        properties.insert(SUMMARY_LAST_SEQ.to_string(), p.seq.to_string());
    }
    properties
}

/// The IcebergCommit stage.
pub struct IcebergCommit {
    committer: Committer,
    /// Jobs whose last slice has not arrived yet, by job id (keyed mode brings all slices of a job here).
    open: HashMap<u64, Pending>,
}

/// What writes and commits (apart from the open jobs, which hold writers that are not `Sync`).
struct Committer {
    pipeline: String,
    catalog: Arc<GuardedCatalog>,
    target_file_size: usize,
    /// Where mirror flushes commit their row deltas.
    commit_catalog: Arc<CommitCatalog>,
}

/// A job being written.
#[derive(Default)]
struct Pending {
    /// Slices recorded so far (a retried slice is not recorded twice).
    received: usize,
    /// The slices' dead letters.
    rejected: Vec<DeadLetter>,
    /// Set by the first stopped slice: the job stops the table.
    stopped: Option<String>,
    /// The Parquet files being written as slices arrive.
    writer: Writer,
    /// A mirror flush's slices, kept for the commit.
    mirror: Option<mirror::MirrorSlices>,
}

/// The Parquet writing of a job ahead of its commit.
#[derive(Default)]
enum Writer {
    /// No slice written yet.
    #[default]
    NotStarted,
    /// Slices go into this writer.
    Writing(Box<OpenWriter>),
    /// Closed by a commit attempt that did not land (a conflict): the next attempt commits the same files if the
    /// table still takes them as they are.
    Closed(Box<ClosedFiles>),
    /// Writing ahead failed or was pointless (Iceberg already had the job): the commit decides, and writes the
    /// job again from the buffer if it must.
    Unusable,
}

/// What files written for a table rely on: the committed position whose later rows they hold, and the schema
/// and partition spec they were written in. Files written on one table state are committed on another with the
/// same of these (a snapshot chunk committed meanwhile moves neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WrittenFor {
    after: Option<Position>,
    schema_id: i32,
    spec_id: i32,
}

impl WrittenFor {
    fn of(table: &Table, after: Option<Position>) -> Self {
        let metadata = table.metadata();
        Self { after, schema_id: metadata.current_schema_id(), spec_id: metadata.default_partition_spec_id() }
    }
}

/// A job's files closed by a commit attempt that did not land.
struct ClosedFiles {
    written_for: WrittenFor,
    files: Vec<iceberg::spec::DataFile>,
    rows: u64,
    times: CommitTimes,
}

/// A writer opened on one table state, writing only the rows after that state's committed position.
struct OpenWriter {
    table: Table,
    after: Option<Position>,
    writer: Box<dyn IcebergWriter>,
    rows: u64,
    /// The source commit times of the rows written (for the commit-to-Iceberg histogram).
    times: CommitTimes,
}

impl IcebergCommit {
    /// A stage writing for `pipeline` into `catalog`, rolling files at `target_file_size`; mirror tables commit
    /// through `commit_catalog`.
    pub fn new(
        pipeline: &str,
        catalog: Arc<GuardedCatalog>,
        target_file_size: usize,
        commit_catalog: Arc<CommitCatalog>,
    ) -> Self {
        let committer = Committer { pipeline: pipeline.to_string(), catalog, target_file_size, commit_catalog };
        Self { committer, open: HashMap::new() }
    }
}

impl Committer {
    /// Records a slice; its rows are written at once, so the Parquet encoding of this slice overlaps with
    /// ArrowBatch building the next ones. A write that fails here is redone at the commit.
    async fn record(&self, pending: &mut Pending, built: &BuiltSlice) {
        let index = built.slice.index;
        if index < pending.received {
            return; // a retry of a slice already recorded
        }
        pending.received = index + 1;
        let batch = match &built.rows {
            SliceRows::Stop(reason) => {
                pending.stopped.get_or_insert_with(|| reason.clone());
                return;
            }
            SliceRows::Write { batch, rejected } => {
                pending.rejected.extend(rejected.iter().cloned());
                batch
            }
        };
        let (None, Some(batch)) = (&pending.stopped, batch) else { return };
        let job = &built.slice.job;
        if job.mirror {
            mirror::keep(pending, job, batch).await;
            return;
        }
        let started = std::time::Instant::now();
        let written = self.write_ahead(&mut pending.writer, job, batch).await;
        tracing::debug!(flush = job.id, slice = index, rows = batch.num_rows(),
            write_ms = started.elapsed().as_millis() as u64, "slice written");
        if let Err(e) = written {
            tracing::warn!(table = %job.target, error = %crate::report::chain(&e), "writing parquet ahead of the commit failed; the commit writes again");
            pending.writer = Writer::Unusable;
        }
    }

    async fn write_ahead(&self, state: &mut Writer, job: &FlushJob, batch: &RecordBatch) -> Result<(), IcebergCommitError> {
        if let Writer::NotStarted = state {
            // The table as the job prepared it (no second catalog round trip); the commit reloads and checks it
            // anyway. A slice has rows only once its table is ready, so it is there.
            let Ok(Prepared::Ready { table, committed, .. }) = job.prepared().await else {
                *state = Writer::Unusable;
                return Ok(());
            };
            let (table, after) = ((**table).clone(), job.filter(*committed));
            *state = if after.is_some_and(|c| c >= job.last) {
                Writer::Unusable
            } else {
                let writer = writer::open(&self.pipeline, &table, batch, self.target_file_size).await?;
                Writer::Writing(Box::new(OpenWriter { table, after, writer, rows: 0, times: CommitTimes::default() }))
            };
        }
        if let Writer::Writing(open) = state {
            let rows = writer::rows_after(batch, open.after)?;
            if rows.num_rows() > 0 {
                open.rows += rows.num_rows() as u64;
                open.times.add(&rows);
                open.writer.write(rows).await?;
            }
        }
        Ok(())
    }

    /// Commits the job once its last slice is recorded; returns the table's position afterwards, or the reason
    /// the table stops (found while writing the job again).
    async fn commit(&self, job: &FlushJob, pending: &mut Pending) -> Result<Outcome, IcebergCommitError> {
        let last = job.last;
        let table = self.catalog.load_unguarded(&job.target).await?;
        let committed = committed_position(&table, &self.pipeline);
        // The table's position after this flush: its last change, or for a retry the position it has (a retry
        // does not move it; the checkpoint leaves the watermark alone).
        let after = match &job.retry {
            Some(_) => committed.unwrap_or(last),
            None => last,
        };
        if let Some(token) = &job.retry {
            if has_retry(&table, &self.pipeline, token) {
                // An earlier attempt committed this retry and crashed before its checkpoint: only checkpoint it.
                tracing::info!(table = %job.target, retry = %token, "the retried changes are already in iceberg: not writing them again");
                pending.writer = Writer::Unusable;
                return Ok(self.written(after, pending));
            }
        } else if let Some(c) = committed.filter(|c| *c >= last) {
            // An earlier attempt (or a racing flusher) committed it: nothing more to write.
            pending.writer = Writer::Unusable;
            return Ok(self.written(c, pending));
        }
        if job.mirror {
            return self.commit_mirror(job, pending, table, committed).await;
        }
        let started = std::time::Instant::now();
        // The files written ahead are used only if they were filtered against this table's committed position and
        // written in its schema and spec (a snapshot chunk committed meanwhile changes none of them).
        let written_for = WrittenFor::of(&table, job.filter(committed));
        let (files, row_count, times) = match std::mem::replace(&mut pending.writer, Writer::Unusable) {
            Writer::Writing(mut open) if WrittenFor::of(&open.table, open.after) == written_for => {
                let files = open.writer.close().await?;
                tracing::debug!(flush = job.id, close_ms = started.elapsed().as_millis() as u64, "writer closed");
                (files, open.rows, open.times)
            }
            Writer::Closed(closed) if closed.written_for == written_for => (closed.files, closed.rows, closed.times),
            _ => {
                // Written again from the buffer, slice by slice (rare: a failed write or a table that moved).
                tracing::info!(table = %job.target, "writing the flush again from the buffer");
                let schema = table.metadata().current_schema();
                let mut writer: Option<Box<dyn IcebergWriter>> = None;
                let mut rows = 0u64;
                let mut times = CommitTimes::default();
                for index in 0..job.slices.len() {
                    let batch = match job.build(index, schema, job.filter(committed)).await.map_err(IcebergCommitError::Rebuild)? {
                        SliceRows::Stop(reason) => return Ok(Outcome::Stopped(reason)),
                        SliceRows::Write { batch, .. } => batch,
                    };
                    if let Some(batch) = batch {
                        rows += batch.num_rows() as u64;
                        times.add(&batch);
                        let writer = match &mut writer {
                            Some(writer) => writer,
                            None => writer.insert(
                                writer::open(&self.pipeline, &table, &batch, self.target_file_size).await?,
                            ),
                        };
                        writer.write(batch).await?;
                    }
                }
                match writer {
                    Some(mut writer) => (writer.close().await?, rows, times),
                    None => (Vec::new(), 0, times),
                }
            }
        };
        if row_count == 0 {
            return Ok(self.written(after, pending));
        }
        let file_count = files.len() as u64;
        fault::hit(fault::AFTER_PARQUET);
        let properties = summary(&self.pipeline, job, committed);
        let tx = Transaction::new(&table);
        // No duplicate check: it reads every manifest of the table (one more per commit, so each commit got slower
        // than the last), and our files are new by name (`philotes-{pipeline}-{uuid}…`, a retried flush writes new
        // ones), so it can find nothing.
        let append = tx.fast_append().with_check_duplicate(false);
        let tx = append.add_data_files(files.clone()).set_snapshot_properties(properties).apply(tx)?;
        self.catalog.guard(&job.target, table.metadata().current_snapshot_id());
        fault::delay_before_commit(&job.target.to_string()).await;
        let result = tx.commit(self.catalog.as_ref()).await;
        self.catalog.unguard(&job.target);
        if let Err(e) = result {
            // Kept for the next attempt (a conflict is retried at once): written again only if the table moved.
            pending.writer = Writer::Closed(Box::new(ClosedFiles { written_for, files, rows: row_count, times }));
            return Err(e.into());
        }
        fault::hit(fault::AFTER_ICEBERG_COMMIT);
        tracing::debug!(flush = job.id, rows = row_count, files = file_count,
            close_and_commit_ms = started.elapsed().as_millis() as u64, "flush committed");
        let attributes = telemetry::table(job.table());
        let metrics = telemetry::metrics();
        metrics.rows_written.add(row_count, &attributes);
        metrics.files_written.add(file_count, &attributes);
        metrics.snapshots.add(1, &attributes);
        metrics.commit_seconds.record(started.elapsed().as_secs_f64(), &attributes);
        metrics.cdc_events_processed.add(row_count, &attributes);
        metrics.cdc_batches_written.add(1, &attributes);
        // A retried change's commit time is as old as its dead letter: not a latency of the pipeline.
        if job.retry.is_none() {
            times.record(&attributes);
        }
        Ok(self.written(after, pending))
    }

    fn written(&self, position: Position, pending: &mut Pending) -> Outcome {
        Outcome::Written { position, rejected: std::mem::take(&mut pending.rejected) }
    }

    /// A catalog or warehouse failure is retried with backoff: a conflict (another commit landed first) is only
    /// logged, anything else is also recorded for `philotes status`.
    async fn stage_error(&self, job: &FlushJob, e: IcebergCommitError) -> StageError {
        if e.is_conflict() {
            tracing::info!(table = %job.target, error = %crate::report::chain(&e), "commit conflict; checking the table again");
            return StageError::retryable(e);
        }
        if e.is_unavailable() {
            let failure =
                format!("committing to iceberg table {} (source {}): {}", job.target, job.table(), crate::report::catalog_failure(&e));
            tracing::warn!(error = %failure,
                "iceberg catalog or warehouse unavailable; retrying with backoff (the buffer keeps the changes)");
            job.record_failure(&failure).await;
            return StageError::retryable(e);
        }
        match e {
            IcebergCommitError::Rebuild(e) => e,
            e => StageError::fatal(e),
        }
    }
}

impl Stage for IcebergCommit {
    type In = BuiltSlice;
    type Out = Committed;

    fn mode(&self) -> Mode {
        Mode::Keyed
    }

    fn key(built: &BuiltSlice) -> u64 {
        built.slice.job.id
    }

    fn parent_span(built: &BuiltSlice) -> Option<&tracing::Span> {
        Some(&built.slice.job.span)
    }

    async fn process(&mut self, built: &BuiltSlice, out: &mut Emitter<Committed>) -> Result<(), StageError> {
        let job = &built.slice.job;
        let mut pending = self.open.remove(&job.id).unwrap_or_default();
        self.committer.record(&mut pending, built).await;
        if !built.slice.is_last() {
            self.open.insert(job.id, pending);
            return Ok(());
        }
        let outcome = match pending.stopped.take() {
            Some(reason) => Outcome::Stopped(reason),
            None => match self.committer.commit(job, &mut pending).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    self.open.insert(job.id, pending);
                    return Err(self.committer.stage_error(job, e).await);
                }
            },
        };
        out.emit(Committed { job: job.clone(), outcome });
        Ok(())
    }
}
