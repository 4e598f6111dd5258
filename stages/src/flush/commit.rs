//! IcebergCommit: writes a flush's rows as Parquet data files through the `iceberg` crate and commits one
//! snapshot whose summary carries `philotes.pipeline`, `philotes.last-lsn` and `philotes.last-seq`.
//!
//! A flush arrives as parts (keyed mode: all parts of one flush on one worker, in order); each part's rows are
//! written into the flush's open writer as they come, and the last part closes it and commits. Every commit
//! attempt reloads the table and compares its committed position with the flush first, and commits only
//! on exactly that table state ([`super::catalog::GuardedCatalog`]); a conflict or an unreachable catalog is
//! retried with backoff by the engine, each retry starting from that check again. Files written by an attempt
//! that did not commit stay in the warehouse unreferenced (an orphan-file cleanup removes them).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use iceberg::spec::DataFileFormat;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use philotes_engine::{Emitter, Mode, Stage, StageError};

use super::catalog::{committed_position, is_conflict, GuardedCatalog, SUMMARY_LAST_LSN, SUMMARY_LAST_SEQ, SUMMARY_PIPELINE};
use super::batch::{build_part, BatchError};
use super::claim::Prepared;
use super::dictionary;
use super::{Committed, FlushPart, FlushSettings};
use crate::store::dead_letters::DeadLetter;
use crate::arrow_batch::{LSN, SEQ};
use crate::fault;
use crate::position::Position;
use crate::telemetry;

/// The stage's name in metrics, spans and YAML (`stages.iceberg_commit`).
pub const NAME: &str = "iceberg_commit";

