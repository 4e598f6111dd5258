//! The capture role end to end: a real source PostgreSQL, the real `philotes run --role capture` binary as a
//! child process, and the buffer read back with the stages' own store and segment decoder. The reference is
//! always the source itself: what it recorded (history tables filled by triggers) or what the workload wrote.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use philotes_schemas::Value;
use philotes_stages::position::{Lsn, Position};
use philotes_testkit::TestDatabase;
use tokio_postgres::types::PgLsn;

use crate::support::{
    checkpoint, connect, durable_count, durable_events, lsn, pipeline_file, slot_name, wait_durable, wait_for,
    wait_streaming, CaptureProcess, Stored,
};

const DEFAULT_SEGMENT: &str = "{ max_events: 10000, max_bytes: 8MiB, max_age: 200ms }";

fn database(hint: &str) -> TestDatabase {
    philotes_testkit::shared().database(hint).expect("test database")
}

/// Starts a capture and waits until it streams from its slot.
async fn start_capture(db: &TestDatabase, client: &tokio_postgres::Client, file: &std::path::Path) -> CaptureProcess {
    let mut capture = CaptureProcess::start(file, 0);
    wait_streaming(client, &slot_name(db), &mut capture).await;
    capture
}

/// Stops a capture cleanly and checks that it said nothing alarming.
fn stop_cleanly(capture: &mut CaptureProcess) {
    let status = capture.terminate();
    assert!(status.success(), "capture did not stop cleanly ({status}); log:\n{}", capture.log());
}

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
    let mut capture = start_capture(&db, &client, &file).await;

    for sql in TYPE_WORKLOAD {
        client.batch_execute(sql).await.expect("workload transaction");
    }
    let history = read_history(&client).await;
    wait_durable(&client, db.name(), history.len() as i64, &mut capture).await;
    stop_cleanly(&mut capture);

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
        assert_eq!(s.event.op, expected_op, "{what}");
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

// ---------------------------------------------------------------------------------------------------------
// 2. and 3. Crashes and lost connections: exactly once.
// ---------------------------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), seeded from the clock and printed, so a failure can be
/// replayed by setting `PHILOTES_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Self {
        let seed = std::env::var("PHILOTES_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
        });
        println!("PHILOTES_TEST_SEED={seed}");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One transaction of the exactly-once workload.
#[derive(Debug, Clone)]
struct Txn {
    number: i32,
    first_id: i64,
    rows: i64,
    /// Ids (inserted earlier) whose payload this transaction appends '+' to.
    updates: Vec<i64>,
    rollback: bool,
}

/// Rolled-back transactions insert ids from here on: none of them may reach the buffer.
const ROLLED_BACK_IDS: i64 = 10_000_000;

fn plan_workload(rng: &mut Rng, total_rows: i64, sizes: &[i64]) -> Vec<Txn> {
    let mut plan = Vec::new();
    let (mut next_id, mut inserted, mut number) = (1, 0, 0);
    let mut rolled_back_id = ROLLED_BACK_IDS;
    while inserted < total_rows {
        number += 1;
        let rollback = number % 23 == 0;
        let rows = sizes[rng.below(sizes.len() as u64) as usize].min(total_rows - inserted);
        let updates = if number % 7 == 0 && next_id > 1 {
            (0..rng.below(20) + 1).map(|_| 1 + rng.below(next_id as u64 - 1) as i64).collect::<HashSet<_>>().into_iter().collect()
        } else {
            Vec::new()
        };
        if rollback {
            plan.push(Txn { number, first_id: rolled_back_id, rows: rows.min(500), updates, rollback });
            rolled_back_id += 500;
        } else {
            plan.push(Txn { number, first_id: next_id, rows, updates, rollback });
            next_id += rows;
            inserted += rows;
        }
    }
    plan
}

const PAYLOAD_PAD: usize = 40;

fn payload(id: i64) -> String {
    format!("row-{id}-{}", "x".repeat(PAYLOAD_PAD))
}

