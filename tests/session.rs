//! The source's session defaults never change a value: with the database's output settings at their most
//! hostile (`ALTER DATABASE … SET` before the pipeline starts), every value reaches Iceberg exactly as the source
//! holds it, and nothing goes to the dead letters.
//!
//! The reference is computed on the source in a form no session setting touches (binary floats and bytes,
//! days and microseconds since the epoch, interval fields as numbers), read on a session that pins its settings
//! itself; the Iceberg table is read back with the `iceberg` crate.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, Time64MicrosecondType, TimestampMicrosecondType,
};

use crate::flush::{drained, last_commit, Pipeline};
use crate::support::assert_status_clean;

/// One row, every value in a setting-proof form.
#[derive(Debug, Clone, PartialEq)]
struct Values {
    f8: Option<u64>,
    f4: Option<u32>,
    d: Option<i32>,
    ts: Option<i64>,
    tstz: Option<i64>,
    t: Option<i64>,
    iv: Option<(i32, i32, i64)>,
    b: Option<Vec<u8>>,
}

const TABLE: &str = "CREATE TABLE typed (id bigint PRIMARY KEY, f8 double precision, f4 real, d date, ts timestamp,
                                         tstz timestamptz, t time, iv interval, b bytea)";

/// Written on a session that pins ISO input, so the literals mean the same whatever the database says.
const ROWS: &str = "
INSERT INTO typed VALUES
 (1, 0.1::float8 + 0.2::float8, 0.1, '2024-12-13', '2024-03-10 01:59:59.123456', '2024-03-10 01:59:59.123456+00',
  '23:59:59.999999', '1 year 2 mons 3 days 04:05:06.789', '\\x00ff5c27220a'),
 (2, 1e-7, 1e-7, '1999-12-31', '2000-02-29 12:00:00.000001', '1969-12-31 23:59:59.999999+00',
  '00:00:00', '-1 mons +2 days -00:00:01.5', ''),
 (3, 1.2345678901234567e-300, 3.4028235e38, '0044-03-15 BC', '1970-01-01 00:00:00', '2024-06-30 18:15:00+05:45',
  '12:34:56.789', '1 mon -1 days 25:00:00', convert_to('héllo\\world', 'UTF8')),
 (4, 1.7976931348623157e308, 1.17549435e-38, '2000-01-01', '1900-01-01 00:00:00.5', '2038-01-19 03:14:08-03:30',
  '01:02:03', '-178000 years', '\\x5c5c'),
 (5, 0.30000000000000004, 16777217, '2024-02-29', '2024-02-29 23:59:59', '2024-02-29 23:59:59.999999+14',
  '23:00:00', '0', '\\x80'),
 (6, 5e-324, 0.3, '1970-01-01', '1970-01-01 00:00:00.000001', '1970-01-01 00:00:00+00', '00:00:00.000001',
  '-00:00:00.000001', '\\x27')";

/// The source's rows in a form no output setting changes.
async fn source_values(client: &tokio_postgres::Client) -> BTreeMap<i64, Values> {
    let rows = client
        .query(
            "SELECT id, f8, f4, d - date '1970-01-01',
                    (extract(epoch FROM ts) * 1000000)::bigint, (extract(epoch FROM tstz) * 1000000)::bigint,
                    (extract(epoch FROM t) * 1000000)::bigint,
                    (extract(year FROM iv) * 12 + extract(month FROM iv))::int, extract(day FROM iv)::int,
                    (extract(hour FROM iv) * 3600000000 + extract(minute FROM iv) * 60000000
                     + extract(microseconds FROM iv))::bigint,
                    b
             FROM typed",
            &[],
        )
        .await
        .expect("source rows");
    rows.iter()
        .map(|r| {
            let months: Option<i32> = r.get(7);
            let iv = months.map(|m| (m, r.get::<_, i32>(8), r.get::<_, i64>(9)));
            let values = Values {
                f8: r.get::<_, Option<f64>>(1).map(f64::to_bits),
                f4: r.get::<_, Option<f32>>(2).map(f32::to_bits),
                d: r.get(3),
                ts: r.get(4),
                tstz: r.get(5),
                t: r.get(6),
                iv,
                b: r.get(10),
            };
            (r.get::<_, i64>(0), values)
        })
        .collect()
}

