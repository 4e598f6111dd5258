//! ArrowBatch: buffer segments of one table → one Arrow `RecordBatch` in the table's current Iceberg schema
//! (DESIGN.md, "Iceberg tables", `mode: changelog`). Pure and synchronous: the flusher runs it on its own
//! CPU-bound worker pool and hands the batch to the Iceberg writer.
//!
//! Three parts:
//! - [`stage`]: the stage (a slice of a flush job → its rows);
//! - [`build_batch`] and [`BatchBuilder`] (`build.rs`): the row rules below, projection of older versions,
//!   unchanged-TOAST filling, in the table layout of [`crate::changelog`];
//! - `values.rs`: each [`Value`](philotes_schemas::Value) into the Arrow type `iceberg::arrow::schema_to_arrow_schema`
//!   gives for the column's Iceberg type, so the iceberg writer takes the batch without a cast.
//!
//! # Changelog rows
//!
//! One row per change: the source columns, then [`OP`], [`LSN`], [`COMMIT_TS`], [`XID`], [`SEQ`] (required) and
//! [`UNCHANGED`] (optional).
//!
//! | `_op` | source columns |
//! | --- | --- |
//! | `I` insert, `U` update, `r` snapshot read | the new row |
//! | `D` delete | the old row: all of it under `REPLICA IDENTITY FULL`, else the key columns and NULL elsewhere |
//! | `T` truncate | all NULL |
//!
//! An unchanged TOAST value (Postgres did not send it) is filled from the previous image of the same row when
//! this batch has one: the update's own old row (`REPLICA IDENTITY FULL`), else the latest earlier change of the
//! same primary key in the batch. When neither has it, the value is written NULL **and** the column's name is
//! listed in `_unchanged`, so a reader can tell "NULL" from "unchanged, not known here" (for a complete
//! picture, take the last row of that key where the column is not listed). `_unchanged` is NULL on every row
//! where nothing is missing (not an empty list: `_unchanged IS NOT NULL` finds the incomplete rows).
//!
//! A value the column's Iceberg type cannot hold (numeric `NaN` in a `decimal`, `24:00:00` in a `time`) leaves
//! its change out of the batch as a [`RejectedRow`] for `philotes.dead_letters`; the rest of the batch flows.
//! Every [`SchemaError`](crate::changelog::SchemaError), on the other hand, concerns the table's schema and stops the table.

mod build;
pub mod stage;
mod values;

#[cfg(test)]
mod tests;

pub use build::{build_batch, has_unchanged, BatchBuilder};
pub use stage::{ArrowBatch, ArrowBatchError};

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use philotes_schemas::TableSchema;

use crate::position::Position;
use crate::segment::SegmentEvent;

/// The stage's name in metrics, spans, dead letters and YAML (`stages.arrow_batch`).
pub const NAME: &str = "arrow_batch";

/// The batch of one flush and the changes left out of it.
#[derive(Debug, Clone)]
pub struct BatchOutput {
    /// The rows, in the order of the segments and their events, in the target schema (field ids included).
    pub batch: RecordBatch,
    /// Changes that could not be written: they go to `philotes.dead_letters`; the batch flows without them.
    pub rejected: Vec<RejectedRow>,
}

/// A change whose value cannot be written (numeric `NaN` into a decimal column, time `24:00:00`, a malformed
/// event): left out of the batch, dead-lettered with this reason.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRow {
    /// Where the change sits in the source's history (the dead letter's `commit_lsn` and `seq`).
    pub position: Position,
    /// Why, naming the column and its Iceberg type.
    pub reason: String,
    /// The change rendered for a person (each value cut to a readable length).
    pub rendering: String,
    /// The change itself, kept in its dead letter for a retry.
    pub event: SegmentEvent,
    /// The schema version its values follow.
    pub version: Arc<TableSchema>,
}

