//! Partition specs of the tables philotes writes: the YAML's `partition: [ "day(created_at)", "bucket(16, id)" ]`
//! turned into an Iceberg spec on the table's schema (checked: every source column exists and suits its
//! transform), used when a table is created, and made the table's default spec (a new spec id; files already
//! written keep theirs) when the YAML's spec differs from the table's.
//!
//! A mirror table also carries an unpartitioned spec (not the default): its equality deletes are written with
//! it, so they apply to every partition (the Iceberg spec's global deletes). A key's old row may sit in any
//! partition — an UPDATE that moves `created_at` to another day leaves the old row in the old day, and the
//! change does not carry the old value under the default replica identity — so a delete carrying the new row's
//! partition would miss it.

use std::fmt;

use iceberg::spec::{PartitionSpec, Schema, UnboundPartitionSpec};
/// The Iceberg transforms, for callers that do not depend on the iceberg crate.
pub use iceberg::spec::Transform;
use iceberg::table::Table;

use super::table::Tables;

/// One partition field of the YAML: a transform of a source column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionField {
    /// The source column (an Iceberg column of the same name).
    pub column: String,
    /// The Iceberg transform.
    pub transform: Transform,
}

impl fmt::Display for PartitionField {
    /// As the YAML writes it: `created_at`, `day(created_at)`, `bucket(16, id)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let column = &self.column;
        match self.transform {
            Transform::Identity => write!(f, "{column}"),
            Transform::Bucket(n) => write!(f, "bucket({n}, {column})"),
            Transform::Truncate(w) => write!(f, "truncate({w}, {column})"),
            other => write!(f, "{other}({column})"),
        }
    }
}

/// Why a table's partition spec cannot be used: the table stops, the others go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    /// The source column is not a column of the table.
    #[error("partition {expression:?} of iceberg table {table}: the table has no column {column:?}")]
    NoColumn {
        /// The Iceberg table.
        table: String,
        /// The YAML's expression.
        expression: String,
        /// The missing column.
        column: String,
    },
    /// The transform does not apply to the column's type.
    #[error("partition {expression:?} of iceberg table {table}: column {column:?} is {column_type}, which {transform} does not apply to")]
    Type {
        /// The Iceberg table.
        table: String,
        /// The YAML's expression.
        expression: String,
        /// The column.
        column: String,
        /// Its Iceberg type.
        column_type: String,
        /// The transform.
        transform: String,
    },
    /// The spec is not one Iceberg accepts (the same transform of a column twice).
    #[error("partition of iceberg table {table}: {reason}")]
    Invalid {
        /// The Iceberg table.
        table: String,
        /// The crate's reason.
        reason: String,
    },
}

/// The partition field's name in the spec, as Iceberg's Java API names them by default (`created_at_day`,
/// `id_bucket`, `country_trunc`; the column's own name for identity).
fn field_name(field: &PartitionField) -> String {
    let column = &field.column;
    match field.transform {
        Transform::Identity => column.clone(),
        Transform::Bucket(_) => format!("{column}_bucket"),
        Transform::Truncate(_) => format!("{column}_trunc"),
        Transform::Year => format!("{column}_year"),
        Transform::Month => format!("{column}_month"),
        Transform::Day => format!("{column}_day"),
        Transform::Hour => format!("{column}_hour"),
        Transform::Void => format!("{column}_null"),
        Transform::Unknown => format!("{column}_unknown"),
    }
}

/// The spec of `fields` on `schema` (the schema of iceberg table `table`, named in errors); empty `fields`: the
/// unpartitioned spec.
pub fn unbound_spec(table: &str, fields: &[PartitionField], schema: &Schema) -> Result<UnboundPartitionSpec, PartitionError> {
    let mut builder = UnboundPartitionSpec::builder();
    for field in fields {
        let expression = field.to_string();
        let Some(column) = schema.field_by_name(&field.column) else {
            return Err(PartitionError::NoColumn { table: table.to_string(), expression, column: field.column.clone() });
        };
        if field.transform.result_type(&column.field_type).is_err() {
            return Err(PartitionError::Type {
                table: table.to_string(),
                expression,
                column: field.column.clone(),
                column_type: column.field_type.to_string(),
                transform: field.transform.to_string(),
            });
        }
        builder = builder
            .add_partition_field(column.id, field_name(field), field.transform)
            .map_err(|e| PartitionError::Invalid { table: table.to_string(), reason: e.message().to_string() })?;
    }
    let spec = builder.build();
    // Binding checks what the fields alone cannot (names clashing with columns of another meaning).
    spec.clone()
        .bind(schema.clone())
        .map_err(|e| PartitionError::Invalid { table: table.to_string(), reason: e.message().to_string() })?;
    Ok(spec)
}

