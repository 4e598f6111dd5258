//! One flush of a mirror table, folded per key: which rows are written and which keys get an equality delete.
//!
//! The rows are the flush's changes in position order, in the working schema (a key-changing update comes as a
//! delete of the old key followed by the update, [`crate::arrow_batch::BatchBuilder`] in mirror mode). Per key,
//! the last image wins: an insert, update or snapshot read makes the key live with that row, a delete makes it
//! gone, a truncate forgets every key and removes every older file. So two versions of one key in one flush
//! never both survive: only one row per key is written at all.
//!
//! An equality delete hits only data of older snapshots. A key needs one when a row of it may exist there: when
//! its first change in the flush (after the last truncate) is not an insert. An insert says the key had no row
//! in the source a moment before, so it has none in Iceberg either (its delete, if any, is older and applied).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use arrow::array::{AsArray, RecordBatch};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};

use crate::changelog::OP;
use crate::op::Op;

/// No row (a key's image after a delete, a row with no earlier image).
pub const NONE: u32 = u32::MAX;

/// The outcome of [`fold`]: row indexes into the folded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded {
    /// Whether the flush holds a truncate: every file of older snapshots goes (only changes after the last
    /// truncate are in `upserts` and `deletes`).
    pub truncate: bool,
    /// The rows to write, in position order: the last image of every key that is live at the flush's end.
    pub upserts: Vec<u32>,
    /// For every row of the batch, the previous image of its key in the flush (since the key's last delete), or
    /// [`NONE`]: where an unchanged TOAST value is looked for first.
    pub previous: Vec<u32>,
    /// One row per key that gets an equality delete (its first change after the last truncate), in position
    /// order; the key columns of the row are the delete's values.
    pub deletes: Vec<u32>,
}

/// What one key came to so far.
struct KeyState {
    /// Its first change (after the last truncate).
    first: u32,
    /// Whether that change is an insert (no row of the key in older data).
    first_is_insert: bool,
    /// Its current image, [`NONE`] when deleted.
    last: u32,
}

/// Folds `batch` (a flush in position order, in a working schema with the `_op` column) per key, the key being
/// the columns at `key` (indexes into the batch).
pub fn fold(batch: &RecordBatch, key: &[usize]) -> Result<Folded, ArrowError> {
    let schema = batch.schema();
    let ops = batch
        .column(schema.index_of(OP)?)
        .as_string_opt::<i32>()
        .ok_or_else(|| ArrowError::SchemaError(format!("{OP} is not a string column")))?;
    let fields = key.iter().map(|&i| SortField::new(schema.field(i).data_type().clone())).collect();
    let converter = RowConverter::new(fields)?;
    let keys = converter.convert_columns(&key.iter().map(|&i| batch.column(i).clone()).collect::<Vec<_>>())?;
    let rows = u32::try_from(batch.num_rows()).map_err(|_| ArrowError::ComputeError("a flush of over 4G rows".into()))?;

    let mut states: HashMap<_, KeyState> = HashMap::with_capacity(batch.num_rows());
    let mut previous = vec![NONE; batch.num_rows()];
    let mut truncate = false;
    for row in 0..rows {
        let code = ops.value(row as usize);
        let op = code.chars().next().and_then(Op::from_code);
        let Some(op) = op else {
            return Err(ArrowError::InvalidArgumentError(format!("row {row}: unknown {OP} {code:?}")));
        };
        if op == Op::Truncate {
            states.clear();
            truncate = true;
            continue;
        }
        let image = if op == Op::Delete { NONE } else { row };
        match states.entry(keys.row(row as usize)) {
            Entry::Vacant(entry) => {
                entry.insert(KeyState { first: row, first_is_insert: op == Op::Insert, last: image });
            }
            Entry::Occupied(mut entry) => {
                let state = entry.get_mut();
                if image != NONE {
                    previous[row as usize] = state.last;
                }
                state.last = image;
            }
        }
    }
    let mut upserts: Vec<u32> = states.values().map(|s| s.last).filter(|&row| row != NONE).collect();
    upserts.sort_unstable();
    let mut deletes: Vec<u32> = states.values().filter(|s| !s.first_is_insert).map(|s| s.first).collect();
    deletes.sort_unstable();
    Ok(Folded { truncate, upserts, previous, deletes })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(rows: &[(&str, i32)]) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("id", DataType::Int32, true), Field::new(OP, DataType::Utf8, false)]);
        let ids = Int32Array::from_iter_values(rows.iter().map(|r| r.1));
        let ops = StringArray::from_iter_values(rows.iter().map(|r| r.0));
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ids), Arc::new(ops)]).unwrap()
    }

    #[test]
    fn the_last_image_of_a_key_wins_and_only_keys_older_data_may_hold_are_deleted() {
        let folded = fold(
            &batch(&[("I", 1), ("U", 1), ("U", 2), ("I", 3), ("D", 3), ("r", 4), ("D", 5), ("U", 1)]),
            &[0],
        )
        .unwrap();
        assert!(!folded.truncate);
        // 1: inserted then updated twice (last image row 7); 2: updated (row 2); 3: inserted then deleted (gone,
        // never in Iceberg: no delete); 4: snapshot read (may exist: delete); 5: deleted.
        assert_eq!(folded.upserts, vec![2, 5, 7]);
        assert_eq!(folded.deletes, vec![2, 5, 6]);
        assert_eq!(folded.previous, vec![NONE, 0, NONE, NONE, NONE, NONE, NONE, 1]);
    }

    #[test]
    fn a_truncate_forgets_every_key_before_it() {
        let folded = fold(&batch(&[("U", 1), ("D", 2), ("T", 0), ("I", 1), ("U", 3)]), &[0]).unwrap();
        assert!(folded.truncate);
        assert_eq!(folded.upserts, vec![3, 4]);
        assert_eq!(folded.deletes, vec![4]);
    }

    #[test]
    fn a_key_deleted_and_inserted_again_keeps_its_delete_and_its_new_row_without_the_old_image() {
        let folded = fold(&batch(&[("U", 1), ("D", 1), ("I", 1)]), &[0]).unwrap();
        assert_eq!(folded.upserts, vec![2]);
        assert_eq!(folded.deletes, vec![0]);
        assert_eq!(folded.previous[2], NONE);
    }
}
