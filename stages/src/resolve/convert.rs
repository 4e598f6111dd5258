//! pgoutput tuples → typed rows for a segment, column by column with the table version's types.

use philotes_schemas::{has_binary, parse_binary, parse_binary_borrowed, parse_text, BinaryValue, ColumnSchema, TableSchema, Value};

use super::TableVersion;
use crate::decode::{ChangeEvent, ColumnData, OldKind, TupleData};
use crate::segment::{self, FieldValue, SegmentEvent, ValueRef};

/// Why a change could not be typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConvertFailure {
    /// A value does not parse as its column's type: the reason names table, column and type.
    Value(String),
    /// A binary value of a type without a binary decoder: the stream is not what we asked for (only the
    /// snapshot reads binary values, and only of types that have one).
    Binary,
}

/// Types one change. Old images of kind `Key` carry NULL placeholders for non-key columns; they stay
/// [`Value::Null`] and `old_is_full = Some(false)` says they are placeholders.
pub(super) fn event(table: &TableVersion, change: &ChangeEvent) -> Result<SegmentEvent, ConvertFailure> {
    let old = match &change.old {
        Some(old) => Some((old.kind == OldKind::Full, row(table, &old.data)?)),
        None => None,
    };
    let new = change.new.as_ref().map(|data| row(table, data)).transpose()?;
    Ok(segment_event(change, old, new))
}

/// The segment event of `change` with its old image (`(full, values)`) and new row as given.
fn segment_event(change: &ChangeEvent, old: Option<(bool, Vec<Value>)>, new: Option<Vec<Value>>) -> SegmentEvent {
    SegmentEvent {
        op: change.op,
        commit_lsn: change.commit_lsn,
        seq: change.seq,
        xid: change.xid,
        commit_ts: change.commit_ts,
        old_is_full: old.as_ref().map(|(full, _)| *full),
        old: old.map(|(_, values)| values),
        new,
    }
}

fn row(table: &TableVersion, data: &TupleData) -> Result<Vec<Value>, ConvertFailure> {
    same_width(table, data)?;
    table.schema.columns.iter().zip(data).map(|(column, value)| typed(table, column, value)).collect()
}

/// Appends the new row `data` typed, as a segment stores it: the MessagePack array that [`row`]'s values
/// encode to, byte for byte, but a text or byte value read in binary (a snapshot's) goes from its field to the
/// output without an owned copy. On an error, `out` may hold part of the row: the caller cuts it.
pub(super) fn encode_row(table: &TableVersion, data: &TupleData, out: &mut Vec<u8>) -> Result<(), ConvertFailure> {
    same_width(table, data)?;
    let unencodable = |e: crate::segment::SegmentError| ConvertFailure::Value(format!("{}: {e}", table.schema.qualified_name()));
    segment::write_row_head(out, data.len()).map_err(unencodable)?;
    for (column, value) in table.schema.columns.iter().zip(data) {
        match value {
            ColumnData::Binary(bytes) if has_binary(&column.pg_type) => {
                match parse_binary_borrowed(&column.pg_type, bytes).map_err(|e| value_error(table, column, e))? {
                    BinaryValue::Text(text) => segment::write_text(out, text),
                    BinaryValue::Bytes(bytes) => segment::write_bytes(out, bytes),
                    BinaryValue::Other(value) => segment::write_value(out, &value),
                }
            }
            other => segment::write_value(out, &typed(table, column, other)?),
        }
        .map_err(unencodable)?;
    }
    Ok(())
}

