//! The payload of a buffer segment: the changes of one table, MessagePack-encoded with `rmp-serde`.
//!
//! Rows are positional (a `Vec<Value>` in the column order of the segment's schema version), so a segment does
//! not repeat column names per row; the version's column list lives once in `philotes.schemas`.

use std::sync::Arc;

use philotes_schemas::{TableSchema, Value};
use serde::{Deserialize, Serialize};

use crate::op::Op;
use crate::position::{Lsn, Position};

/// One version of a table's schema, shared by every change decoded with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableVersion {
    /// The columns and their types.
    pub schema: TableSchema,
    /// 1, 2, … per table (philotes.schemas).
    pub version: i32,
}

/// Changes already in their segment form, one after another (a snapshot chunk's rows: a chunk is tens of
/// thousands of rows, and a typed [`SegmentEvent`] per row is an allocation per value that is encoded once and
/// dropped).
#[derive(Debug, Clone)]
pub struct EncodedRows {
    /// The table and the schema version the rows follow.
    pub table: Arc<TableVersion>,
    /// The changes' commit time, µs since the Unix epoch (the same for all).
    pub commit_ts: i64,
    /// The encoded changes, back to back.
    pub bytes: Vec<u8>,
    /// Per change: its position and where its bytes end in `bytes`.
    pub rows: Vec<(Position, usize)>,
}

impl EncodedRows {
    /// Each change's position and bytes, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Position, &[u8])> + '_ {
        let mut start = 0;
        self.rows.iter().map(move |&(position, end)| {
            let bytes = &self.bytes[start..end];
            start = end;
            (position, bytes)
        })
    }
}


/// One change as stored in a segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentEvent {
    /// What happened to the row (stored as its `_op` code: `I`, `U`, `D`, `T`, `r`).
    pub op: Op,
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

/// A write into a `Vec` cannot fail; rmp's signatures still return errors, mapped here once.
fn value_write(e: rmp::encode::ValueWriteError) -> SegmentError {
    SegmentError::Encode(e.into())
}

/// See [`value_write`]: a marker-only write (nil, bool).
fn marker_write(e: std::io::Error) -> SegmentError {
    value_write(rmp::encode::ValueWriteError::InvalidMarkerWrite(e))
}

/// Appends `value` as a segment holds it (`rmp-serde`'s form of [`Value`]: a unit variant is its tag, any other
/// a one-entry map from its tag to its payload). The scalar variants are written here directly, the same bytes
/// without serde's dispatch (a unit test compares every variant with `rmp-serde`).
pub fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), SegmentError> {
    let int = |out: &mut Vec<u8>, tag: &str, v: i64| -> Result<(), SegmentError> {
        write_tagged(out, tag)?;
        rmp::encode::write_sint(out, v).map(drop).map_err(value_write)
    };
    match value {
        Value::Null => rmp::encode::write_str(out, "n").map_err(value_write),
        Value::Unchanged => rmp::encode::write_str(out, "u").map_err(value_write),
        Value::Bool(v) => {
            write_tagged(out, "b")?;
            rmp::encode::write_bool(out, *v).map_err(marker_write)
        }
        Value::Int16(v) => int(out, "h", i64::from(*v)),
        Value::Int32(v) => int(out, "i", i64::from(*v)),
        Value::Int64(v) => int(out, "l", *v),
        Value::Float32(v) => {
            write_tagged(out, "f")?;
            rmp::encode::write_f32(out, *v).map_err(value_write)
        }
        Value::Float64(v) => {
            write_tagged(out, "d")?;
            rmp::encode::write_f64(out, *v).map_err(value_write)
        }
        Value::Numeric(text) => {
            write_tagged(out, "N")?;
            rmp::encode::write_str(out, text).map_err(value_write)
        }
        Value::Text(text) => write_text(out, text),
        Value::Bytes(bytes) => write_bytes(out, bytes),
        Value::Date(v) => int(out, "D", i64::from(*v)),
        Value::Time(v) => int(out, "t", *v),
        Value::Timestamp(v) => int(out, "T", *v),
        Value::TimestampTz(v) => int(out, "Z", *v),
        Value::Interval(_) | Value::Uuid(_) | Value::Array(_) => Ok(rmp_serde::encode::write(out, value)?),
    }
}

/// Appends the head of a row of `values` values (a MessagePack array), before its values.
pub fn write_row_head(out: &mut Vec<u8>, values: usize) -> Result<(), SegmentError> {
    let values = u32::try_from(values).map_err(|_| SegmentError::Encode(rmp_serde::encode::Error::Syntax("a row too wide".into())))?;
    rmp::encode::write_array_len(out, values).map_err(value_write)?;
    Ok(())
}

