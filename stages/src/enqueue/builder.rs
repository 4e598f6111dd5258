//! Building segments: consecutive changes of one table under one schema version, cut by event count and bytes.

use std::sync::Arc;

use philotes_schemas::Value;

use crate::position::Position;
use crate::resolve::TableVersion;
use crate::segment::{self, SegmentError, SegmentEvent};
use crate::store::segments::SegmentRow;

/// The changes of one table waiting to become a segment.
#[derive(Debug)]
pub(super) struct SegmentBuilder {
    pub(super) table: Arc<TableVersion>,
    events: Vec<SegmentEvent>,
    /// Estimated encoded size, to cut at `max_bytes` without encoding twice.
    pub(super) bytes: usize,
}

impl SegmentBuilder {
    pub(super) fn new(table: Arc<TableVersion>) -> Self {
        Self { table, events: Vec::new(), bytes: 0 }
    }

    pub(super) fn push(&mut self, event: SegmentEvent) -> usize {
        let size = estimate(&event);
        self.bytes += size;
        self.events.push(event);
        size
    }

    pub(super) fn len(&self) -> usize {
        self.events.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Encodes what it holds into a segment row and empties itself.
    pub(super) fn finish(&mut self) -> Result<Option<SegmentRow>, SegmentError> {
        let (Some(first), Some(last)) = (self.events.first(), self.events.last()) else {
            return Ok(None);
        };
        let (first, last): (Position, Position) = (first.position(), last.position());
        let payload = segment::encode(&self.events)?;
        let row = SegmentRow {
            source_schema: self.table.schema.schema.clone(),
            source_table: self.table.schema.table.clone(),
            schema_version: self.table.version,
            first,
            last,
            events: i32::try_from(self.events.len()).unwrap_or(i32::MAX),
            bytes: i32::try_from(payload.len()).unwrap_or(i32::MAX),
            payload,
            trace_context: None,
        };
        self.events.clear();
        self.bytes = 0;
        Ok(Some(row))
    }
}

/// A close upper estimate of an event's MessagePack size.
fn estimate(event: &SegmentEvent) -> usize {
    let row = |values: &Option<Vec<Value>>| values.as_ref().map_or(1, |v| v.iter().map(value_size).sum::<usize>() + 5);
    40 + row(&event.old) + row(&event.new)
}

fn value_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Unchanged | Value::Bool(_) => 2,
        Value::Int16(_) | Value::Int32(_) | Value::Float32(_) | Value::Date(_) => 6,
        Value::Int64(_) | Value::Float64(_) | Value::Time(_) | Value::Timestamp(_) | Value::TimestampTz(_) => 10,
        Value::Numeric(s) | Value::Text(s) => s.len() + 6,
        Value::Bytes(b) => b.len() + 6,
        Value::Interval(_) => 24,
        Value::Uuid(_) => 20,
        Value::Array(items) => items.iter().map(value_size).sum::<usize>() + 6,
    }
}
