//! The window of a chunk: from its low watermark to its high one, the keys that the stream's changes of its
//! table touched. At the high watermark those rows are dropped from the chunk: each of them has a change in the
//! stream at or after the chunk's read that carries its newer state (or its deletion).

use std::collections::HashSet;

use philotes_schemas::{ColumnSchema, Value};

use crate::op::Op;
use crate::segment::SegmentEvent;
use crate::table_id::TableId;

/// One open window.
#[derive(Debug)]
struct Window {
    table: TableId,
    lane: i32,
    chunk: u64,
    /// The columns that identify a row in the changes.
    key: Vec<String>,
    /// The encoded key values that changes touched.
    touched: HashSet<Vec<u8>>,
    /// A TRUNCATE of the table came: every row of the chunk is replaced.
    truncated: bool,
}

/// The open windows, one per lane of a table at most (a lane reads one chunk at a time).
#[derive(Debug, Default)]
pub struct Windows {
    open: Vec<Window>,
}

/// The positions of `key`'s columns among `columns` (`None` when one is missing).
fn positions(columns: &[ColumnSchema], key: &[String]) -> Option<Vec<usize>> {
    key.iter().map(|name| columns.iter().position(|c| &c.name == name)).collect()
}

/// A row's key, encoded (values compare as their MessagePack bytes: equal values, equal bytes).
fn encode(values: &[Value], at: &[usize]) -> Option<Vec<u8>> {
    let key: Vec<&Value> = at.iter().map(|i| values.get(*i)).collect::<Option<_>>()?;
    rmp_serde::to_vec(&key).ok()
}

impl Windows {
    /// A low watermark: the window of `chunk` opens (replacing an older one of the same lane, whose chunk was
    /// not read).
    pub fn open(&mut self, table: TableId, lane: i32, chunk: u64, key: Vec<String>) {
        let window = Window { table, lane, chunk, key, touched: HashSet::new(), truncated: false };
        match self.open.iter_mut().find(|w| w.table == window.table && w.lane == lane) {
            Some(open) => *open = window,
            None => self.open.push(window),
        }
    }

    /// Whether any window is open (the hot path checks this first).
    pub fn any(&self) -> bool {
        !self.open.is_empty()
    }

    /// A change of `table` (with its version's `columns`) in the stream: recorded in each of its open windows.
    pub fn record(&mut self, schema: &str, name: &str, columns: &[ColumnSchema], event: &SegmentEvent) {
        for window in self.open.iter_mut().filter(|w| w.table.schema == schema && w.table.name == name) {
            if event.op == Op::Truncate {
                window.truncated = true;
                continue;
            }
            let Some(at) = positions(columns, &window.key) else {
                // A key column is gone from the table: nothing can be matched, so nothing of the chunk may stay.
                window.truncated = true;
                continue;
            };
            for values in [event.old.as_deref(), event.new.as_deref()].into_iter().flatten() {
                if let Some(key) = encode(values, &at) {
                    window.touched.insert(key);
                }
            }
        }
    }

    /// Whether the window of `chunk` of `table` saw no change of the table (`None`: it is not open in this
    /// session). An untouched chunk keeps every row: [`Windows::close`] need not look at them.
    pub fn untouched(&self, table: &TableId, chunk: u64) -> Option<bool> {
        let window = self.open.iter().find(|w| w.table == *table && w.chunk == chunk)?;
        Some(!window.truncated && window.touched.is_empty())
    }

