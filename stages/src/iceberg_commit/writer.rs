//! The Parquet data files of a flush: one rolling writer per flush, opened on the table state it was checked
//! against (and, for a mirror table, one for its equality deletes), and the filter that leaves out rows Iceberg
//! already has.
//!
//! On a partitioned table (its default spec) the data writer is the crate's fanout writer: each batch is split
//! by partition value (`RecordBatchPartitionSplitter`) and every partition gets a rolling writer of its own, so
//! a flush writes one file per partition it touches (more when one rolls), each carrying its partition values
//! and spec id. Equality deletes are written with the table's unpartitioned spec: they apply to every partition
//! ([`crate::catalog::partition`] says why).

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use iceberg::spec::{DataFile, DataFileFormat, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::arrow::{arrow_schema_to_schema, RecordBatchPartitionSplitter};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::base_writer::equality_delete_writer::{EqualityDeleteFileWriterBuilder, EqualityDeleteWriterConfig};
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use super::dictionary;
use super::IcebergCommitError;
use crate::changelog::{LSN, SEQ};
use crate::claim::SLICE_EVENTS;
use crate::position::{Lsn, Position};

/// Encoded bytes per Parquet row group at most (Java's `parquet.block.size` is 128 MiB too): the writer keeps
/// the row group it is filling in memory, so this bounds its memory on wide tables; narrow tables still get
/// the parquet crate's 1M-row groups (fewer, bigger groups: less dictionary work per row).
const ROW_GROUP_BYTES: usize = 128 * 1024 * 1024;
const ROW_GROUP_ROWS: usize = 2 * SLICE_EVENTS;

/// A Parquet data-file writer for `table` (zstd, rolling at `target_file_size`, one file per partition of the
/// table's default spec); `first` (the flush's first rows) tells which columns are not worth a dictionary.
pub(crate) async fn open(
    pipeline: &str,
    table: &Table,
    first: &RecordBatch,
    target_file_size: usize,
) -> Result<Box<dyn IcebergWriter>, IcebergCommitError> {
    let mut properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    for column in dictionary::unique_columns(first) {
        properties = properties.set_column_dictionary_enabled(ColumnPath::new(vec![column]), false);
    }
    let parquet = ParquetWriterBuilder::new(properties.build(), table.metadata().current_schema().clone());
    let rolling = rolling(pipeline, table, parquet, target_file_size)?;
    let metadata = table.metadata();
    let spec = metadata.default_partition_spec();
    if spec.is_unpartitioned() {
        return Ok(Box::new(DataFileWriterBuilder::new(rolling).build(unpartitioned_key(table, spec)).await?));
    }
    let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(metadata.current_schema().clone(), spec.clone())?;
    Ok(Box::new(Fanout { splitter, writer: Some(FanoutWriter::new(DataFileWriterBuilder::new(rolling))) }))
}

/// The key of files in `spec`, an unpartitioned spec of `table`: none for spec 0 (the crate's default), else one
/// naming the spec (a table unpartitioned again after a partitioned spec has it under a new id, and the crate's
/// fast append takes only files of the default spec id).
fn unpartitioned_key(table: &Table, spec: &iceberg::spec::PartitionSpecRef) -> Option<PartitionKey> {
    (spec.spec_id() != 0).then(|| PartitionKey::new(spec.as_ref().clone(), table.metadata().current_schema().clone(), Struct::empty()))
}

type DataWriterBuilder = DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// The data writer of a partitioned table: rows split by partition value, one rolling writer per partition.
struct Fanout {
    splitter: RecordBatchPartitionSplitter,
    /// `None` once closed.
    writer: Option<FanoutWriter<DataWriterBuilder>>,
}

#[async_trait::async_trait]
impl IcebergWriter for Fanout {
    async fn write(&mut self, batch: RecordBatch) -> iceberg::Result<()> {
        let writer = self.writer.as_mut().ok_or_else(closed)?;
        for (key, rows) in self.splitter.split(&batch)? {
            writer.write(key, rows).await?;
        }
        Ok(())
    }

    async fn close(&mut self) -> iceberg::Result<Vec<DataFile>> {
        self.writer.take().ok_or_else(closed)?.close().await
    }
}

fn closed() -> iceberg::Error {
    iceberg::Error::new(iceberg::ErrorKind::Unexpected, "the partitioned data writer is closed")
}

/// An equality-delete file writer for `table` on the columns `key` (field ids), zstd, rolling at
/// `target_file_size`: it takes rows of the table's Arrow schema and writes their key columns, with the
/// table's unpartitioned spec (global deletes) when its default spec is partitioned.
pub(super) async fn open_equality_deletes(
    pipeline: &str,
    table: &Table,
    key: &[i32],
    target_file_size: usize,
) -> Result<Box<dyn IcebergWriter>, IcebergCommitError> {
    let config = EqualityDeleteWriterConfig::new(key.to_vec(), table.metadata().current_schema().clone())?;
    let delete_schema = arrow_schema_to_schema(config.projected_arrow_schema_ref())?;
    let properties = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()));
    let parquet = ParquetWriterBuilder::new(properties.build(), Arc::new(delete_schema));
    let rolling = rolling(pipeline, table, parquet, target_file_size)?;
    let metadata = table.metadata();
    let global = match metadata.default_partition_spec().is_unpartitioned() {
        true => unpartitioned_key(table, metadata.default_partition_spec()),
        false => {
            let spec = crate::catalog::partition::unpartitioned_spec_id(table).and_then(|id| metadata.partition_spec_by_id(id));
            let spec = spec.ok_or_else(|| iceberg::Error::new(iceberg::ErrorKind::DataInvalid,
                format!("the partitioned table {} has no unpartitioned spec for its equality deletes", table.identifier())))?;
            Some(PartitionKey::new(spec.as_ref().clone(), metadata.current_schema().clone(), Struct::empty()))
        }
    };
    Ok(Box::new(EqualityDeleteFileWriterBuilder::new(rolling, config).build(global).await?))
}

