//! The mirror table layout (DESIGN.md, "Iceberg tables", `mode: mirror`): an Iceberg table (format v2) with the
//! source's columns only, which equals the source table at the committed position, row for row.
//!
//! A flush of a mirror table is built like a changelog flush, in the table's *working schema* ([`working_schema`]:
//! its columns plus the changelog columns), so ArrowBatch's conversions, dead letters and unchanged-TOAST filling
//! are the same code. IcebergCommit then folds the flush per key ([`fold`]): the last image of each key becomes a
//! data row, and every key that may have a row in older data gets an equality delete on the key columns. The
//! commit is a row delta ([`crate::iceberg_commit::row_delta`]).
//!
//! The key ([`TableSchema::row_key`]) is the primary key (under `REPLICA IDENTITY DEFAULT` or `FULL`), the
//! columns of `REPLICA IDENTITY USING INDEX`, or every column under `REPLICA IDENTITY FULL` without a primary
//! key (such a table mirrors as a set: rows equal in every column are one row in the mirror).

pub mod fold;
pub mod live;
pub mod toast;

use std::sync::Arc;

use iceberg::spec::{NestedFieldRef, PrimitiveType, Schema, Type};
use iceberg::table::Table;
use philotes_schemas::{ReplicaIdentity, TableSchema, Value};

use crate::changelog::schema::{changelog_fields, check_reserved, level_first, source_fields};
use crate::changelog::{type_name, SchemaError, OP};
use crate::op::Op;
use crate::segment::SegmentEvent;

/// The table property naming the layout philotes made a table with.
pub const MODE_PROPERTY: &str = "philotes.mode";
/// [`MODE_PROPERTY`] of a mirror table.
pub const MIRROR: &str = "mirror";
/// [`MODE_PROPERTY`] of a changelog table.
pub const CHANGELOG: &str = "changelog";

/// What a flush of a mirror table needs besides the table: its key and the schema its slices are built in.
#[derive(Debug, Clone)]
pub struct MirrorLayout {
    /// Field ids of the key columns (the equality-delete ids), in column order.
    pub key: Vec<i32>,
    /// The table's schema plus the changelog columns ([`working_schema`]).
    pub working: Arc<Schema>,
}

impl MirrorLayout {
    /// The layout of `table` for rows of `latest` (the newest source schema version, which names the key).
    pub fn new(table: &Table, latest: &TableSchema) -> Result<Self, SchemaError> {
        let schema = table.metadata().current_schema();
        Ok(Self { key: key_field_ids(schema, latest)?, working: Arc::new(working_schema(schema)?) })
    }
}

/// The Iceberg schema of a new mirror table for this source table version: the source columns, all optional.
pub fn mirror_schema(source: &TableSchema) -> Result<Schema, SchemaError> {
    check_reserved(source)?;
    let fields = level_first(&source_fields(source), &mut 0);
    Ok(Schema::builder().with_schema_id(0).with_fields(fields).build()?)
}

/// The schema a mirror table's slices are built in: the table's columns (same ids), then the changelog columns
/// with ids above every id of the table. Its first `table.as_struct().fields().len()` columns are the table's.
pub fn working_schema(table: &Schema) -> Result<Schema, SchemaError> {
    let mut next_id = table.highest_field_id();
    let mut fields: Vec<NestedFieldRef> = table.as_struct().fields().to_vec();
    fields.extend(level_first(&changelog_fields(), &mut next_id));
    Ok(Schema::builder().with_schema_id(table.schema_id()).with_fields(fields).build()?)
}

/// Checks that `source` has a key mirror mode can use, before its table is made.
pub fn check_key(source: &TableSchema) -> Result<(), SchemaError> {
    if source.row_key().is_empty() {
        let identity = match source.replica_identity {
            ReplicaIdentity::Nothing => "nothing",
            _ => "default",
        };
        return Err(SchemaError::NoMirrorKey { table: source.qualified_name(), identity });
    }
    Ok(())
}

