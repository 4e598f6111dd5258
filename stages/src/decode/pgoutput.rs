//! The pgoutput wire format, protocol version 1: one message (the payload of one XLogData frame) in, one
//! [`PgOutputMessage`] out.
//!
//! Format: <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>. All integers are
//! big-endian; strings are NUL-terminated; timestamps are microseconds since 2000-01-01 and are converted here to
//! microseconds since the Unix epoch, the unit every later stage uses. Column values stay `Bytes` slices of the
//! input (no copy); names are copied into `String`s because they are small and outlive the frame in caches.
//!
//! The parser never panics on input: every read is bounds-checked and a malformed message becomes a
//! [`DecodeError`] naming the field and its byte offset. A message must be consumed exactly, so a mismatch
//! between our reading of the format and the server's is caught at the first message, not ten fields later.

use bytes::Bytes;

use super::error::DecodeError;
use crate::position::Lsn;

/// Microseconds from 1970-01-01 (Unix epoch) to 2000-01-01 (Postgres epoch).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// One decoded pgoutput message, in the order the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// Opens a transaction. It is sent only when the transaction has committed, so it already knows where
    /// the commit is: every change can be tagged with its final position as it arrives.
    Begin {
        /// The LSN of the transaction's commit record (equal to the Commit's `commit_lsn`).
        final_lsn: Lsn,
        /// Commit time, microseconds since the Unix epoch.
        commit_ts: i64,
        /// The source transaction id.
        xid: u32,
    },
    /// Closes the transaction opened by the last Begin.
    Commit {
        /// Reserved by the protocol (always 0 so far); kept so nothing is silently dropped.
        flags: u8,
        /// The LSN of the commit record: the transaction's position.
        commit_lsn: Lsn,
        /// The LSN just past the commit record, what a client confirms to the slot.
        end_lsn: Lsn,
        /// Commit time, microseconds since the Unix epoch.
        commit_ts: i64,
    },
    /// The transaction was replayed from another node (a replication origin was set when it ran); sent after
    /// Begin. Lets a pipeline recognise changes it wrote itself (loops in two-way setups).
    Origin {
        /// The commit LSN of the transaction on the origin server.
        commit_lsn: Lsn,
        /// The origin's name.
        name: String,
    },
    /// Describes a table before the first change to it in a session and after every change of its definition;
    /// the next stage keeps these in its relation cache.
    Relation(Relation),
    /// Names a non-built-in data type used by a column of a Relation that follows (enums, domains, ...).
    Type(CustomType),
    /// A new row.
    Insert {
        /// The table (the `id` of an earlier Relation message).
        relation_id: u32,
        /// The row as inserted.
        new: TupleData,
    },
    /// A changed row.
    Update {
        /// The table (the `id` of an earlier Relation message).
        relation_id: u32,
        /// The old key (replica identity DEFAULT/INDEX, only when the key changed) or the whole old row
        /// (replica identity FULL); `None` when the key did not change under DEFAULT/INDEX.
        old: Option<OldTuple>,
        /// The row after the change; unchanged TOASTed columns are [`ColumnData::UnchangedToast`].
        new: TupleData,
    },
    /// A deleted row.
    Delete {
        /// The table (the `id` of an earlier Relation message).
        relation_id: u32,
        /// The key of the deleted row, or the whole row under replica identity FULL.
        old: OldTuple,
    },
    /// One TRUNCATE statement, over every table it emptied (including those reached by CASCADE).
    Truncate {
        /// `TRUNCATE ... CASCADE` was given.
        cascade: bool,
        /// `TRUNCATE ... RESTART IDENTITY` was given.
        restart_identity: bool,
        /// The tables truncated (ids of earlier Relation messages).
        relation_ids: Vec<u32>,
    },
    /// A message written with `pg_logical_emit_message` (sent only when the `messages` option is on).
    Message(LogicalMessage),
}

impl PgOutputMessage {
    /// The message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            PgOutputMessage::Begin { .. } => "Begin",
            PgOutputMessage::Commit { .. } => "Commit",
            PgOutputMessage::Origin { .. } => "Origin",
            PgOutputMessage::Relation(_) => "Relation",
            PgOutputMessage::Type(_) => "Type",
            PgOutputMessage::Insert { .. } => "Insert",
            PgOutputMessage::Update { .. } => "Update",
            PgOutputMessage::Delete { .. } => "Delete",
            PgOutputMessage::Truncate { .. } => "Truncate",
            PgOutputMessage::Message(_) => "Message",
        }
    }
}

/// A table's description as of this point in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID: what changes refer to.
    pub id: u32,
    /// The schema; pgoutput sends an empty string for `pg_catalog`.
    pub namespace: String,
    /// The table name.
    pub name: String,
    /// Which old values updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// The published columns, in the order tuples list their values.
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key: its value is present in `K` old tuples (and the mirror mode keys on it).
    pub is_key: bool,
    /// The column name.
    pub name: String,
    /// The type OID, mapped to a typed value by `philotes-schemas`.
    pub type_oid: u32,
    /// The type modifier (`atttypmod`; -1 when none), e.g. the length of `varchar(n)` or precision of `numeric`.
    pub type_modifier: i32,
}

