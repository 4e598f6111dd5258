//! Building segments: consecutive changes of one table under one schema version, cut by event count and bytes.
//!
//! Each change is encoded into MessagePack as it arrives (no copy of the change is kept), and the array header
//! is put in front when the segment is cut: the bytes are exactly those of `segment::encode` of the same
//! changes, which a unit test checks.
//!
//! With traces on, each segment has a span from its first change to its cut, whose `traceparent` the row
//! carries ([`crate::trace`]).

use std::sync::Arc;

use crate::position::Position;
use crate::resolve::TableVersion;
use crate::segment::{SegmentError, SegmentEvent};
use crate::store::segments::SegmentRow;

/// The changes of one table waiting to become a segment.
#[derive(Debug)]
pub(super) struct SegmentBuilder {
    pub(super) table: Arc<TableVersion>,
    /// The encoded changes, without the array header.
    body: Vec<u8>,
    count: usize,
    first: Option<Position>,
    last: Option<Position>,
    /// The earliest source commit time among its changes (µs since the epoch).
    oldest_commit_ts: Option<i64>,
    /// The segment's span, while it fills (traces on only).
    span: Option<tracing::Span>,
}

impl SegmentBuilder {
    pub(super) fn new(table: Arc<TableVersion>) -> Self {
        Self { table, body: Vec::new(), count: 0, first: None, last: None, oldest_commit_ts: None, span: None }
    }

    /// Encodes one change; returns how many bytes it added.
    pub(super) fn push(&mut self, event: &SegmentEvent) -> Result<usize, SegmentError> {
        let before = self.body.len();
        crate::segment::write_event(&mut self.body, event)?;
        self.note(event.position(), event.commit_ts);
        Ok(self.body.len() - before)
    }

    /// Takes one change already encoded (`encoded` are its bytes as [`push`](Self::push) would write them).
    pub(super) fn push_encoded(&mut self, position: Position, commit_ts: i64, encoded: &[u8]) -> usize {
        self.body.extend_from_slice(encoded);
        self.note(position, commit_ts);
        encoded.len()
    }

    /// Counts a change just added at `position`.
    fn note(&mut self, position: Position, commit_ts: i64) {
        if self.first.is_none() {
            self.first = Some(position);
            self.span = crate::trace::segment_span(&self.table.schema.schema, &self.table.schema.table, self.table.version);
        }
        self.last = Some(position);
        self.oldest_commit_ts = Some(self.oldest_commit_ts.map_or(commit_ts, |t| t.min(commit_ts)));
        self.count += 1;
    }

    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Encoded bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.body.len()
    }

    /// Makes a segment row of what it holds and empties itself (`None` when empty).
    pub(super) fn finish(&mut self) -> Result<Option<SegmentRow>, SegmentError> {
        let (Some(first), Some(last)) = (self.first.take(), self.last.take()) else {
            return Ok(None);
        };
        let count = u32::try_from(self.count).unwrap_or(u32::MAX);
        let mut payload = Vec::with_capacity(self.body.len() + 5);
        rmp::encode::write_array_len(&mut payload, count).map_err(|e| SegmentError::Encode(e.into()))?;
        payload.extend_from_slice(&self.body);
        let trace_context =
            self.span.take().and_then(|span| crate::trace::finish_segment(span, self.count, payload.len(), first, last));
        let row = SegmentRow {
            source_schema: self.table.schema.schema.clone(),
            source_table: self.table.schema.table.clone(),
            schema_version: self.table.version,
            first,
            last,
            events: i32::try_from(self.count).unwrap_or(i32::MAX),
            bytes: i32::try_from(payload.len()).unwrap_or(i32::MAX),
            payload,
            trace_context,
            oldest_commit_ts: self.oldest_commit_ts.take(),
        };
        self.body.clear();
        self.count = 0;
        Ok(Some(row))
    }
}

#[cfg(test)]
mod tests {
    use philotes_schemas::{ReplicaIdentity, TableSchema, Value};

    use super::*;
    use crate::position::Lsn;
    use crate::segment;

    #[test]
    fn incremental_encoding_is_byte_for_byte_the_segment_format() {
        let table = Arc::new(TableVersion {
            schema: TableSchema { schema: "public".into(), table: "t".into(), columns: Vec::new(), replica_identity: ReplicaIdentity::Default, primary_key: Vec::new(), relid: None },
            version: 1,
        });
        let events: Vec<SegmentEvent> = (0..300)
            .map(|i| SegmentEvent {
                op: crate::op::Op::Insert,
                commit_lsn: Lsn(0x16B_3748),
                seq: i,
                xid: 7,
                commit_ts: 1_700_000_000_000_000,
                old_is_full: None,
                old: None,
                new: Some(vec![Value::Int64(i as i64), Value::Text(format!("row {i}")), Value::Null, Value::Unchanged]),
            })
            .collect();
        let mut builder = SegmentBuilder::new(table);
        for event in &events {
            builder.push(event).expect("encodes");
        }
        let row = builder.finish().expect("finishes").expect("not empty");
        assert_eq!(row.payload, segment::encode(&events).expect("encodes"));
        assert_eq!(segment::decode(&row.payload).expect("decodes"), events);
        assert_eq!((row.first.seq, row.last.seq, row.events), (0, 299, 300));
        assert!(builder.finish().expect("finishes").is_none(), "empty after finish");
    }
}
