//! Schema versions of a source table: [`TableSchema`] (what a Relation message says, with resolved types), and
//! [`decide`], which compares a new Relation with the table's current version: the same, a new version with the
//! listed changes, or a change Iceberg cannot follow.
//!
//! Versions are numbered per table by the caller (the store is `philotes.schemas`, in `stages`). pgoutput's
//! Relation message carries column names only, so SchemaResolve adds each column's attribute number
//! (`pg_attribute.attnum`) and the table's OID: a column whose name changed under the same attnum is a rename
//! (the Iceberg field keeps its id), a new attnum an added column. [`decide`] compares by name only. A dropped
//! column stays in the Iceberg table and is null from then on.

use serde::{Deserialize, Serialize};

use crate::error::{IncompatibleSchema, TypeConflict};
use crate::iceberg::iceberg_type;
use crate::pg_type::PgType;

/// The replica identity a Relation message announces: it decides what old-row data updates and deletes carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReplicaIdentity {
    /// `d`: the primary key (old key only when it changes, and on delete).
    Default,
    /// `n`: nothing; updates and deletes carry no old data.
    Nothing,
    /// `f`: the whole old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// From the byte of pgoutput's Relation message; `None` for a byte Postgres does not send.
    pub fn from_pgoutput(byte: u8) -> Option<Self> {
        match byte {
            b'd' => Some(Self::Default),
            b'n' => Some(Self::Nothing),
            b'f' => Some(Self::Full),
            b'i' => Some(Self::Index),
            _ => None,
        }
    }

    /// The name used in `ALTER TABLE ... REPLICA IDENTITY`, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Nothing => "nothing",
            Self::Full => "full",
            Self::Index => "index",
        }
    }
}

/// One column of a table schema version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ColumnSchema {
    /// The column's name (case as in Postgres).
    pub name: String,
    /// Its resolved type, which decides the parser, the Arrow and the Iceberg type.
    pub pg_type: PgType,
    /// The type OID from the Relation message, kept so a later message can be compared without resolving.
    pub type_oid: u32,
    /// `atttypmod` from the Relation message (-1 when none).
    pub type_modifier: i32,
    /// Whether the column is part of the replica identity key (the mirror mode's equality-delete key).
    pub part_of_key: bool,
    /// `pg_attribute.attnum`: stable across renames, never reused in the table. `None` in versions recorded
    /// before it was kept (such columns are matched to Iceberg fields by name). Last field: the stored
    /// MessagePack arrays of older versions simply end before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attnum: Option<i16>,
}

/// One version of a source table's schema. Equality is by content: two Relation messages that say the same thing
/// make the same schema, so a repeated Relation (sent after every reconnect) is not a new version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableSchema {
    /// The source schema (namespace).
    pub schema: String,
    /// The source table name.
    pub table: String,
    /// The columns, in the Relation message's order.
    pub columns: Vec<ColumnSchema>,
    /// The table's replica identity.
    pub replica_identity: ReplicaIdentity,
    /// The primary key's columns, read from the catalog under `REPLICA IDENTITY FULL` only (where the key flags
    /// mark every column): a mirror table keys on them, since full old images carry them. Empty otherwise, and
    /// in versions recorded before this field.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// The table's OID (`pg_class.oid`): attnums mean something only within one relation, so a table dropped
    /// and created again under the same name does not take the old one's Iceberg fields. `None` in older
    /// versions. Last field, after `primary_key` (always written now): older stored arrays end before either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relid: Option<u32>,
}

impl TableSchema {
    /// `schema.table`, for messages.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnSchema> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The key columns, in column order.
    pub fn key_columns(&self) -> impl Iterator<Item = &ColumnSchema> {
        self.columns.iter().filter(|c| c.part_of_key)
    }

    /// The columns that identify a row, in column order: the primary key under `REPLICA IDENTITY FULL` when the
    /// table has one, else the replica identity's key columns (every column under FULL without a primary key).
    pub fn row_key(&self) -> Vec<&ColumnSchema> {
        let primary: Vec<&ColumnSchema> = self.columns.iter().filter(|c| self.primary_key.contains(&c.name)).collect();
        if self.replica_identity == ReplicaIdentity::Full && !primary.is_empty() && primary.len() == self.primary_key.len() {
            return primary;
        }
        self.key_columns().collect()
    }
}

