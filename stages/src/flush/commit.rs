//! IcebergCommit: writes a flush's rows as Parquet data files through the `iceberg` crate and commits one
//! snapshot whose summary carries `philotes.pipeline`, `philotes.last-lsn` and `philotes.last-seq`.
//!
//! Every attempt reloads the table and compares its committed position with the flush first, and commits only
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
use philotes_engine::{Emitter, Stage, StageError};

use super::catalog::{committed_position, is_conflict, GuardedCatalog, SUMMARY_LAST_LSN, SUMMARY_LAST_SEQ, SUMMARY_PIPELINE};
use super::{Committed, Flush, FlushSettings};
use crate::arrow_batch::{LSN, SEQ};
use crate::fault;
use crate::position::Position;
use crate::telemetry;

/// The stage's name in metrics, spans and YAML (`stages.iceberg_commit`).
pub const NAME: &str = "iceberg_commit";

static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

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
}

/// The IcebergCommit stage.
pub struct IcebergCommit {
    pipeline: String,
    catalog: Arc<GuardedCatalog>,
    target_file_size: usize,
}

impl IcebergCommit {
    /// A stage for the flusher of `settings`.
    pub fn new(settings: &FlushSettings, catalog: Arc<GuardedCatalog>) -> Self {
        Self { pipeline: settings.pipeline.clone(), catalog, target_file_size: settings.target_file_size }
    }

    async fn commit(&self, flush: &Flush, batch: &RecordBatch) -> Result<Position, CommitError> {
        let table = self.catalog.load_unguarded(&flush.table).await?;
        let committed = committed_position(&table, &self.pipeline);
        if committed.is_some_and(|c| c >= flush.last) {
            // An earlier attempt (or a racing flusher) committed it: nothing more to write.
            return Ok(committed.unwrap_or(flush.last));
        }
        let rows = match committed {
            Some(c) => after_position(batch, c)?,
            None => batch.clone(),
        };
        if rows.num_rows() > 0 {
            let started = std::time::Instant::now();
            let row_count = rows.num_rows() as u64;
            let files = self.write(&table, rows).await?;
            let file_count = files.len() as u64;
            fault::hit(fault::AFTER_PARQUET);
            let properties = HashMap::from([
                (SUMMARY_PIPELINE.to_string(), self.pipeline.clone()),
                (SUMMARY_LAST_LSN.to_string(), flush.last.commit_lsn.to_string()),
                (SUMMARY_LAST_SEQ.to_string(), flush.last.seq.to_string()),
            ]);
            let tx = Transaction::new(&table);
            let tx = tx.fast_append().add_data_files(files).set_snapshot_properties(properties).apply(tx)?;
            self.catalog.guard(&flush.table, table.metadata().current_snapshot_id());
            fault::delay_before_commit(&flush.table.to_string()).await;
            let result = tx.commit(self.catalog.as_ref()).await;
            self.catalog.unguard(&flush.table);
            result?;
            fault::hit(fault::AFTER_ICEBERG_COMMIT);
            let lease = &flush.lease.lease;
            let attributes = telemetry::table(&lease.source_schema, &lease.source_table);
            let metrics = telemetry::metrics();
            metrics.rows_written.add(row_count, &attributes);
            metrics.files_written.add(file_count, &attributes);
            metrics.snapshots.add(1, &attributes);
            metrics.commit_seconds.record(started.elapsed().as_secs_f64(), &attributes);
        }
        Ok(flush.last)
    }

    async fn write(&self, table: &Table, rows: RecordBatch) -> Result<Vec<iceberg::spec::DataFile>, CommitError> {
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
            .build();
        let parquet = ParquetWriterBuilder::new(properties, table.metadata().current_schema().clone());
        let locations = DefaultLocationGenerator::new(table.metadata())?;
        let names = DefaultFileNameGenerator::new(
            format!("philotes-{}-{}-{}", self.pipeline, std::process::id(), FILE_COUNTER.fetch_add(1, Ordering::Relaxed)),
            None,
            DataFileFormat::Parquet,
        );
        let rolling =
            RollingFileWriterBuilder::new(parquet, self.target_file_size, table.file_io().clone(), locations, names);
        let mut writer = DataFileWriterBuilder::new(rolling).build(None).await?;
        writer.write(rows).await?;
        Ok(writer.close().await?)
    }
}

/// The rows of `batch` after `position` (by the `_lsn`/`_seq` columns).
fn after_position(batch: &RecordBatch, position: Position) -> Result<RecordBatch, CommitError> {
    let column = |name: &'static str| -> Result<Int64Array, CommitError> {
        let index = batch.schema().index_of(name).map_err(|_| CommitError::MissingColumn(name))?;
        batch.column(index).as_any().downcast_ref::<Int64Array>().cloned().ok_or(CommitError::MissingColumn(name))
    };
    let (lsn, seq) = (column(LSN)?, column(SEQ)?);
    let keep: BooleanArray = (0..batch.num_rows())
        .map(|i| {
            let p = Position::new(crate::position::Lsn(lsn.value(i) as u64), seq.value(i) as u64);
            Some(p > position)
        })
        .collect();
    Ok(arrow::compute::filter_record_batch(batch, &keep)?)
}

impl Stage for IcebergCommit {
    type In = Flush;
    type Out = Committed;

    async fn process(&mut self, flush: &Flush, out: &mut Emitter<Committed>) -> Result<(), StageError> {
        let position = match (&flush.stopped, &flush.batch) {
            (Some(_), _) => flush.last,
            (None, None) => flush.last,
            (None, Some(batch)) => match self.commit(flush, batch).await {
                Ok(position) => position,
                Err(CommitError::Iceberg(e)) => {
                    if is_conflict(&e) {
                        tracing::info!(table = %flush.table, error = %e, "commit conflict; checking the table again");
                    } else {
                        tracing::warn!(table = %flush.table, error = %e,
                            "iceberg catalog or warehouse unavailable; retrying with backoff (the buffer keeps the changes)");
                    }
                    return Err(StageError::retryable(CommitError::Iceberg(e)));
                }
                Err(e) => return Err(StageError::fatal(e)),
            },
        };
        out.emit(Committed {
            lease: flush.lease.clone(),
            segment_ids: flush.segment_ids.clone(),
            position,
            rejected: flush.rejected.clone(),
            stopped: flush.stopped.clone(),
        });
        Ok(())
    }
}
