//! The rows a mirror flush writes, with every unchanged TOAST value filled.
//!
//! Under `REPLICA IDENTITY DEFAULT` an update that leaves a TOASTed column untouched carries no value for it.
//! ArrowBatch already filled what an earlier image in the same slice had, and listed the rest in `_unchanged`.
//! A mirror row has no `_unchanged` to hide behind, so each listed value is taken from, in order: the key's
//! earlier images in the flush ([`Folded::previous`]), then the key's current row in the Iceberg table (read
//! through its files with their deletes applied, at the state the commit builds on). Only a key Iceberg does
//! not have either (a row that existed before the pipeline, with `snapshot: never`) is written with NULL there,
//! and named in [`Filled::unknown`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{interleave, take};
use arrow::datatypes::{DataType, Schema as ArrowSchema};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use iceberg::expr::Reference;
use iceberg::spec::Datum;
use iceberg::table::Table;

use super::fold::{Folded, NONE};
use super::live::LiveRows;
use crate::changelog::UNCHANGED;

/// The rows to write and the values no image had.
#[derive(Debug)]
pub struct Filled {
    /// The upserts in the table's Arrow schema.
    pub rows: RecordBatch,
    /// (row of `rows`, column name) of every value written NULL because nothing knew it.
    pub unknown: Vec<(usize, String)>,
}

/// Why filling failed.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// Arrow refused the arrays.
    #[error("filling unchanged TOAST values: {0}")]
    Arrow(#[from] ArrowError),
    /// Reading the table's current rows failed.
    #[error("reading current rows for unchanged TOAST values: {0}")]
    Iceberg(#[from] iceberg::Error),
}

/// The upserts of `folded` from `batch` (working schema), as rows of `table` (`target`: its Arrow schema, the
/// first columns of `batch`), every unchanged value filled; `key` are the key columns' indexes.
pub async fn fill(
    batch: &RecordBatch,
    folded: &Folded,
    target: &Arc<ArrowSchema>,
    key: &[usize],
    table: &Table,
) -> Result<Filled, FillError> {
    let columns = target.fields().len();
    let unchanged = batch.column(batch.schema().index_of(UNCHANGED)?).as_list::<i32>();
    let names: Vec<&str> = target.fields().iter().map(|f| f.name().as_str()).collect();
    // (upsert, column) → where its value is: an earlier row of the batch, or a row of the table (looked up below).
    let mut earlier: HashMap<(usize, usize), u32> = HashMap::new();
    let mut lookups: Vec<(usize, usize)> = Vec::new();
    let listed = |row: u32, column: &str| -> bool {
        !unchanged.is_null(row as usize)
            && unchanged.value(row as usize).as_string::<i32>().iter().any(|name| name == Some(column))
    };
    for (out, &row) in folded.upserts.iter().enumerate() {
        if unchanged.is_null(row as usize) {
            continue;
        }
        for (column, name) in names.iter().enumerate() {
            if !listed(row, name) {
                continue;
            }
            let mut image = folded.previous[row as usize];
            while image != NONE && listed(image, name) {
                image = folded.previous[image as usize];
            }
            if image == NONE {
                lookups.push((out, column));
            } else {
                earlier.insert((out, column), image);
            }
        }
    }
    let current = if lookups.is_empty() {
        Vec::new()
    } else {
        let mut wanted: Vec<u32> = lookups.iter().map(|(out, _)| folded.upserts[*out]).collect();
        wanted.dedup();
        current_rows(table, batch, &wanted, key).await?
    };
    let found = find_current(batch, key, &lookups, folded, &current)?;
    let looked_up: HashSet<(usize, usize)> = lookups.iter().copied().collect();
    let touched: HashSet<usize> = earlier.keys().chain(&lookups).map(|(_, column)| *column).collect();

    let mut unknown = Vec::new();
    let upserts = UInt32Array::from(folded.upserts.clone());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns);
    for (column, field) in target.fields().iter().enumerate() {
        let own = batch.column(column);
        if !touched.contains(&column) {
            arrays.push(take(own, &upserts, None)?);
            continue;
        }
        // Sources: 0 = the batch, 1 = an all-null array (unknown values), 2.. = the table's current batches.
        let nulls = arrow::array::new_null_array(field.data_type(), 1);
        let mut sources: Vec<&dyn Array> = vec![own.as_ref(), nulls.as_ref()];
        let current_columns: Vec<ArrayRef> = current.iter().map(|b| b.column(column).clone()).collect();
        sources.extend(current_columns.iter().map(|a| a.as_ref()));
        let indices: Vec<(usize, usize)> = folded
            .upserts
            .iter()
            .enumerate()
            .map(|(out, &row)| {
                if let Some(image) = earlier.get(&(out, column)) {
                    return (0, *image as usize);
                }
                if looked_up.contains(&(out, column)) {
                    return match found.get(&out) {
                        Some((b, r)) => (2 + b, *r),
                        None => {
                            unknown.push((out, field.name().clone()));
                            (1, 0)
                        }
                    };
                }
                (0, row as usize)
            })
            .collect();
        arrays.push(interleave(&sources, &indices)?);
    }
    Ok(Filled { rows: RecordBatch::try_new(target.clone(), arrays)?, unknown })
}

