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
        let expected = arrow_type(&column.pg_type);
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
fn missing_columns_lists_added_columns_and_nothing_for_a_type_change_that_keeps_the_iceberg_type() {
    let v1 = table(vec![
        col("id", PgType::Int2, true),
        col("name", PgType::Varchar(Some(10)), false),
        col("doc", PgType::Json, false),
    ]);
    let current = changelog_schema(&v1).expect("schema");
    assert_eq!(missing_columns(&current, &v1).expect("same"), vec![]);
    let v2 = table(vec![
        col("id", PgType::Int4, true),
        col("name", PgType::Text, false),
        col("doc", PgType::Jsonb, false),
        col("tags", PgType::Array(Box::new(PgType::Text)), false),
        col("note", PgType::Text, false),
    ]);
    let missing = missing_columns(&current, &v2).expect("compatible");
    let names: Vec<&str> = missing.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["tags", "note"]);
    assert_eq!(missing[1].1, Type::Primitive(PrimitiveType::String));
    assert_eq!(
        philotes_type(&missing[0].1),
        Some(IcebergType::List(Box::new(IcebergType::String)))
    );
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
    assert_eq!(missing_columns(&current, &narrow).expect("fits"), vec![]);
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
fn missing_columns_refuses_a_promotion_the_iceberg_crate_cannot_apply() {
    let v1 = table(vec![
        col("id", PgType::Int4, true),
        col("d", numeric(10, 2), false),
    ]);
    let current = changelog_schema(&v1).expect("schema");
    let v2 = table(vec![
        col("id", PgType::Int8, true),
        col("d", numeric(10, 2), false),
    ]);
    let err = missing_columns(&current, &v2).expect_err("promotion");
    let message = err.to_string();
    assert!(
        matches!(err, SchemaError::NeedsPromotion { .. }),
        "{message}"
    );
    for part in [
        "\"id\"",
        "from Iceberg int",
        "to long (bigint)",
        "cannot change a column's type",
    ] {
        assert!(message.contains(part), "{part} in {message}");
    }
    let v3 = table(vec![
        col("id", PgType::Int4, true),
        col("d", numeric(12, 2), false),
    ]);
    let err = missing_columns(&current, &v3).expect_err("decimal promotion");
    assert!(
        err.to_string().contains("decimal(10,2) to decimal(12,2)"),
        "{err}"
    );
}

#[test]
fn missing_columns_refuses_an_incompatible_change_naming_column_and_types() {
    let v1 = table(vec![
        col("id", PgType::Int4, true),
        col("at", PgType::Timestamp, false),
    ]);
    let current = changelog_schema(&v1).expect("schema");
    let v2 = table(vec![
        col("id", PgType::Int4, true),
        col("at", PgType::TimestampTz, false),
    ]);
    let err = missing_columns(&current, &v2).expect_err("incompatible");
    let message = err.to_string();
    assert!(
        matches!(err, SchemaError::IncompatibleType { .. }),
        "{message}"
    );
    assert!(
        message.contains("column \"at\" changed from Iceberg timestamp to timestamptz"),
        "{message}"
    );
    // The same check guards build_batch, for a version that was never passed through missing_columns.
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
