//! Compaction: a table's current rows, its delete files applied, rewritten into new data files of the flush's
//! target size, committed as one `replace` snapshot that removes every live data and delete file of the state
//! it read ([`row_delta::stage_rewrite`]).
//!
//! The rows are read with the iceberg crate's scan (it applies equality and position deletes) and streamed into
//! the flush's writer, so memory stays at a few batches whatever the table's size. The snapshot carries the
//! position its base had (`philotes.pipeline`, `philotes.last-lsn`, `philotes.last-seq`): once older snapshots
//! are expired, it may be the only one left to tell the flush what Iceberg already holds.
//!
//! The commit is a compare-and-set on the state that was read. When another commit landed meanwhile (a flush
//! without a lease, another compaction), nothing of the attempt is visible: its files are deleted (no reader can
//! know them) and the compaction starts again from the new state, at most [`MAX_ATTEMPTS`] times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{new_null_array, Array, ArrayRef, RecordBatch};
use arrow::datatypes::{Schema as ArrowSchema, SchemaRef};
use futures::future::BoxFuture;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::DataFile;
use iceberg::table::Table;
use iceberg::writer::IcebergWriter;
use iceberg::TableIdent;
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;

use super::{human_bytes, plural, FileCounts, MaintenanceCatalog, MaintenanceError, MAX_ATTEMPTS};
use crate::catalog::{committed_position, SUMMARY_LAST_LSN, SUMMARY_LAST_SEQ, SUMMARY_PIPELINE};
use crate::iceberg_commit::row_delta::{self, RowDeltaError};
use crate::mirror::live::LiveRows;
use crate::position::Position;

/// How a table is compacted.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// The pipeline whose position the snapshot carries forward (and that names the new files).
    pub pipeline: String,
    /// A table whose current snapshot reads fewer live data + delete files is left as it is.
    pub min_files: usize,
    /// Parquet target file size (`sink.iceberg.target_file_size`).
    pub target_file_size: usize,
}

/// What a compaction did.
#[derive(Debug, Clone)]
pub struct CompactReport {
    /// The files the table read before.
    pub before: FileCounts,
    /// The files it reads after; `None` when it was not compacted.
    pub after: Option<FileCounts>,
    /// The minimum it was held to (for the report of a table left as it was).
    pub min_files: usize,
    /// Rows written (the table's rows, deletes applied).
    pub rows: u64,
    /// Seconds from the first load to the commit.
    pub seconds: f64,
    /// Attempts made (more than 1: another commit landed first).
    pub attempts: u32,
    /// The position carried into the compaction snapshot.
    pub position: Option<Position>,
}

impl std::fmt::Display for CompactReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let before = &self.before;
        let Some(after) = &self.after else {
            return write!(
                f,
                "not compacted ({} and {}, fewer than min_files {})",
                plural(before.data, "data file"),
                plural(before.deletes, "delete file"),
                self.min_files
            );
        };
        write!(
            f,
            "compacted {} and {} ({}) into {} ({}), {} rows in {:.1}s",
            plural(before.data, "data file"),
            plural(before.deletes, "delete file"),
            human_bytes(before.bytes),
            plural(after.data, "data file"),
            human_bytes(after.bytes),
            self.rows,
            self.seconds
        )?;
        if self.attempts > 1 {
            write!(f, " ({} attempts: other commits landed first)", self.attempts)?;
        }
        Ok(())
    }
}

/// Called between an attempt's staging and its compare-and-set, with the attempt's number (tests make a commit
/// land there).
pub(crate) type BeforeCommit<'h> = dyn FnMut(u32) -> BoxFuture<'h, ()> + Send + 'h;

/// Compacts `ident` when its current snapshot reads at least `options.min_files` data + delete files. Run it
/// under the table's lease ([`super::lease`]), or expect it to be built again when a flush lands first.
pub async fn compact(
    catalog: &MaintenanceCatalog,
    ident: &TableIdent,
    options: &CompactOptions,
) -> Result<CompactReport, MaintenanceError> {
    compact_with(catalog, ident, options, &mut |_| Box::pin(async {})).await
}

