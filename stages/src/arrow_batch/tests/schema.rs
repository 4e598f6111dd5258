//! Changelog schemas, their evolution, and the field ids a batch carries.

use super::*;

/// The type without field metadata (the iceberg crate puts field ids on nested fields too).
fn bare(data_type: &DataType) -> DataType {
    let field = |f: &arrow::datatypes::Field| {
        arrow::datatypes::Field::new(f.name(), bare(f.data_type()), f.is_nullable())
    };
    match data_type {
        DataType::List(element) => DataType::List(Arc::new(field(element))),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(|f| field(f)).collect()),
        other => other.clone(),
    }
}

#[test]
fn changelog_schema_has_every_source_type_then_the_changelog_columns_with_unique_ids() {
    let source = every_type();
    let schema = changelog_schema(&source).expect("schema");
    let fields = schema.as_struct().fields();
    assert_eq!(fields.len(), source.columns.len() + CHANGELOG_COLUMNS.len());
    for (field, column) in fields.iter().zip(&source.columns) {
        assert_eq!(field.name, column.name);
        assert!(!field.required, "{} is optional", column.name);
        assert_eq!(
            philotes_type(&field.field_type),
            Some(iceberg_type(&column.pg_type)),
            "{}",
            column.name
        );
    }
    let changelog: Vec<(String, String, bool)> = fields[source.columns.len()..]
        .iter()
        .map(|f| {
            let ty = philotes_type(&f.field_type).expect("a philotes type");
            (f.name.clone(), ty.to_string(), f.required)
        })
        .collect();
    let expected = [
        (OP, "string", true),
        (LSN, "long", true),
        (COMMIT_TS, "timestamptz", true),
        (XID, "long", true),
        (SEQ, "long", true),
        (UNCHANGED, "list<string>", false),
    ];
    let expected: Vec<(String, String, bool)> = expected
        .iter()
        .map(|(n, t, r)| (n.to_string(), t.to_string(), *r))
        .collect();
    assert_eq!(changelog, expected);

    let mut ids = Vec::new();
    all_field_ids(&Type::Struct(schema.as_struct().clone()), &mut ids);
    let top: Vec<i32> = fields.iter().map(|f| f.id).collect();
    assert_eq!(
        top,
        (1..=fields.len() as i32).collect::<Vec<_>>(),
        "top level first"
    );
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "ids unique: {ids:?}");
    assert_eq!(schema.highest_field_id(), ids.len() as i32);

    // The Arrow schema the iceberg crate derives has the types philotes-schemas documents.
    let arrow = schema_to_arrow_schema(&schema).expect("arrow schema");
    for column in &source.columns {
        let field = arrow.field_with_name(&column.name).expect("field");
        assert!(field.is_nullable());
        let expected = documented_arrow_type(&column.pg_type);
        assert_eq!(bare(field.data_type()), bare(&expected), "{}", column.name);
    }
}

#[test]
fn a_source_column_named_like_a_changelog_column_is_refused() {
    let source = table(vec![
        col("id", PgType::Int4, true),
        col("_op", PgType::Text, false),
    ]);
    let err = changelog_schema(&source).expect_err("reserved");
    assert!(matches!(err, SchemaError::ReservedColumn { ref column, .. } if column == "_op"));
    assert!(err.to_string().contains("\"_op\""), "{err}");
}