/// The field ids of `source`'s key columns in the table's schema. Equality deletes take primitive columns
/// other than floating point ones (the Iceberg spec's rule for identifier fields, which the iceberg crate's
/// writer enforces).
pub fn key_field_ids(table: &Schema, source: &TableSchema) -> Result<Vec<i32>, SchemaError> {
    check_key(source)?;
    source
        .row_key()
        .into_iter()
        .map(|column| {
            let field = table.as_struct().field_by_name(&column.name).ok_or_else(|| SchemaError::ColumnNotInTarget {
                table: source.qualified_name(),
                column: column.name.clone(),
            })?;
            match &*field.field_type {
                Type::Primitive(PrimitiveType::Float | PrimitiveType::Double) | Type::List(_) | Type::Struct(_) | Type::Map(_) => {
                    Err(SchemaError::UnsupportedMirrorKey {
                        table: source.qualified_name(),
                        column: column.name.clone(),
                        column_type: type_name(&field.field_type),
                    })
                }
                Type::Primitive(_) => Ok(field.id),
            }
        })
        .collect()
}

/// The layout philotes made `table` with: its [`MODE_PROPERTY`], else (tables made before the property) a
/// changelog table when it has the `_op` column, a mirror table otherwise.
pub fn table_mode(table: &Table) -> &'static str {
    let metadata = table.metadata();
    match metadata.properties().get(MODE_PROPERTY).map(String::as_str) {
        Some(MIRROR) => MIRROR,
        Some(_) => CHANGELOG,
        None if metadata.current_schema().as_struct().field_by_name(OP).is_some() => CHANGELOG,
        None => MIRROR,
    }
}

/// Checks that `table` has the layout the pipeline asks for (`mirror` or not).
pub fn check_mode(table: &Table, mirror: bool) -> Result<(), SchemaError> {
    let wanted = if mirror { MIRROR } else { CHANGELOG };
    let found = table_mode(table);
    if found != wanted {
        return Err(SchemaError::ModeMismatch { iceberg_table: table.identifier().to_string(), found, wanted });
    }
    Ok(())
}

/// A mirror flush's changes of one schema version, made ready for the fold: every update that carries an old
/// image (its key changed, or the table has `REPLICA IDENTITY FULL`) is preceded by a delete of that old image
/// at the same position, so the fold retires the old key (under FULL the key usually did not change; the extra
/// delete is then overridden by the update). Every delete keeps only the key's values ([`TableSchema::row_key`]):
/// a delete needs nothing else, and a value of another column that Iceberg cannot hold must not keep a deleted
/// row in the mirror (or dead-letter the delete).
pub fn split_updates(events: Vec<SegmentEvent>, version: &TableSchema) -> Vec<SegmentEvent> {
    let key: Vec<bool> = {
        let row_key = version.row_key();
        version.columns.iter().map(|c| row_key.iter().any(|k| k.name == c.name)).collect()
    };
    let key_only = |mut event: SegmentEvent| {
        if let Some(old) = &mut event.old {
            for (value, &in_key) in old.iter_mut().zip(&key) {
                if !in_key {
                    *value = Value::Null;
                }
            }
        }
        event
    };
    let extra = events.iter().filter(|e| carries_old_key(e)).count();
    let mut split = Vec::with_capacity(events.len() + extra);
    for event in events {
        if carries_old_key(&event) {
            split.push(key_only(SegmentEvent { op: Op::Delete, new: None, ..event.clone() }));
        }
        split.push(if event.op == Op::Delete { key_only(event) } else { event });
    }
    split
}

/// Whether an event is an update with an old image ([`split_updates`]).
pub fn carries_old_key(event: &SegmentEvent) -> bool {
    event.op == Op::Update && event.old.is_some()
}

#[cfg(test)]
mod tests {
    use philotes_schemas::{oids, ColumnSchema, PgType};

    use super::*;
    use crate::position::Lsn;

