//! ArrowBatch: buffer segments of one table → one Arrow `RecordBatch` in the table's current Iceberg schema
//! (DESIGN.md, "Iceberg tables", `mode: changelog`). Pure and synchronous: the flusher runs it on its own
//! CPU-bound worker pool and hands the batch to the Iceberg writer.
//!
//! Three parts:
//! - [`changelog_schema`] and [`missing_columns`] (`schema.rs`): the Iceberg schema of a new changelog table, and
//!   what an existing one lacks for a newer source schema version;
//! - [`build_batch`] (`build.rs`): the row rules below, projection of older versions, unchanged-TOAST filling;
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
//! Every [`ArrowBatchError`], on the other hand, concerns the table's schema and stops the table.

mod build;
mod schema;
mod values;

#[cfg(test)]
mod tests;

pub use build::{build_batch, has_unchanged, BatchBuilder};
pub use schema::{changelog_schema, iceberg_spec_type, missing_columns, philotes_type};

use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::position::Position;

/// The stage's name, in metrics, logs and dead letters.
pub const NAME: &str = "arrow_batch";

/// The change kind: `I`, `U`, `D`, `T`, or `r` for a snapshot read.
pub const OP: &str = "_op";
/// The commit LSN of the source transaction, as a long (the `pg_lsn` number).
pub const LSN: &str = "_lsn";
/// The commit time of the source transaction (µs, UTC).
pub const COMMIT_TS: &str = "_commit_ts";
/// The source transaction id.
pub const XID: &str = "_xid";
/// The order of the change within its transaction; with `_lsn` it is the change's position.
pub const SEQ: &str = "_seq";
/// Names of the columns whose unchanged TOAST value could not be filled (written NULL); NULL when none.
pub const UNCHANGED: &str = "_unchanged";

/// The changelog columns, in the order they follow the source columns.
pub const CHANGELOG_COLUMNS: [&str; 6] = [OP, LSN, COMMIT_TS, XID, SEQ, UNCHANGED];

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    /// Where the change sits in the source's history (the dead letter's `commit_lsn` and `seq`).
    pub position: Position,
    /// Why, naming the column and its Iceberg type.
    pub reason: String,
    /// The change rendered for a person (each value cut to a readable length).
    pub rendering: String,
}

/// Why a batch or a schema cannot be made. Every variant is about the table's schema, not one change, so the
/// table stops until an operator acts; nothing is retried and nothing is dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum ArrowBatchError {
    /// A source column has the name of a changelog column.
    #[error(
        "table {table}: column \"{column}\" has the name of a changelog column philotes adds ({}); \
         rename the source column or use another table mode", CHANGELOG_COLUMNS.join(", ")
    )]
    ReservedColumn {
        /// The source table (`schema.table`).
        table: String,
        /// The column.
        column: String,
    },
    /// The Iceberg table's column would need a type promotion, which the iceberg crate cannot apply yet.
    #[error(
        "table {table}: column \"{column}\" changed from Iceberg {old_type} to {new_type}; Iceberg allows this \
         promotion but the iceberg crate (0.10) philotes uses cannot change a column's type, so the table stops: \
         promote the column with another Iceberg tool (e.g. Spark `ALTER TABLE … ALTER COLUMN`) and restart"
    )]
    NeedsPromotion {
        /// The source table (`schema.table`).
        table: String,
        /// The column.
        column: String,
        /// Its type in the Iceberg table.
        old_type: String,
        /// The type the new source schema version needs (Postgres and Iceberg).
        new_type: String,
    },
    /// A column's type changed in a way no Iceberg table can follow.
    #[error(
        "table {table}: column \"{column}\" changed from Iceberg {old_type} to {new_type}, which is not a safe \
         widening (allowed: smallint→integer→bigint, real→double precision, varchar(n)→text, \
         numeric(p,s)→numeric(p',s) with p'≥p)"
    )]
    IncompatibleType {
        /// The source table (`schema.table`).
        table: String,
        /// The column.
        column: String,
        /// Its type in the Iceberg table.
        old_type: String,
        /// The type of the source schema version (Postgres and Iceberg).
        new_type: String,
    },
    /// A schema version has a column the target schema lacks: `missing_columns` was not applied first.
    #[error(
        "table {table}: column \"{column}\" is not in the Iceberg table's schema; add the missing columns \
         before building a batch"
    )]
    ColumnNotInTarget {
        /// The source table (`schema.table`).
        table: String,
        /// The column.
        column: String,
    },
    /// The target schema lacks a changelog column or has it with another type (not a changelog table).
    #[error(
        "the Iceberg table has no changelog column {column} of type {expected} (found: {found})"
    )]
    ChangelogColumn {
        /// The changelog column.
        column: &'static str,
        /// Its type in a changelog table.
        expected: &'static str,
        /// What the table has instead.
        found: String,
    },
    /// The iceberg crate refused a schema.
    #[error("building the Iceberg schema: {0}")]
    Iceberg(#[from] iceberg::Error),
    /// Arrow refused the arrays (a required column holds NULLs, an offset overflowed).
    #[error("building the Arrow batch: {0}")]
    Arrow(#[from] ArrowError),
}
