//! The Iceberg schema of a changelog table ([`changelog_schema`]); its evolution is `catalog::evolve`.
//!
//! Field ids are assigned the way the iceberg crate (and Java's `TypeUtil`) reassigns them when a table is
//! created: every field of one level first, then the fields nested in each, in order. So a table created from
//! this schema keeps these ids.

use std::sync::Arc;

use iceberg::spec::{
    ListType, NestedField, NestedFieldRef, PrimitiveType, Schema, StructType, Type,
};
use philotes_schemas::{iceberg_type, ColumnSchema, IcebergField, IcebergType, TableSchema};

use super::{SchemaError, CHANGELOG_COLUMNS, COMMIT_TS, LSN, OP, SEQ, UNCHANGED, XID};

/// The Iceberg schema of a new changelog table for this source table version: the source columns (all optional,
/// Iceberg types from philotes-schemas), then `_op` string, `_lsn` long, `_commit_ts` timestamptz, `_xid` long,
/// `_seq` long (required) and `_unchanged` list<string> (optional; its elements are optional too, like every
/// list philotes writes, though never NULL).
pub fn changelog_schema(source: &TableSchema) -> Result<Schema, SchemaError> {
    check_reserved(source)?;
    let mut fields = source_fields(source);
    fields.extend(changelog_fields());
    let fields = level_first(&fields, &mut 0);
    Ok(Schema::builder()
        .with_schema_id(0)
        .with_fields(fields)
        .build()?)
}

/// The source columns as new table fields (name, Iceberg type, required): all optional.
pub(crate) fn source_fields(source: &TableSchema) -> Vec<(String, IcebergType, bool)> {
    source
        .columns
        .iter()
        .map(|c| (c.name.clone(), iceberg_type(&c.pg_type), false))
        .collect()
}

/// The changelog columns as table fields (name, Iceberg type, required), in [`CHANGELOG_COLUMNS`] order.
pub(crate) fn changelog_fields() -> Vec<(String, IcebergType, bool)> {
    let required = |name: &str, ty| (name.to_owned(), ty, true);
    vec![
        required(OP, IcebergType::String),
        required(LSN, IcebergType::Long),
        required(COMMIT_TS, IcebergType::Timestamptz),
        required(XID, IcebergType::Long),
        required(SEQ, IcebergType::Long),
        (UNCHANGED.to_owned(), IcebergType::List(Box::new(IcebergType::String)), false),
    ]
}

/// The iceberg crate's type for one of ours; nested fields get ids after `*next_id` (level first), and
/// `*next_id` ends at the last id used. List elements are optional (Postgres arrays may hold NULLs).
pub fn iceberg_spec_type(ty: &IcebergType, next_id: &mut i32) -> Type {
    let primitive = match ty {
        IcebergType::Boolean => PrimitiveType::Boolean,
        IcebergType::Int => PrimitiveType::Int,
        IcebergType::Long => PrimitiveType::Long,
        IcebergType::Float => PrimitiveType::Float,
        IcebergType::Double => PrimitiveType::Double,
        IcebergType::Decimal { precision, scale } => PrimitiveType::Decimal {
            precision: u32::from(*precision),
            scale: u32::from(*scale),
        },
        IcebergType::Date => PrimitiveType::Date,
        IcebergType::Time => PrimitiveType::Time,
        IcebergType::Timestamp => PrimitiveType::Timestamp,
        IcebergType::Timestamptz => PrimitiveType::Timestamptz,
        IcebergType::String => PrimitiveType::String,
        IcebergType::Uuid => PrimitiveType::Uuid,
        IcebergType::Binary => PrimitiveType::Binary,
        IcebergType::Fixed(len) => PrimitiveType::Fixed(u64::from(*len)),
        IcebergType::List(element) => {
            *next_id += 1;
            let id = *next_id;
            let element = NestedField::list_element(id, iceberg_spec_type(element, next_id), false);
            return Type::List(ListType::new(Arc::new(element)));
        }
        IcebergType::Struct(fields) => {
            let fields: Vec<_> = fields
                .iter()
                .map(|f| (f.name.clone(), f.field_type.clone(), f.required))
                .collect();
            return Type::Struct(StructType::new(level_first(&fields, next_id)));
        }
    };
    Type::Primitive(primitive)
}