/// One difference between two versions of a table, for the new version's record and the Iceberg schema update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchemaChange {
    /// A new column: add it to the Iceberg schema (optional; older rows read null).
    AddColumn {
        /// The new column.
        column: ColumnSchema,
    },
    /// A column that is gone: it stays in the Iceberg schema, null from this version on.
    DropColumn {
        /// Its name.
        name: String,
    },
    /// A type change that promotes the Iceberg type (int→long, float→double, decimal precision up).
    WidenColumn {
        /// The column.
        name: String,
        /// Its previous Postgres type.
        from: PgType,
        /// Its new Postgres type.
        to: PgType,
    },
    /// A type change that keeps the Iceberg type (smallint→integer, varchar(n)→text, json→jsonb, a domain
    /// swapped for its base type): recorded, nothing to change in Iceberg.
    RetypeColumn {
        /// The column.
        name: String,
        /// Its previous Postgres type.
        from: PgType,
        /// Its new Postgres type.
        to: PgType,
    },
    /// The column joined or left the replica identity key.
    KeyChanged {
        /// The column.
        name: String,
        /// Whether it is now part of the key.
        part_of_key: bool,
    },
    /// The table's replica identity changed (what old-row data deletes and updates carry from now on).
    ReplicaIdentityChanged {
        /// The previous identity.
        from: ReplicaIdentity,
        /// The new identity.
        to: ReplicaIdentity,
    },
    /// The table was renamed or moved to another schema (same relation OID).
    Renamed {
        /// The previous `schema.table`.
        from: String,
        /// The new `schema.table`.
        to: String,
    },
}

/// What a new Relation message means for a table's schema versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaDecision {
    /// Same content as the current version: keep it.
    Same,
    /// A new version, with the changes to apply (none is possible: a change of column order or of type OID
    /// with the same resolved type is still recorded as a new version).
    NewVersion(Vec<SchemaChange>),
    /// A change Iceberg cannot follow: stop the table with this error.
    Incompatible(IncompatibleSchema),
}

