//! The transaction assembler: pgoutput messages in WAL (= commit) order in, whole transactions of
//! [`ChangeEvent`]s out, each tagged with its final position as it arrives.
//!
//! pgoutput sends a transaction only once it has committed, and its Begin already carries the commit LSN and
//! timestamp. So the decoder never buffers changes: it remembers the open transaction (a few words) and stamps
//! every change with `(commit_lsn, seq)` on the way through. A 1M-row transaction costs the same memory as a
//! 1-row one here; bounding the whole pipeline is the job of the engine's bounded channels and of Enqueue's
//! spilling (DESIGN.md, "Big transactions spill into the buffer, safely").
//!
//! On restart the slot redelivers from its confirmed position, which may be before transactions that are already
//! safe in the buffer. [`Decoder::resume_after`] drops every transaction whose commit LSN is at or below the saved
//! checkpoint, decided at its Begin, so a transaction is never enqueued twice. Relation and Type messages are still
//! forwarded from dropped transactions: the server sends a table's description only once per session, so dropping
//! it would leave later changes to that table without one.

use bytes::Bytes;

use super::error::DecodeError;
use super::pgoutput::{self, CustomType, LogicalMessage, OldTuple, PgOutputMessage, Relation, TupleData};
use crate::position::{Lsn, Position};

pub use crate::op::Op;

/// One row change of a committed source transaction, with everything later stages need to place it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The commit LSN of the transaction: shared by all its events, the first half of the event's [`Position`].
    pub commit_lsn: Lsn,
    /// The source transaction id (the `_xid` column).
    pub xid: u32,
    /// Commit time of the transaction, microseconds since the Unix epoch (the `_commit_ts` column).
    pub commit_ts: i64,
    /// The table, as the `id` of a Relation forwarded earlier.
    pub relation_id: u32,
    /// What happened to the row.
    pub op: Op,
    /// The old key or old row (updates per replica identity, deletes always); `None` otherwise.
    pub old: Option<OldTuple>,
    /// The new row (inserts and updates); `None` otherwise. May hold [`pgoutput::ColumnData::UnchangedToast`].
    pub new: Option<TupleData>,
    /// The 0-based order of the change within its transaction (the `_seq` column).
    pub seq: u64,
}

impl ChangeEvent {
    /// Where the event sits in the source's history.
    pub fn position(&self) -> Position {
        Position::new(self.commit_lsn, self.seq)
    }
}

/// What the decoder hands to the next stage, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A transaction starts; its changes and then its Commit follow.
    Begin {
        /// Its commit LSN (every change of it carries this).
        commit_lsn: Lsn,
        /// Its source transaction id.
        xid: u32,
        /// Its commit time, microseconds since the Unix epoch.
        commit_ts: i64,
    },
    /// The open transaction was replayed from a replication origin (e.g. written by another replication tool).
    Origin {
        /// The commit LSN of the open transaction here.
        commit_lsn: Lsn,
        /// Its commit LSN on the origin server.
        origin_lsn: Lsn,
        /// The origin's name.
        name: String,
    },
    /// A table description; the next stage keeps the relation cache, so these come in stream order and are
    /// forwarded even from transactions that are skipped.
    Relation(Relation),
    /// A user-defined type's name, for resolving column type OIDs; forwarded like Relation.
    Type(CustomType),
    /// A row change.
    Change(ChangeEvent),
    /// The open transaction is complete: everything up to here can be made durable with this position.
    Commit {
        /// Its commit LSN.
        commit_lsn: Lsn,
        /// The LSN past its commit record: what to confirm to the slot once the transaction is durable.
        end_lsn: Lsn,
        /// Its commit time, microseconds since the Unix epoch.
        commit_ts: i64,
    },
    /// A `pg_logical_emit_message` message.
    Message {
        /// The commit LSN of the enclosing transaction for a transactional message; `None` for one sent at once.
        commit_lsn: Option<Lsn>,
        /// The message itself.
        message: LogicalMessage,
    },
}

