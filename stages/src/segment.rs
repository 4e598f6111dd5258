//! The payload of a buffer segment: the changes of one table, MessagePack-encoded with `rmp-serde`.
//!
//! Rows are positional (a `Vec<Value>` in the column order of the segment's schema version), so a segment does
//! not repeat column names per row; the version's column list lives once in `philotes.schemas`.

use philotes_schemas::Value;
use serde::{Deserialize, Serialize};

use crate::decode::Op;
use crate::position::{Lsn, Position};

/// One change as stored in a segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentEvent {
    /// `I`, `U`, `D` or `T` (the changelog `_op`); `r` for a snapshot read.
    pub op: char,
    /// Commit LSN of the source transaction.
    pub commit_lsn: Lsn,
    /// Order within the transaction.
    pub seq: u64,
    /// Source transaction id.
    pub xid: u32,
    /// Commit time, µs since the Unix epoch.
    pub commit_ts: i64,
    /// The old image: `Some(true)` = the whole old row (REPLICA IDENTITY FULL), `Some(false)` = key columns only
    /// (the other columns are NULL placeholders, not real NULLs); `None` = no old image.
    pub old_is_full: Option<bool>,
    /// The old key or row, in column order.
    pub old: Option<Vec<Value>>,
    /// The new row, in column order; may hold [`Value::Unchanged`] for TOASTed values not sent.
    pub new: Option<Vec<Value>>,
}

impl SegmentEvent {
    /// Where the change sits in the source's history.
    pub fn position(&self) -> Position {
        Position::new(self.commit_lsn, self.seq)
    }

    /// The `_op` code of a decoded operation.
    pub fn op_code(op: Op) -> char {
        op.code()
    }
}

/// Why a payload could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// Encoding failed (should not happen for our own types).
    #[error("encoding a segment: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The bytes are not a segment of this version of philotes.
    #[error("decoding a segment: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// Encodes a segment's changes.
pub fn encode(events: &[SegmentEvent]) -> Result<Vec<u8>, SegmentError> {
    Ok(rmp_serde::to_vec(events)?)
}

/// Decodes a segment's changes.
pub fn decode(payload: &[u8]) -> Result<Vec<SegmentEvent>, SegmentError> {
    Ok(rmp_serde::from_slice(payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_round_trips_through_messagepack() {
        let events = vec![
            SegmentEvent {
                op: 'I',
                commit_lsn: Lsn(0x16B_3748),
                seq: 0,
                xid: 731,
                commit_ts: 1_700_000_000_000_000,
                old_is_full: None,
                old: None,
                new: Some(vec![Value::Int32(1), Value::Text("a".into()), Value::Null, Value::Unchanged]),
            },
            SegmentEvent {
                op: 'D',
                commit_lsn: Lsn(0x16B_3748),
                seq: 1,
                xid: 731,
                commit_ts: 1_700_000_000_000_000,
                old_is_full: Some(false),
                old: Some(vec![Value::Int32(1), Value::Null, Value::Null, Value::Null]),
                new: None,
            },
        ];
        let bytes = encode(&events).expect("encodes");
        assert_eq!(decode(&bytes).expect("decodes"), events);
    }
}