/// A snapshot row's values for the direct path's batch ([`crate::arrow_batch::BatchBuilder::append_reads`]): text
/// and bytes read in binary borrowed from their fields, every other value typed as [`encode_row`] types it.
pub fn read_fields<'r>(table: &TableVersion, data: &'r TupleData, out: &mut Vec<FieldValue<'r>>) -> Result<(), String> {
    let failure = |e: ConvertFailure| match e {
        ConvertFailure::Value(reason) => reason,
        ConvertFailure::Binary => format!("{}: a binary value of a type read as text", table.schema.qualified_name()),
    };
    same_width(table, data).map_err(failure)?;
    for (column, value) in table.schema.columns.iter().zip(data) {
        out.push(match value {
            ColumnData::Binary(bytes) if has_binary(&column.pg_type) => {
                match parse_binary_borrowed(&column.pg_type, bytes).map_err(|e| failure(value_error(table, column, e)))? {
                    BinaryValue::Text(text) => FieldValue::Borrowed(ValueRef::Text(text)),
                    BinaryValue::Bytes(bytes) => FieldValue::Borrowed(ValueRef::Bytes(bytes)),
                    BinaryValue::Other(value) => FieldValue::Owned(value),
                }
            }
            other => FieldValue::Owned(typed(table, column, other).map_err(failure)?),
        });
    }
    Ok(())
}

fn same_width(table: &TableVersion, data: &TupleData) -> Result<(), ConvertFailure> {
    let columns = &table.schema.columns;
    if data.len() != columns.len() {
        return Err(ConvertFailure::Value(format!(
            "{}: the change has {} values but the table has {} columns",
            table.schema.qualified_name(),
            data.len(),
            columns.len()
        )));
    }
    Ok(())
}

fn value_error(table: &TableVersion, column: &ColumnSchema, error: impl std::fmt::Display) -> ConvertFailure {
    ConvertFailure::Value(format!("{}: column {} ({}): {error}", table.schema.qualified_name(), column.name, column.pg_type))
}

/// One value of `column`, typed.
fn typed(table: &TableVersion, column: &ColumnSchema, value: &ColumnData) -> Result<Value, ConvertFailure> {
    match value {
        ColumnData::Null => Ok(Value::Null),
        ColumnData::UnchangedToast => Ok(Value::Unchanged),
        ColumnData::Binary(bytes) if has_binary(&column.pg_type) => {
            parse_binary(&column.pg_type, bytes).map_err(|e| value_error(table, column, e))
        }
        ColumnData::Binary(_) => Err(ConvertFailure::Binary),
        ColumnData::Text(bytes) => {
            let text = std::str::from_utf8(bytes).map_err(|_| value_error(table, column, "the value is not valid UTF-8"))?;
            parse_text(&column.pg_type, text).map_err(|e| value_error(table, column, e))
        }
    }
}