async fn run_workload(client: tokio_postgres::Client, plan: Vec<Txn>, pace: Duration) {
    for txn in plan {
        let mut sql = format!(
            "BEGIN; INSERT INTO kw SELECT g, {}, 'row-' || g || '-' || repeat('x', {PAYLOAD_PAD}) FROM generate_series({}, {}) g;",
            txn.number,
            txn.first_id,
            txn.first_id + txn.rows - 1
        );
        for id in &txn.updates {
            sql.push_str(&format!(" UPDATE kw SET payload = payload || '+' WHERE id = {id};"));
        }
        sql.push_str(if txn.rollback { " ROLLBACK;" } else { " COMMIT;" });
        client.batch_execute(&sql).await.expect("workload transaction");
        tokio::time::sleep(pace).await;
    }
}

/// Samples `(confirmed_flush_lsn, checkpoint commit LSN, checkpoint end LSN)` until `stop`.
async fn sample_slot(client: tokio_postgres::Client, slot: String, pipeline: String, stop: Arc<AtomicBool>) -> Vec<(Lsn, Lsn, Lsn)> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Slot first, checkpoint after: the checkpoint only grows, so this order can never report a false breach.
        let confirmed = client
            .query_opt("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .expect("slot")
            .and_then(|r| r.get::<_, Option<PgLsn>>(0))
            .map(lsn);
        if let (Some(confirmed), Some((commit, end))) = (confirmed, checkpoint(&client, &pipeline).await) {
            samples.push((confirmed, commit, end));
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    samples
}

/// Checks the buffer against the workload plan: every committed insert and update exactly once, nothing of a
/// rolled-back transaction, whole transactions with contiguous seqs, in commit order.
fn check_exactly_once(stored: &[Stored], plan: &[Txn]) -> BTreeMap<i32, Lsn> {
    let positions: HashSet<Position> = stored.iter().map(|s| s.event.position()).collect();
    assert_eq!(positions.len(), stored.len(), "a position (commit_lsn, seq) is never stored twice");

    let mut inserts: HashMap<i64, usize> = HashMap::new();
    let mut updates: HashMap<i64, Vec<(Position, String)>> = HashMap::new();
    let mut txn_lsn: BTreeMap<i32, Lsn> = BTreeMap::new();
    let mut seqs: BTreeMap<Lsn, Vec<u64>> = BTreeMap::new();
    for s in stored {
        let e = &s.event;
        seqs.entry(e.commit_lsn).or_default().push(e.seq);
        let new = e.new.as_ref().expect("inserts and updates only");
        let (Value::Int64(id), Value::Int32(txn)) = (&new[0], &new[1]) else { panic!("unexpected row {new:?}") };
        let Value::Text(text) = &new[2] else { panic!("unexpected payload {new:?}") };
        match e.op {
            'I' => {
                *inserts.entry(*id).or_default() += 1;
                assert_eq!(text, &payload(*id), "insert payload of {id}");
                let previous = txn_lsn.insert(*txn, e.commit_lsn);
                assert!(previous.is_none_or(|p| p == e.commit_lsn), "transaction {txn} split over two commit LSNs");
            }
            'U' => updates.entry(*id).or_default().push((e.position(), text.clone())),
            other => panic!("unexpected op {other}"),
        }
    }
    let committed: Vec<&Txn> = plan.iter().filter(|t| !t.rollback).collect();
    let expected_ids: i64 = committed.iter().map(|t| t.rows).sum();
    let doubled: Vec<_> = inserts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "inserts stored twice: {doubled:?}");
    assert!(inserts.keys().all(|id| *id < ROLLED_BACK_IDS), "a rolled-back insert reached the buffer");
    let missing: Vec<i64> = (1..=expected_ids).filter(|id| !inserts.contains_key(id)).take(5).collect();
    assert!(missing.is_empty(), "inserts lost: {missing:?}… ({} of {expected_ids} stored)", inserts.len());

    let mut expected_updates: HashMap<i64, usize> = HashMap::new();
    for txn in &committed {
        for id in &txn.updates {
            *expected_updates.entry(*id).or_default() += 1;
        }
    }
    for (id, n) in &expected_updates {
        let got = updates.get_mut(id).map_or_else(Vec::new, std::mem::take);
        assert_eq!(got.len(), *n, "updates of id {id}");
        let mut got = got;
        got.sort();
        for (k, (_, text)) in got.iter().enumerate() {
            assert_eq!(text, &format!("{}{}", payload(*id), "+".repeat(k + 1)), "update {k} of id {id}");
        }
    }
    assert!(updates.values().all(Vec::is_empty), "updates of ids never updated (or of rolled-back transactions)");

    // Whole transactions: seqs 0..n, and commit LSNs in the order the workload committed.
    for (commit, mut list) in seqs {
        list.sort_unstable();
        assert!(list.iter().enumerate().all(|(i, s)| *s == i as u64), "transaction at {commit} has gaps in its seqs");
    }
    let lsns: Vec<Lsn> = txn_lsn.values().copied().collect();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "commit LSNs follow the workload's commit order");
    assert_eq!(txn_lsn.len(), committed.iter().filter(|t| t.rows > 0).count(), "every committed transaction");
    txn_lsn
}

