//! Capture of every type and every row image: a real source PostgreSQL, the real `philotes run --role capture`
//! binary, and the buffer read back with the stages' own store and segment decoder. The reference is the source
//! itself: history tables filled by triggers record each change as the workload makes it, printed canonically by
//! SQL, and each captured value must print the same.

use std::collections::{HashMap, HashSet};

use philotes_schemas::Value;
use philotes_stages::position::Position;

use crate::support::{
    connect, database, durable_events, pipeline_file, start_capture, wait_durable, Stored, DEFAULT_SEGMENT,
};

// ---------------------------------------------------------------------------------------------------------
// 1. Every type, every image, in commit order.
// ---------------------------------------------------------------------------------------------------------

/// How a column's values are compared: the source prints a canonical text with SQL, the test prints the same
/// canonical text from the captured [`Value`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Printed with `::text` (bool, integers, numeric, domains over integers).
    Plain,
    /// IEEE bits (`float4send`), so NaN, ±Infinity and -0 compare exactly.
    Float4,
    /// IEEE bits (`float8send`).
    Float8,
    /// The type's own output function (`format('%s', …)`): text, varchar, char(n) with its padding, name, json,
    /// jsonb, inet, cidr, macaddr, enums.
    Output,
    /// Hex.
    Bytea,
    /// Days since 1970, infinity as the sentinels.
    Date,
    /// Microseconds since midnight.
    Time,
    /// Microseconds since 1970 (wall clock for timestamp, UTC for timestamptz), infinity as the sentinels.
    Timestamp,
    /// `months days micros`.
    Interval,
    /// 32 hex digits.
    Uuid,
}

/// The SQL that prints `e` canonically (NULL stays NULL).
fn canon_sql(kind: Kind, e: &str) -> String {
    let inner = match kind {
        Kind::Plain => format!("({e})::text"),
        Kind::Float4 => format!("encode(float4send({e}), 'hex')"),
        Kind::Float8 => format!("encode(float8send({e}), 'hex')"),
        Kind::Output => format!("format('%s', {e})"),
        Kind::Bytea => format!("encode({e}, 'hex')"),
        Kind::Date => format!(
            "CASE WHEN {e} = 'infinity' THEN '{pos}' WHEN {e} = '-infinity' THEN '{neg}' \
             ELSE ({e} - date '1970-01-01')::text END",
            pos = philotes_schemas::DATE_POS_INFINITY,
            neg = philotes_schemas::DATE_NEG_INFINITY,
        ),
        Kind::Time => format!("(extract(epoch from {e}) * 1000000)::bigint::text"),
        Kind::Timestamp => format!(
            "CASE WHEN {e} = 'infinity' THEN '{pos}' WHEN {e} = '-infinity' THEN '{neg}' \
             ELSE (extract(epoch from {e}) * 1000000)::bigint::text END",
            pos = philotes_schemas::TIMESTAMP_POS_INFINITY,
            neg = philotes_schemas::TIMESTAMP_NEG_INFINITY,
        ),
        Kind::Interval => format!(
            "concat_ws(' ', (extract(year from {e}) * 12 + extract(month from {e}))::bigint, extract(day from {e})::bigint, \
             ((extract(hour from {e}) * 3600 + extract(minute from {e}) * 60) * 1000000 + extract(microsecond from {e}))::bigint)"
        ),
        Kind::Uuid => format!("replace(({e})::text, '-', '')"),
    };
    format!("(CASE WHEN {e} IS NULL THEN NULL ELSE {inner} END)")
}

/// The same canonical text from a captured scalar value.
fn canon_value(value: &Value) -> Option<String> {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Some(match value {
        Value::Null => return None,
        Value::Bool(v) => v.to_string(),
        Value::Int16(v) => v.to_string(),
        Value::Int32(v) => v.to_string(),
        Value::Int64(v) => v.to_string(),
        Value::Float32(v) => format!("{:08x}", v.to_bits()),
        Value::Float64(v) => format!("{:016x}", v.to_bits()),
        Value::Numeric(v) | Value::Text(v) => v.clone(),
        Value::Bytes(v) => hex(v),
        Value::Date(v) => v.to_string(),
        Value::Time(v) | Value::Timestamp(v) | Value::TimestampTz(v) => v.to_string(),
        Value::Interval(v) => format!("{} {} {}", v.months, v.days, v.micros),
        Value::Uuid(v) => hex(v),
        Value::Unchanged | Value::Array(_) => panic!("not a scalar: {value:?}"),
    })
}