/// Appends `Value::Text(text)` as [`write_value`] does, from a borrowed text: `{"s": text}`.
pub fn write_text(out: &mut Vec<u8>, text: &str) -> Result<(), SegmentError> {
    write_tagged(out, "s")?;
    rmp::encode::write_str(out, text).map_err(value_write)
}

/// Appends `Value::Bytes(bytes)` as [`write_value`] does, from borrowed bytes: `{"x": bin}`.
pub fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), SegmentError> {
    write_tagged(out, "x")?;
    rmp::encode::write_bin(out, bytes).map_err(value_write)
}

/// The head of a `Value` variant with a payload: a one-entry map keyed by the variant's tag.
fn write_tagged(out: &mut Vec<u8>, tag: &str) -> Result<(), SegmentError> {
    rmp::encode::write_map_len(out, 1).map_err(value_write)?;
    rmp::encode::write_str(out, tag).map_err(value_write)
}

/// Appends `event`, whose new row must be `Some` of an empty row, without that row: the caller appends the
/// row's MessagePack array itself (`resolve::convert::encode_row`), and the whole is the bytes of the event
/// with that row, as [`encode`] writes it (`rmp-serde`'s form: the struct as an array of its fields in order;
/// a unit test compares the two).
pub fn write_event_head(out: &mut Vec<u8>, event: &SegmentEvent) -> Result<(), SegmentError> {
    if !event.new.as_ref().is_some_and(Vec::is_empty) {
        return Err(SegmentError::Encode(rmp_serde::encode::Error::Syntax("the event's new row must be empty".into())));
    }
    write_fields_before_new(out, event)
}

/// Appends `event` as [`encode`] writes each of its events, without serde's dispatch (the capture's hot path).
pub fn write_event(out: &mut Vec<u8>, event: &SegmentEvent) -> Result<(), SegmentError> {
    write_fields_before_new(out, event)?;
    write_row(out, event.new.as_deref())
}

fn write_fields_before_new(out: &mut Vec<u8>, event: &SegmentEvent) -> Result<(), SegmentError> {
    rmp::encode::write_array_len(out, 8).map_err(value_write)?;
    rmp::encode::write_str(out, event.op.code().encode_utf8(&mut [0; 4])).map_err(value_write)?;
    rmp::encode::write_uint(out, event.commit_lsn.as_u64()).map_err(value_write)?;
    rmp::encode::write_uint(out, event.seq).map_err(value_write)?;
    rmp::encode::write_uint(out, u64::from(event.xid)).map_err(value_write)?;
    rmp::encode::write_sint(out, event.commit_ts).map_err(value_write)?;
    match event.old_is_full {
        Some(full) => rmp::encode::write_bool(out, full).map_err(marker_write)?,
        None => rmp::encode::write_nil(out).map_err(marker_write)?,
    }
    write_row(out, event.old.as_deref())
}

/// A row (`None`: nil), as `Option<Vec<Value>>` is encoded.
fn write_row(out: &mut Vec<u8>, row: Option<&[Value]>) -> Result<(), SegmentError> {
    let Some(values) = row else {
        return rmp::encode::write_nil(out).map_err(marker_write);
    };
    write_row_head(out, values.len())?;
    values.iter().try_for_each(|value| write_value(out, value))
}

/// Decodes a segment's changes.
///
/// A hand-written reader takes the exact form [`encode`] writes (several times faster than `rmp-serde`'s
/// generic path: no per-value dispatch through serde's visitors); anything else it does not recognise
/// (another valid MessagePack spelling, or bad bytes) goes through `rmp-serde`, so what decodes, and every
/// error, is exactly what `rmp_serde::from_slice` gives.
pub fn decode(payload: &[u8]) -> Result<Vec<SegmentEvent>, SegmentError> {
    match fast::decode(payload) {
        Some(events) => Ok(events),
        None => Ok(rmp_serde::from_slice(payload)?),
    }
}