/// The slot never confirmed a transaction the buffer did not hold: no buffered commit lies between a sample's
/// checkpoint and its confirmed position. Returns how many samples had the slot past the checkpoint's end LSN
/// (legitimately: keepalive positions with no change of ours in between).
fn check_slot_never_passed_the_buffer(samples: &[(Lsn, Lsn, Lsn)], commits: &[Lsn]) -> usize {
    assert!(!samples.is_empty(), "the slot was sampled");
    let mut ahead = 0;
    for (confirmed, commit, end) in samples {
        assert!(end >= commit, "checkpoint end {end} before commit {commit}");
        if let Some(lost) = commits.iter().find(|c| *c > commit && *c < confirmed) {
            panic!("the slot confirmed {confirmed} while the buffer's checkpoint was {commit}: transaction {lost} was released before it was durable");
        }
        if confirmed > end {
            ahead += 1;
        }
    }
    ahead
}

const KILL_SEGMENT: &str = "{ max_events: 200, max_bytes: 32KiB, max_age: 20ms }";

fn kw_schema(db: &TestDatabase) {
    db.psql("CREATE TABLE kw (id bigint PRIMARY KEY, txn int NOT NULL, payload text NOT NULL)").expect("schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_killed_five_times_and_stopped_once_mid_workload_enqueues_every_committed_transaction_exactly_once() {
    let db = database("cap_kill");
    kw_schema(&db);
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.kw"], &[], KILL_SEGMENT);
    let mut rng = Rng::from_env_or_clock();
    // Mostly small transactions, some large enough to spill (a 128 KiB spill bound is ~1,200 rows here).
    let plan = plan_workload(&mut rng, 100_000, &[1, 2, 5, 20, 100, 400, 1_500, 6_000, 15_000]);
    let expected: i64 = plan.iter().filter(|t| !t.rollback).map(|t| t.rows + t.updates.len() as i64).sum();

    let mut capture = CaptureProcess::start(&file, 0);
    wait_streaming(&client, &slot_name(&db), &mut capture).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_slot(connect(&db).await, slot_name(&db), db.name().to_string(), stop.clone()));
    let workload = tokio::spawn(run_workload(connect(&db).await, plan.clone(), Duration::from_millis(15)));
    let started = Instant::now();

    for run in 1..=5 {
        let wait = Duration::from_millis(400 + rng.below(2_000));
        tokio::time::sleep(wait).await;
        assert!(capture.exited().is_none(), "capture run {run} died by itself; log:\n{}", capture.log());
        capture.kill();
        println!("killed run {} after {wait:?} ({} changes durable)", run - 1, durable_count(&client, db.name()).await);
        capture = CaptureProcess::start(&file, run);
    }
    // And a clean stop at a random moment, mid-transaction as likely as not: it must drain and exit 0.
    tokio::time::sleep(Duration::from_millis(200 + rng.below(1_000))).await;
    stop_cleanly(&mut capture);
    println!("stopped run 5 cleanly ({} changes durable)", durable_count(&client, db.name()).await);
    capture = CaptureProcess::start(&file, 6);
    workload.await.expect("workload");
    let workload_done = started.elapsed();
    wait_durable(&client, db.name(), expected, &mut capture).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.expect("sampler");
    stop_cleanly(&mut capture);
    println!("workload {workload_done:?}, all durable after {:?}", started.elapsed());

    let all = philotes_stages::store::segments::all(&client, db.name()).await.expect("segments");
    let stored = durable_events(&client, db.name()).await;
    assert_eq!(all.iter().map(|s| i64::from(s.row.events)).sum::<i64>(), stored.len() as i64, "nothing left above the checkpoint after a clean stop");
    assert_eq!(stored.len() as i64, expected, "changes in the buffer");
    let txn_lsn = check_exactly_once(&stored, &plan);
    let commits: Vec<Lsn> = txn_lsn.values().copied().collect();
    let ahead = check_slot_never_passed_the_buffer(&samples, &commits);
    println!("{} slot samples, {ahead} with the slot past the checkpoint's end LSN on a keepalive", samples.len());
    let restarts = (1..=5).filter(|run| std::fs::read_to_string(file.with_extension(format!("capture-{run}.log"))).is_ok_and(|l| l.contains("capture starting"))).count();
    assert!(restarts >= 4, "the restarted captures resumed ({restarts} of 5 logged a start)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_walsender_and_buffer_sessions_are_reconnected_by_the_same_process_and_nothing_is_lost() {
    let db = database("cap_walsender");
    kw_schema(&db);
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.kw"], &[], KILL_SEGMENT);
    let mut rng = Rng::from_env_or_clock();
    let plan = plan_workload(&mut rng, 30_000, &[1, 10, 100, 1_000, 4_000]);
    let expected: i64 = plan.iter().filter(|t| !t.rollback).map(|t| t.rows + t.updates.len() as i64).sum();

    let mut capture = start_capture(&db, &client, &file).await;
    let pid = capture.pid();
    let workload_client = connect(&db).await;
    let mut ours: Vec<i32> = Vec::new();
    for c in [&client, &workload_client] {
        ours.push(c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0));
    }
    let workload = tokio::spawn(run_workload(workload_client, plan.clone(), Duration::from_millis(20)));
    let slot = slot_name(&db);
    for round in 1..=3 {
        // Mid-stream: once more changes arrived since the last round.
        let floor = durable_count(&client, db.name()).await + 1;
        wait_for("changes to arrive", Duration::from_secs(60), || async {
            (durable_count(&client, db.name()).await >= floor).then_some(())
        })
        .await;
        let old: i32 = client
            .query_one("SELECT pg_terminate_backend(active_pid)::int * active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .expect("terminate walsender")
            .get(0);
        assert!(old > 0, "round {round}: a walsender was terminated");
        if round == 2 {
            // The capture's SQL sessions too (buffer writes, type catalog): every backend but the test's own. The
            // walsender was just terminated, so the capture may be between sessions: retry until some were there.
            wait_for("the capture's SQL sessions to terminate", Duration::from_secs(60), || async {
                let terminated: i64 = client
                    .query_one(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> ALL($1)",
                        &[&ours],
                    )
                    .await
                    .expect("terminate sessions")
                    .get(0);
                (terminated > 0).then_some(())
            })
            .await;
        }
        wait_for("a new walsender", Duration::from_secs(60), || async {
            let row = client
                .query_one("SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                .await
                .expect("slot");
            let now: i32 = row.get(0);
            (now != 0 && now != old).then_some(())
        })
        .await;
        assert!(capture.exited().is_none(), "the capture survives a lost walsender; log:\n{}", capture.log());
    }
    workload.await.expect("workload");
    wait_durable(&client, db.name(), expected, &mut capture).await;
    assert_eq!(capture.pid(), pid);
    let log = capture.log();
    stop_cleanly(&mut capture);
    assert!(log.matches("restarting from the checkpoint").count() >= 3, "three reconnects logged:\n{log}");
    let stored = durable_events(&client, db.name()).await;
    assert_eq!(stored.len() as i64, expected);
    check_exactly_once(&stored, &plan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_capture_of_the_same_pipeline_waits_and_never_deletes_what_the_first_is_spilling() {
    let db = database("cap_second");
    kw_schema(&db);
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.kw"], &[], KILL_SEGMENT);
    let mut rng = Rng::from_env_or_clock();
    // Big transactions only: the first capture is spilling (segments above its checkpoint) most of the time.
    let plan = plan_workload(&mut rng, 60_000, &[6_000, 10_000]);
    let expected: i64 = plan.iter().filter(|t| !t.rollback).map(|t| t.rows + t.updates.len() as i64).sum();

    let mut first = start_capture(&db, &client, &file).await;
    let workload = tokio::spawn(run_workload(connect(&db).await, plan.clone(), Duration::from_millis(5)));
    // The second one keeps trying to start while the first streams (a rolling deploy, an operator's mistake).
    let mut second = CaptureProcess::start(&file, 1);
    wait_for("the second capture to notice the first", Duration::from_secs(30), || async {
        second.log().contains("another capture of this pipeline").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500 + rng.below(1_500))).await;
    assert!(second.exited().is_none(), "the second capture waits; log:\n{}", second.log());
    first.kill();
    workload.await.expect("workload");
    wait_durable(&client, db.name(), expected, &mut second).await;
    stop_cleanly(&mut second);
    let stored = durable_events(&client, db.name()).await;
    assert_eq!(stored.len() as i64, expected);
    check_exactly_once(&stored, &plan);
}

// ---------------------------------------------------------------------------------------------------------
// 4. A million rows in one transaction, in bounded memory.
// ---------------------------------------------------------------------------------------------------------

/// The stated bound on the capture's peak RSS for a 1M-row transaction (default segment limits: 8 MiB segments,
/// 32 MiB spill bound, 1,024-item stage queues).
const PEAK_RSS_BOUND_MIB: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_goes_through_with_peak_rss_under_the_bound() {
    let db = database("cap_million");
    db.psql("CREATE TABLE m (id bigint, v int, t text); ALTER TABLE m REPLICA IDENTITY FULL").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.m"], &[], DEFAULT_SEGMENT);
    let mut capture = start_capture(&db, &client, &file).await;
    let idle_rss = capture.peak_rss_kib();

    let rows: i64 = 1_000_000;
    let started = Instant::now();
    client
        .batch_execute(&format!("INSERT INTO m SELECT g, g % 1000, 'row number ' || g FROM generate_series(1, {rows}) g"))
        .await
        .expect("one big transaction");
    let committed = started.elapsed();
    wait_durable(&client, db.name(), rows, &mut capture).await;
    let through = started.elapsed();
    let peak = capture.peak_rss_kib();
    stop_cleanly(&mut capture);
    println!(
        "1M-row transaction: committed on the source after {committed:?}, durable in the buffer after {through:?}; \
         capture peak RSS {} MiB (idle {} MiB), bound {PEAK_RSS_BOUND_MIB} MiB",
        peak / 1024,
        idle_rss / 1024
    );
    assert!(peak / 1024 < PEAK_RSS_BOUND_MIB, "peak RSS {} MiB is over the bound of {PEAK_RSS_BOUND_MIB} MiB", peak / 1024);

    // Contiguous seqs 0..1M in one commit LSN, checked on the segment rows (no need to decode a million events).
    let segments = philotes_stages::store::segments::all(&client, db.name()).await.expect("segments");
    let mut spans: Vec<(u64, u64, i32, Lsn, Lsn)> =
        segments.iter().map(|s| (s.row.first.seq, s.row.last.seq, s.row.events, s.row.first.commit_lsn, s.row.last.commit_lsn)).collect();
    spans.sort_unstable();
    let commit = spans[0].3;
    let mut next = 0;
    for (first, last, events, a, b) in &spans {
        assert_eq!((*a, *b), (commit, commit), "one transaction");
        assert_eq!(*first, next, "segments follow each other without gap or overlap");
        assert_eq!(*events as u64, last - first + 1);
        next = last + 1;
    }
    assert_eq!(next, rows as u64);
    assert!(spans.len() > 1, "the transaction was cut into segments");
    // Spot-check the values of the first and last segments.
    for s in [segments.first().expect("a segment"), segments.last().expect("a segment")] {
        for e in philotes_stages::segment::decode(&s.row.payload).expect("decodes") {
            let new = e.new.expect("insert");
            let Value::Int64(id) = new[0] else { panic!("{new:?}") };
            assert_eq!(id as u64, e.seq + 1, "rows in insertion order");
            assert_eq!(new[2], Value::Text(format!("row number {id}")));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// 5. Truncate, rollback, unmappable types, schema changes, dead letters.
// ---------------------------------------------------------------------------------------------------------

fn summary(stored: &[Stored]) -> Vec<(String, char, Option<Value>)> {
    stored
        .iter()
        .map(|s| {
            let key = s.event.new.as_ref().or(s.event.old.as_ref()).map(|r| r[0].clone());
            (s.table.clone(), s.event.op, key)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_is_captured_per_table_and_a_rolled_back_transaction_enqueues_nothing() {
    let db = database("cap_truncate");
    db.psql("CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY)").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.a", "public.b"], &[], DEFAULT_SEGMENT);
    let mut capture = start_capture(&db, &client, &file).await;
    client.batch_execute("INSERT INTO a VALUES (1, 'x'), (2, 'y'); INSERT INTO b VALUES (1)").await.expect("inserts");
    client.batch_execute("BEGIN; INSERT INTO a VALUES (99, 'never'); INSERT INTO b VALUES (99); ROLLBACK").await.expect("rollback");
    client.batch_execute("TRUNCATE a, b").await.expect("truncate");
    client.batch_execute("INSERT INTO a VALUES (3, 'z')").await.expect("insert");
    wait_durable(&client, db.name(), 6, &mut capture).await;
    stop_cleanly(&mut capture);

    let mut stored = durable_events(&client, db.name()).await;
    stored.sort_by_key(|s| s.event.position());
    let a = || "public.a".to_string();
    assert_eq!(
        summary(&stored),
        vec![
            (a(), 'I', Some(Value::Int32(1))),
            (a(), 'I', Some(Value::Int32(2))),
            ("public.b".into(), 'I', Some(Value::Int32(1))),
            (a(), 'T', None),
            ("public.b".into(), 'T', None),
            (a(), 'I', Some(Value::Int32(3))),
        ]
    );
    let truncate = &stored[3..5];
    assert_eq!(truncate[0].event.commit_lsn, truncate[1].event.commit_lsn, "one TRUNCATE, one transaction");
    assert!(truncate.iter().all(|s| s.event.old.is_none() && s.event.new.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmappable_type_is_carried_as_text_when_the_pipeline_says_so() {
    let db = database("cap_unmapped_text");
    db.psql("CREATE TABLE geo (id int PRIMARY KEY, location point, doc tsvector)").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.geo"], &["unmapped_types: text"], DEFAULT_SEGMENT);
    let mut capture = start_capture(&db, &client, &file).await;
    client.batch_execute("INSERT INTO geo VALUES (1, '(1,2)', to_tsvector('simple', 'a fat cat'))").await.expect("insert");
    wait_durable(&client, db.name(), 1, &mut capture).await;
    stop_cleanly(&mut capture);
    let stored = durable_events(&client, db.name()).await;
    assert_eq!(
        stored[0].event.new,
        Some(vec![Value::Int32(1), Value::Text("(1,2)".into()), Value::Text("'a':1 'cat':3 'fat':2".into())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_mid_stream_makes_a_new_schema_version_and_later_events_carry_it() {
    let db = database("cap_add_column");
    db.psql("CREATE TABLE evo (id int PRIMARY KEY, a text)").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.evo"], &[], DEFAULT_SEGMENT);
    let mut capture = start_capture(&db, &client, &file).await;
    client.batch_execute("INSERT INTO evo VALUES (1, 'before')").await.expect("insert");
    client.batch_execute("ALTER TABLE evo ADD COLUMN extra int DEFAULT 7").await.expect("alter");
    client.batch_execute("INSERT INTO evo VALUES (2, 'after', 8); UPDATE evo SET a = 'updated' WHERE id = 1").await.expect("after");
    wait_durable(&client, db.name(), 3, &mut capture).await;
    stop_cleanly(&mut capture);

    let versions = client
        .query(
            "SELECT version, description FROM philotes.schemas WHERE pipeline = $1 AND source_table = 'evo' ORDER BY version",
            &[&db.name()],
        )
        .await
        .expect("schemas");
    let versions: Vec<(i32, String)> = versions.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(!versions[0].1.contains("extra") && versions[1].1.contains("extra integer"), "{versions:?}");

    let mut stored = durable_events(&client, db.name()).await;
    stored.sort_by_key(|s| s.event.position());
    let rows: Vec<(i32, Option<Vec<Value>>)> = stored.iter().map(|s| (s.schema_version, s.event.new.clone())).collect();
    assert_eq!(
        rows,
        vec![
            (1, Some(vec![Value::Int32(1), Value::Text("before".into())])),
            (2, Some(vec![Value::Int32(2), Value::Text("after".into()), Value::Int32(8)])),
            (2, Some(vec![Value::Int32(1), Value::Text("updated".into()), Value::Int32(7)])),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_cannot_be_converted_is_dead_lettered_with_its_reason_and_the_rest_flows() {
    let db = database("cap_dead_letter");
    db.psql("CREATE TABLE dl (id int PRIMARY KEY, arr int[])").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.dl"], &[], DEFAULT_SEGMENT);
    let mut capture = start_capture(&db, &client, &file).await;
    // A two-dimensional array in an int[] column: Postgres accepts it, philotes maps only one dimension.
    client
        .batch_execute("BEGIN; INSERT INTO dl VALUES (1, '{1,2}'), (2, '{{1,2},{3,4}}'), (3, '{3}'); COMMIT; INSERT INTO dl VALUES (4, NULL)")
        .await
        .expect("inserts");
    wait_durable(&client, db.name(), 3, &mut capture).await;
    wait_for("the dead letter", Duration::from_secs(30), || async {
        let n: i64 = client.query_one("SELECT count(*) FROM philotes.dead_letters", &[]).await.expect("count").get(0);
        (n > 0).then_some(())
    })
    .await;
    stop_cleanly(&mut capture);

    let mut stored = durable_events(&client, db.name()).await;
    stored.sort_by_key(|s| s.event.position());
    let ids: Vec<Option<Value>> = summary(&stored).into_iter().map(|(_, _, k)| k).collect();
    assert_eq!(ids, vec![Some(Value::Int32(1)), Some(Value::Int32(3)), Some(Value::Int32(4))]);
    let letters = client
        .query("SELECT stage, source_schema, source_table, commit_lsn, seq, reason, payload FROM philotes.dead_letters WHERE pipeline = $1", &[&db.name()])
        .await
        .expect("dead letters");
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    let reason: String = letter.get(5);
    assert_eq!(letter.get::<_, String>(0), "schema_resolve");
    assert_eq!((letter.get::<_, String>(1), letter.get::<_, String>(2)), ("public".into(), "dl".into()));
    assert_eq!(lsn(letter.get::<_, PgLsn>(3)), stored[0].event.commit_lsn, "the dead letter's position");
    assert_eq!(letter.get::<_, i64>(4), 1, "the second change of its transaction");
    assert!(reason.contains("arr") && reason.contains("multi-dimensional"), "{reason}");
    assert!(letter.get::<_, String>(6).contains("{{1,2},{3,4}}"), "the payload shows the change");
}

// ---------------------------------------------------------------------------------------------------------
// 6. Status.
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_shows_slot_lag_checkpoint_and_buffer_depth_after_a_capture_run() {
    let db = database("cap_status");
    db.psql("CREATE TABLE s (id int PRIMARY KEY)").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.s"], &[], DEFAULT_SEGMENT);
    let mut capture = start_capture(&db, &client, &file).await;
    client.batch_execute("INSERT INTO s SELECT generate_series(1, 6); INSERT INTO s VALUES (7), (8), (9), (10)").await.expect("inserts");
    wait_durable(&client, db.name(), 10, &mut capture).await;
    stop_cleanly(&mut capture);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_philotes"))
        .args(["status", file.to_str().expect("utf-8 path"), "--json"])
        .output()
        .expect("philotes status runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("status prints JSON");
    let (commit, _) = checkpoint(&client, db.name()).await.expect("a checkpoint");
    assert_eq!(status["pipeline"], db.name());
    assert_eq!(status["slot_exists"], true);
    assert_eq!(status["checkpoint_lsn"], commit.to_string());
    assert_eq!(status["buffer_events"], 10);
    assert!(status["buffer_segments"].as_i64().is_some_and(|n| n >= 1), "{status}");
    assert!(status["buffer_bytes"].as_i64().is_some_and(|n| n > 0), "{status}");
    assert!(status["replication_lag_bytes"].as_i64().is_some_and(|n| n >= 0), "{status}");
    assert!(status["slot_confirmed_lsn"].is_string(), "{status}");
    assert_eq!(status["dead_letters"], 0);
}