/// A column of the type workload: its name, SQL type, how it compares, and whether it is an array of that.
#[derive(Debug)]
struct Column {
    name: &'static str,
    sql_type: &'static str,
    kind: Kind,
    array: bool,
}

const fn col(name: &'static str, sql_type: &'static str, kind: Kind) -> Column {
    Column { name, sql_type, kind, array: false }
}

const fn arr(name: &'static str, sql_type: &'static str, kind: Kind) -> Column {
    Column { name, sql_type, kind, array: true }
}

const SCALARS: &[Column] = &[
    col("id", "int PRIMARY KEY", Kind::Plain),
    col("b", "bool", Kind::Plain),
    col("i2", "int2", Kind::Plain),
    col("i4", "int4", Kind::Plain),
    col("i8", "int8", Kind::Plain),
    col("f4", "float4", Kind::Float4),
    col("f8", "float8", Kind::Float8),
    col("n52", "numeric(5,2)", Kind::Plain),
    col("n", "numeric", Kind::Plain),
    col("t", "text", Kind::Output),
    col("vc", "varchar(12)", Kind::Output),
    col("c", "char(5)", Kind::Output),
    col("nm", "name", Kind::Output),
    col("by", "bytea", Kind::Bytea),
    col("d", "date", Kind::Date),
    col("tm", "time", Kind::Time),
    col("ts", "timestamp", Kind::Timestamp),
    col("tstz", "timestamptz", Kind::Timestamp),
    col("iv", "interval", Kind::Interval),
    col("u", "uuid", Kind::Uuid),
    col("j", "json", Kind::Output),
    col("jb", "jsonb", Kind::Output),
    col("ip", "inet", Kind::Output),
    col("cn", "cidr", Kind::Output),
    col("mac", "macaddr", Kind::Output),
    col("md", "mood", Kind::Output),
    col("dm", "posint", Kind::Plain),
    col("dc", "code", Kind::Output),
];

const FULL_ROWS: &[Column] = &[
    col("id", "int PRIMARY KEY", Kind::Plain),
    col("note", "text", Kind::Output),
    col("big", "text", Kind::Output),
    col("n", "numeric(12,4)", Kind::Plain),
    col("tstz", "timestamptz", Kind::Timestamp),
];

const ARRAYS: &[Column] = &[
    col("id", "bigint PRIMARY KEY", Kind::Plain),
    arr("ia", "int4[]", Kind::Plain),
    arr("ta", "text[]", Kind::Output),
    arr("na", "numeric[]", Kind::Plain),
    arr("da", "date[]", Kind::Date),
    arr("tsa", "timestamptz[]", Kind::Timestamp),
    arr("ba", "bytea[]", Kind::Bytea),
    arr("ua", "uuid[]", Kind::Uuid),
    arr("bo", "bool[]", Kind::Plain),
    arr("fa", "float8[]", Kind::Float8),
    arr("ja", "jsonb[]", Kind::Output),
    arr("ma", "mood[]", Kind::Output),
    arr("dma", "posint[]", Kind::Plain),
    col("big", "text", Kind::Output),
];

const TYPED_TABLES: [(&str, &[Column]); 3] = [("scalars", SCALARS), ("full_rows", FULL_ROWS), ("arrays", ARRAYS)];

/// One column value as the source recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Canon {
    Scalar(Option<String>),
    Array(Option<Vec<Option<String>>>),
}

fn canon_captured(column: &Column, value: &Value) -> Canon {
    if column.array {
        match value {
            Value::Null => Canon::Array(None),
            Value::Array(items) => Canon::Array(Some(items.iter().map(canon_value).collect())),
            other => panic!("column {}: expected an array, got {other:?}", column.name),
        }
    } else {
        Canon::Scalar(canon_value(value))
    }
}

/// One row change as the source's history trigger recorded it.
#[derive(Debug)]
struct HistoryRow {
    table: &'static str,
    columns: &'static [Column],
    xid: u32,
    op: char,
    old: Option<Vec<Canon>>,
    new: Option<Vec<Canon>>,
    big_unchanged: bool,
}