/// The change as a person reads it in `philotes.dead_letters.payload`: position, op and the raw values (text
/// values quoted, binary ones, which only snapshots read, in hex).
pub(super) fn render(change: &ChangeEvent) -> String {
    let tuple = |data: &TupleData| {
        data.iter()
            .map(|c| match c {
                ColumnData::Null => "NULL".to_string(),
                ColumnData::UnchangedToast => "(unchanged toast)".to_string(),
                ColumnData::Text(b) => format!("{:?}", String::from_utf8_lossy(b)),
                ColumnData::Binary(b) => format!("\\x{}", b.iter().map(|byte| format!("{byte:02x}")).collect::<String>()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!("{} at {}#{} xid {}", change.op.code(), change.commit_lsn, change.seq, change.xid);
    if let Some(old) = &change.old {
        text.push_str(&format!(" old ({})", tuple(&old.data)));
    }
    if let Some(new) = &change.new {
        text.push_str(&format!(" new ({})", tuple(new)));
    }
    text
}

/// The change as pgoutput sent it, for the dead letter of a change that could not be converted: text values as
/// [`Value::Text`], binary ones as [`Value::Bytes`], so a retry converts them again ([`convert_again`]). `None`
/// when a text value is not UTF-8: no conversion could ever take it.
pub(super) fn raw(change: &ChangeEvent) -> Option<SegmentEvent> {
    let tuple = |data: &TupleData| -> Option<Vec<Value>> {
        data.iter()
            .map(|c| match c {
                ColumnData::Null => Some(Value::Null),
                ColumnData::UnchangedToast => Some(Value::Unchanged),
                ColumnData::Text(b) => std::str::from_utf8(b).ok().map(|t| Value::Text(t.to_string())),
                ColumnData::Binary(b) => Some(Value::Bytes(b.to_vec())),
            })
            .collect()
    };
    let old = match &change.old {
        Some(old) => Some((old.kind == OldKind::Full, tuple(&old.data)?)),
        None => None,
    };
    let new = match &change.new {
        Some(new) => Some(tuple(new)?),
        None => None,
    };
    Some(segment_event(change, old, new))
}

/// Converts a change kept raw ([`raw`]), whose values follow the columns of `from`, with the types of version
/// `to` (the table's newest: the user may have changed a column's type since), matching columns by name; a
/// column `to` has and `from` had not is NULL. The error is the reason, as SchemaResolve gives it.
pub fn convert_again(raw: &SegmentEvent, from: &TableSchema, to: &TableVersion) -> Result<SegmentEvent, String> {
    let tuple = |values: &[Value]| -> TupleData {
        to.schema
            .columns
            .iter()
            .map(|column| {
                // The same column: by attnum within one relation (a renamed column keeps its value), else by name.
                let same_relation = from.relid.is_some() && from.relid == to.schema.relid;
                let at = match column.attnum.filter(|_| same_relation) {
                    Some(attnum) => from.columns.iter().position(|c| c.attnum == Some(attnum)),
                    None => from.columns.iter().position(|c| c.name == column.name),
                };
                match at.and_then(|i| values.get(i)) {
                    None | Some(Value::Null) => ColumnData::Null,
                    Some(Value::Unchanged) => ColumnData::UnchangedToast,
                    Some(Value::Bytes(b)) => ColumnData::Binary(b.clone().into()),
                    Some(Value::Text(t)) => ColumnData::Text(t.clone().into_bytes().into()),
                    // Raw changes hold only the four above; anything else is read as its text.
                    Some(other) => ColumnData::Text(format!("{other:?}").into_bytes().into()),
                }
            })
            .collect()
    };
    let change = ChangeEvent {
        commit_lsn: raw.commit_lsn,
        xid: raw.xid,
        commit_ts: raw.commit_ts,
        relation_id: 0,
        op: raw.op,
        old: raw.old.as_ref().map(|values| crate::decode::OldTuple {
            kind: if raw.old_is_full == Some(true) { OldKind::Full } else { OldKind::Key },
            data: tuple(values),
        }),
        new: raw.new.as_deref().map(tuple),
        seq: raw.seq,
    };
    event(to, &change).map_err(|failure| match failure {
        ConvertFailure::Value(reason) => reason,
        ConvertFailure::Binary => format!(
            "{}: a binary value of a type that has no binary decoder",
            to.schema.qualified_name()
        ),
    })
}

#[cfg(test)]
mod tests {
    use philotes_schemas::{ColumnSchema, PgType, ReplicaIdentity};

    use super::*;
    use crate::decode::OldTuple;
    use crate::op::Op;
    use crate::position::Lsn;

    fn version(version: i32, columns: &[(&str, PgType)]) -> TableVersion {
        let columns = columns
            .iter()
            .map(|(name, pg_type)| ColumnSchema {
                name: (*name).into(),
                pg_type: pg_type.clone(),
                type_oid: 0,
                type_modifier: -1,
                part_of_key: *name == "id",
                attnum: None,
            })
            .collect();
        let schema = TableSchema {
            schema: "public".into(),
            table: "dl".into(),
            columns,
            replica_identity: ReplicaIdentity::Default,
            primary_key: Vec::new(),
            relid: None,
        };
        TableVersion { schema, version }
    }

    fn text(value: &str) -> ColumnData {
        ColumnData::Text(value.as_bytes().to_vec().into())
    }

    fn binary(bytes: &[u8]) -> ColumnData {
        ColumnData::Binary(bytes.to_vec().into())
    }

    /// A snapshot row as the encoded path writes it: the same bytes as typing the row and encoding the event.
    #[test]
    fn an_encoded_row_is_the_typed_events_encoding_byte_for_byte() {
        let numeric = PgType::Numeric { precision: 12, scale: 2 };
        let columns = [
            ("id", PgType::Int8),
            ("n", PgType::Int4),
            ("s", PgType::Int2),
            ("amount", numeric),
            ("ratio", PgType::Float8),
            ("f", PgType::Float4),
            ("label", PgType::Text),
            ("v", PgType::Varchar(Some(9))),
            ("created", PgType::TimestampTz),
            ("attrs", PgType::Jsonb),
            ("j", PgType::Json),
            ("blob", PgType::Bytea),
            ("ok", PgType::Bool),
            ("d", PgType::Date),
            ("u", PgType::Uuid),
            ("arr", PgType::Array(Box::new(PgType::Int4))),
            ("gone", PgType::Text),
        ];
        let table = version(3, &columns);
        let mut jsonb = vec![1u8];
        jsonb.extend_from_slice(r#"{"a": "é\"x"}"#.as_bytes());
        let long = "x".repeat(300);
        let rows: Vec<TupleData> = vec![
            vec![
                binary(&(-7i64).to_be_bytes()),
                binary(&123_456i32.to_be_bytes()),
                binary(&(-2i16).to_be_bytes()),
                // 1234.50: ndigits 2, weight 0, positive, dscale 2; digits 1234, 5000.
                binary(&[0, 2, 0, 0, 0, 0, 0, 2, 0x04, 0xd2, 0x13, 0x88]),
                binary(&f64::NAN.to_be_bytes()),
                binary(&1.5f32.to_be_bytes()),
                binary("customer-é".as_bytes()),
                binary(long.as_bytes()),
                binary(&1_000_000i64.to_be_bytes()),
                binary(&jsonb),
                binary(b"[1, 2]"),
                binary(&[0, 1, 2, 255]),
                binary(&[1]),
                binary(&i32::MAX.to_be_bytes()),
                binary(&[7; 16]),
                text("{1,NULL,3}"),
                ColumnData::Null,
            ],
            vec![
                binary(&i64::MIN.to_be_bytes()),
                ColumnData::Null,
                binary(&0i16.to_be_bytes()),
                binary(&[0, 0, 0, 0, 0xc0, 0, 0, 0]),
                binary(&(-0.0f64).to_be_bytes()),
                binary(&f32::INFINITY.to_be_bytes()),
                binary(b""),
                binary(b"short"),
                binary(&i64::MAX.to_be_bytes()),
                binary(&[1]),
                binary(b"null"),
                binary(&vec![9u8; 70_000]),
                binary(&[0]),
                binary(&0i32.to_be_bytes()),
                binary(&[0; 16]),
                text("{}"),
                ColumnData::UnchangedToast,
            ],
        ];
        for (seq, data) in rows.into_iter().enumerate() {
            let change = ChangeEvent {
                commit_lsn: Lsn(0x2A_0000_0010),
                xid: 0,
                commit_ts: 1_700_000_000_123_456,
                relation_id: 1,
                op: Op::Read,
                old: None,
                new: Some(data),
                seq: seq as u64 + 70_000,
            };
            let typed = event(&table, &change).expect("converts");
            let mut head = typed.clone();
            head.new = Some(Vec::new());
            let mut bytes = Vec::new();
            segment::write_event_head(&mut bytes, &head).expect("head");
            encode_row(&table, change.new.as_ref().expect("row"), &mut bytes).expect("encodes");
            assert_eq!(bytes, rmp_serde::to_vec(&typed).expect("encodes"), "row {seq}");
            assert_eq!(segment::decode(&[&[0x91][..], &bytes].concat()).expect("decodes"), vec![typed]);
        }
    }

    #[test]
    fn an_encoded_row_fails_where_typing_it_fails() {
        let table = version(1, &[("id", PgType::Int8), ("label", PgType::Text), ("attrs", PgType::Jsonb)]);
        let bad = [
            vec![binary(&[0, 1]), ColumnData::Null, ColumnData::Null],
            vec![binary(&1i64.to_be_bytes()), binary(&[0xff, 0xfe]), ColumnData::Null],
            vec![binary(&1i64.to_be_bytes()), ColumnData::Null, binary(&[2, b'{', b'}'])],
            vec![binary(&1i64.to_be_bytes()), ColumnData::Null],
        ];
        for data in bad {
            let Err(ConvertFailure::Value(typed)) = row(&table, &data) else { panic!("typing {data:?} must fail") };
            let mut out = Vec::new();
            let Err(ConvertFailure::Value(encoded)) = encode_row(&table, &data, &mut out) else { panic!("encoding {data:?} must fail") };
            assert_eq!(encoded, typed, "the same reason");
        }
    }

    #[test]
    fn a_raw_change_converts_again_with_the_newest_columns_by_name() {
        let array = PgType::Array(Box::new(PgType::Int4));
        let v1 = version(1, &[("id", PgType::Int4), ("arr", array), ("note", PgType::Text)]);
        let change = ChangeEvent {
            commit_lsn: Lsn(0x10),
            xid: 7,
            commit_ts: 42,
            relation_id: 1,
            op: Op::Update,
            old: Some(OldTuple { kind: OldKind::Key, data: vec![text("2"), ColumnData::Null, ColumnData::Null] }),
            new: Some(vec![text("2"), text("{{1,2},{3,4}}"), ColumnData::UnchangedToast]),
            seq: 3,
        };
        assert!(matches!(event(&v1, &change), Err(ConvertFailure::Value(_))), "the array does not convert");
        let raw = raw(&change).expect("UTF-8 values");
        // Still the same columns: it fails again, with the reason.
        let again = convert_again(&raw, &v1.schema, &v1).expect_err("still fails");
        assert!(again.contains("arr"), "{again}");
        // The column dropped and one added: converted, the new column NULL, the rest as the source sent it.
        let v2 = version(2, &[("id", PgType::Int4), ("note", PgType::Text), ("extra", PgType::Int8)]);
        let converted = convert_again(&raw, &v1.schema, &v2).expect("converts");
        assert_eq!(converted.new, Some(vec![Value::Int32(2), Value::Unchanged, Value::Null]));
        assert_eq!(converted.old, Some(vec![Value::Int32(2), Value::Null, Value::Null]));
        assert_eq!((converted.op, converted.commit_lsn, converted.seq, converted.xid, converted.commit_ts), (Op::Update, Lsn(0x10), 3, 7, 42));
        assert_eq!(converted.old_is_full, Some(false));
    }

    #[test]
    fn a_renamed_column_keeps_its_value_when_converted_again() {
        let numbered = |mut v: TableVersion| {
            v.schema.relid = Some(16384);
            for (column, attnum) in v.schema.columns.iter_mut().zip(1..) {
                column.attnum = Some(attnum);
            }
            v
        };
        let v1 = numbered(version(1, &[("id", PgType::Int4), ("arr", PgType::Array(Box::new(PgType::Int4))), ("note", PgType::Text)]));
        let mut v2 = numbered(version(2, &[("id", PgType::Int4), ("arr", PgType::Text), ("remark", PgType::Text)]));
        v2.schema.columns[2].attnum = Some(3);
        let change = ChangeEvent {
            commit_lsn: Lsn(0x10),
            xid: 7,
            commit_ts: 42,
            relation_id: 1,
            op: Op::Insert,
            old: None,
            new: Some(vec![text("2"), text("{{1,2},{3,4}}"), text("kept")]),
            seq: 0,
        };
        let raw = raw(&change).expect("UTF-8 values");
        let converted = convert_again(&raw, &v1.schema, &v2).expect("converts");
        assert_eq!(converted.new, Some(vec![Value::Int32(2), Value::Text("{{1,2},{3,4}}".into()), Value::Text("kept".into())]));
    }
}