/// The Iceberg table's rows, read with the `iceberg` crate.
async fn iceberg_values(pipeline: &Pipeline) -> BTreeMap<i64, Values> {
    let batches = crate::flush::read_batches(pipeline, "typed").await;
    let mut out = BTreeMap::new();
    for batch in &batches {
        let column = |name: &str| batch.column_by_name(name).unwrap_or_else(|| panic!("column {name}")).clone();
        let (id, f8, f4, d, ts, tstz, t, iv, b) = (
            column("id"),
            column("f8"),
            column("f4"),
            column("d"),
            column("ts"),
            column("tstz"),
            column("t"),
            column("iv"),
            column("b"),
        );
        let iv = iv.as_struct();
        for i in 0..batch.num_rows() {
            let some = |a: &dyn Array| !a.is_null(i);
            let values = Values {
                f8: some(&f8).then(|| f8.as_primitive::<Float64Type>().value(i).to_bits()),
                f4: some(&f4).then(|| f4.as_primitive::<Float32Type>().value(i).to_bits()),
                d: some(&d).then(|| d.as_primitive::<Date32Type>().value(i)),
                ts: some(&ts).then(|| ts.as_primitive::<TimestampMicrosecondType>().value(i)),
                tstz: some(&tstz).then(|| tstz.as_primitive::<TimestampMicrosecondType>().value(i)),
                t: some(&t).then(|| t.as_primitive::<Time64MicrosecondType>().value(i)),
                iv: some(iv).then(|| {
                    (
                        iv.column(0).as_primitive::<Int32Type>().value(i),
                        iv.column(1).as_primitive::<Int32Type>().value(i),
                        iv.column(2).as_primitive::<Int64Type>().value(i),
                    )
                }),
                b: some(&b).then(|| b.as_binary::<i64>().value(i).to_vec()),
            };
            let previous = out.insert(id.as_primitive::<Int64Type>().value(i), values);
            assert!(previous.is_none(), "a row twice in Iceberg");
        }
    }
    out
}

/// Sets `settings` on the test database, runs the whole pipeline over rows of every setting-sensitive type, and
/// asserts that Iceberg holds the source's values row for row and that nothing was dead-lettered.
async fn values_survive_database_settings(hint: &str, settings: &[&str]) {
    let db = philotes_testkit::shared().database(hint).expect("database");
    for setting in settings {
        db.psql(&format!("ALTER DATABASE {} SET {setting}", db.name())).expect("database setting");
    }
    // The reading and writing session pins its own settings, so the reference does not depend on the fix.
    let client = db.connect().await.expect("connect");
    client
        .batch_execute(
            "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3; SET bytea_output = hex;
             SET TimeZone = 'UTC'",
        )
        .await
        .expect("pinned session");
    client.batch_execute(TABLE).await.expect("table");
    let pipeline = Pipeline::new(&db, &["public.typed"], "{ workers: 1, max_events: 1000, interval: 200ms }");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    client.batch_execute(ROWS).await.expect("rows");
    // The last row, all NULL, marks the end of the workload.
    let after = last_commit(&db, "INSERT INTO typed (id) VALUES (7)");
    run.wait_until("every change in iceberg", Duration::from_secs(120), || async { drained(&db, &pipeline.name, &after) }).await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;
    let dead: i64 = client
        .query_one("SELECT count(*) FROM philotes.dead_letters", &[])
        .await
        .expect("dead letters")
        .get(0);
    let reasons: Vec<String> = client
        .query("SELECT reason FROM philotes.dead_letters", &[])
        .await
        .expect("dead letters")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(dead, 0, "rows went to the dead letters: {reasons:?}\nlog:\n{}", run.log());

    let expected = source_values(&client).await;
    let got = iceberg_values(&pipeline).await;
    assert_eq!(got.len(), expected.len(), "rows in Iceberg: {got:#?}");
    for (id, want) in &expected {
        assert_eq!(got.get(id), Some(want), "row {id} (settings {settings:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_survive_sql_dmy_dates_iso_intervals_escaped_bytea_rounded_floats_and_kathmandu_time() {
    values_survive_database_settings(
        "session_sql_dmy",
        &[
            "extra_float_digits = 0",
            "DateStyle = 'SQL, DMY'",
            "IntervalStyle = iso_8601",
            "bytea_output = escape",
            "TimeZone = 'Asia/Kathmandu'",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_survive_german_dates_sql_standard_intervals_and_the_fewest_float_digits() {
    values_survive_database_settings(
        "session_german",
        &[
            "extra_float_digits = -15",
            "DateStyle = 'German'",
            "IntervalStyle = sql_standard",
            "bytea_output = escape",
            "TimeZone = 'America/St_Johns'",
        ],
    )
    .await;
}