/// Whether `spec` is the spec philotes made for `fields` (the same field names and transforms, in order), whose
/// columns may have been renamed since: a spec binds its columns by field id, so it still partitions the renamed
/// columns, and the pipeline file, which names them as they were, needs no edit.
fn renamed_since(spec: &PartitionSpec, fields: &[PartitionField]) -> bool {
    !fields.is_empty()
        && spec.fields().len() == fields.len()
        && spec.fields().iter().zip(fields).all(|(have, want)| have.name == field_name(want) && have.transform == want.transform)
}

/// Whether `spec` partitions as `wanted` does: the same transforms of the same columns, in order (names aside:
/// a table made by another tool may name its fields otherwise).
pub fn same_partitioning(spec: &PartitionSpec, wanted: &UnboundPartitionSpec) -> bool {
    spec.fields().len() == wanted.fields().len()
        && spec.fields().iter().zip(wanted.fields()).all(|(have, want)| have.source_id == want.source_id && have.transform == want.transform)
}

/// The id of `table`'s unpartitioned spec, when it has one (a mirror's equality deletes are written with it).
pub fn unpartitioned_spec_id(table: &Table) -> Option<i32> {
    let metadata = table.metadata();
    if metadata.default_partition_spec().is_unpartitioned() {
        return Some(metadata.default_partition_spec_id());
    }
    metadata.partition_specs_iter().filter(|s| s.is_unpartitioned()).map(|s| s.spec_id()).min()
}

impl Tables {
    /// Makes `fields` the default spec of `table` (a new spec id, committed through the commit module under the
    /// flush's lease; files already written keep their spec), and gives a partitioned mirror table its
    /// unpartitioned spec for equality deletes. A table already partitioned so is returned as it is. A spec
    /// the table's columns cannot take is `Ok(Err(..))`: the table stops.
    pub(super) async fn partition(
        &self,
        table: Table,
        fields: &[PartitionField],
        mirror: bool,
    ) -> Result<Result<Table, PartitionError>, iceberg::Error> {
        let metadata = table.metadata();
        let global_deletes = mirror && !fields.is_empty() && unpartitioned_spec_id(&table).is_none();
        let (wanted, respec) = if renamed_since(metadata.default_partition_spec(), fields) {
            (None, false)
        } else {
            match unbound_spec(&table.identifier().to_string(), fields, metadata.current_schema()) {
                Ok(spec) => {
                    let respec = !same_partitioning(metadata.default_partition_spec(), &spec);
                    (Some(spec), respec)
                }
                Err(e) => return Ok(Err(e)),
            }
        };
        if !respec && !global_deletes {
            return Ok(Ok(table));
        }
        let location = table.metadata_location_result()?.to_string();
        let mut builder = metadata.clone().into_builder(Some(location));
        if global_deletes {
            builder = builder.add_partition_spec(UnboundPartitionSpec::builder().build())?;
        }
        let (from, to) = (metadata.default_partition_spec_id(), fields.iter().map(ToString::to_string).collect::<Vec<_>>());
        if let Some(wanted) = wanted.filter(|_| respec) {
            builder = builder.add_partition_spec(wanted)?.set_default_partition_spec(-1)?;
        }
        let table = self.commit_metadata(&table, builder.build()?).await?;
        tracing::info!(table = %table.identifier(), from_spec = from, spec = table.metadata().default_partition_spec_id(),
            partition = ?to, "set the iceberg table's partition spec");
        Ok(Ok(table))
    }
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{NestedField, PrimitiveType, Type};

    use super::*;

