//! Which columns to write without Parquet dictionary encoding, judged from a sample of the flush's first rows.
//!
//! The parquet crate dictionary-encodes every column until its dictionary outgrows a page (1 MiB), then falls
//! back to plain encoding. On a column of (nearly) unique values (keys, timestamps, JSON documents, hashes)
//! that is pure cost: every value is hashed and interned, and when the dictionary stays under the limit (a
//! 100k-row group of longs is 800 KB) the file even grows by the index pages. Java's parquet writer falls back
//! by itself when a dictionary does not pay; this is philotes' version of that check, done once per writer.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;

/// Rows sampled per column.
const SAMPLE_ROWS: usize = 2048;
/// Fewer non-null sampled values than this say nothing: the column keeps its dictionary.
const MIN_SAMPLED: usize = 64;
/// A column whose sampled values are at least this share distinct is written without a dictionary. High on
/// purpose: a column of 5,000 distinct values still shows ~80 % distinct in 2,048 samples and keeps one.
const DISTINCT_SHARE: f64 = 0.95;

/// The top-level columns of `batch` whose sampled values are (nearly) all distinct.
pub(crate) fn unique_columns(batch: &RecordBatch) -> Vec<String> {
    let rows = batch.num_rows();
    if rows == 0 {
        return Vec::new();
    }
    let step = rows.div_ceil(SAMPLE_ROWS).max(1);
    let mut unique = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let mut seen = HashSet::new();
        let mut sampled = 0usize;
        for i in (0..rows).step_by(step) {
            if column.is_null(i) {
                continue;
            }
            let Some(hash) = value_hash(column.as_ref(), i) else { break };
            sampled += 1;
            seen.insert(hash);
        }
        if sampled >= MIN_SAMPLED && seen.len() as f64 >= DISTINCT_SHARE * sampled as f64 {
            unique.push(field.name().clone());
        }
    }
    unique
}

/// A hash of row `i` of `array`, for the types philotes writes; `None` for other types (lists, structs,
/// booleans), which keep the writer's default.
fn value_hash(array: &dyn Array, i: usize) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(i).hash(&mut hasher),
        DataType::LargeBinary => array.as_binary::<i64>().value(i).hash(&mut hasher),
        DataType::FixedSizeBinary(_) => array.as_fixed_size_binary().value(i).hash(&mut hasher),
        data_type => {
            let width = data_type.primitive_width()?;
            let data = array.to_data();
            let start = (data.offset() + i) * width;
            data.buffers().first()?.as_slice().get(start..start + width)?.hash(&mut hasher);
        }
    }
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn only_columns_of_distinct_values_lose_their_dictionary() {
        let n = 100_000i64;
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("account", DataType::Int64, false),
            Field::new("label", DataType::Utf8, true),
            Field::new("op", DataType::Utf8, false),
            Field::new("rare", DataType::Utf8, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 1000))),
                Arc::new(StringArray::from_iter((0..n).map(|i| Some(format!("customer-{i}"))))),
                Arc::new(StringArray::from_iter_values((0..n).map(|i| if i % 3 == 0 { "U" } else { "I" }))),
                // Mostly NULL: too few values to judge.
                Arc::new(StringArray::from_iter((0..n).map(|i| (i % 5000 == 0).then(|| format!("x{i}"))))),
            ],
        )
        .expect("batch");
        assert_eq!(unique_columns(&batch), vec!["id".to_string(), "label".to_string()]);
        assert!(unique_columns(&batch.slice(0, 0)).is_empty());
    }
}