/// A scalar value borrowed from a segment payload: text and bytes are not copied. Intervals and arrays have
/// no borrowed form (a reader that meets one takes the owned path, [`decode`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// See [`Value::Null`].
    Null,
    /// See [`Value::Unchanged`].
    Unchanged,
    /// See [`Value::Bool`].
    Bool(bool),
    /// See [`Value::Int16`].
    Int16(i16),
    /// See [`Value::Int32`].
    Int32(i32),
    /// See [`Value::Int64`].
    Int64(i64),
    /// See [`Value::Float32`].
    Float32(f32),
    /// See [`Value::Float64`].
    Float64(f64),
    /// See [`Value::Numeric`].
    Numeric(&'a str),
    /// See [`Value::Text`].
    Text(&'a str),
    /// See [`Value::Bytes`].
    Bytes(&'a [u8]),
    /// See [`Value::Date`].
    Date(i32),
    /// See [`Value::Time`].
    Time(i64),
    /// See [`Value::Timestamp`].
    Timestamp(i64),
    /// See [`Value::TimestampTz`].
    TimestampTz(i64),
    /// See [`Value::Uuid`].
    Uuid(&'a [u8; 16]),
}

/// A value of a snapshot row for ArrowBatch's `BatchBuilder::append_reads`: borrowed from the read (text,
/// bytes), or typed into a value of its own.
#[derive(Debug)]
pub enum FieldValue<'r> {
    /// Borrowed from the read.
    Borrowed(ValueRef<'r>),
    /// Typed.
    Owned(Value),
}

impl<'a> ValueRef<'a> {
    /// The borrowed form of a scalar `value`; `None` for intervals and arrays.
    pub fn of(value: &'a Value) -> Option<Self> {
        Some(match value {
            Value::Null => ValueRef::Null,
            Value::Unchanged => ValueRef::Unchanged,
            Value::Bool(v) => ValueRef::Bool(*v),
            Value::Int16(v) => ValueRef::Int16(*v),
            Value::Int32(v) => ValueRef::Int32(*v),
            Value::Int64(v) => ValueRef::Int64(*v),
            Value::Float32(v) => ValueRef::Float32(*v),
            Value::Float64(v) => ValueRef::Float64(*v),
            Value::Numeric(v) => ValueRef::Numeric(v),
            Value::Text(v) => ValueRef::Text(v),
            Value::Bytes(v) => ValueRef::Bytes(v),
            Value::Date(v) => ValueRef::Date(*v),
            Value::Time(v) => ValueRef::Time(*v),
            Value::Timestamp(v) => ValueRef::Timestamp(*v),
            Value::TimestampTz(v) => ValueRef::TimestampTz(*v),
            Value::Uuid(v) => ValueRef::Uuid(v),
            Value::Interval(_) | Value::Array(_) => return None,
        })
    }

    /// The owned value.
    pub fn to_value(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Unchanged => Value::Unchanged,
            ValueRef::Bool(v) => Value::Bool(v),
            ValueRef::Int16(v) => Value::Int16(v),
            ValueRef::Int32(v) => Value::Int32(v),
            ValueRef::Int64(v) => Value::Int64(v),
            ValueRef::Float32(v) => Value::Float32(v),
            ValueRef::Float64(v) => Value::Float64(v),
            ValueRef::Numeric(v) => Value::Numeric(v.to_owned()),
            ValueRef::Text(v) => Value::Text(v.to_owned()),
            ValueRef::Bytes(v) => Value::Bytes(v.to_vec()),
            ValueRef::Date(v) => Value::Date(v),
            ValueRef::Time(v) => Value::Time(v),
            ValueRef::Timestamp(v) => Value::Timestamp(v),
            ValueRef::TimestampTz(v) => Value::TimestampTz(v),
            ValueRef::Uuid(v) => Value::Uuid(*v),
        }
    }
}

/// One change of a payload, its rows borrowed ([`read_events`]).
#[derive(Debug)]
pub struct EventRef<'a, 'r> {
    /// See [`SegmentEvent::op`].
    pub op: Op,
    /// See [`SegmentEvent::commit_lsn`].
    pub commit_lsn: Lsn,
    /// See [`SegmentEvent::seq`].
    pub seq: u64,
    /// See [`SegmentEvent::xid`].
    pub xid: u32,
    /// See [`SegmentEvent::commit_ts`].
    pub commit_ts: i64,
    /// See [`SegmentEvent::old_is_full`].
    pub old_is_full: Option<bool>,
    /// See [`SegmentEvent::old`].
    pub old: Option<&'r [ValueRef<'a>]>,
    /// See [`SegmentEvent::new`].
    pub new: Option<&'r [ValueRef<'a>]>,
}

/// Calls `each` with every change of `payload`, its values borrowed, in order, without building owned
/// events; `each` returns `false` to stop. `None` when the payload is not in the form [`encode`] writes or holds
/// an interval or an array (then [`decode`] reads it; what `each` saw so far is to be thrown away).
pub fn read_events<'a>(payload: &'a [u8], each: impl FnMut(&EventRef<'a, '_>) -> bool) -> Option<()> {
    fast::read_events(payload, each)
}

