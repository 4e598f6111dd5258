//! The changelog row rules: each op, projection, unchanged TOAST, rejected changes.

use super::*;

#[test]
fn each_op_writes_its_image_and_the_changelog_columns() {
    let t = simple();
    let target = changelog_schema(&t).expect("schema");
    let row = |id, body: &str| vec![Value::Int32(id), text(body), Value::Numeric("1.50".into())];
    let events = vec![
        insert(0, row(1, "a")),
        update(1, row(1, "b")),
        event('D', 2, Some((true, row(1, "b"))), None),
        event('r', 3, None, Some(row(2, "snap"))),
        event('T', 4, None, None),
    ];
    let out = build(&target, vec![(t, events)]);
    assert!(out.rejected.is_empty());
    let batch = &out.batch;
    assert_eq!(batch.num_rows(), 5);
    assert_eq!(
        strings(batch, OP),
        ["I", "U", "D", "r", "T"].map(|s| Some(s.to_owned()))
    );
    assert_eq!(
        ints(batch, "id"),
        [Some(1), Some(1), Some(1), Some(2), None]
    );
    assert_eq!(
        strings(batch, "body"),
        [Some("a"), Some("b"), Some("b"), Some("snap"), None].map(|s| s.map(str::to_owned))
    );
    let n = array::<Decimal128Array>(batch, "n");
    assert_eq!(n.value(0), 150);
    assert!(n.is_null(4));
    let lsn = array::<Int64Array>(batch, LSN);
    let seq = array::<Int64Array>(batch, SEQ);
    let xid = array::<Int64Array>(batch, XID);
    let ts = array::<TimestampMicrosecondArray>(batch, COMMIT_TS);
    for row in 0..5 {
        assert_eq!(lsn.value(row), LSN_OF_TX as i64);
        assert_eq!(seq.value(row), row as i64);
        assert_eq!(xid.value(row), 731);
        assert_eq!(ts.value(row), COMMIT_TS_OF_TX);
    }
    assert_eq!(ts.timezone(), Some("+00:00"));
    assert_eq!(unchanged_lists(batch), vec![None; 5]);
}

#[test]
fn a_delete_with_a_key_only_image_writes_the_key_and_nulls() {
    let t = simple();
    let target = changelog_schema(&t).expect("schema");
    // Placeholders of a key-only image are not values, whatever they hold.
    let old = vec![Value::Int32(9), Value::Null, Value::Numeric("NaN".into())];
    let out = build(
        &target,
        vec![(t, vec![event('D', 0, Some((false, old)), None)])],
    );
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(ints(&out.batch, "id"), [Some(9)]);
    assert_eq!(strings(&out.batch, "body"), [None]);
    assert!(array::<Decimal128Array>(&out.batch, "n").is_null(0));
    assert_eq!(unchanged_lists(&out.batch), [None]);
}

#[test]
fn a_truncate_writes_all_source_columns_null() {
    let t = simple();
    let target = changelog_schema(&t).expect("schema");
    let out = build(&target, vec![(t, vec![event('T', 0, None, None)])]);
    let batch = &out.batch;
    for column in ["id", "body", "n"] {
        assert!(
            batch.column_by_name(column).expect("column").is_null(0),
            "{column}"
        );
    }
    assert_eq!(strings(batch, OP), [Some("T".to_owned())]);
}