/// `pg_class.relreplident`: what old values the server logs for updates and deletes of a table (one type for
/// the decoder and the schema versions).
pub use philotes_schemas::ReplicaIdentity;

/// A user-defined type named by a Type message, so column type OIDs above the built-in range can be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomType {
    /// The type's OID, as found in [`RelationColumn::type_oid`].
    pub id: u32,
    /// Its schema (empty for `pg_catalog`).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// A `pg_logical_emit_message` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Written as part of a transaction (sent inside its Begin/Commit), rather than at once.
    pub transactional: bool,
    /// The LSN of the message record.
    pub lsn: Lsn,
    /// The prefix the writer chose, to tell message families apart.
    pub prefix: String,
    /// The payload, as written.
    pub content: Bytes,
}

/// The old image an Update or Delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple {
    /// Whether it holds only the key columns or the whole row.
    pub kind: OldKind,
    /// The values, one per column of the Relation (non-key columns are NULL in a `Key` tuple).
    pub data: TupleData,
}

/// Which old image a tuple is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OldKind {
    /// `K`: the replica identity key columns only (DEFAULT or INDEX identity).
    Key,
    /// `O`: the whole old row (FULL identity).
    Full,
}

/// The values of one row, one per column of its Relation, in column order.
pub type TupleData = Vec<ColumnData>;

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnData {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change and was not sent. Not NULL: later stages keep the previous value.
    UnchangedToast,
    /// The value in the type's text output format.
    Text(Bytes),
    /// The value in the type's binary send format (when the slot is read with `binary 'true'`).
    Binary(Bytes),
}

/// Converts a pgoutput timestamp (µs since 2000-01-01) to µs since the Unix epoch; `None` if out of range.
pub fn pg_timestamp_to_unix_micros(pg_micros: i64) -> Option<i64> {
    pg_micros.checked_add(PG_EPOCH_OFFSET_MICROS)
}

/// Parses one pgoutput (proto 1) message. Column values and message contents are slices of `data`.
pub fn parse(data: Bytes) -> Result<PgOutputMessage, DecodeError> {
    let tag = *data.first().ok_or(DecodeError::Empty)?;
    let message = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        _ => return Err(unsupported(tag)),
    };
    let mut r = Reader { data, pos: 1, message };
    let parsed = match tag {
        b'B' => PgOutputMessage::Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_ts: r.timestamp("commit timestamp")?,
            xid: r.u32("xid")?,
        },
        b'C' => PgOutputMessage::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.timestamp("commit timestamp")?,
        },
        b'O' => PgOutputMessage::Origin { commit_lsn: r.lsn("origin commit LSN")?, name: r.string("origin name")? },
        b'R' => PgOutputMessage::Relation(r.relation()?),
        b'Y' => PgOutputMessage::Type(CustomType {
            id: r.u32("type OID")?,
            namespace: r.string("namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let relation_id = r.u32("relation OID")?;
            r.expect_new_marker()?;
            PgOutputMessage::Insert { relation_id, new: r.tuple()? }
        }
        b'U' => {
            let relation_id = r.u32("relation OID")?;
            let offset = r.pos;
            let old = match r.u8("tuple marker")? {
                b'N' => None,
                b'K' => Some(OldTuple { kind: OldKind::Key, data: r.tuple()? }),
                b'O' => Some(OldTuple { kind: OldKind::Full, data: r.tuple()? }),
                other => return Err(r.invalid("tuple marker (expected K, O or N)", byte_repr(other), offset)),
            };
            if old.is_some() {
                r.expect_new_marker()?;
            }
            PgOutputMessage::Update { relation_id, old, new: r.tuple()? }
        }
        b'D' => {
            let relation_id = r.u32("relation OID")?;
            let offset = r.pos;
            let kind = match r.u8("tuple marker")? {
                b'K' => OldKind::Key,
                b'O' => OldKind::Full,
                other => return Err(r.invalid("tuple marker (expected K or O)", byte_repr(other), offset)),
            };
            PgOutputMessage::Delete { relation_id, old: OldTuple { kind, data: r.tuple()? } }
        }
        b'T' => r.truncate()?,
        _ => r.logical_message()?,
    };
    r.finish()?;
    Ok(parsed)
}

/// The error for a tag that is not a proto-1 message.
fn unsupported(tag: u8) -> DecodeError {
    let name = match tag {
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        b'p' => "Stream Prepare",
        _ => return DecodeError::UnknownTag { tag },
    };
    DecodeError::Unsupported { tag: char::from(tag), name }
}

/// A byte as a readable value for error messages: `'K'` when printable, `0x4b` otherwise.
fn byte_repr(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", char::from(b))
    } else {
        format!("{b:#04x}")
    }
}