    fn schema() -> Schema {
        Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::optional(2, "created_at", Type::Primitive(PrimitiveType::Timestamptz)).into(),
                NestedField::optional(3, "country", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(4, "score", Type::Primitive(PrimitiveType::Double)).into(),
            ])
            .build()
            .unwrap()
    }

    fn field(column: &str, transform: Transform) -> PartitionField {
        PartitionField { column: column.to_string(), transform }
    }

    #[test]
    fn fields_are_named_as_iceberg_names_them() {
        let fields = [
            field("created_at", Transform::Day),
            field("id", Transform::Bucket(16)),
            field("country", Transform::Truncate(2)),
            field("country", Transform::Identity),
        ];
        let spec = unbound_spec("s.t", &fields, &schema()).unwrap();
        let names: Vec<_> = spec.fields().iter().map(|f| (f.name.as_str(), f.source_id, f.transform)).collect();
        assert_eq!(
            names,
            [
                ("created_at_day", 2, Transform::Day),
                ("id_bucket", 1, Transform::Bucket(16)),
                ("country_trunc", 3, Transform::Truncate(2)),
                ("country", 3, Transform::Identity),
            ]
        );
        assert_eq!(fields.map(|f| f.to_string()), ["day(created_at)", "bucket(16, id)", "truncate(2, country)", "country"]);
    }

    #[test]
    fn a_missing_column_and_an_unsuitable_type_are_named() {
        let missing = unbound_spec("s.t", &[field("nope", Transform::Day)], &schema()).unwrap_err();
        assert_eq!(missing.to_string(), "partition \"day(nope)\" of iceberg table s.t: the table has no column \"nope\"");
        let wrong = unbound_spec("s.t", &[field("country", Transform::Hour)], &schema()).unwrap_err();
        assert_eq!(
            wrong.to_string(),
            "partition \"hour(country)\" of iceberg table s.t: column \"country\" is string, which hour does not apply to"
        );
        assert!(matches!(unbound_spec("s.t", &[field("score", Transform::Truncate(2))], &schema()), Err(PartitionError::Type { .. })));
        let twice = unbound_spec("s.t", &[field("id", Transform::Bucket(4)), field("id", Transform::Bucket(8))], &schema());
        assert!(matches!(twice, Err(PartitionError::Invalid { .. })), "{twice:?}");
    }

    #[test]
    fn partitioning_is_compared_by_column_and_transform() {
        let schema = schema();
        let wanted = unbound_spec("s.t", &[field("created_at", Transform::Day)], &schema).unwrap();
        let bound = wanted.clone().bind(schema.clone()).unwrap();
        assert!(same_partitioning(&bound, &wanted));
        assert!(!same_partitioning(&PartitionSpec::unpartition_spec(), &wanted));
        let hourly = unbound_spec("s.t", &[field("created_at", Transform::Hour)], &schema).unwrap();
        assert!(!same_partitioning(&bound, &hourly));
        assert!(same_partitioning(&PartitionSpec::unpartition_spec(), &unbound_spec("s.t", &[], &schema).unwrap()));
    }

    #[test]
    fn a_spec_made_for_the_fields_stays_when_its_column_was_renamed() {
        let schema = schema();
        let fields = [field("created_at", Transform::Day), field("id", Transform::Bucket(16))];
        let spec = unbound_spec("s.t", &fields, &schema).unwrap().bind(schema.clone()).unwrap();
        // `created_at` renamed on the source (and in Iceberg, same field id): the file still says `created_at`.
        let renamed = Schema::builder()
            .with_fields(schema.as_struct().fields().iter().map(|f| {
                let mut f = f.as_ref().clone();
                if f.name == "created_at" {
                    f.name = "created".into();
                }
                f.into()
            }).collect::<Vec<_>>())
            .build()
            .unwrap();
        assert!(unbound_spec("s.t", &fields, &renamed).is_err(), "the name alone no longer resolves");
        assert!(renamed_since(&spec, &fields), "the spec made for these fields is kept");
        assert!(!renamed_since(&spec, &[field("created_at", Transform::Hour), field("id", Transform::Bucket(16))]));
        assert!(!renamed_since(&spec, &fields[..1]));
        assert!(!renamed_since(&PartitionSpec::unpartition_spec(), &[]));
    }
}