/// Files of `table` named after the pipeline and a random id per writer ([`file_prefix`]), rolled at
/// `target_file_size`.
fn rolling(
    pipeline: &str,
    table: &Table,
    parquet: ParquetWriterBuilder,
    target_file_size: usize,
) -> Result<RollingFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>, IcebergCommitError> {
    let locations = DefaultLocationGenerator::new(table.metadata())?;
    let names = DefaultFileNameGenerator::new(file_prefix(pipeline), None, DataFileFormat::Parquet);
    Ok(RollingFileWriterBuilder::new(parquet, target_file_size, table.file_io().clone(), locations, names))
}

/// The name prefix of one writer's files: `philotes-{pipeline}-{random uuid}`. Never the process id and a
/// counter: a restarted process may get the same pid (always 1 in a container), and a file of the same name
/// would overwrite a committed one in place.
fn file_prefix(pipeline: &str) -> String {
    format!("philotes-{pipeline}-{}", uuid::Uuid::new_v4())
}

/// The rows of `batch` after `position` (by the `_lsn`/`_seq` columns); all of them when `position` is `None`.
pub(super) fn rows_after(batch: &RecordBatch, position: Option<Position>) -> Result<RecordBatch, IcebergCommitError> {
    let Some(position) = position else { return Ok(batch.clone()) };
    let column = |name: &'static str| -> Result<Int64Array, IcebergCommitError> {
        let index = batch.schema().index_of(name).map_err(|_| IcebergCommitError::MissingColumn(name))?;
        batch.column(index).as_any().downcast_ref::<Int64Array>().cloned().ok_or(IcebergCommitError::MissingColumn(name))
    };
    let (lsn, seq) = (column(LSN)?, column(SEQ)?);
    let after = |i: usize| Position::new(Lsn(lsn.value(i) as u64), seq.value(i) as u64) > position;
    if (0..batch.num_rows()).all(after) {
        return Ok(batch.clone()); // the usual case: a flush starts after the last one
    }
    let keep: BooleanArray = (0..batch.num_rows()).map(|i| Some(after(i))).collect();
    Ok(arrow::compute::filter_record_batch(batch, &keep)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_names_differ_for_every_writer_whatever_the_process() {
        let (a, b) = (super::file_prefix("p"), super::file_prefix("p"));
        assert!(a.starts_with("philotes-p-") && b.starts_with("philotes-p-"), "{a} {b}");
        assert_ne!(a, b, "two writers (of this process or a restarted one with the same pid) never share names");
    }
}