#[test]
fn an_older_version_is_projected_by_name_onto_the_newer_target() {
    let v1 = table(vec![
        col("id", PgType::Int4, true),
        col("body", PgType::Text, false),
    ]);
    // v2 adds `extra` and reorders: projection is by name, not position.
    let v2 = table(vec![
        col("extra", PgType::Int4, false),
        col("id", PgType::Int4, true),
        col("body", PgType::Text, false),
    ]);
    let current = changelog_schema(&v1).expect("schema");
    let target = evolved(&current, &[&v1, &v2]).expect("compatible");
    assert_eq!(target.as_struct().fields().len(), current.as_struct().fields().len() + 1);
    assert_eq!(target.as_struct().fields().last().map(|f| f.name.as_str()), Some("extra"), "the new field at the end");

    let out = build(
        &target,
        vec![
            (
                v1.clone(),
                vec![insert(0, vec![Value::Int32(1), text("old")])],
            ),
            (
                v2.clone(),
                vec![insert(
                    1,
                    vec![Value::Int32(5), Value::Int32(2), text("new")],
                )],
            ),
        ],
    );
    assert_eq!(ints(&out.batch, "id"), [Some(1), Some(2)]);
    assert_eq!(ints(&out.batch, "extra"), [None, Some(5)]);
    assert_eq!(
        strings(&out.batch, "body"),
        [Some("old".to_owned()), Some("new".to_owned())]
    );

    // A version column the target lacks is an error: the caller adds it first.
    let v1_target = changelog_schema(&v1).expect("schema");
    let err = build_batch(&v1_target, &[(v2, vec![])]).expect_err("not in target");
    assert!(
        matches!(err, SchemaError::ColumnNotInTarget { ref column, .. } if column == "extra"),
        "{err}"
    );
}

#[test]
fn an_unchanged_toast_value_is_filled_from_the_full_old_image() {
    let t = simple();
    let target = changelog_schema(&t).expect("schema");
    let old = vec![
        Value::Int32(1),
        text("big body"),
        Value::Numeric("2".into()),
    ];
    let new = vec![
        Value::Int32(1),
        Value::Unchanged,
        Value::Numeric("3".into()),
    ];
    let out = build(
        &target,
        vec![(t, vec![event('U', 0, Some((true, old)), Some(new))])],
    );
    assert_eq!(strings(&out.batch, "body"), [Some("big body".to_owned())]);
    assert_eq!(array::<Decimal128Array>(&out.batch, "n").value(0), 300);
    assert_eq!(unchanged_lists(&out.batch), [None]);
}

#[test]
fn an_unchanged_toast_value_is_filled_from_an_earlier_change_of_the_same_key_in_the_batch() {
    let t = simple();
    let target = changelog_schema(&t).expect("schema");
    let n = |s: &str| Value::Numeric(s.into());
    let first = vec![
        insert(0, vec![Value::Int32(1), text("body of 1"), n("1")]),
        insert(1, vec![Value::Int32(2), text("body of 2"), n("1")]),
    ];
    let second = vec![
        update(2, vec![Value::Int32(1), Value::Unchanged, n("2")]),
        // Filled from the fill before it.
        update(3, vec![Value::Int32(1), Value::Unchanged, n("3")]),
        // The key changes 2 → 3: the old key finds the row's previous image.
        event(
            'U',
            4,
            Some((false, vec![Value::Int32(2), Value::Null, Value::Null])),
            Some(vec![Value::Int32(3), Value::Unchanged, n("4")]),
        ),
        update(5, vec![Value::Int32(3), Value::Unchanged, n("5")]),
    ];
    // The second segment, of the same table and version, follows the first.
    let out = build(&target, vec![(t.clone(), first), (t, second)]);
    assert_eq!(
        strings(&out.batch, "body"),
        [
            "body of 1",
            "body of 2",
            "body of 1",
            "body of 1",
            "body of 2",
            "body of 2"
        ]
        .map(|s| Some(s.to_owned()))
    );
    assert_eq!(unchanged_lists(&out.batch), vec![None; 6]);
}