static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Encoded bytes per Parquet row group at most (Java's `parquet.block.size` is 128 MiB too): the writer keeps
/// the row group it is filling in memory, so this bounds its memory on wide tables; narrow tables still get
/// the parquet crate's 1M-row groups (fewer, bigger groups: less dictionary work per row).
const ROW_GROUP_BYTES: usize = 128 * 1024 * 1024;
const ROW_GROUP_ROWS: usize = 2 * super::claim::PART_EVENTS;

/// Why a commit attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The catalog, the warehouse or a concurrent commit got in the way (retried).
    #[error("iceberg_commit: {0}")]
    Iceberg(#[from] iceberg::Error),
    /// Arrow could not filter the batch.
    #[error("iceberg_commit: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The batch lacks the position columns.
    #[error("iceberg_commit: the batch has no {0} column")]
    MissingColumn(&'static str),
    /// Writing the flush again from the buffer failed.
    #[error("iceberg_commit: {0}")]
    Rebuild(#[from] BatchError),
}

impl CommitError {
    /// Whether the buffer connection was lost (the flusher restarts).
    pub fn is_connection(&self) -> bool {
        matches!(self, CommitError::Rebuild(e) if e.is_connection())
    }
}

/// The IcebergCommit stage.
pub struct IcebergCommit {
    committer: Committer,
    /// Flushes whose last part has not arrived yet, by claim id (keyed mode brings all parts of a flush here).
    open: HashMap<u64, Pending>,
}

/// What writes and commits (apart from the open flushes, which hold writers that are not `Sync`).
struct Committer {
    pipeline: String,
    catalog: Arc<GuardedCatalog>,
    target_file_size: usize,
}

/// A flush being written.
#[derive(Default)]
struct Pending {
    /// Parts recorded so far (a retried part is not recorded twice).
    received: usize,
    /// The parts' dead letters.
    rejected: Vec<DeadLetter>,
    /// Set by the first stopped part: the flush stops the table.
    stopped: Option<String>,
    /// The Parquet files being written as parts arrive.
    writer: Writer,
}

/// The Parquet writing of a flush ahead of its commit.
#[derive(Default)]
enum Writer {
    /// No part written yet.
    #[default]
    NotStarted,
    /// Parts go into this writer.
    Writing(Box<OpenWriter>),
    /// Writing ahead failed or was pointless (Iceberg already had the flush): the commit decides, and writes
    /// the flush again from the buffer if it must (the lease still holds its segments).
    Unusable,
}

/// A writer opened on one table state, writing only the rows after that state's committed position.
struct OpenWriter {
    table: Table,
    after: Option<Position>,
    writer: Box<dyn IcebergWriter>,
    rows: u64,
}

impl IcebergCommit {
    /// A stage for the flusher of `settings`.
    pub fn new(settings: &FlushSettings, catalog: Arc<GuardedCatalog>) -> Self {
        let committer =
            Committer { pipeline: settings.pipeline.clone(), catalog, target_file_size: settings.target_file_size };
        Self { committer, open: HashMap::new() }
    }
}

impl Committer {
    /// Records a part; its rows are written at once, so the Parquet encoding of this part overlaps with
    /// ArrowBatch building the next ones. A write that fails here is redone at the commit.
    async fn record(&self, pending: &mut Pending, part: &FlushPart) {
        if part.index < pending.received {
            return; // a retry of a part already recorded
        }
        pending.received = part.index + 1;
        pending.rejected.extend(part.rejected.iter().cloned());
        if pending.stopped.is_none() {
            pending.stopped.clone_from(&part.stopped);
        }
        let (None, Some(batch)) = (&pending.stopped, &part.batch) else { return };
        let started = std::time::Instant::now();
        let written = self.write_ahead(&mut pending.writer, part, batch).await;
        tracing::debug!(flush = part.claim.id, part = part.index, rows = batch.num_rows(),
            write_ms = started.elapsed().as_millis() as u64, "part written");
        if let Err(e) = written {
            tracing::warn!(table = %part.table, error = %crate::report::chain(&e), "writing parquet ahead of the commit failed; the commit writes again");
            pending.writer = Writer::Unusable;
        }
    }

    async fn write_ahead(&self, state: &mut Writer, part: &FlushPart, batch: &RecordBatch) -> Result<(), CommitError> {
        if let Writer::NotStarted = state {
            // The table as ArrowBatch loaded it for this flush (no second catalog round trip); the commit
            // reloads and checks it anyway. A part has rows only once its table is ready, so it is there.
            let Some(Prepared::Ready { table, committed }) = part.claim.prepared.get() else {
                *state = Writer::Unusable;
                return Ok(());
            };
            let (table, after) = ((**table).clone(), *committed);
            *state = if after.is_some_and(|c| c >= part.claim.last) {
                Writer::Unusable
            } else {
                let writer = self.writer(&table, batch).await?;
                Writer::Writing(Box::new(OpenWriter { table, after, writer, rows: 0 }))
            };
        }
        if let Writer::Writing(open) = state {
            let rows = rows_after(batch, open.after)?;
            if rows.num_rows() > 0 {
                open.rows += rows.num_rows() as u64;
                open.writer.write(rows).await?;
            }
        }
        Ok(())
    }

    /// Commits the flush once its last part is recorded; returns the table's position afterwards.
    async fn commit(&self, part: &FlushPart, pending: &mut Pending) -> Result<Position, CommitError> {
        let last = part.claim.last;
        let table = self.catalog.load_unguarded(&part.table).await?;
        let committed = committed_position(&table, &self.pipeline);
        if let Some(c) = committed.filter(|c| *c >= last) {
            // An earlier attempt (or a racing flusher) committed it: nothing more to write.
            pending.writer = Writer::Unusable;
            return Ok(c);
        }
        let started = std::time::Instant::now();
        // The files written ahead are used only if they were filtered against exactly this table state.
        let (files, row_count) = match std::mem::replace(&mut pending.writer, Writer::Unusable) {
            Writer::Writing(mut open)
                if open.after == committed
                    && open.table.metadata().current_snapshot_id() == table.metadata().current_snapshot_id() =>
            {
                let files = open.writer.close().await?;
                tracing::debug!(flush = part.claim.id, close_ms = started.elapsed().as_millis() as u64, "writer closed");
                (files, open.rows)
            }
            _ => {
                // Written again from the buffer, part by part (rare: a failed write or a table that moved).
                tracing::info!(table = %part.table, "writing the flush again from the buffer");
                let schema = table.metadata().current_schema();
                let mut writer = None;
                let mut rows = 0u64;
                for range in &part.claim.parts {
                    let built = build_part(&part.claim, &part.claim.segments[range.clone()], schema, committed).await?;
                    if let Some(batch) = built.batch {
                        rows += batch.num_rows() as u64;
                        let writer = match &mut writer {
                            Some(writer) => writer,
                            None => writer.insert(self.writer(&table, &batch).await?),
                        };
                        writer.write(batch).await?;
                    }
                }
                match writer {
                    Some(mut writer) => (writer.close().await?, rows),
                    None => (Vec::new(), 0),
                }
            }
        };
        if row_count == 0 {
            return Ok(last);
        }
        let file_count = files.len() as u64;
        fault::hit(fault::AFTER_PARQUET);
        let properties = HashMap::from([
            (SUMMARY_PIPELINE.to_string(), self.pipeline.clone()),
            (SUMMARY_LAST_LSN.to_string(), last.commit_lsn.to_string()),
            (SUMMARY_LAST_SEQ.to_string(), last.seq.to_string()),
        ]);
        let tx = Transaction::new(&table);
        let tx = tx.fast_append().add_data_files(files).set_snapshot_properties(properties).apply(tx)?;
        self.catalog.guard(&part.table, table.metadata().current_snapshot_id());
        fault::delay_before_commit(&part.table.to_string()).await;
        let result = tx.commit(self.catalog.as_ref()).await;
        self.catalog.unguard(&part.table);
        result?;
        fault::hit(fault::AFTER_ICEBERG_COMMIT);
        tracing::debug!(flush = part.claim.id, rows = row_count, files = file_count,
            close_and_commit_ms = started.elapsed().as_millis() as u64, "flush committed");
        let lease = &part.claim.lease.lease;
        let attributes = telemetry::table(&lease.source_schema, &lease.source_table);
        let metrics = telemetry::metrics();
        metrics.rows_written.add(row_count, &attributes);
        metrics.files_written.add(file_count, &attributes);
        metrics.snapshots.add(1, &attributes);
        metrics.commit_seconds.record(started.elapsed().as_secs_f64(), &attributes);
        Ok(last)
    }

    /// A Parquet data-file writer for `table` (zstd, rolling at the target file size); `first` (the flush's
    /// first rows) tells which columns are not worth a dictionary.
    async fn writer(&self, table: &Table, first: &RecordBatch) -> Result<Box<dyn IcebergWriter>, CommitError> {
        let mut properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
        for column in dictionary::unique_columns(first) {
            properties = properties.set_column_dictionary_enabled(ColumnPath::new(vec![column]), false);
        }
        let properties = properties.build();
        let parquet = ParquetWriterBuilder::new(properties, table.metadata().current_schema().clone());
        let locations = DefaultLocationGenerator::new(table.metadata())?;
        let names = DefaultFileNameGenerator::new(
            format!("philotes-{}-{}-{}", self.pipeline, std::process::id(), FILE_COUNTER.fetch_add(1, Ordering::Relaxed)),
            None,
            DataFileFormat::Parquet,
        );
        let rolling =
            RollingFileWriterBuilder::new(parquet, self.target_file_size, table.file_io().clone(), locations, names);
        Ok(Box::new(DataFileWriterBuilder::new(rolling).build(None).await?))
    }
}

/// The rows of `batch` after `position` (by the `_lsn`/`_seq` columns); all of them when `position` is `None`.
fn rows_after(batch: &RecordBatch, position: Option<Position>) -> Result<RecordBatch, CommitError> {
    let Some(position) = position else { return Ok(batch.clone()) };
    let column = |name: &'static str| -> Result<Int64Array, CommitError> {
        let index = batch.schema().index_of(name).map_err(|_| CommitError::MissingColumn(name))?;
        batch.column(index).as_any().downcast_ref::<Int64Array>().cloned().ok_or(CommitError::MissingColumn(name))
    };
    let (lsn, seq) = (column(LSN)?, column(SEQ)?);
    let after = |i: usize| Position::new(crate::position::Lsn(lsn.value(i) as u64), seq.value(i) as u64) > position;
    if (0..batch.num_rows()).all(after) {
        return Ok(batch.clone()); // the usual case: a flush starts after the last one
    }
    let keep: BooleanArray = (0..batch.num_rows()).map(|i| Some(after(i))).collect();
    Ok(arrow::compute::filter_record_batch(batch, &keep)?)
}

impl Stage for IcebergCommit {
    type In = FlushPart;
    type Out = Committed;

    fn mode(&self) -> Mode {
        Mode::Keyed
    }

    fn key(part: &FlushPart) -> u64 {
        part.claim.id
    }

    async fn process(&mut self, part: &FlushPart, out: &mut Emitter<Committed>) -> Result<(), StageError> {
        let id = part.claim.id;
        let mut pending = self.open.remove(&id).unwrap_or_default();
        self.committer.record(&mut pending, part).await;
        if !part.last {
            self.open.insert(id, pending);
            return Ok(());
        }
        let result = match &pending.stopped {
            Some(_) => Ok(part.claim.last),
            None => self.committer.commit(part, &mut pending).await,
        };
        let position = match result {
            Ok(position) => position,
            Err(e) => {
                self.open.insert(id, pending);
                return Err(match e {
                    CommitError::Iceberg(e) => {
                        if is_conflict(&e) {
                            tracing::info!(table = %part.table, error = %crate::report::chain(&e), "commit conflict; checking the table again");
                        } else {
                            let lease = &part.claim.lease;
                            let failure = format!(
                                "committing to iceberg table {} (source {}.{}): {}",
                                part.table, lease.lease.source_schema, lease.lease.source_table, crate::report::chain(&e)
                            );
                            tracing::warn!(error = %failure,
                                "iceberg catalog or warehouse unavailable; retrying with backoff (the buffer keeps the changes)");
                            lease.record_failure(&failure).await;
                        }
                        StageError::retryable(CommitError::Iceberg(e))
                    }
                    e => StageError::fatal(e),
                });
            }
        };
        out.emit(Committed {
            lease: part.claim.lease.clone(),
            segment_ids: part.claim.segments.iter().map(|s| s.id).collect(),
            position,
            rejected: pending.rejected,
            stopped: pending.stopped,
        });
        Ok(())
    }
}