/// [`compact`] with a call between staging and commit.
pub(crate) async fn compact_with(
    catalog: &MaintenanceCatalog,
    ident: &TableIdent,
    options: &CompactOptions,
    before_commit: &mut BeforeCommit<'_>,
) -> Result<CompactReport, MaintenanceError> {
    let started = Instant::now();
    for attempt in 1..=MAX_ATTEMPTS {
        let base = catalog.load(ident).await?;
        let before = FileCounts::of(&base).await.map_err(MaintenanceError::iceberg(ident))?;
        let position = committed_position(&base, &options.pipeline);
        let mut report =
            CompactReport { before, after: None, min_files: options.min_files, rows: 0, seconds: 0.0, attempts: attempt, position };
        if base.metadata().current_snapshot().is_none() || before.files() < options.min_files.max(1) {
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        let (files, rows) = rewrite(&base, options).await?;
        let mut properties = HashMap::new();
        if let Some(position) = position {
            properties.insert(SUMMARY_PIPELINE.to_string(), options.pipeline.clone());
            properties.insert(SUMMARY_LAST_LSN.to_string(), position.commit_lsn.to_string());
            properties.insert(SUMMARY_LAST_SEQ.to_string(), position.seq.to_string());
        }
        let mut unused: Vec<String> = files.iter().map(|f| f.file_path().to_string()).collect();
        let staged = match row_delta::stage_rewrite(&base, files, properties).await {
            Ok(staged) => staged,
            Err(e) => {
                delete_unused(&base, unused).await;
                return Err(e.into());
            }
        };
        unused.extend_from_slice(staged.written_files());
        before_commit(attempt).await;
        match catalog.commit(staged).await {
            Ok(table) => {
                report.after = Some(FileCounts::of(&table).await.map_err(MaintenanceError::iceberg(ident))?);
                report.rows = rows;
                report.seconds = started.elapsed().as_secs_f64();
                return Ok(report);
            }
            Err(MaintenanceError::Commit(RowDeltaError::StaleBase { .. })) => {
                tracing::info!(table = %ident, attempt, "compaction: another commit landed first; compacting the new state");
                delete_unused(&base, unused).await;
            }
            // Whether the compare-and-set happened is unknown (the catalog database failed): the files stay.
            Err(e) => return Err(e),
        }
    }
    Err(MaintenanceError::Contended { table: ident.clone(), attempts: MAX_ATTEMPTS })
}

/// Writes `base`'s rows (deletes applied, in its current schema) into new data files; returns them and the rows.
async fn rewrite(base: &Table, options: &CompactOptions) -> Result<(Vec<DataFile>, u64), MaintenanceError> {
    let ident = base.identifier();
    let schema = Arc::new(schema_to_arrow_schema(base.metadata().current_schema()).map_err(MaintenanceError::iceberg(ident))?);
    // Equality deletes applied by hashing, not by the crate's scan (one predicate term per deleted key).
    let mut batches = LiveRows::open(base, None).await.map_err(MaintenanceError::iceberg(ident))?;
    let mut writer: Option<Box<dyn IcebergWriter>> = None;
    let mut rows = 0u64;
    let written = async {
        while let Some(batch) = batches.next().await.map_err(MaintenanceError::iceberg(ident))? {
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = conform(&batch, &schema)
                .map_err(|source| MaintenanceError::Arrow { table: ident.clone(), source })?;
            rows += batch.num_rows() as u64;
            let open = match &mut writer {
                Some(open) => open,
                None => writer.insert(row_delta::data_writer(&options.pipeline, base, &batch, options.target_file_size).await?),
            };
            open.write(batch).await.map_err(MaintenanceError::iceberg(ident))?;
        }
        Ok::<_, MaintenanceError>(())
    };
    written.await?;
    let files = match writer {
        Some(mut writer) => writer.close().await.map_err(MaintenanceError::iceberg(ident))?,
        None => Vec::new(),
    };
    Ok((files, rows))
}

/// `batch` (read in the schema of the snapshot it came from) in the table's current schema: columns matched by
/// field id (a renamed column keeps its id), else by name; a column the rows predate is null; a widened type is
/// cast.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, arrow::error::ArrowError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let id = |field: &arrow::datatypes::Field| field.metadata().get(PARQUET_FIELD_ID_META_KEY).cloned();
    let source: &ArrowSchema = &batch.schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let found = source
            .fields()
            .iter()
            .position(|f| id(f).is_some() && id(f) == id(field))
            .or_else(|| source.index_of(field.name()).ok());
        let column = match found {
            Some(index) if batch.column(index).data_type() == field.data_type() => batch.column(index).clone(),
            Some(index) => arrow::compute::cast(batch.column(index), field.data_type())?,
            None => new_null_array(field.data_type(), batch.num_rows()),
        };
        columns.push(column);
    }
    RecordBatch::try_new(schema.clone(), columns)
}

/// Deletes files of an attempt that did not land (no snapshot references them); a failure leaves an orphan.
async fn delete_unused(table: &Table, paths: Vec<String>) {
    for path in paths {
        if let Err(e) = table.file_io().delete(&path).await {
            tracing::warn!(file = %path, error = %crate::report::chain(&e), "could not delete a file of a compaction that did not land");
        }
    }
}