#[test]
fn evolution_adds_new_columns_and_nothing_for_a_type_change_that_keeps_the_iceberg_type() {
    let v1 = table(vec![
        col("id", PgType::Int2, true),
        col("name", PgType::Varchar(Some(10)), false),
        col("doc", PgType::Json, false),
    ]);
    let current = changelog_schema(&v1).expect("schema");
    assert_eq!(evolved(&current, &[&v1]).expect("same"), current);
    let v2 = table(vec![
        col("id", PgType::Int4, true),
        col("name", PgType::Text, false),
        col("doc", PgType::Jsonb, false),
        col("tags", PgType::Array(Box::new(PgType::Text)), false),
        col("note", PgType::Text, false),
    ]);
    let after = evolved(&current, &[&v1, &v2]).expect("compatible");
    let fields = after.as_struct().fields();
    assert_eq!(fields[..current.as_struct().fields().len()], current.as_struct().fields()[..], "kept as they were");
    let added: Vec<&str> = fields[current.as_struct().fields().len()..].iter().map(|f| f.name.as_str()).collect();
    assert_eq!(added, ["tags", "note"]);
    let tags = after.as_struct().field_by_name("tags").expect("tags");
    assert_eq!(philotes_type(&tags.field_type), Some(IcebergType::List(Box::new(IcebergType::String))));
    assert!(tags.id > current.highest_field_id() && !tags.required);
    let note = after.as_struct().field_by_name("note").expect("note");
    assert_eq!(*note.field_type, Type::Primitive(PrimitiveType::String));
}

#[test]
fn an_older_narrower_version_fits_a_wider_table_column() {
    let wide = table(vec![
        col("id", PgType::Int8, true),
        col("x", PgType::Float8, false),
    ]);
    let narrow = table(vec![
        col("id", PgType::Int4, true),
        col("x", PgType::Float4, false),
    ]);
    let current = changelog_schema(&wide).expect("schema");
    assert_eq!(evolved(&current, &[&narrow]).expect("fits"), current);
    let out = build(
        &current,
        vec![(
            narrow,
            vec![insert(0, vec![Value::Int32(7), Value::Float32(1.5)])],
        )],
    );
    assert_eq!(array::<Int64Array>(&out.batch, "id").value(0), 7);
    assert_eq!(array::<Float64Array>(&out.batch, "x").value(0), 1.5);
}

#[test]
fn evolution_promotes_int_float_and_decimal_precision_keeping_field_ids() {
    let v1 = table(vec![
        col("id", PgType::Int4, true),
        col("x", PgType::Float4, false),
        col("d", numeric(10, 2), false),
        col("ns", PgType::Array(Box::new(PgType::Int4)), false),
    ]);
    let current = changelog_schema(&v1).expect("schema");
    let v2 = table(vec![
        col("id", PgType::Int8, true),
        col("x", PgType::Float8, false),
        col("d", numeric(12, 2), false),
        col("ns", PgType::Array(Box::new(PgType::Int8)), false),
    ]);
    let after = evolved(&current, &[&v1, &v2]).expect("promotions");
    for (name, wanted) in [
        ("id", IcebergType::Long),
        ("x", IcebergType::Double),
        ("d", IcebergType::Decimal { precision: 12, scale: 2 }),
        ("ns", IcebergType::List(Box::new(IcebergType::Long))),
    ] {
        let (old, new) = (current.as_struct().field_by_name(name).unwrap(), after.as_struct().field_by_name(name).unwrap());
        assert_eq!(old.id, new.id, "{name} keeps its id");
        assert_eq!(philotes_type(&new.field_type), Some(wanted), "{name}");
    }
    let element_id = |s: &Schema| match s.as_struct().field_by_name("ns").unwrap().field_type.as_ref() {
        Type::List(list) => list.element_field.id,
        other => panic!("{other:?}"),
    };
    assert_eq!(element_id(&current), element_id(&after), "the list element keeps its id");
    assert_eq!(after.highest_field_id(), current.highest_field_id(), "no field added");
    // Rows of the older version still fit the promoted table.
    let out = build(&after, vec![(v1, vec![insert(0, vec![Value::Int32(7), Value::Float32(1.5), Value::Null, Value::Null])])]);
    assert_eq!(array::<Int64Array>(&out.batch, "id").value(0), 7);
}