#[test]
fn an_unchanged_toast_value_the_batch_cannot_fill_is_null_and_listed_in_unchanged() {
    let t = table(vec![
        col("id", PgType::Int4, true),
        col("body", PgType::Text, false),
        col("doc", PgType::Jsonb, false),
    ]);
    let target = changelog_schema(&t).expect("schema");
    let events = vec![
        insert(0, vec![Value::Int32(1), text("x"), Value::Null]),
        // Another key: nothing to fill from.
        update(1, vec![Value::Int32(2), Value::Unchanged, Value::Unchanged]),
        // After a delete of key 1, its earlier image is gone.
        event(
            'D',
            2,
            Some((false, vec![Value::Int32(1), Value::Null, Value::Null])),
            None,
        ),
        update(3, vec![Value::Int32(1), Value::Unchanged, text("{}")]),
        // Key 2 again: body was not known before either, so it stays listed.
        update(4, vec![Value::Int32(2), Value::Unchanged, text("[]")]),
    ];
    let out = build(&target, vec![(t, events)]);
    let batch = &out.batch;
    assert_eq!(
        strings(batch, "body"),
        [Some("x".to_owned()), None, None, None, None]
    );
    assert_eq!(
        unchanged_lists(batch),
        vec![
            None,
            Some(vec!["body".to_owned(), "doc".to_owned()]),
            None,
            Some(vec!["body".to_owned()]),
            Some(vec!["body".to_owned()]),
        ]
    );
}

#[test]
fn a_value_iceberg_cannot_hold_rejects_its_change_and_the_rest_flows() {
    let t = simple();
    let target = changelog_schema(&t).expect("schema");
    let events = vec![
        insert(
            0,
            vec![Value::Int32(1), text("a"), Value::Numeric("1.25".into())],
        ),
        insert(
            1,
            vec![Value::Int32(2), text("b"), Value::Numeric("NaN".into())],
        ),
        insert(
            2,
            vec![Value::Int32(3), text("c"), Value::Numeric("-0.01".into())],
        ),
        insert(4, vec![Value::Int32(4)]),
    ];
    let out = build(&target, vec![(t, events)]);
    assert_eq!(ints(&out.batch, "id"), [Some(1), Some(3)]);
    let n = array::<Decimal128Array>(&out.batch, "n");
    assert_eq!((n.value(0), n.value(1)), (125, -1));
    assert_eq!(out.rejected.len(), 2);
    let nan = &out.rejected[0];
    assert_eq!(nan.position, Position::new(Lsn(LSN_OF_TX), 1));
    assert!(nan.reason.contains("column \"n\""), "{}", nan.reason);
    assert!(nan.reason.contains("decimal(10,2)"), "{}", nan.reason);
    assert!(nan.reason.contains("NaN"), "{}", nan.reason);
    assert!(nan.rendering.contains("public.t"), "{}", nan.rendering);
    assert!(nan.rendering.contains("n=numeric NaN"), "{}", nan.rendering);
    // (A change of unknown kind cannot be built any more: a segment holds an Op.)
    assert!(
        out.rejected[1].reason.contains("1 values"),
        "{}",
        out.rejected[1].reason
    );
}

#[test]
fn midnight_at_the_end_of_the_day_is_rejected_not_moved() {
    let t = table(vec![
        col("id", PgType::Int4, true),
        col("at", PgType::Time, false),
    ]);
    let target = changelog_schema(&t).expect("schema");
    let out = build(
        &target,
        vec![(
            t,
            vec![insert(
                0,
                vec![Value::Int32(1), Value::Time(86_400_000_000)],
            )],
        )],
    );
    assert_eq!(out.batch.num_rows(), 0);
    assert!(
        out.rejected[0]
            .reason
            .contains("column \"at\" (Iceberg time)"),
        "{}",
        out.rejected[0].reason
    );
}

#[test]
fn an_empty_flush_is_an_empty_batch() {
    let t = simple();
    let target = changelog_schema(&t).expect("schema");
    let out = build(&target, vec![]);
    assert_eq!(out.batch.num_rows(), 0);
    assert_eq!(out.batch.num_columns(), 3 + CHANGELOG_COLUMNS.len());
}