/// The table's current rows (every column, in its order) of the keys of `rows` (batch rows).
/// A single integer or string key column is pushed down as a filter; other keys read the whole table.
async fn current_rows(
    table: &Table,
    batch: &RecordBatch,
    rows: &[u32],
    key: &[usize],
) -> Result<Vec<RecordBatch>, FillError> {
    let mut filter = None;
    if let [column] = key {
        let values = batch.column(*column);
        let datums: Option<Vec<Datum>> = rows
            .iter()
            .map(|&row| {
                let row = row as usize;
                match values.data_type() {
                    _ if values.is_null(row) => None,
                    DataType::Int32 => Some(Datum::int(values.as_primitive::<arrow::datatypes::Int32Type>().value(row))),
                    DataType::Int64 => Some(Datum::long(values.as_primitive::<arrow::datatypes::Int64Type>().value(row))),
                    DataType::Utf8 => Some(Datum::string(values.as_string::<i32>().value(row))),
                    _ => None,
                }
            })
            .collect();
        if let Some(datums) = datums {
            let name = batch.schema().field(*column).name().clone();
            filter = Some(Reference::new(name).is_in(datums));
        }
    }
    Ok(LiveRows::open(table, filter).await?.collect().await?)
}

/// For each looked-up upsert, where its key's row is among `current` (batch index, row).
fn find_current(
    batch: &RecordBatch,
    key: &[usize],
    lookups: &[(usize, usize)],
    folded: &Folded,
    current: &[RecordBatch],
) -> Result<HashMap<usize, (usize, usize)>, ArrowError> {
    let mut found = HashMap::new();
    if lookups.is_empty() {
        return Ok(found);
    }
    let fields: Vec<SortField> = key.iter().map(|&i| SortField::new(batch.schema().field(i).data_type().clone())).collect();
    let converter = RowConverter::new(fields)?;
    let mut index = HashMap::new();
    let mut current_keys = Vec::with_capacity(current.len());
    for b in current {
        current_keys.push(converter.convert_columns(&key.iter().map(|&i| b.column(i).clone()).collect::<Vec<_>>())?);
    }
    for (b, keys) in current_keys.iter().enumerate() {
        for r in 0..keys.num_rows() {
            index.insert(keys.row(r), (b, r));
        }
    }
    let ours = converter.convert_columns(&key.iter().map(|&i| batch.column(i).clone()).collect::<Vec<_>>())?;
    for (out, _) in lookups {
        if let Some(at) = index.get(&ours.row(folded.upserts[*out] as usize)) {
            found.insert(*out, *at);
        }
    }
    Ok(found)
}
