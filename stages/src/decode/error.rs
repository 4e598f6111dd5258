//! What can go wrong while decoding pgoutput: malformed bytes (named by what was being read and at which byte
//! offset of the message) and broken stream invariants (a change outside a transaction, a Commit that does not
//! match its Begin). Every variant means the stream cannot be trusted from here on: the pipeline stops with the
//! message, it never skips the event.

use crate::position::Lsn;

/// Why a pgoutput message or a sequence of them could not be decoded.
///
/// Offsets count bytes from the start of the one pgoutput message (the payload of its XLogData frame), where
/// offset 0 is the message-type byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame carried no bytes at all, so there is not even a message type.
    #[error("empty pgoutput message (no message-type byte)")]
    Empty,
    /// The message ended before a field it must contain.
    #[error("truncated {message} message: {what} needs {needed} byte(s) at offset {offset}, but the message is {len} bytes long")]
    Truncated {
        /// The kind of message being read (`Begin`, `Insert`, ...).
        message: &'static str,
        /// The field that did not fit.
        what: &'static str,
        /// Where that field starts.
        offset: usize,
        /// How many bytes it needs (for strings: at least the NUL terminator).
        needed: usize,
        /// The length of the whole message.
        len: usize,
    },
    /// The first byte is not a pgoutput message type at all.
    #[error("unknown pgoutput message type {tag:#04x} at offset 0")]
    UnknownTag {
        /// The byte found.
        tag: u8,
    },
    /// A message of a later protocol version (streaming or two-phase), which protocol version 1 never sends: the
    /// slot was read with other options than ours.
    #[error("pgoutput message '{tag}' ({name}) at offset 0 belongs to protocol version 2 or later; philotes requests proto_version 1")]
    Unsupported {
        /// The message-type byte.
        tag: char,
        /// What that message is.
        name: &'static str,
    },
    /// A field holds a value the protocol does not allow (a tuple kind, a replica identity, a negative count).
    #[error("{message} message: invalid {what} {value} at offset {offset}")]
    Invalid {
        /// The kind of message being read.
        message: &'static str,
        /// The field.
        what: &'static str,
        /// The value found, printed for the reader.
        value: String,
        /// Where the field starts.
        offset: usize,
    },
    /// A string field is not valid UTF-8 (names and prefixes are; column values are not checked here).
    #[error("{message} message: {what} at offset {offset} is not valid UTF-8")]
    NotUtf8 {
        /// The kind of message being read.
        message: &'static str,
        /// The field.
        what: &'static str,
        /// Where the string starts.
        offset: usize,
    },
    /// The message goes on after its last field: our idea of the format and the server's disagree.
    #[error("{message} message: {extra} unexpected byte(s) after the last field, at offset {offset}")]
    TrailingBytes {
        /// The kind of message being read.
        message: &'static str,
        /// Where the extra bytes start.
        offset: usize,
        /// How many there are.
        extra: usize,
    },
    /// A message that only makes sense inside a transaction arrived without a Begin before it.
    #[error("{message} message outside a transaction (no Begin before it)")]
    OutsideTransaction {
        /// The kind of message.
        message: &'static str,
    },
    /// A Begin arrived while another transaction was still open: its Commit was lost.
    #[error("Begin of transaction {new_xid} (commit LSN {new_lsn}) while transaction {open_xid} (commit LSN {open_lsn}) is still open")]
    NestedBegin {
        /// The xid of the open transaction.
        open_xid: u32,
        /// The commit LSN its Begin announced.
        open_lsn: Lsn,
        /// The xid of the new Begin.
        new_xid: u32,
        /// The commit LSN the new Begin announced.
        new_lsn: Lsn,
    },
    /// A Commit whose commit LSN or timestamp differs from what its Begin announced: the events already tagged with
    /// the Begin's values would be wrong.
    #[error("Commit of transaction {xid} has {what} {commit}, but its Begin announced {begin}")]
    CommitMismatch {
        /// The xid of the open transaction.
        xid: u32,
        /// Which field differs (`commit LSN` or `commit timestamp`).
        what: &'static str,
        /// The value from the Begin.
        begin: String,
        /// The value from the Commit.
        commit: String,
    },
}