/// The transaction being decoded.
#[derive(Debug, Clone, Copy)]
struct OpenTxn {
    commit_lsn: Lsn,
    xid: u32,
    commit_ts: i64,
    /// The seq of the next change; also how many changes the transaction had so far.
    next_seq: u64,
    /// The transaction is at or below the skip watermark: check it, forward its relations, drop the rest.
    skipped: bool,
}

/// Assembles pgoutput messages into tagged transactions. Plain and synchronous: the Decode stage owns one and
/// feeds it the frames of one slot in order (it is not meant to be shared between workers).
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    open: Option<OpenTxn>,
    /// Transactions with a commit LSN at or below this were already handed on: drop them if they come again.
    watermark: Option<Lsn>,
    skipped_transactions: u64,
}

impl Decoder {
    /// A decoder that passes every transaction on: for a slot read from its beginning.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// A decoder for a capture that restarts from `checkpoint`, the commit LSN of the last transaction that is
    /// safe in the buffer (a [`Position::commit_lsn`], *not* a Commit's `end_lsn`: the next transaction's commit
    /// record may start exactly at that end). Transactions with a commit LSN at or below it are dropped whole.
    pub fn resume_after(checkpoint: Lsn) -> Self {
        let mut decoder = Decoder::new();
        decoder.skip_through(checkpoint);
        decoder
    }

    /// Drops from now on every transaction whose commit LSN is at or below `lsn` (see [`Decoder::resume_after`]).
    /// Never lowers the watermark: what was handed on stays handed on.
    pub fn skip_through(&mut self, lsn: Lsn) {
        self.watermark = Some(self.watermark.map_or(lsn, |w| w.max(lsn)));
    }

    /// The commit LSN of the transaction being decoded, if one is open (the Begin came, its Commit not yet).
    pub fn open_transaction(&self) -> Option<Lsn> {
        self.open.map(|t| t.commit_lsn)
    }

    /// Everything at or below this LSN is already handed on (or was skipped as such); `None` before the first
    /// transaction when no checkpoint was given.
    pub fn watermark(&self) -> Option<Lsn> {
        self.watermark
    }

    /// How many whole transactions were dropped as already delivered (a metric: a restart shows some, a steady
    /// stream none).
    pub fn skipped_transactions(&self) -> u64 {
        self.skipped_transactions
    }

    /// Parses one pgoutput message (the payload of an XLogData frame) and feeds it to [`Decoder::push`].
    pub fn push_bytes(&mut self, data: Bytes, out: &mut impl Extend<Decoded>) -> Result<(), DecodeError> {
        self.push(pgoutput::parse(data)?, out)
    }