fn type_schema_sql() -> String {
    let mut sql = String::from(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
         CREATE DOMAIN code AS varchar(8);
         CREATE SEQUENCE hist_n;\n",
    );
    for (table, columns) in TYPED_TABLES {
        let list = columns.iter().map(|c| format!("{} {}", c.name, c.sql_type)).collect::<Vec<_>>().join(", ");
        sql.push_str(&format!(
            "CREATE TABLE {table} ({list});
             CREATE TABLE hist_{table} (n bigint DEFAULT nextval('hist_n'), xid bigint, op text, old_img {table}, new_img {table});
             CREATE FUNCTION hist_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO hist_{table} (xid, op, old_img, new_img) VALUES (txid_current(), TG_OP, OLD, NEW); RETURN NULL; END $$;
             CREATE TRIGGER hist_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION hist_{table}();\n"
        ));
    }
    sql.push_str(
        "ALTER TABLE full_rows REPLICA IDENTITY FULL;
         ALTER TABLE full_rows ALTER COLUMN big SET STORAGE EXTERNAL;
         ALTER TABLE arrays ALTER COLUMN big SET STORAGE EXTERNAL;\n",
    );
    sql
}

/// The workload: five transactions over the three tables, every edge value, NULLs, TOAST updated with and
/// without changing it, a key change and deletes under DEFAULT and FULL.
const TYPE_WORKLOAD: [&str; 5] = [
    r#"BEGIN;
    INSERT INTO scalars VALUES
      (1, true, 32767, 2147483647, 9223372036854775807, 'NaN', 'Infinity', 999.99,
       '123456789012345678901234567890.123456789012345678901234567890', E'héllo "world"\n\ttab\\', 'ten chars!', 'ab', 'a name',
       '\x00ff10', '1969-12-31', '00:00:00', '2024-03-10 02:30:00', '2024-03-10 01:59:59.999999-05',
       '1 year 2 mons -3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.50, "x"]}',
       '{"b": 1, "a": [true, null]}', '192.168.1.5/24', '10.0.0.0/8', '08:00:2b:01:02:03', 'happy', 42, 'short'),
      (2, false, -32768, -2147483648, -9223372036854775808, '-Infinity', '-0', -999.99, 'NaN', '', '', '', '',
       '\x', 'infinity', '24:00:00', '-infinity', 'infinity', '-1 days -00:00:00.000001',
       '00000000-0000-0000-0000-000000000000', 'null', '[]', '::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', 'sad', 1, ''),
      (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
      (4, true, 0, 0, 0, '3.4028235e+38', '5e-324', 0.01, '-0.000000000000000000001', 'x', 'y', 'abcde', 'n',
       '\x5c00', '0044-03-15 BC', '23:59:59.999999', '1900-01-01 00:00:00', '1900-01-01 00:00:00+00', '0',
       'ffffffff-ffff-ffff-ffff-ffffffffffff', '"s"', '{"nested": {"k": "v"}}', '10.1.2.3', '192.168.0.0/16',
       '00:00:00:00:00:00', 'ok', 2147483647, 'abcdefgh'),
      (5, false, 1, 1, 1, '1.5', '0.1', 0, '1.50', 'dst', 'dst', 'd', 'd', '\x01', '2024-11-03', '01:30:00',
       '2024-11-03 01:30:00', '2024-11-03 01:30:00-04', '-1 year -2 mons +3 days -04:05:06', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12',
       '[1,2]', '{"z": 0.000100}', '0.0.0.0/0', '0.0.0.0/0', '01:02:03:04:05:06', 'happy', 7, 'x'),
      (6, true, 2, 2, 2, '-1.17549435e-38', '-1.7976931348623157e+308', -0.01, '1e-20', 'later', 'later', 'e', 'e', '\x02',
       '1582-10-04', '12:00:00.5', '1969-07-20 20:17:40', '2024-11-03 01:30:00-05', '178000000 years',
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13', '{}', '{}', '::ffff:1.2.3.4', '::/0', 'aa:bb:cc:dd:ee:ff', 'ok', 8, 'y');
    INSERT INTO full_rows VALUES
      (1, 'first', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 32768) g), 12345678.1234, '2000-01-01 00:00:00+00'),
      (2, NULL, 'small', -0.0001, '1969-12-31 23:59:59.999999+00');
    INSERT INTO arrays VALUES
      (1, '{1,NULL,3}', '{"a b","",NULL,"NULL","q\"uote","back\\slash","{brace}",x}', '{1.5,NaN,-0.001,Infinity}',
       '{1999-12-31,infinity,NULL,0001-01-01 BC}', '{"2024-03-10 03:00:00+00",NULL,-infinity}', '{"\\x00ff",NULL,"\\x"}',
       '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}', '{t,f,NULL}', '{NaN,Infinity,-Infinity,-0,1.5}',
       ARRAY['{"a": 1}'::jsonb, NULL, '[1, "two"]'::jsonb], '{sad,happy,NULL}', '{1,2,NULL}',
       (SELECT string_agg(md5((g * 7)::text), '') FROM generate_series(1, 32768) g)),
      (2, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', 'small'),
      (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    COMMIT;"#,
    // TOAST kept: the new tuples carry 'u' for big, under FULL and under DEFAULT.
    r#"BEGIN;
    UPDATE scalars SET t = 'changed', f4 = '1.5', tstz = '2024-11-03 01:30:00-04', n = '0.1' WHERE id = 1;
    UPDATE full_rows SET note = 'note changed' WHERE id = 1;
    UPDATE arrays SET ia = '{9}' WHERE id = 1;
    UPDATE scalars SET i4 = i4 - 1 WHERE id IN (4, 5);
    COMMIT;"#,
    // TOAST changed, and a key change under DEFAULT (old key image).
    r#"BEGIN;
    UPDATE full_rows SET big = (SELECT string_agg(md5((g + 1)::text), '') FROM generate_series(1, 32768) g) WHERE id = 1;
    UPDATE arrays SET big = (SELECT string_agg(md5((g + 2)::text), '') FROM generate_series(1, 32768) g), ta = NULL WHERE id = 1;
    UPDATE scalars SET id = 20 WHERE id = 2;
    COMMIT;"#,
    r#"BEGIN;
    UPDATE scalars SET n52 = NULL, t = NULL, tstz = NULL, u = NULL WHERE id = 4;
    UPDATE full_rows SET note = NULL, tstz = 'infinity' WHERE id = 2;
    DELETE FROM scalars WHERE id = 3;
    DELETE FROM full_rows WHERE id = 1;
    DELETE FROM arrays WHERE id = 2;
    COMMIT;"#,
    r#"BEGIN;
    DELETE FROM scalars WHERE id = 20;
    UPDATE arrays SET id = 30 WHERE id = 3;
    INSERT INTO scalars (id, tstz, ts) VALUES (7, '2024-03-10 02:00:00-05', '2024-03-10 02:00:00');
    COMMIT;"#,
];

async fn read_history(client: &tokio_postgres::Client) -> Vec<(i64, HistoryRow)> {
    let mut out = Vec::new();
    for (table, columns) in TYPED_TABLES {
        let image = |img: &str| {
            columns
                .iter()
                .map(|c| {
                    let e = format!("({img}).{}", c.name);
                    if c.array {
                        format!(
                            "(CASE WHEN {e} IS NULL THEN NULL ELSE ARRAY(SELECT {} FROM unnest({e}) WITH ORDINALITY AS u(x, o) ORDER BY o) END)",
                            canon_sql(c.kind, "x")
                        )
                    } else {
                        canon_sql(c.kind, &e)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let big_unchanged = if columns.iter().any(|c| c.name == "big") {
            "(old_img).big IS NOT DISTINCT FROM (new_img).big"
        } else {
            "false"
        };
        let sql = format!(
            "SELECT h.n, h.xid, h.op, h.old_img IS NULL, h.new_img IS NULL, {big_unchanged}, {}, {} FROM hist_{table} h ORDER BY h.n",
            image("old_img"),
            image("new_img")
        );
        for row in client.query(sql.as_str(), &[]).await.expect("history") {
            let width = columns.len();
            let image_at = |start: usize| -> Vec<Canon> {
                columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if c.array {
                            Canon::Array(row.get::<_, Option<Vec<Option<String>>>>(start + i))
                        } else {
                            Canon::Scalar(row.get::<_, Option<String>>(start + i))
                        }
                    })
                    .collect()
            };
            let op: String = row.get(2);
            let old_null: bool = row.get(3);
            let new_null: bool = row.get(4);
            out.push((
                row.get::<_, i64>(0),
                HistoryRow {
                    table,
                    columns,
                    xid: row.get::<_, i64>(1) as u32,
                    op: op.chars().next().expect("op"),
                    old: (!old_null).then(|| image_at(6)),
                    new: (!new_null).then(|| image_at(6 + width)),
                    big_unchanged: row.get(5),
                },
            ));
        }
    }
    out.sort_by_key(|(n, _)| *n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_from_the_wal_into_the_buffer_in_commit_order_with_the_right_images() {
    let db = database("cap_types");
    db.psql(&type_schema_sql()).expect("schema");
    // The walsender prints timestamptz in the database's zone: offsets that change at DST and the LMT of 1900.
    db.psql(&format!("ALTER DATABASE \"{}\" SET timezone TO 'America/New_York'", db.name())).expect("timezone");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.scalars", "public.full_rows", "public.arrays"], &[], DEFAULT_SEGMENT);
    let capture = start_capture(&db, &file).await;

    for sql in TYPE_WORKLOAD {
        client.batch_execute(sql).await.expect("workload transaction");
    }
    let history = read_history(&client).await;
    wait_durable(&client, db.name(), history.len() as i64, &capture).await;
    capture.stop_cleanly().await;

    let stored = durable_events(&client, db.name()).await;
    assert_eq!(stored.len(), history.len(), "one buffered change per source row change");

    // Per table, segment order is position order, strictly increasing.
    let mut last: HashMap<&str, Position> = HashMap::new();
    for s in &stored {
        let position = s.event.position();
        if let Some(before) = last.insert(s.table.as_str(), position) {
            assert!(position > before, "{}: {position} after {before}", s.table);
        }
    }
    // Globally, position order is the source's order of changes (one session, so commit order).
    let mut by_position: Vec<&Stored> = stored.iter().collect();
    by_position.sort_by_key(|s| s.event.position());
    let positions: HashSet<Position> = by_position.iter().map(|s| s.event.position()).collect();
    assert_eq!(positions.len(), stored.len(), "positions are unique");

    let mut unchanged_seen: HashMap<&str, usize> = HashMap::new();
    for (i, (s, (_, h))) in by_position.iter().zip(&history).enumerate() {
        let what = format!("change {i} ({} {} at {})", h.table, h.op, s.event.position());
        assert_eq!(s.table, format!("public.{}", h.table), "{what}");
        assert_eq!(s.event.xid, h.xid, "{what}: xid");
        let expected_op = match h.op {
            'I' => 'I',
            'U' => 'U',
            'D' => 'D',
            other => panic!("unexpected history op {other}"),
        };
        assert_eq!(s.event.op.code(), expected_op, "{what}");
        let full = h.table == "full_rows";

        // New image.
        match (&s.event.new, &h.new) {
            (None, None) => {}
            (Some(values), Some(expected)) => {
                assert_eq!(values.len(), h.columns.len(), "{what}: width");
                for ((column, value), want) in h.columns.iter().zip(values).zip(expected) {
                    if *value == Value::Unchanged {
                        assert_eq!(column.name, "big", "{what}: only the TOASTed column may be unchanged");
                        assert!(h.big_unchanged, "{what}: big changed but was sent as unchanged");
                        *unchanged_seen.entry(h.table).or_default() += 1;
                        continue;
                    }
                    assert_eq!(&canon_captured(column, value), want, "{what}: new {}", column.name);
                }
            }
            (got, want) => panic!("{what}: new image {got:?}, source {want:?}"),
        }

        // Old image, per replica identity.
        let key_changed = h.op == 'U' && h.old.as_ref().map(|o| &o[0]) != h.new.as_ref().map(|n| &n[0]);
        match h.op {
            'I' => assert!(s.event.old.is_none() && s.event.old_is_full.is_none(), "{what}: no old image"),
            'U' if !full && !key_changed => {
                assert!(s.event.old.is_none(), "{what}: DEFAULT update keeping its key has no old image")
            }
            _ => {
                let old = s.event.old.as_ref().unwrap_or_else(|| panic!("{what}: old image missing"));
                let want = h.old.as_ref().expect("history has the old row");
                assert_eq!(s.event.old_is_full, Some(full), "{what}: old image kind");
                for (i, ((column, value), want)) in h.columns.iter().zip(old).zip(want).enumerate() {
                    if full || i == 0 {
                        assert_ne!(*value, Value::Unchanged, "{what}: old {} is a real value", column.name);
                        assert_eq!(&canon_captured(column, value), want, "{what}: old {}", column.name);
                    } else {
                        assert_eq!(*value, Value::Null, "{what}: old {} is a key-image placeholder", column.name);
                    }
                }
            }
        }
    }
    assert_eq!(unchanged_seen.get("full_rows"), Some(&1), "unchanged TOAST under FULL");
    assert_eq!(unchanged_seen.get("arrays"), Some(&1), "unchanged TOAST under DEFAULT");
    // And a changed 1 MB value came through whole.
    let big = by_position
        .iter()
        .filter_map(|s| s.event.new.as_ref().and_then(|n| n.iter().find(|v| matches!(v, Value::Text(t) if t.len() == 1 << 20))))
        .count();
    assert!(big >= 4, "1 MB values captured whole: {big}");
}

