//! A table's live rows: its data files read through the iceberg crate's reader, with equality deletes applied
//! by hashing their keys.
//!
//! The crate (0.10.1) applies an equality-delete file by turning each of its rows into a predicate term,
//! `NOT (id = 1) AND NOT (id = 2) AND …`, and evaluating that against every data row: a mirror with 200,000
//! deleted keys over 600,000 rows took 100 s to read (`scripts/bench`, mirror). Here the crate plans the scan
//! (which data file each delete file applies to, by sequence number) and reads the data files; each equality
//! delete file is read once into a set of keys (arrow's row format), and a data row is dropped when its key is
//! in a set that applies to its file. Position deletes (philotes writes none) are still applied by the crate.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Schema as ArrowSchema};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use futures::{StreamExt, TryStreamExt};
use iceberg::scan::ArrowRecordBatchStream;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::expr::Predicate;
use iceberg::scan::FileScanTask;
use iceberg::spec::DataContentType;
use iceberg::table::Table;
use iceberg::{Error, ErrorKind};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;

/// The keys of one equality-delete file.
struct DeletedKeys {
    /// The columns it deletes by (field ids).
    ids: Vec<i32>,
    /// The keys, in arrow's row format for the table's types of those columns.
    keys: HashSet<Box<[u8]>>,
}

/// The live rows of a table (its current snapshot), in its current schema (every column), batch by batch: as
/// the crate's scan gives them, with equality deletes applied by hashing.
pub struct LiveRows<'a> {
    table: &'a Table,
    schema: Arc<ArrowSchema>,
    /// Data files not read yet.
    tasks: VecDeque<FileScanTask>,
    /// Equality-delete files read so far, by path (each applies to many data files).
    deleted: HashMap<String, Arc<DeletedKeys>>,
    /// The data file being read and the key sets that apply to it.
    current: Option<(ArrowRecordBatchStream, Vec<Arc<DeletedKeys>>)>,
}

impl<'a> LiveRows<'a> {
    /// Plans the read of `table`'s rows matching `filter` (files pruned by their statistics, rows filtered).
    pub async fn open(table: &'a Table, filter: Option<Predicate>) -> Result<Self, Error> {
        let mut scan = table.scan().select_all();
        if let Some(filter) = filter {
            scan = scan.with_filter(filter);
        }
        let tasks = scan.build()?.plan_files().await?.try_collect().await?;
        let schema = Arc::new(schema_to_arrow_schema(table.metadata().current_schema())?);
        Ok(Self { table, schema, tasks, deleted: HashMap::new(), current: None })
    }

    /// The next batch of live rows (never empty), `None` at the end.
    pub async fn next(&mut self) -> Result<Option<RecordBatch>, Error> {
        loop {
            if let Some((stream, sets)) = &mut self.current {
                match stream.next().await {
                    Some(batch) => {
                        let batch = batch?;
                        let batch = if sets.is_empty() { batch } else { without_deleted(&batch, sets).map_err(arrow_error)? };
                        if batch.num_rows() > 0 {
                            return Ok(Some(batch));
                        }
                        continue;
                    }
                    None => self.current = None,
                }
            }
            let Some(mut task) = self.tasks.pop_front() else { return Ok(None) };
            let (equality, others): (Vec<_>, Vec<_>) =
                task.deletes.drain(..).partition(|d| d.file_type == DataContentType::EqualityDeletes);
            task.deletes = others;
            let mut sets = Vec::with_capacity(equality.len());
            for delete in equality {
                let keys = match self.deleted.get(&delete.file_path) {
                    Some(keys) => keys.clone(),
                    None => {
                        let ids = delete.equality_ids.clone().unwrap_or_default();
                        let keys = Arc::new(read_deleted_keys(self.table, &delete.file_path, &ids, &self.schema).await?);
                        self.deleted.insert(delete.file_path.clone(), keys.clone());
                        keys
                    }
                };
                sets.push(keys);
            }
            let stream = self.table.reader_builder().build().read(Box::pin(futures::stream::iter([Ok(task)])))?.stream();
            self.current = Some((stream, sets));
        }
    }

    /// Every remaining batch.
    pub async fn collect(mut self) -> Result<Vec<RecordBatch>, Error> {
        let mut batches = Vec::new();
        while let Some(batch) = self.next().await? {
            batches.push(batch);
        }
        Ok(batches)
    }
}

/// The keys of the equality-delete file at `path` on the columns `ids`, in the row format of those columns'
/// types in `schema` (the table's).
async fn read_deleted_keys(table: &Table, path: &str, ids: &[i32], schema: &ArrowSchema) -> Result<DeletedKeys, Error> {
    let types = ids.iter().map(|id| column_of(schema, *id).map(|i| schema.field(i).data_type().clone())).collect::<Result<Vec<_>, _>>()?;
    let converter = converter(&types).map_err(arrow_error)?;
    let bytes = table.file_io().new_input(path)?.read().await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| Error::new(ErrorKind::DataInvalid, format!("reading equality deletes {path}")).with_source(e))?;
    let mut keys = HashSet::new();
    for batch in reader {
        let batch = batch.map_err(arrow_error)?;
        let columns = ids
            .iter()
            .zip(&types)
            .map(|(id, ty)| {
                let index = column_of(&batch.schema(), *id)?;
                cast(batch.column(index), ty).map_err(arrow_error)
            })
            .collect::<Result<Vec<ArrayRef>, Error>>()?;
        let rows = converter.convert_columns(&columns).map_err(arrow_error)?;
        keys.extend(rows.iter().map(|row| Box::<[u8]>::from(row.as_ref())));
    }
    Ok(DeletedKeys { ids: ids.to_vec(), keys })
}

/// `batch` without the rows whose key is in one of `sets`.
fn without_deleted(batch: &RecordBatch, sets: &[Arc<DeletedKeys>]) -> Result<RecordBatch, ArrowError> {
    let mut keep = vec![true; batch.num_rows()];
    for set in sets {
        let columns = set
            .ids
            .iter()
            .map(|id| column_of(&batch.schema(), *id).map(|i| batch.column(i).clone()))
            .collect::<Result<Vec<_>, Error>>()
            .map_err(|e| ArrowError::SchemaError(e.to_string()))?;
        let types: Vec<DataType> = columns.iter().map(|c| c.data_type().clone()).collect();
        let rows = converter(&types)?.convert_columns(&columns)?;
        for (i, row) in rows.iter().enumerate() {
            if keep[i] && set.keys.contains(row.as_ref()) {
                keep[i] = false;
            }
        }
    }
    if keep.iter().all(|k| *k) {
        return Ok(batch.clone());
    }
    filter_record_batch(batch, &BooleanArray::from(keep))
}

/// The index of the column with field id `id`.
fn column_of(schema: &ArrowSchema, id: i32) -> Result<usize, Error> {
    let id = id.to_string();
    schema
        .fields()
        .iter()
        .position(|f| f.metadata().get(PARQUET_FIELD_ID_META_KEY) == Some(&id))
        .ok_or_else(|| Error::new(ErrorKind::DataInvalid, format!("no column with field id {id}")))
}

fn converter(types: &[DataType]) -> Result<RowConverter, ArrowError> {
    RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())
}

fn arrow_error(e: ArrowError) -> Error {
    Error::new(ErrorKind::Unexpected, "applying equality deletes").with_source(e)
}