    /// Feeds the next message of the stream and appends what it yields to `out` (nothing, one item, or one
    /// [`Decoded::Change`] per table of a Truncate). On error the decoder's state is unchanged, and the stream
    /// must not be continued: the error says which invariant broke.
    pub fn push(&mut self, message: PgOutputMessage, out: &mut impl Extend<Decoded>) -> Result<(), DecodeError> {
        let kind = message.kind();
        match message {
            PgOutputMessage::Begin { final_lsn, commit_ts, xid } => {
                if let Some(open) = self.open {
                    return Err(DecodeError::NestedBegin {
                        open_xid: open.xid,
                        open_lsn: open.commit_lsn,
                        new_xid: xid,
                        new_lsn: final_lsn,
                    });
                }
                let skipped = self.watermark.is_some_and(|w| final_lsn <= w);
                self.open = Some(OpenTxn { commit_lsn: final_lsn, xid, commit_ts, next_seq: 0, skipped });
                if !skipped {
                    out.extend([Decoded::Begin { commit_lsn: final_lsn, xid, commit_ts }]);
                }
            }
            PgOutputMessage::Commit { flags: _, commit_lsn, end_lsn, commit_ts } => {
                let open = self.open.ok_or(DecodeError::OutsideTransaction { message: kind })?;
                if commit_lsn != open.commit_lsn {
                    return Err(mismatch(&open, "commit LSN", open.commit_lsn, commit_lsn));
                }
                if commit_ts != open.commit_ts {
                    return Err(mismatch(&open, "commit timestamp", open.commit_ts, commit_ts));
                }
                self.open = None;
                if open.skipped {
                    self.skipped_transactions += 1;
                } else {
                    self.skip_through(commit_lsn);
                    out.extend([Decoded::Commit { commit_lsn, end_lsn, commit_ts }]);
                }
            }
            PgOutputMessage::Origin { commit_lsn: origin_lsn, name } => {
                let open = self.open.ok_or(DecodeError::OutsideTransaction { message: kind })?;
                if !open.skipped {
                    out.extend([Decoded::Origin { commit_lsn: open.commit_lsn, origin_lsn, name }]);
                }
            }
            PgOutputMessage::Relation(relation) => out.extend([Decoded::Relation(relation)]),
            PgOutputMessage::Type(custom) => out.extend([Decoded::Type(custom)]),
            PgOutputMessage::Insert { relation_id, new } => {
                self.change(kind, relation_id, Op::Insert, None, Some(new), out)?;
            }
            PgOutputMessage::Update { relation_id, old, new } => {
                self.change(kind, relation_id, Op::Update, old, Some(new), out)?;
            }
            PgOutputMessage::Delete { relation_id, old } => {
                self.change(kind, relation_id, Op::Delete, Some(old), None, out)?;
            }
            PgOutputMessage::Truncate { cascade: _, restart_identity: _, relation_ids } => {
                if self.open.is_none() {
                    return Err(DecodeError::OutsideTransaction { message: kind });
                }
                for relation_id in relation_ids {
                    self.change(kind, relation_id, Op::Truncate, None, None, out)?;
                }
            }
            PgOutputMessage::Message(message) if message.transactional => {
                let open = self.open.ok_or(DecodeError::OutsideTransaction { message: kind })?;
                if !open.skipped {
                    out.extend([Decoded::Message { commit_lsn: Some(open.commit_lsn), message }]);
                }
            }
            PgOutputMessage::Message(mut message) => {
                // Sent at once when decoded, so it sits in the stream at its own place, between transactions.
                // pgoutput gives it the *end* of its WAL record, where the next record starts: a transaction whose
                // commit record comes right after it has that very LSN as its commit LSN. Its position is taken
                // one byte earlier, inside its own record, so that every transaction committed after it is
                // strictly above it (a transaction at its end LSN would otherwise be dropped as delivered, and
                // tie with a snapshot chunk placed there).
                message.lsn = Lsn(message.lsn.as_u64().saturating_sub(1));
                if self.watermark.is_some_and(|w| message.lsn <= w) {
                    return Ok(());
                }
                if self.open.is_none() {
                    self.skip_through(message.lsn);
                }
                out.extend([Decoded::Message { commit_lsn: None, message }]);
            }
        }
        Ok(())
    }

    /// Tags one change with the open transaction's position and hands it on (or drops it in a skipped one).
    fn change(
        &mut self,
        kind: &'static str,
        relation_id: u32,
        op: Op,
        old: Option<OldTuple>,
        new: Option<TupleData>,
        out: &mut impl Extend<Decoded>,
    ) -> Result<(), DecodeError> {
        let open = self.open.as_mut().ok_or(DecodeError::OutsideTransaction { message: kind })?;
        let seq = open.next_seq;
        open.next_seq += 1;
        if !open.skipped {
            out.extend([Decoded::Change(ChangeEvent {
                commit_lsn: open.commit_lsn,
                xid: open.xid,
                commit_ts: open.commit_ts,
                relation_id,
                op,
                old,
                new,
                seq,
            })]);
        }
        Ok(())
    }
}

fn mismatch(open: &OpenTxn, what: &'static str, begin: impl ToString, commit: impl ToString) -> DecodeError {
    DecodeError::CommitMismatch { xid: open.xid, what, begin: begin.to_string(), commit: commit.to_string() }
}

#[cfg(test)]
#[path = "decoder_tests.rs"]
mod tests;