#[test]
fn a_truncate_in_a_batch_that_fills_unchanged_values_forgets_the_rows_before_it() {
    let t = simple();
    let target = changelog_schema(&t).expect("schema");
    let n = |s: &str| Value::Numeric(s.into());
    let events = vec![
        insert(0, vec![Value::Int32(1), text("body of 1"), n("1")]),
        update(1, vec![Value::Int32(1), Value::Unchanged, n("2")]),
        event('T', 2, None, None),
        update(3, vec![Value::Int32(1), Value::Unchanged, n("3")]),
    ];
    let out = build(&target, vec![(t, events)]);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(strings(&out.batch, OP), ["I", "U", "T", "U"].map(|s| Some(s.to_owned())));
    assert_eq!(
        strings(&out.batch, "body"),
        [Some("body of 1".to_owned()), Some("body of 1".to_owned()), None, None]
    );
    assert_eq!(unchanged_lists(&out.batch), [None, None, None, Some(vec!["body".to_owned()])]);
}

#[test]
fn segments_appended_one_at_a_time_make_the_batch_of_all_at_once() {
    let t = simple();
    let target = changelog_schema(&t).expect("schema");
    let row = |id, body: &str, n: &str| vec![Value::Int32(id), text(body), Value::Numeric(n.into())];
    let segments = vec![
        (t.clone(), vec![insert(0, row(1, "a", "1.50")), update(1, row(1, "bb", "2.25"))]),
        // NaN cannot go into numeric(10,2): rejected in both ways alike.
        (t.clone(), vec![insert(2, row(2, "ccc", "NaN")), event('D', 3, Some((false, row(1, "", "0"))), None)]),
        (t.clone(), vec![event('T', 4, None, None), insert(5, row(3, &"x".repeat(300), "7.00"))]),
    ];
    let whole = build(&target, segments.clone());
    let rows = segments.iter().map(|(_, e)| e.len()).sum();
    let mut builder = BatchBuilder::new(&target, rows, &segments[..1]).expect("builder");
    for segment in &segments {
        builder.append(&target, std::slice::from_ref(segment)).expect("append");
    }
    let parts = builder.finish().expect("finish");
    assert_eq!(parts.batch, whole.batch);
    assert_eq!(parts.rejected, whole.rejected);
    assert_eq!(whole.rejected.len(), 1);
    assert_eq!(whole.batch.num_rows(), 5);
}

#[test]
fn a_payload_appended_without_owned_values_makes_the_batch_of_the_decoded_events() {
    let t = simple();
    let target = changelog_schema(&t).expect("schema");
    let row = |id, body: &str, n: &str| vec![Value::Int32(id), text(body), Value::Numeric(n.into())];
    let first = vec![
        insert(0, row(1, "a", "1.50")),
        update(1, row(1, &"b".repeat(500), "2.25")),
        event('D', 2, Some((false, vec![Value::Int32(1), Value::Null, Value::Null])), None),
        event('D', 3, Some((true, row(2, "full", "3.00"))), None),
    ];
    let second = vec![event('T', 4, None, None), event('r', 5, None, Some(row(3, "snap", "-4.75")))];
    let segments = vec![(t.clone(), first), (t.clone(), second)];
    let whole = build(&target, segments.clone());
    let payloads: Vec<Vec<u8>> = segments.iter().map(|(_, e)| crate::segment::encode(e).expect("encodes")).collect();
    let mut builder = BatchBuilder::from_payload(&target, 6, &t, &payloads[0]).expect("builder");
    for payload in &payloads {
        assert!(builder.append_payload(&target, &t, payload).expect("append"), "this path takes the segment");
    }
    let direct = builder.finish().expect("finish");
    assert_eq!(direct.batch, whole.batch);
    assert!(direct.rejected.is_empty() && whole.rejected.is_empty());

    // What this path leaves to the general one: an unchanged TOAST value, a value to reject.
    for events in [
        vec![insert(0, row(1, "a", "1.50")), update(1, vec![Value::Int32(1), Value::Unchanged, Value::Null])],
        vec![insert(0, row(1, "a", "NaN"))],
    ] {
        let payload = crate::segment::encode(&events).expect("encodes");
        let mut builder = BatchBuilder::from_payload(&target, events.len(), &t, &payload).expect("builder");
        assert!(!builder.append_payload(&target, &t, &payload).expect("append"));
    }
}