#[test]
fn evolution_refuses_an_incompatible_change_naming_column_and_types() {
    let v1 = table(vec![
        col("id", PgType::Int4, true),
        col("at", PgType::Timestamp, false),
        col("d", numeric(12, 2), false),
    ]);
    let current = changelog_schema(&v1).expect("schema");
    let v2 = table(vec![
        col("id", PgType::Int4, true),
        col("at", PgType::TimestampTz, false),
        col("d", numeric(12, 2), false),
    ]);
    let err = evolved(&current, &[&v1, &v2]).expect_err("incompatible");
    let message = err.to_string();
    assert!(
        matches!(err, SchemaError::IncompatibleType { .. }),
        "{message}"
    );
    assert!(
        message.contains("column \"at\" changed from Iceberg timestamp to timestamptz"),
        "{message}"
    );
    // Narrowing (while the table has the wider type) and a changed scale are refused too.
    for (from, to) in [(PgType::Int8, PgType::Int4), (numeric(12, 2), numeric(12, 3)), (PgType::Text, PgType::Int4)] {
        let before = table(vec![col("id", PgType::Int4, true), col("c", from, false)]);
        let after = table(vec![col("id", PgType::Int4, true), col("c", to, false)]);
        let current = changelog_schema(&before).expect("schema");
        assert!(matches!(evolved(&current, &[&before, &after]), Err(SchemaError::IncompatibleType { .. })));
    }
    // The same check guards build_batch, for a version that was never passed through the evolution.
    let err = build_batch(&current, &[(v2, vec![])]).expect_err("incompatible");
    assert!(
        matches!(err, SchemaError::IncompatibleType { .. }),
        "{err}"
    );
}

#[test]
fn the_batch_schema_carries_the_field_ids_of_the_target() {
    let t = every_type();
    let target = changelog_schema(&t).expect("schema");
    let out = build(&target, vec![(t, vec![])]);
    assert_eq!(out.batch.num_rows(), 0);
    let schema = out.batch.schema();
    assert_eq!(*schema, schema_to_arrow_schema(&target).expect("arrow"));
    for field in target.as_struct().fields() {
        let arrow = schema.field_with_name(&field.name).expect("field");
        assert_eq!(
            arrow.metadata().get(PARQUET_FIELD_ID_META_KEY),
            Some(&field.id.to_string()),
            "{}",
            field.name
        );
        if let (Type::List(list), DataType::List(element)) = (&*field.field_type, arrow.data_type())
        {
            assert_eq!(
                element.metadata().get(PARQUET_FIELD_ID_META_KEY),
                Some(&list.element_field.id.to_string())
            );
        }
    }
}

/// The Arrow type the README's type table documents for a column (what the `iceberg` crate derives from its
/// Iceberg type: `string` → `Utf8`, `binary` → `LargeBinary`, `timestamptz` → `Timestamp(µs, "+00:00")`,
/// `uuid` → `FixedSizeBinary(16)`, list elements named `element`).
fn documented_arrow_type(pg_type: &PgType) -> DataType {
    use arrow::datatypes::{Field, Fields, TimeUnit};
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    let list = |element| DataType::List(Arc::new(Field::new("element", element, true)));
    match pg_type {
        PgType::Bool => DataType::Boolean,
        PgType::Int2 | PgType::Int4 => DataType::Int32,
        PgType::Int8 => DataType::Int64,
        PgType::Float4 => DataType::Float32,
        PgType::Float8 => DataType::Float64,
        PgType::Numeric { .. } | PgType::NumericUnconstrained => match iceberg_type(pg_type) {
            IcebergType::Decimal { precision, scale } => DataType::Decimal128(precision, scale as i8),
            _ => DataType::Utf8,
        },
        PgType::Bytea => DataType::LargeBinary,
        PgType::Date => DataType::Date32,
        PgType::Time => DataType::Time64(TimeUnit::Microsecond),
        PgType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        PgType::TimestampTz => utc,
        PgType::Interval => DataType::Struct(Fields::from(vec![
            Field::new("months", DataType::Int32, false),
            Field::new("days", DataType::Int32, false),
            Field::new("microseconds", DataType::Int64, false),
        ])),
        PgType::Uuid => DataType::FixedSizeBinary(16),
        PgType::Array(element) => list(documented_arrow_type(element)),
        _ => DataType::Utf8,
    }
}

