//! Every type of the mapping table into its Arrow array.

use super::*;

#[test]
fn every_type_of_the_mapping_table_round_trips_into_its_arrow_array() {
    let t = every_type();
    let target = changelog_schema(&t).expect("schema");
    let interval = Interval {
        months: -14,
        days: 3,
        micros: -1,
    };
    let full = vec![
        Value::Int64(1),
        Value::Bool(true),
        Value::Int16(-3),
        Value::Int32(i32::MIN),
        Value::Int64(i64::MAX),
        Value::Float32(f32::NEG_INFINITY),
        Value::Float64(f64::NAN),
        Value::Numeric("-12345678.91".into()),
        Value::Numeric("1200".into()),
        Value::Numeric("3.14159265358979323846264338327950288419716939937510".into()),
        Value::Numeric("Infinity".into()),
        text("héllo"),
        text("ab"),
        text("x  "),
        text("pg_class"),
        Value::Bytes(vec![0, 255, 128]),
        Value::Date(DATE_POS_INFINITY),
        Value::Time(86_399_999_999),
        Value::Timestamp(TIMESTAMP_NEG_INFINITY),
        Value::TimestampTz(TIMESTAMP_POS_INFINITY),
        Value::Interval(interval),
        Value::Uuid(*b"0123456789abcdef"),
        text(r#"{"a": 1}"#),
        text(r#"{"a": 1}"#),
        text("192.168.0.1/24"),
        text("10.0.0.0/8"),
        text("08:00:2b:01:02:03"),
        text("08:00:2b:01:02:03:04:05"),
        text("happy"),
        text("(1,2)"),
        Value::Array(vec![Value::Int32(1), Value::Null, Value::Int16(3)]),
        Value::Array(vec![]),
        Value::Array(vec![Value::Numeric("0.01".into()), Value::Null]),
        Value::Array(vec![Value::Interval(Interval::NEG_INFINITY), Value::Null]),
    ];
    assert_eq!(full.len(), t.columns.len());
    let mut nulls = vec![Value::Null; t.columns.len()];
    nulls[0] = Value::Int64(2);
    let mut minus = nulls.clone();
    minus[0] = Value::Int64(3);
    minus[16] = Value::Date(DATE_NEG_INFINITY);
    minus[10] = Value::Numeric("-Infinity".into());
    let out = build(
        &target,
        vec![(t, vec![insert(0, full), insert(1, nulls), insert(2, minus)])],
    );
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    let b = &out.batch;
    assert_eq!(b.num_rows(), 3);
    for column in b.schema().fields().iter().skip(1).take(33) {
        let values = b.column_by_name(column.name()).expect("column");
        assert!(values.is_valid(0) && values.is_null(1), "{}", column.name());
    }

    assert_eq!(array::<Int64Array>(b, "id").values().to_vec(), [1, 2, 3]);
    assert!(array::<BooleanArray>(b, "bool").value(0));
    assert_eq!(array::<Int32Array>(b, "int2").value(0), -3);
    assert_eq!(array::<Int32Array>(b, "int4").value(0), i32::MIN);
    assert_eq!(array::<Int64Array>(b, "int8").value(0), i64::MAX);
    assert_eq!(
        array::<Float32Array>(b, "float4").value(0),
        f32::NEG_INFINITY
    );
    assert!(array::<Float64Array>(b, "float8").value(0).is_nan());
    let dec = array::<Decimal128Array>(b, "dec");
    assert_eq!(
        (dec.value(0), dec.precision(), dec.scale()),
        (-1_234_567_891, 10, 2)
    );
    let dec = array::<Decimal128Array>(b, "dec_neg_scale");
    assert_eq!((dec.value(0), dec.precision(), dec.scale()), (1200, 7, 0));
    assert_eq!(
        array::<StringArray>(b, "num").value(0),
        "3.14159265358979323846264338327950288419716939937510"
    );
    let wide = array::<StringArray>(b, "num_wide");
    assert_eq!((wide.value(0), wide.value(2)), ("Infinity", "-Infinity"));
    for (name, want) in [
        ("text", "héllo"),
        ("varchar", "ab"),
        ("char", "x  "),
        ("name", "pg_class"),
        ("json", r#"{"a": 1}"#),
        ("jsonb", r#"{"a": 1}"#),
        ("inet", "192.168.0.1/24"),
        ("cidr", "10.0.0.0/8"),
        ("macaddr", "08:00:2b:01:02:03"),
        ("macaddr8", "08:00:2b:01:02:03:04:05"),
        ("mood", "happy"),
        ("point", "(1,2)"),
    ] {
        assert_eq!(array::<StringArray>(b, name).value(0), want, "{name}");
    }
    assert_eq!(
        array::<LargeBinaryArray>(b, "bytea").value(0),
        [0, 255, 128]
    );
    let date = array::<Date32Array>(b, "date");
    assert_eq!(
        (date.value(0), date.value(2)),
        (DATE_POS_INFINITY, DATE_NEG_INFINITY)
    );
    assert_eq!(
        array::<Time64MicrosecondArray>(b, "time").value(0),
        86_399_999_999
    );
    let ts = array::<TimestampMicrosecondArray>(b, "ts");
    assert_eq!((ts.value(0), ts.timezone()), (TIMESTAMP_NEG_INFINITY, None));
    let tstz = array::<TimestampMicrosecondArray>(b, "tstz");
    assert_eq!(
        (tstz.value(0), tstz.timezone()),
        (TIMESTAMP_POS_INFINITY, Some("+00:00"))
    );
    let iv = array::<StructArray>(b, "interval");
    let field = |name: &str| iv.column_by_name(name).expect("interval field").clone();
    assert_eq!(
        field("months")
            .as_any()
            .downcast_ref::<Int32Array>()
            .expect("int")
            .value(0),
        -14
    );
    assert_eq!(
        field("days")
            .as_any()
            .downcast_ref::<Int32Array>()
            .expect("int")
            .value(0),
        3
    );
    assert_eq!(
        field("microseconds")
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("long")
            .value(0),
        -1
    );
    assert_eq!(
        array::<FixedSizeBinaryArray>(b, "uuid").value(0),
        b"0123456789abcdef"
    );

    let int4s = array::<ListArray>(b, "int4s").value(0);
    let int4s: Vec<Option<i32>> = int4s
        .as_any()
        .downcast_ref::<Int32Array>()
        .expect("ints")
        .iter()
        .collect();
    assert_eq!(int4s, [Some(1), None, Some(3)]);
    let texts = array::<ListArray>(b, "texts");
    assert!(texts.is_valid(0) && texts.value(0).is_empty() && texts.is_null(1));
    let decs = array::<ListArray>(b, "decs").value(0);
    let decs = decs
        .as_any()
        .downcast_ref::<Decimal128Array>()
        .expect("decimals");
    assert_eq!(decs.iter().collect::<Vec<_>>(), [Some(1), None]);
    let intervals = array::<ListArray>(b, "intervals").value(0);
    let intervals = intervals
        .as_any()
        .downcast_ref::<StructArray>()
        .expect("structs");
    assert!(intervals.is_valid(0) && intervals.is_null(1));
    let months = intervals.column_by_name("months").expect("months");
    assert_eq!(
        months
            .as_any()
            .downcast_ref::<Int32Array>()
            .expect("int")
            .value(0),
        i32::MIN
    );
}

#[test]
fn infinity_sentinels_an_older_build_left_in_the_buffer_are_written_as_todays() {
    let t = every_type();
    let target = changelog_schema(&t).expect("schema");
    let mut row = vec![Value::Null; t.columns.len()];
    row[0] = Value::Int64(1);
    row[16] = Value::Date(i32::MAX);
    row[18] = Value::Timestamp(i64::MIN);
    row[19] = Value::TimestampTz(i64::MAX);
    let mut minus = vec![Value::Null; t.columns.len()];
    minus[0] = Value::Int64(2);
    minus[16] = Value::Date(i32::MIN);
    minus[18] = Value::Timestamp(i64::MAX);
    minus[19] = Value::TimestampTz(i64::MIN);
    let out = build(&target, vec![(t, vec![insert(0, row), insert(1, minus)])]);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    let b = &out.batch;
    let date = array::<Date32Array>(b, "date");
    assert_eq!(
        (date.value(0), date.value(1)),
        (DATE_POS_INFINITY, DATE_NEG_INFINITY)
    );
    let ts = array::<TimestampMicrosecondArray>(b, "ts");
    assert_eq!(
        (ts.value(0), ts.value(1)),
        (TIMESTAMP_NEG_INFINITY, TIMESTAMP_POS_INFINITY)
    );
    let tstz = array::<TimestampMicrosecondArray>(b, "tstz");
    assert_eq!(
        (tstz.value(0), tstz.value(1)),
        (TIMESTAMP_POS_INFINITY, TIMESTAMP_NEG_INFINITY)
    );
}
