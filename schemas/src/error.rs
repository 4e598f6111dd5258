//! The errors of this crate, one type per decision the pipeline has to take.
//!
//! - [`UnsupportedType`] and [`IncompatibleSchema`] stop the table: nothing can be written until an operator acts
//!   (map the type as text, or migrate the Iceberg table by hand).
//! - [`ParseError`] and [`ConvertError`] concern one value: the event goes to `philotes.dead_letters` with the
//!   message as its reason, and the pipeline goes on.

use thiserror::Error;

/// Longest piece of an offending value quoted in a [`ParseError`]: enough to recognise it in a dead letter, not
/// enough to flood a log line with a megabyte of JSON.
const QUOTED_INPUT_CHARS: usize = 80;

/// A column whose Postgres type has no Iceberg mapping, and the pipeline did not ask to carry it as text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "table {table}: column \"{column}\" has type {type_name} (oid {oid}), which philotes cannot map to an Iceberg \
     type; carry unmapped types as text to replicate it as a string"
)]
pub struct UnsupportedType {
    /// The qualified source table (`schema.table`), so the operator knows where to look.
    pub table: String,
    /// The column that holds the type.
    pub column: String,
    /// The type's name as Postgres spells it (schema-qualified outside `pg_catalog`), or `oid N` when unknown.
    pub type_name: String,
    /// The type's OID, as the Relation message carried it.
    pub oid: u32,
}

/// A pgoutput text value that does not parse as its column's type: the event is dead-lettered with this reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot parse {input:?} as {type_name}: {reason}")]
pub struct ParseError {
    /// The Postgres type the value was parsed as.
    pub type_name: String,
    /// The start of the offending text (at most 80 characters), to recognise it.
    pub input: String,
    /// Why it does not parse.
    pub reason: String,
}

impl ParseError {
    /// Builds the error, quoting at most the first 80 characters of `input`.
    pub fn new(type_name: impl Into<String>, input: &str, reason: impl Into<String>) -> Self {
        let input = match input.char_indices().nth(QUOTED_INPUT_CHARS) {
            Some((cut, _)) => format!("{}…", &input[..cut]),
            None => input.to_owned(),
        };
        Self {
            type_name: type_name.into(),
            input,
            reason: reason.into(),
        }
    }
}

/// A parsed value that the Iceberg type of its column cannot hold (numeric `NaN` in a `decimal`, time `24:00:00`,
/// an out-of-range decimal): the event is dead-lettered with this reason, never written altered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot store {value} as Iceberg {iceberg_type}: {reason}")]
pub struct ConvertError {
    /// The value, as text.
    pub value: String,
    /// The Iceberg type of the column.
    pub iceberg_type: String,
    /// Why it does not fit.
    pub reason: String,
}

/// One column whose type changed in a way Iceberg cannot follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeConflict {
    /// The column's name.
    pub column: String,
    /// Its Postgres type in the previous schema version.
    pub old_type: String,
    /// Its Postgres type in the new Relation message.
    pub new_type: String,
}

/// A new Relation message changes column types in ways that are not safe widenings: the table stops.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("table {table}: incompatible column type change: {}", describe_conflicts(.conflicts))]
pub struct IncompatibleSchema {
    /// The qualified source table (`schema.table`).
    pub table: String,
    /// Every offending column (all of them, so one fix covers all).
    pub conflicts: Vec<TypeConflict>,
}

fn describe_conflicts(conflicts: &[TypeConflict]) -> String {
    conflicts
        .iter()
        .map(|c| {
            format!(
                "column \"{}\" changed from {} to {}, which is not a safe widening \
                 (allowed: smallint→integer→bigint, real→double precision, varchar(n)→text, \
                 numeric(p,s)→numeric(p',s) with p'≥p)",
                c.column, c.old_type, c.new_type
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