/// A strict MessagePack reader for the form `rmp_serde::to_vec` gives a `Vec<SegmentEvent>`: structs as arrays,
/// a newtype variant as a one-entry map `{tag: value}`, a unit variant as its tag string, `Option` as nil or the
/// value. Every function returns `None` on anything else, and the caller falls back to `rmp-serde`; so whenever
/// this reader returns a value, it is the value `rmp-serde` gives for the same bytes.
mod fast {
    use philotes_schemas::{Interval, Value};

    use super::{EventRef, SegmentEvent, ValueRef};
    use crate::op::Op;
    use crate::position::Lsn;

    /// Nesting of arrays this reader follows before it leaves the payload to `rmp-serde` (which has its own
    /// depth limit).
    const MAX_DEPTH: u32 = 64;

    pub(super) fn decode(payload: &[u8]) -> Option<Vec<SegmentEvent>> {
        let mut r = Reader {
            buf: payload,
            pos: 0,
        };
        let n = r.array_len()?;
        // Each event takes at least 9 bytes: never reserve more than the payload can hold.
        let mut events = Vec::with_capacity(n.min(payload.len() / 9));
        for _ in 0..n {
            events.push(r.event()?);
        }
        (r.pos == payload.len()).then_some(events)
    }

    pub(super) fn read_events<'a>(
        payload: &'a [u8],
        mut each: impl FnMut(&EventRef<'a, '_>) -> bool,
    ) -> Option<()> {
        let mut r = Reader {
            buf: payload,
            pos: 0,
        };
        let n = r.array_len()?;
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for _ in 0..n {
            if r.array_len()? != 8 {
                return None;
            }
            let (op, commit_lsn, seq, xid, commit_ts, old_is_full) = r.header()?;
            let has_old = r.row_ref(&mut old)?;
            let has_new = r.row_ref(&mut new)?;
            let event = EventRef {
                op,
                commit_lsn,
                seq,
                xid,
                commit_ts,
                old_is_full,
                old: has_old.then_some(&old[..]),
                new: has_new.then_some(&new[..]),
            };
            if !each(&event) {
                return Some(());
            }
        }
        (r.pos == payload.len()).then_some(())
    }

    struct Reader<'a> {
        buf: &'a [u8],
        pos: usize,
    }

    /// A value's tag and, for a scalar, the value; an interval's or array's body is still to be read.
    enum Head<'a> {
        Scalar(ValueRef<'a>),
        Interval,
        Array,
    }

    impl<'a> Reader<'a> {
        #[inline]
        fn byte(&mut self) -> Option<u8> {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            Some(b)
        }

        #[inline]
        fn peek(&self) -> Option<u8> {
            self.buf.get(self.pos).copied()
        }

        #[inline]
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let end = self.pos.checked_add(n)?;
            let bytes = self.buf.get(self.pos..end)?;
            self.pos = end;
            Some(bytes)
        }

        #[inline]
        fn be<const N: usize>(&mut self) -> Option<[u8; N]> {
            self.take(N)?.try_into().ok()
        }

        #[inline]
        fn len_u8(&mut self) -> Option<usize> {
            self.byte().map(usize::from)
        }

        #[inline]
        fn len_u16(&mut self) -> Option<usize> {
            Some(usize::from(u16::from_be_bytes(self.be()?)))
        }

        #[inline]
        fn len_u32(&mut self) -> Option<usize> {
            usize::try_from(u32::from_be_bytes(self.be()?)).ok()
        }

        fn array_len(&mut self) -> Option<usize> {
            match self.byte()? {
                b @ 0x90..=0x9f => Some(usize::from(b & 0x0f)),
                0xdc => self.len_u16(),
                0xdd => self.len_u32(),
                _ => None,
            }
        }

        /// An integer of any MessagePack width.
        #[inline]
        fn int(&mut self) -> Option<i128> {
            Some(match self.byte()? {
                b @ 0x00..=0x7f => i128::from(b),
                b @ 0xe0..=0xff => i128::from(b as i8),
                0xcc => i128::from(self.byte()?),
                0xcd => i128::from(u16::from_be_bytes(self.be()?)),
                0xce => i128::from(u32::from_be_bytes(self.be()?)),
                0xcf => i128::from(u64::from_be_bytes(self.be()?)),
                0xd0 => i128::from(i8::from_be_bytes(self.be()?)),
                0xd1 => i128::from(i16::from_be_bytes(self.be()?)),
                0xd2 => i128::from(i32::from_be_bytes(self.be()?)),
                0xd3 => i128::from(i64::from_be_bytes(self.be()?)),
                _ => return None,
            })
        }

        #[inline]
        fn int_as<T: TryFrom<i128>>(&mut self) -> Option<T> {
            T::try_from(self.int()?).ok()
        }

        #[inline]
        fn str(&mut self) -> Option<&'a str> {
            let len = match self.byte()? {
                b @ 0xa0..=0xbf => usize::from(b & 0x1f),
                0xd9 => self.len_u8()?,
                0xda => self.len_u16()?,
                0xdb => self.len_u32()?,
                _ => return None,
            };
            std::str::from_utf8(self.take(len)?).ok()
        }

        #[inline]
        fn bin(&mut self) -> Option<&'a [u8]> {
            let len = match self.byte()? {
                0xc4 => self.len_u8()?,
                0xc5 => self.len_u16()?,
                0xc6 => self.len_u32()?,
                _ => return None,
            };
            self.take(len)
        }

        /// Consumes a nil and says so; leaves anything else.
        #[inline]
        fn nil(&mut self) -> Option<bool> {
            if self.peek()? == 0xc0 {
                self.pos += 1;
                Some(true)
            } else {
                Some(false)
            }
        }

        fn event(&mut self) -> Option<SegmentEvent> {
            if self.array_len()? != 8 {
                return None;
            }
            let (op, commit_lsn, seq, xid, commit_ts, old_is_full) = self.header()?;
            let old = self.row()?;
            let new = self.row()?;
            Some(SegmentEvent {
                op,
                commit_lsn,
                seq,
                xid,
                commit_ts,
                old_is_full,
                old,
                new,
            })
        }

        /// The six fields of an event before its rows.
        #[allow(clippy::type_complexity)]
        fn header(&mut self) -> Option<(Op, Lsn, u64, u32, i64, Option<bool>)> {
            let op = {
                let s = self.str()?;
                let mut chars = s.chars();
                let c = chars.next()?;
                if chars.next().is_some() {
                    return None;
                }
                Op::from_code(c)?
            };
            let commit_lsn = Lsn(self.int_as()?);
            let seq = self.int_as()?;
            let xid = self.int_as()?;
            let commit_ts = self.int_as()?;
            let old_is_full = match self.byte()? {
                0xc0 => None,
                0xc2 => Some(false),
                0xc3 => Some(true),
                _ => return None,
            };
            Some((op, commit_lsn, seq, xid, commit_ts, old_is_full))
        }

        /// A row of scalars into `values` (cleared first); `Some(false)` for nil.
        fn row_ref(&mut self, values: &mut Vec<ValueRef<'a>>) -> Option<bool> {
            values.clear();
            if self.nil()? {
                return Some(false);
            }
            let n = self.array_len()?;
            for _ in 0..n {
                match self.head()? {
                    Head::Scalar(v) => values.push(v),
                    Head::Interval | Head::Array => return None,
                }
            }
            Some(true)
        }

        /// `Option<Vec<Value>>`; the outer `None` is "not the canonical form".
        fn row(&mut self) -> Option<Option<Vec<Value>>> {
            if self.nil()? {
                return Some(None);
            }
            Some(Some(self.values(0)?))
        }

        fn values(&mut self, depth: u32) -> Option<Vec<Value>> {
            let n = self.array_len()?;
            // Each value takes at least 2 bytes.
            let mut values = Vec::with_capacity(n.min((self.buf.len() - self.pos) / 2));
            for _ in 0..n {
                values.push(self.value(depth)?);
            }
            Some(values)
        }

        #[inline]
        fn value(&mut self, depth: u32) -> Option<Value> {
            Some(match self.head()? {
                Head::Scalar(v) => v.to_value(),
                Head::Interval => {
                    if self.array_len()? != 3 {
                        return None;
                    }
                    Value::Interval(Interval {
                        months: self.int_as()?,
                        days: self.int_as()?,
                        micros: self.int_as()?,
                    })
                }
                Head::Array if depth < MAX_DEPTH => Value::Array(self.values(depth + 1)?),
                Head::Array => return None,
            })
        }

        /// A value's tag, and the value itself when it is a scalar.
        #[inline]
        fn head(&mut self) -> Option<Head<'a>> {
            Some(Head::Scalar(match self.byte()? {
                // A unit variant: its one-letter tag as a string.
                0xa1 => match self.byte()? {
                    b'n' => ValueRef::Null,
                    b'u' => ValueRef::Unchanged,
                    _ => return None,
                },
                // A newtype variant: `{tag: value}`.
                0x81 => {
                    if self.byte()? != 0xa1 {
                        return None;
                    }
                    match self.byte()? {
                        b'b' => ValueRef::Bool(match self.byte()? {
                            0xc2 => false,
                            0xc3 => true,
                            _ => return None,
                        }),
                        b'h' => ValueRef::Int16(self.int_as()?),
                        b'i' => ValueRef::Int32(self.int_as()?),
                        b'l' => ValueRef::Int64(self.int_as()?),
                        b'f' => {
                            if self.byte()? != 0xca {
                                return None;
                            }
                            ValueRef::Float32(f32::from_be_bytes(self.be()?))
                        }
                        b'd' => {
                            if self.byte()? != 0xcb {
                                return None;
                            }
                            ValueRef::Float64(f64::from_be_bytes(self.be()?))
                        }
                        b'N' => ValueRef::Numeric(self.str()?),
                        b's' => ValueRef::Text(self.str()?),
                        b'x' => ValueRef::Bytes(self.bin()?),
                        b'D' => ValueRef::Date(self.int_as()?),
                        b't' => ValueRef::Time(self.int_as()?),
                        b'T' => ValueRef::Timestamp(self.int_as()?),
                        b'Z' => ValueRef::TimestampTz(self.int_as()?),
                        b'U' => ValueRef::Uuid(self.bin()?.try_into().ok()?),
                        b'I' => return Some(Head::Interval),
                        b'a' => return Some(Head::Array),
                        _ => return None,
                    }
                }
                _ => return None,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_head_and_its_row_are_rmp_serdes_bytes_of_the_event() {
        let row = vec![Value::Int64(-3), Value::Text("x".into()), Value::Null];
        let events = [
            (Op::Read, None, None, 0u64, 0u32, 0i64),
            (Op::Insert, None, None, 200, 7, -1),
            (Op::Update, Some(false), Some(vec![Value::Int64(1), Value::Null, Value::Null]), u64::MAX, u32::MAX, i64::MIN),
            (Op::Update, Some(true), Some(row.clone()), 65_536, 70_000, i64::MAX),
        ];
        for (op, old_is_full, old, seq, xid, commit_ts) in events {
            let event = SegmentEvent { op, commit_lsn: Lsn(0x1_0000_0001), seq, xid, commit_ts, old_is_full, old, new: Some(row.clone()) };
            let mut bytes = Vec::new();
            write_event_head(&mut bytes, &SegmentEvent { new: Some(Vec::new()), ..event.clone() }).expect("head");
            write_row_head(&mut bytes, row.len()).expect("row head");
            for value in &row {
                write_value(&mut bytes, value).expect("value");
            }
            assert_eq!(bytes, rmp_serde::to_vec(&event).expect("encodes"), "{event:?}");
            for new in [Some(row.clone()), Some(Vec::new()), None] {
                let event = SegmentEvent { new, ..event.clone() };
                let mut whole = Vec::new();
                write_event(&mut whole, &event).expect("writes");
                assert_eq!(whole, rmp_serde::to_vec(&event).expect("encodes"), "{event:?}");
            }
        }
        let mut bytes = Vec::new();
        assert!(write_event_head(&mut bytes, &SegmentEvent { new: None, ..SegmentEvent { op: Op::Delete, commit_lsn: Lsn(1), seq: 0, xid: 0, commit_ts: 0, old_is_full: None, old: None, new: None } }).is_err());
    }

    #[test]
    fn values_written_directly_are_rmp_serdes_bytes() {
        use philotes_schemas::Interval;
        let mut values = vec![
            Value::Null,
            Value::Unchanged,
            Value::Bool(true),
            Value::Bool(false),
            Value::Numeric("-1234.50".into()),
            Value::Numeric("NaN".into()),
            Value::Text(String::new()),
            Value::Text("é".repeat(40)),
            Value::Text("x".repeat(70_000)),
            Value::Bytes(Vec::new()),
            Value::Bytes(vec![7; 300]),
            Value::Bytes(vec![1; 70_000]),
            Value::Interval(Interval { months: 1, days: -2, micros: 3 }),
            Value::Uuid([9; 16]),
            Value::Array(vec![Value::Int32(1), Value::Null]),
            Value::Float32(f32::NAN),
            Value::Float32(-0.0),
            Value::Float64(f64::INFINITY),
            Value::Float64(1.5e300),
        ];
        for v in [0i64, 1, -1, 31, 32, -32, -33, 127, 128, -128, -129, 255, 256, 65_535, 65_536, -32_768, -32_769, i64::from(i32::MAX), i64::from(i32::MIN), i64::MAX, i64::MIN] {
            values.push(Value::Int64(v));
            values.push(Value::Time(v));
            values.push(Value::Timestamp(v));
            values.push(Value::TimestampTz(v));
            if let Ok(v) = i32::try_from(v) {
                values.push(Value::Int32(v));
                values.push(Value::Date(v));
            }
            if let Ok(v) = i16::try_from(v) {
                values.push(Value::Int16(v));
            }
        }
        for value in values {
            let mut direct = Vec::new();
            write_value(&mut direct, &value).expect("writes");
            assert_eq!(direct, rmp_serde::to_vec(&value).expect("encodes"), "{value:?}");
        }
    }

    #[test]
    fn an_op_is_stored_as_its_code_so_buffers_written_before_op_was_typed_still_read() {
        for op in [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Read] {
            assert_eq!(rmp_serde::to_vec(&op).unwrap(), rmp_serde::to_vec(&op.code()).unwrap());
            assert_eq!(rmp_serde::from_slice::<Op>(&rmp_serde::to_vec(&op.code()).unwrap()).unwrap(), op);
        }
        assert!(rmp_serde::from_slice::<Op>(&rmp_serde::to_vec(&'X').unwrap()).is_err());
    }

    #[test]
    fn a_segment_round_trips_through_messagepack() {
        let events = vec![
            SegmentEvent {
                op: Op::Insert,
                commit_lsn: Lsn(0x16B_3748),
                seq: 0,
                xid: 731,
                commit_ts: 1_700_000_000_000_000,
                old_is_full: None,
                old: None,
                new: Some(vec![
                    Value::Int32(1),
                    Value::Text("a".into()),
                    Value::Null,
                    Value::Unchanged,
                ]),
            },
            SegmentEvent {
                op: Op::Delete,
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

    /// Events with every kind of value, at every MessagePack width of lengths and integers.
    fn every_form() -> Vec<SegmentEvent> {
        use philotes_schemas::Interval;
        let long = |n: usize| "é".repeat(n);
        let row = vec![
            Value::Null,
            Value::Unchanged,
            Value::Bool(false),
            Value::Bool(true),
            Value::Int16(i16::MIN),
            Value::Int16(-1),
            Value::Int32(127),
            Value::Int32(-33),
            Value::Int32(i32::MAX),
            Value::Int64(i64::MIN),
            Value::Int64(u32::MAX.into()),
            Value::Int64(-129),
            Value::Float32(f32::NAN),
            Value::Float64(-0.0),
            Value::Numeric("-12.50".into()),
            Value::Text(String::new()),
            Value::Text(long(15)),
            Value::Text(long(100)),
            Value::Text(long(40_000)),
            Value::Bytes(vec![]),
            Value::Bytes(vec![7; 300]),
            Value::Bytes(vec![9; 70_000]),
            Value::Date(i32::MIN),
            Value::Time(86_400_000_000),
            Value::Timestamp(i64::MAX),
            Value::TimestampTz(-1),
            Value::Interval(Interval::NEG_INFINITY),
            Value::Interval(Interval {
                months: 1,
                days: -2,
                micros: 3,
            }),
            Value::Uuid([0xAB; 16]),
            Value::Array(vec![]),
            Value::Array((0..20).map(Value::Int32).collect()),
            Value::Array(vec![Value::Array(vec![
                Value::Null,
                Value::Text("x".into()),
            ])]),
        ];
        let mut events = Vec::new();
        for (i, (op, full)) in [
            (Op::Insert, None),
            (Op::Update, Some(true)),
            (Op::Delete, Some(false)),
            (Op::Truncate, None),
            (Op::Read, None),
        ]
        .into_iter()
        .enumerate()
        {
            events.push(SegmentEvent {
                op,
                commit_lsn: Lsn([0, 5, 200, 70_000, u64::MAX][i]),
                seq: [0, 128, 65_536, u64::from(u32::MAX) + 1, u64::MAX][i],
                xid: [0, 1, 255, 65_535, u32::MAX][i],
                commit_ts: [0, -1, i64::MIN, i64::MAX, 1_700_000_000_000_000][i],
                old_is_full: full,
                old: full.map(|_| row.clone()),
                new: (op != Op::Delete).then(|| row.clone()),
            });
        }
        events
    }

    #[test]
    fn the_fast_reader_reads_what_rmp_serde_reads() {
        let events = every_form();
        let bytes = encode(&events).expect("encodes");
        let fast = fast::decode(&bytes).expect("the canonical form takes the fast path");
        let slow: Vec<SegmentEvent> = rmp_serde::from_slice(&bytes).expect("decodes");
        assert_eq!(fast, slow);
        assert_eq!(fast, events);
        // Many events: an array longer than 65,535 elements.
        let small = SegmentEvent {
            new: Some(vec![Value::Int32(1)]),
            ..events[0].clone()
        };
        let many = vec![small; 70_000];
        let bytes = encode(&many).expect("encodes");
        assert_eq!(fast::decode(&bytes).expect("fast"), many);
    }

    #[test]
    fn other_spellings_and_bad_bytes_are_left_to_rmp_serde() {
        let events = every_form();
        // Structs as maps: valid MessagePack the fast reader does not take, decoded all the same.
        let named = rmp_serde::to_vec_named(&events).expect("encodes");
        assert!(fast::decode(&named).is_none());
        assert_eq!(decode(&named).expect("decodes"), events);
        // Cut short, trailing bytes, not a segment: the same answer as rmp-serde's.
        let bytes = encode(&events).expect("encodes");
        for bad in [
            &bytes[..bytes.len() - 1],
            &bytes[..1],
            &[0xc1][..],
            &b"\x91\x92"[..],
        ] {
            assert!(fast::decode(bad).is_none());
            assert_eq!(
                decode(bad).is_ok(),
                rmp_serde::from_slice::<Vec<SegmentEvent>>(bad).is_ok()
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(fast::decode(&trailing).is_none());
        assert_eq!(
            decode(&trailing).ok(),
            rmp_serde::from_slice::<Vec<SegmentEvent>>(&trailing).ok()
        );
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use philotes_schemas::Interval;
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            Just(Value::Unchanged),
            any::<bool>().prop_map(Value::Bool),
            any::<i16>().prop_map(Value::Int16),
            any::<i32>().prop_map(Value::Int32),
            any::<i64>().prop_map(Value::Int64),
            any::<f32>().prop_map(Value::Float32),
            any::<f64>().prop_map(Value::Float64),
            "-?[0-9]{1,20}(\\.[0-9]{0,6})?".prop_map(Value::Numeric),
            ".{0,40}".prop_map(Value::Text),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bytes),
            any::<i32>().prop_map(Value::Date),
            any::<i64>().prop_map(Value::Time),
            any::<i64>().prop_map(Value::Timestamp),
            any::<i64>().prop_map(Value::TimestampTz),
            (any::<i32>(), any::<i32>(), any::<i64>()).prop_map(|(months, days, micros)| {
                Value::Interval(Interval {
                    months,
                    days,
                    micros,
                })
            }),
            any::<[u8; 16]>().prop_map(Value::Uuid),
        ];
        leaf.prop_recursive(3, 40, 20, |inner| {
            prop::collection::vec(inner, 0..20).prop_map(Value::Array)
        })
    }

    fn any_event() -> impl proptest::strategy::Strategy<Value = SegmentEvent> {
        use proptest::prelude::*;
        let row = || prop::option::of(prop::collection::vec(any_value(), 0..10));
        (
            prop::sample::select(vec![Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Read]),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<i64>(),
            prop::option::of(any::<bool>()),
            row(),
            row(),
        )
            .prop_map(|(op, lsn, seq, xid, commit_ts, old_is_full, old, new)| {
                SegmentEvent {
                    op,
                    commit_lsn: Lsn(lsn),
                    seq,
                    xid,
                    commit_ts,
                    old_is_full,
                    old,
                    new,
                }
            })
    }

    proptest::proptest! {
        /// Any segment takes the fast path and reads back as itself; any corruption of it decodes (or fails)
        /// exactly as rmp-serde has it.
        #[test]
        fn the_fast_reader_agrees_with_rmp_serde(
            events in proptest::collection::vec(any_event(), 0..20),
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..4),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let bytes = encode(&events).expect("encodes");
            proptest::prop_assert_eq!(fast::decode(&bytes), Some(events.clone()));
            // The writer without serde writes the same bytes.
            let mut written = Vec::new();
            rmp::encode::write_array_len(&mut written, events.len() as u32).expect("len");
            for event in &events {
                write_event(&mut written, event).expect("writes");
            }
            proptest::prop_assert_eq!(&written, &bytes);
            let mut bad = bytes.clone();
            for (at, byte) in flips {
                let at = at % bad.len();
                bad[at] = byte;
            }
            let cut = &bytes[..cut % (bytes.len() + 1)];
            for bad in [&bad[..], cut] {
                let expected = rmp_serde::from_slice::<Vec<SegmentEvent>>(bad).ok();
                if let Some(fast) = fast::decode(bad) {
                    proptest::prop_assert_eq!(Some(fast), expected.clone());
                }
                proptest::prop_assert_eq!(decode(bad).ok(), expected);
            }
        }
    }
}
