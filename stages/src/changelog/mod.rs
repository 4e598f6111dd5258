//! The changelog table layout (DESIGN.md, "Iceberg tables", `mode: changelog`): its columns, the Iceberg schema
//! of a new table ([`changelog_schema`]); how an existing one follows newer source schema versions is
//! `catalog::evolve`. Table preparation (`catalog::table`) and ArrowBatch's builder both follow it.

pub(crate) mod schema;

pub use schema::{changelog_schema, check_column, iceberg_spec_type, philotes_type, type_name};

use arrow::error::ArrowError;

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

/// Why rows of a table cannot be written into its Iceberg table (or the table cannot be made). Every variant is about the table's schema, not one change, so the
/// table stops until an operator acts; nothing is retried and nothing is dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
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
    /// A batch was to be built in a schema whose column is narrower than the version's: the table's schema was
    /// not evolved first (`catalog::evolve` promotes it).
    #[error(
        "table {table}: column \"{column}\" is Iceberg {old_type} in the table and {new_type} in the rows; the \
         table's schema must be evolved (promoted) before the batch is built"
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
    /// A schema version has a column the target schema lacks: the table's schema was not evolved first.
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
    /// `mode: mirror` for a table with no replica identity key: nothing says which row an update or a delete
    /// replaces.
    #[error(
        "table {table}: mode mirror needs a key, and the table has no primary key and replica identity {identity}; \
         add a primary key (ALTER TABLE {table} ADD PRIMARY KEY (…)) or run ALTER TABLE {table} REPLICA IDENTITY \
         FULL, then `philotes resume --table {table}`; or use mode changelog for it"
    )]
    NoMirrorKey {
        /// The source table (`schema.table`).
        table: String,
        /// Its replica identity (`nothing`, `default`).
        identity: &'static str,
    },
    /// `mode: mirror` keys on a column Iceberg cannot use in an equality delete (floating point, list, struct).
    #[error(
        "table {table}: mode mirror keys on the replica identity columns, and column \"{column}\" ({column_type}) \
         cannot be an Iceberg equality-delete key (no floating point, array or composite types); give the table a \
         primary key or REPLICA IDENTITY USING INDEX on other columns, or use mode changelog for it"
    )]
    UnsupportedMirrorKey {
        /// The source table (`schema.table`).
        table: String,
        /// The key column.
        column: String,
        /// Its Iceberg type.
        column_type: String,
    },
    /// The Iceberg table exists in the other layout (a changelog table asked to mirror, or the reverse).
    #[error(
        "iceberg table {iceberg_table} was made by mode {found}, and the pipeline now asks for mode {wanted}; \
         a table keeps its mode: drop the Iceberg table, or give this mode another table name \
         (sink.iceberg.tables.<table>.name)"
    )]
    ModeMismatch {
        /// The Iceberg table.
        iceberg_table: String,
        /// The layout it has.
        found: &'static str,
        /// The layout asked for.
        wanted: &'static str,
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