/// Every `PgType` variant with the Iceberg type the docs promise.
fn documented_iceberg_types() -> Vec<(PgType, &'static str)> {
    vec![
        (PgType::Bool, "boolean"),
        (PgType::Int2, "int"),
        (PgType::Int4, "int"),
        (PgType::Int8, "long"),
        (PgType::Float4, "float"),
        (PgType::Float8, "double"),
        (PgType::Numeric { precision: 10, scale: 2 }, "decimal(10,2)"),
        (PgType::Numeric { precision: 5, scale: -2 }, "decimal(7,0)"),
        (PgType::Numeric { precision: 60, scale: 2 }, "string"),
        (PgType::NumericUnconstrained, "string"),
        (PgType::Text, "string"),
        (PgType::Varchar(Some(20)), "string"),
        (PgType::Char(Some(3)), "string"),
        (PgType::Name, "string"),
        (PgType::Bytea, "binary"),
        (PgType::Date, "date"),
        (PgType::Time, "time"),
        (PgType::Timestamp, "timestamp"),
        (PgType::TimestampTz, "timestamptz"),
        (PgType::Interval, "struct<months: int, days: int, microseconds: long>"),
        (PgType::Uuid, "uuid"),
        (PgType::Json, "string"),
        (PgType::Jsonb, "string"),
        (PgType::Inet, "string"),
        (PgType::Cidr, "string"),
        (PgType::MacAddr, "string"),
        (PgType::MacAddr8, "string"),
        (PgType::Enum { name: "mood".into() }, "string"),
        (PgType::Array(Box::new(PgType::Int4)), "list<int>"),
        (PgType::Array(Box::new(PgType::TimestampTz)), "list<timestamptz>"),
        (PgType::Unmapped { type_name: "point".into() }, "string"),
    ]
}

#[test]
fn every_supported_type_has_the_documented_iceberg_type_and_the_iceberg_crate_gives_the_documented_arrow_type() {
    for (pg_type, iceberg) in documented_iceberg_types() {
        assert_eq!(iceberg_type(&pg_type).to_string(), iceberg, "{pg_type}");
        let derived = iceberg::arrow::type_to_arrow_type(&iceberg_spec_type(&iceberg_type(&pg_type), &mut 0))
            .unwrap_or_else(|e| panic!("{pg_type}: {e}"));
        assert_eq!(bare(&derived), bare(&documented_arrow_type(&pg_type)), "{pg_type}");
    }
}

#[test]
fn every_built_in_oid_resolves_to_a_type_the_iceberg_crate_can_write() {
    use philotes_schemas::{oids, TypeResolver};
    let resolver = TypeResolver::new(false);
    let scalars = [
        oids::BOOL, oids::BYTEA, oids::NAME, oids::INT8, oids::INT2, oids::INT4, oids::TEXT, oids::JSON,
        oids::FLOAT4, oids::FLOAT8, oids::MACADDR8, oids::MACADDR, oids::INET, oids::CIDR, oids::BPCHAR,
        oids::VARCHAR, oids::DATE, oids::TIME, oids::TIMESTAMP, oids::TIMESTAMPTZ, oids::INTERVAL, oids::NUMERIC,
        oids::UUID, oids::JSONB,
    ];
    let arrays = oids::ARRAYS.iter().map(|(array, _)| *array);
    for oid in scalars.into_iter().chain(arrays) {
        let pg_type = resolver.resolve("t", "c", oid, -1).expect("built-in types resolve");
        let derived = iceberg::arrow::type_to_arrow_type(&iceberg_spec_type(&iceberg_type(&pg_type), &mut 0))
            .unwrap_or_else(|e| panic!("{pg_type}: {e}"));
        assert_eq!(bare(&derived), bare(&documented_arrow_type(&pg_type)), "{pg_type}");
        assert_eq!(matches!(pg_type, PgType::Array(_)), matches!(derived, DataType::List(_)), "{pg_type}");
    }
}