/// Our type for one of the iceberg crate's, or `None` for types philotes never writes (maps, nanosecond
/// timestamps): a table column of such a type cannot take a source column.
pub fn philotes_type(ty: &Type) -> Option<IcebergType> {
    Some(match ty {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => IcebergType::Boolean,
            PrimitiveType::Int => IcebergType::Int,
            PrimitiveType::Long => IcebergType::Long,
            PrimitiveType::Float => IcebergType::Float,
            PrimitiveType::Double => IcebergType::Double,
            PrimitiveType::Decimal { precision, scale } => IcebergType::Decimal {
                precision: u8::try_from(*precision).ok()?,
                scale: u8::try_from(*scale).ok()?,
            },
            PrimitiveType::Date => IcebergType::Date,
            PrimitiveType::Time => IcebergType::Time,
            PrimitiveType::Timestamp => IcebergType::Timestamp,
            PrimitiveType::Timestamptz => IcebergType::Timestamptz,
            PrimitiveType::String => IcebergType::String,
            PrimitiveType::Uuid => IcebergType::Uuid,
            PrimitiveType::Binary => IcebergType::Binary,
            PrimitiveType::Fixed(len) => IcebergType::Fixed(u32::try_from(*len).ok()?),
            PrimitiveType::TimestampNs | PrimitiveType::TimestamptzNs => return None,
        },
        Type::List(list) => {
            IcebergType::List(Box::new(philotes_type(&list.element_field.field_type)?))
        }
        Type::Struct(s) => IcebergType::Struct(
            s.fields()
                .iter()
                .map(|f| {
                    Some(IcebergField {
                        name: f.name.clone(),
                        field_type: philotes_type(&f.field_type)?,
                        required: f.required,
                    })
                })
                .collect::<Option<_>>()?,
        ),
        Type::Map(_) => return None,
    })
}

/// Whether rows of `column` (of `version`) can be written into a table column of type `have`: the same
/// Iceberg type, or a wider one (an older version's `integer` into a `long` column). Otherwise the error names
/// the column and both types: [`SchemaError::NeedsPromotion`] when Iceberg could widen the table's column (the
/// evolution, `catalog::evolve`, does that before a batch is built), [`SchemaError::IncompatibleType`] when
/// nothing can.
pub fn check_column(
    version: &TableSchema,
    column: &ColumnSchema,
    have: &Type,
) -> Result<(), SchemaError> {
    let wanted = iceberg_type(&column.pg_type);
    let new_type = || format!("{wanted} ({})", column.pg_type);
    match philotes_type(have) {
        Some(have) if wanted.can_become(&have) => Ok(()),
        Some(have) if have.can_become(&wanted) => Err(SchemaError::NeedsPromotion {
            table: version.qualified_name(),
            column: column.name.clone(),
            old_type: have.to_string(),
            new_type: new_type(),
        }),
        _ => Err(SchemaError::IncompatibleType {
            table: version.qualified_name(),
            column: column.name.clone(),
            old_type: type_name(have),
            new_type: new_type(),
        }),
    }
}

/// A table column's type as the Iceberg spec writes it (`list<string>`, not the crate's bare `list`).
pub fn type_name(ty: &Type) -> String {
    philotes_type(ty).map_or_else(|| ty.to_string(), |ty| ty.to_string())
}

/// Fields of one level: ids for all of them first, then for what is nested in each (the iceberg crate's order).
pub(crate) fn level_first(fields: &[(String, IcebergType, bool)], next_id: &mut i32) -> Vec<NestedFieldRef> {
    let first = *next_id + 1;
    *next_id += fields.len() as i32;
    fields
        .iter()
        .zip(first..)
        .map(|((name, ty, required), id)| {
            Arc::new(NestedField::new(
                id,
                name,
                iceberg_spec_type(ty, next_id),
                *required,
            ))
        })
        .collect()
}

pub(crate) fn check_reserved(source: &TableSchema) -> Result<(), SchemaError> {
    match source
        .columns
        .iter()
        .find(|c| CHANGELOG_COLUMNS.contains(&c.name.as_str()))
    {
        Some(column) => Err(SchemaError::ReservedColumn {
            table: source.qualified_name(),
            column: column.name.clone(),
        }),
        None => Ok(()),
    }
}