/// Compares the table's current version `old` with the schema of a new Relation message `new`.
pub fn decide(old: &TableSchema, new: &TableSchema) -> SchemaDecision {
    if old == new {
        return SchemaDecision::Same;
    }
    let mut changes = Vec::new();
    let mut conflicts = Vec::new();
    if (&old.schema, &old.table) != (&new.schema, &new.table) {
        changes.push(SchemaChange::Renamed {
            from: old.qualified_name(),
            to: new.qualified_name(),
        });
    }
    for column in &new.columns {
        let Some(previous) = old.column(&column.name) else {
            changes.push(SchemaChange::AddColumn {
                column: column.clone(),
            });
            continue;
        };
        if previous.pg_type != column.pg_type {
            let (from, to) = (
                iceberg_type(&previous.pg_type),
                iceberg_type(&column.pg_type),
            );
            let name = column.name.clone();
            let (old_type, new_type) = (previous.pg_type.clone(), column.pg_type.clone());
            if from == to {
                changes.push(SchemaChange::RetypeColumn {
                    name,
                    from: old_type,
                    to: new_type,
                });
            } else if from.can_become(&to) {
                changes.push(SchemaChange::WidenColumn {
                    name,
                    from: old_type,
                    to: new_type,
                });
            } else {
                conflicts.push(TypeConflict {
                    column: name,
                    old_type: format!("{old_type} (Iceberg {from})"),
                    new_type: format!("{new_type} (Iceberg {to})"),
                });
            }
        }
        if previous.part_of_key != column.part_of_key {
            changes.push(SchemaChange::KeyChanged {
                name: column.name.clone(),
                part_of_key: column.part_of_key,
            });
        }
    }
    for column in &old.columns {
        if new.column(&column.name).is_none() {
            changes.push(SchemaChange::DropColumn {
                name: column.name.clone(),
            });
        }
    }
    if old.replica_identity != new.replica_identity {
        changes.push(SchemaChange::ReplicaIdentityChanged {
            from: old.replica_identity,
            to: new.replica_identity,
        });
    }
    if conflicts.is_empty() {
        SchemaDecision::NewVersion(changes)
    } else {
        SchemaDecision::Incompatible(IncompatibleSchema {
            table: new.qualified_name(),
            conflicts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg_type::oids;

    fn column(name: &str, pg_type: PgType, type_oid: u32) -> ColumnSchema {
        ColumnSchema {
            name: name.into(),
            pg_type,
            type_oid,
            type_modifier: -1,
            part_of_key: false,
            attnum: None,
        }
    }

    fn orders(columns: Vec<ColumnSchema>) -> TableSchema {
        TableSchema {
            schema: "public".into(),
            table: "orders".into(),
            columns,
            replica_identity: ReplicaIdentity::Default,
            primary_key: Vec::new(),
            relid: None,
        }
    }

    fn base() -> TableSchema {
        let mut id = column("id", PgType::Int4, oids::INT4);
        id.part_of_key = true;
        orders(vec![
            id,
            column("note", PgType::Text, oids::TEXT),
            column("qty", PgType::Int2, oids::INT2),
        ])
    }

    fn changed(f: impl FnOnce(&mut TableSchema)) -> SchemaDecision {
        let mut new = base();
        f(&mut new);
        decide(&base(), &new)
    }

    #[test]
    fn an_identical_relation_message_is_the_same_version() {
        assert_eq!(decide(&base(), &base()), SchemaDecision::Same);
    }

    #[test]
    fn an_added_column_makes_a_new_version_that_adds_it() {
        let added = column("shipped_at", PgType::TimestampTz, oids::TIMESTAMPTZ);
        let decision = changed(|s| s.columns.push(added.clone()));
        assert_eq!(
            decision,
            SchemaDecision::NewVersion(vec![SchemaChange::AddColumn { column: added }])
        );
    }

    #[test]
    fn a_dropped_column_makes_a_new_version_that_keeps_it_in_iceberg() {
        let decision = changed(|s| s.columns.retain(|c| c.name != "note"));
        assert_eq!(
            decision,
            SchemaDecision::NewVersion(vec![SchemaChange::DropColumn {
                name: "note".into()
            }])
        );
    }

    #[test]
    fn integer_to_bigint_is_a_safe_widening() {
        let decision = changed(|s| {
            s.columns[0] = ColumnSchema {
                pg_type: PgType::Int8,
                type_oid: oids::INT8,
                ..s.columns[0].clone()
            }
        });
        assert_eq!(
            decision,
            SchemaDecision::NewVersion(vec![SchemaChange::WidenColumn {
                name: "id".into(),
                from: PgType::Int4,
                to: PgType::Int8
            }])
        );
    }

    #[test]
    fn smallint_to_integer_and_varchar_to_text_keep_the_iceberg_type() {
        let decision = changed(|s| s.columns[2] = column("qty", PgType::Int4, oids::INT4));
        assert_eq!(
            decision,
            SchemaDecision::NewVersion(vec![SchemaChange::RetypeColumn {
                name: "qty".into(),
                from: PgType::Int2,
                to: PgType::Int4
            }])
        );
        let narrow = orders(vec![column("c", PgType::Varchar(Some(10)), oids::VARCHAR)]);
        let wide = orders(vec![column("c", PgType::Text, oids::TEXT)]);
        assert!(
            matches!(decide(&narrow, &wide), SchemaDecision::NewVersion(c) if matches!(c[..], [SchemaChange::RetypeColumn { .. }]))
        );
    }

    #[test]
    fn numeric_precision_may_grow_at_the_same_scale_only() {
        let num = |precision, scale| {
            orders(vec![column(
                "amount",
                PgType::Numeric { precision, scale },
                oids::NUMERIC,
            )])
        };
        assert!(matches!(
            decide(&num(10, 2), &num(12, 2)),
            SchemaDecision::NewVersion(_)
        ));
        assert!(matches!(
            decide(&num(10, 2), &num(12, 3)),
            SchemaDecision::Incompatible(_)
        ));
        assert!(matches!(
            decide(&num(12, 2), &num(10, 2)),
            SchemaDecision::Incompatible(_)
        ));
    }

    #[test]
    fn text_to_integer_is_an_error_naming_the_column_and_both_types() {
        let SchemaDecision::Incompatible(err) =
            changed(|s| s.columns[1] = column("note", PgType::Int4, oids::INT4))
        else {
            panic!("expected an incompatible change");
        };
        let message = err.to_string();
        for part in ["public.orders", "\"note\"", "text", "integer"] {
            assert!(message.contains(part), "{message}");
        }
        assert_eq!(err.conflicts.len(), 1);
    }

    #[test]
    fn every_incompatible_column_is_reported_at_once() {
        let SchemaDecision::Incompatible(err) = changed(|s| {
            s.columns[1] = column("note", PgType::Int4, oids::INT4);
            s.columns[0] = column("id", PgType::Text, oids::TEXT);
        }) else {
            panic!("expected an incompatible change");
        };
        assert_eq!(err.conflicts.len(), 2);
    }

    #[test]
    fn key_and_replica_identity_changes_make_a_new_version() {
        let decision = changed(|s| {
            s.columns[0].part_of_key = false;
            s.replica_identity = ReplicaIdentity::Full;
        });
        assert_eq!(
            decision,
            SchemaDecision::NewVersion(vec![
                SchemaChange::KeyChanged {
                    name: "id".into(),
                    part_of_key: false
                },
                SchemaChange::ReplicaIdentityChanged {
                    from: ReplicaIdentity::Default,
                    to: ReplicaIdentity::Full
                },
            ])
        );
    }

    #[test]
    fn a_renamed_column_is_a_drop_and_an_add() {
        let decision = changed(|s| s.columns[1].name = "comment".into());
        let SchemaDecision::NewVersion(changes) = decision else {
            panic!("expected a new version")
        };
        assert!(changes.contains(&SchemaChange::DropColumn {
            name: "note".into()
        }));
        assert!(changes
            .iter()
            .any(|c| matches!(c, SchemaChange::AddColumn { column } if column.name == "comment")));
    }

    #[test]
    fn versions_stored_before_attnums_and_oids_still_decode() {
        /// The layout of versions recorded before `relid` and `attnum`: primary key skipped when empty.
        #[derive(Serialize)]
        struct OldColumn<'a> {
            name: &'a str,
            pg_type: PgType,
            type_oid: u32,
            type_modifier: i32,
            part_of_key: bool,
        }
        #[derive(Serialize)]
        struct OldTable<'a> {
            schema: &'a str,
            table: &'a str,
            columns: Vec<OldColumn<'a>>,
            replica_identity: ReplicaIdentity,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            primary_key: Vec<String>,
        }
        let old = OldTable {
            schema: "public",
            table: "orders",
            columns: vec![OldColumn { name: "id", pg_type: PgType::Int4, type_oid: oids::INT4, type_modifier: -1, part_of_key: true }],
            replica_identity: ReplicaIdentity::Default,
            primary_key: Vec::new(),
        };
        let decoded: TableSchema = rmp_serde::from_slice(&rmp_serde::to_vec(&old).expect("encodes")).expect("decodes");
        assert_eq!(decoded.columns[0].attnum, None);
        assert_eq!(decoded.relid, None);
        let mut new = base();
        new.relid = Some(16384);
        new.columns[1].attnum = Some(2);
        let again: TableSchema = rmp_serde::from_slice(&rmp_serde::to_vec(&new).expect("encodes")).expect("decodes");
        assert_eq!(again, new);
    }

    #[test]
    fn replica_identity_bytes_decode() {
        assert_eq!(
            ReplicaIdentity::from_pgoutput(b'f'),
            Some(ReplicaIdentity::Full)
        );
        assert_eq!(ReplicaIdentity::from_pgoutput(b'x'), None);
    }

    #[test]
    fn schemas_survive_messagepack_for_the_version_store() {
        let bytes = rmp_serde::to_vec(&base()).expect("encodes");
        assert_eq!(
            rmp_serde::from_slice::<TableSchema>(&bytes).expect("decodes"),
            base()
        );
    }
}