/// A bounds-checked cursor over one message.
struct Reader {
    data: Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], DecodeError> {
        let start = self.pos;
        match start.checked_add(n).filter(|&end| end <= self.data.len()) {
            Some(end) => {
                self.pos = end;
                Ok(&self.data[start..end])
            }
            None => Err(DecodeError::Truncated {
                message: self.message,
                what,
                offset: start,
                needed: n,
                len: self.data.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(what)?)))
    }

    fn timestamp(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let offset = self.pos;
        let pg = i64::from_be_bytes(self.array(what)?);
        pg_timestamp_to_unix_micros(pg)
            .ok_or_else(|| self.invalid(what, format!("{pg} (µs since 2000-01-01, out of range)"), offset))
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = self.data.get(start..).unwrap_or_default();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated {
                message: self.message,
                what,
                offset: start,
                needed: rest.len() + 1,
                len: self.data.len(),
            });
        };
        let text = std::str::from_utf8(&rest[..nul])
            .map_err(|_| DecodeError::NotUtf8 { message: self.message, what, offset: start })?
            .to_owned();
        self.pos = start + nul + 1;
        Ok(text)
    }

    /// `n` bytes as a zero-copy slice of the message.
    fn slice(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.data.slice(start..self.pos))
    }

    /// A length that the protocol sends as a signed integer but that must not be negative.
    fn count(&mut self, value: i64, what: &'static str, offset: usize) -> Result<usize, DecodeError> {
        usize::try_from(value).map_err(|_| self.invalid(what, value.to_string(), offset))
    }

    fn invalid(&self, what: &'static str, value: String, offset: usize) -> DecodeError {
        DecodeError::Invalid { message: self.message, what, value, offset }
    }

    fn expect_new_marker(&mut self) -> Result<(), DecodeError> {
        let offset = self.pos;
        match self.u8("tuple marker")? {
            b'N' => Ok(()),
            other => Err(self.invalid("tuple marker (expected N)", byte_repr(other), offset)),
        }
    }

    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let offset = self.pos;
        let n = i64::from(self.i16("column count")?);
        let n = self.count(n, "column count", offset)?;
        let mut columns = Vec::with_capacity(n);
        for _ in 0..n {
            let offset = self.pos;
            let column = match self.u8("column kind")? {
                b'n' => ColumnData::Null,
                b'u' => ColumnData::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let len_offset = self.pos;
                    let len = i64::from(self.i32("column value length")?);
                    let len = self.count(len, "column value length", len_offset)?;
                    let value = self.slice(len, "column value")?;
                    if kind == b't' {
                        ColumnData::Text(value)
                    } else {
                        ColumnData::Binary(value)
                    }
                }
                other => return Err(self.invalid("column kind (expected n, u, t or b)", byte_repr(other), offset)),
            };
            columns.push(column);
        }
        Ok(columns)
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("relation OID")?;
        let namespace = self.string("namespace")?;
        let name = self.string("relation name")?;
        let offset = self.pos;
        let byte = self.u8("replica identity")?;
        let Some(replica_identity) = ReplicaIdentity::from_pgoutput(byte) else {
            return Err(self.invalid("replica identity (expected d, n, f or i)", byte_repr(byte), offset));
        };
        let offset = self.pos;
        let n = i64::from(self.i16("column count")?);
        let n = self.count(n, "column count", offset)?;
        let mut columns = Vec::with_capacity(n);
        for _ in 0..n {
            let flags = self.u8("column flags")?;
            columns.push(RelationColumn {
                is_key: flags & 1 != 0,
                name: self.string("column name")?,
                type_oid: self.u32("column type OID")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation { id, namespace, name, replica_identity, columns })
    }

    fn truncate(&mut self) -> Result<PgOutputMessage, DecodeError> {
        let offset = self.pos;
        let n = i64::from(self.i32("relation count")?);
        let n = self.count(n, "relation count", offset)?;
        let options = self.u8("options")?;
        // The count is untrusted: do not reserve more than the rest of the message can hold.
        let room = self.data.len().saturating_sub(self.pos) / 4;
        let mut relation_ids = Vec::with_capacity(n.min(room));
        for _ in 0..n {
            relation_ids.push(self.u32("relation OID")?);
        }
        Ok(PgOutputMessage::Truncate { cascade: options & 1 != 0, restart_identity: options & 2 != 0, relation_ids })
    }

    fn logical_message(&mut self) -> Result<PgOutputMessage, DecodeError> {
        let flags = self.u8("flags")?;
        let lsn = self.lsn("message LSN")?;
        let prefix = self.string("prefix")?;
        let offset = self.pos;
        let len = i64::from(self.i32("content length")?);
        let len = self.count(len, "content length", offset)?;
        let content = self.slice(len, "content")?;
        Ok(PgOutputMessage::Message(LogicalMessage { transactional: flags & 1 != 0, lsn, prefix, content }))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.data.len().saturating_sub(self.pos) {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { message: self.message, offset: self.pos, extra }),
        }
    }
}

#[cfg(test)]
#[path = "pgoutput_tests.rs"]
mod tests;