    fn column(name: &str, pg_type: PgType, oid: u32, part_of_key: bool) -> ColumnSchema {
        ColumnSchema { name: name.into(), pg_type, type_oid: oid, type_modifier: -1, part_of_key, attnum: None }
    }

    /// `t (id int, x double precision, note text)` under `identity`; `full` marks every column as key (what
    /// pgoutput says under FULL), `primary_key` the catalog's primary key.
    fn table(identity: ReplicaIdentity, primary_key: &[&str]) -> TableSchema {
        let full = identity == ReplicaIdentity::Full;
        TableSchema {
            schema: "public".into(),
            table: "t".into(),
            columns: vec![
                column("id", PgType::Int4, oids::INT4, full || identity == ReplicaIdentity::Default),
                column("x", PgType::Float8, oids::FLOAT8, full),
                column("note", PgType::Text, oids::TEXT, full),
            ],
            replica_identity: identity,
            primary_key: primary_key.iter().map(|c| c.to_string()).collect(),
            relid: None,
        }
    }

    #[test]
    fn the_key_is_the_primary_key_even_under_full_and_every_column_without_one() {
        let schema = mirror_schema(&table(ReplicaIdentity::Default, &[])).unwrap();
        assert_eq!(key_field_ids(&schema, &table(ReplicaIdentity::Default, &[])).unwrap(), vec![1]);
        assert_eq!(key_field_ids(&schema, &table(ReplicaIdentity::Full, &["id"])).unwrap(), vec![1]);
        let e = key_field_ids(&schema, &table(ReplicaIdentity::Full, &[])).unwrap_err();
        assert!(e.to_string().contains("column \"x\" (double)"), "{e}");
        let e = check_key(&table(ReplicaIdentity::Nothing, &[])).unwrap_err();
        assert!(e.to_string().contains("REPLICA IDENTITY FULL") && e.to_string().contains("identity nothing"), "{e}");
    }

    #[test]
    fn the_working_schema_keeps_the_table_ids_and_adds_the_changelog_columns_above_them() {
        let schema = mirror_schema(&table(ReplicaIdentity::Default, &[])).unwrap();
        let working = working_schema(&schema).unwrap();
        let names: Vec<&str> = working.as_struct().fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["id", "x", "note", "_op", "_lsn", "_commit_ts", "_xid", "_seq", "_unchanged"]);
        assert!(working.as_struct().fields()[..3].iter().zip(schema.as_struct().fields()).all(|(a, b)| a == b));
        assert!(working.as_struct().fields()[3..].iter().all(|f| f.id > schema.highest_field_id()));
    }

    #[test]
    fn an_update_with_an_old_key_is_split_and_deletes_keep_only_the_key() {
        let version = table(ReplicaIdentity::Full, &["id"]);
        let row = |id: i32, note: &str| Some(vec![Value::Int32(id), Value::Float64(1.5), Value::Text(note.into())]);
        let event = |op, old: Option<Vec<Value>>, new| SegmentEvent {
            op,
            commit_lsn: Lsn(7),
            seq: 1,
            xid: 1,
            commit_ts: 0,
            old_is_full: old.as_ref().map(|_| true),
            old,
            new,
        };
        let split = split_updates(
            vec![event(Op::Insert, None, row(1, "a")), event(Op::Update, row(1, "a"), row(2, "b")), event(Op::Delete, row(2, "b"), None)],
            &version,
        );
        let ops: Vec<Op> = split.iter().map(|e| e.op).collect();
        assert_eq!(ops, [Op::Insert, Op::Delete, Op::Update, Op::Delete]);
        let key_only = Some(vec![Value::Int32(1), Value::Null, Value::Null]);
        assert_eq!(split[1].old, key_only, "the old key's delete keeps only the key");
        assert_eq!(split[2].new, row(2, "b"));
        assert_eq!(split[3].old, Some(vec![Value::Int32(2), Value::Null, Value::Null]));
    }
}