    /// The high watermark of `chunk` of `table`: closes its window and keeps the chunk's events that no change
    /// touched. `None` when the chunk's window was not open in this session (the chunk must be read again).
    pub fn close(
        &mut self,
        table: &TableId,
        chunk: u64,
        columns: &[ColumnSchema],
        events: Vec<SegmentEvent>,
    ) -> Option<Vec<SegmentEvent>> {
        let index = self.open.iter().position(|w| w.table == *table && w.chunk == chunk)?;
        let window = self.open.swap_remove(index);
        if window.truncated {
            return Some(Vec::new());
        }
        if window.touched.is_empty() {
            return Some(events);
        }
        let at = positions(columns, &window.key)?;
        Some(
            events
                .into_iter()
                .filter(|e| {
                    let key = e.new.as_deref().and_then(|values| encode(values, &at));
                    key.is_none_or(|k| !window.touched.contains(&k))
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use philotes_schemas::PgType;

    use super::*;
    use crate::position::Lsn;

    fn columns() -> Vec<ColumnSchema> {
        ["id", "v"]
            .iter()
            .map(|n| ColumnSchema {
                name: n.to_string(),
                pg_type: PgType::Int8,
                type_oid: 20,
                type_modifier: -1,
                part_of_key: *n == "id",
                attnum: None,
            })
            .collect()
    }

    fn event(op: Op, old: Option<i64>, new: Option<i64>) -> SegmentEvent {
        SegmentEvent {
            op,
            commit_lsn: Lsn(1),
            seq: 0,
            xid: 1,
            commit_ts: 0,
            old_is_full: old.map(|_| false),
            old: old.map(|id| vec![Value::Int64(id), Value::Null]),
            new: new.map(|id| vec![Value::Int64(id), Value::Int64(0)]),
        }
    }

    #[test]
    fn rows_touched_between_the_watermarks_are_dropped_from_the_chunk() {
        let table = TableId::new("public", "t");
        let mut windows = Windows::default();
        windows.open(table.clone(), 0, 9, vec!["id".into()]);
        assert_eq!(windows.untouched(&table, 9), Some(true), "nothing changed yet");
        windows.record("public", "u", &columns(), &event(Op::Insert, None, Some(1)));
        assert_eq!(windows.untouched(&table, 9), Some(true), "another table's change");
        windows.record("public", "t", &columns(), &event(Op::Update, None, Some(2)));
        assert_eq!(windows.untouched(&table, 9), Some(false));
        assert_eq!(windows.untouched(&table, 8), None, "another chunk");
        windows.record("public", "t", &columns(), &event(Op::Delete, Some(3), None));
        windows.record("public", "t", &columns(), &event(Op::Update, Some(4), Some(40)));
        windows.record("public", "u", &columns(), &event(Op::Insert, None, Some(1)));
        let chunk: Vec<SegmentEvent> = (1..=5).map(|id| event(Op::Read, None, Some(id))).collect();
        assert_eq!(windows.close(&table, 8, &columns(), chunk.clone()), None, "another chunk's watermark");
        let kept = windows.close(&table, 9, &columns(), chunk.clone()).expect("window open");
        let ids: Vec<&Value> = kept.iter().map(|e| &e.new.as_ref().expect("row")[0]).collect();
        assert_eq!(ids, vec![&Value::Int64(1), &Value::Int64(5)]);
        assert_eq!(windows.close(&table, 9, &columns(), chunk), None, "closed once");
    }

    #[test]
    fn a_truncate_between_the_watermarks_drops_the_whole_chunk() {
        let table = TableId::new("public", "t");
        let mut windows = Windows::default();
        windows.open(table.clone(), 0, 1, vec!["id".into()]);
        windows.record("public", "t", &columns(), &event(Op::Truncate, None, None));
        assert_eq!(windows.untouched(&table, 1), Some(false), "a truncated window is not untouched");
        let chunk = vec![event(Op::Read, None, Some(1))];
        assert_eq!(windows.close(&table, 1, &columns(), chunk), Some(Vec::new()));
    }

    #[test]
    fn two_lanes_of_a_table_keep_their_own_windows() {
        let table = TableId::new("public", "t");
        let mut windows = Windows::default();
        windows.open(table.clone(), 0, 1, vec!["id".into()]);
        windows.record("public", "t", &columns(), &event(Op::Update, None, Some(1)));
        windows.open(table.clone(), 1, 2, vec!["id".into()]);
        windows.record("public", "t", &columns(), &event(Op::Update, None, Some(7)));
        // Lane 0 was opened before the change of row 1 and saw both; lane 1 only the one after its opening.
        let lane0: Vec<SegmentEvent> = [1, 7, 2].iter().map(|id| event(Op::Read, None, Some(*id))).collect();
        let lane1: Vec<SegmentEvent> = [1, 7, 8].iter().map(|id| event(Op::Read, None, Some(*id))).collect();
        let kept = windows.close(&table, 2, &columns(), lane1).expect("lane 1 open");
        assert_eq!(kept.iter().map(|e| e.new.as_ref().expect("row")[0].clone()).collect::<Vec<_>>(), vec![Value::Int64(1), Value::Int64(8)]);
        let kept = windows.close(&table, 1, &columns(), lane0).expect("lane 0 open");
        assert_eq!(kept.iter().map(|e| e.new.as_ref().expect("row")[0].clone()).collect::<Vec<_>>(), vec![Value::Int64(2)]);
        // A new chunk of a lane replaces that lane's window only.
        windows.open(table.clone(), 0, 3, vec!["id".into()]);
        windows.open(table.clone(), 0, 4, vec!["id".into()]);
        assert_eq!(windows.close(&table, 3, &columns(), Vec::new()), None, "replaced");
        assert!(windows.close(&table, 4, &columns(), Vec::new()).is_some());
        assert!(!windows.any());
    }
}
