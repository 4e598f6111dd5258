//! Decode: pgoutput (protocol version 1) frames from the replication slot → whole transactions of
//! [`ChangeEvent`]s in commit order (DESIGN.md, data path step 2).
//!
//! Two layers, each usable alone: [`pgoutput::parse`] reads the wire format of one message, and [`Decoder`]
//! checks the transaction structure, tags every change with its position and drops transactions already
//! delivered before a restart. Neither is async or owns a channel; the engine stage wraps the `Decoder`.
//!
//! Golden fixtures of real server output live in `stages/tests/fixtures/pgoutput/` (how they were made is in the
//! README there).

pub mod decoder;
pub mod error;
pub mod pgoutput;
pub mod stage;

pub use decoder::{ChangeEvent, Decoded, Decoder, Op};
pub use error::DecodeError;
pub use pgoutput::{
    parse, ColumnData, CustomType, LogicalMessage, OldKind, OldTuple, PgOutputMessage, Relation, RelationColumn,
    ReplicaIdentity, TupleData,
};

#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod test_support;
