//! The binary decoder against a real PostgreSQL: for every type [`has_binary`] names, a table of edge values and
//! a few hundred generated ones is read once with `COPY … TO STDOUT (FORMAT binary)` (the stream parsed here) and
//! once with the text `COPY … TO STDOUT` the snapshot reader uses today (its own line parser), and every value
//! must decode to the same [`Value`]: `parse_binary(type, field) == parse_text(type, text)`. `Value`'s equality
//! compares floats by their bits, so NaN, -0 and denormals are compared exactly.
//!
//! The text is read twice: under the settings philotes' stream uses (`DateStyle=ISO`, `TimeZone=UTC`,
//! `IntervalStyle=postgres`, `bytea_output=hex`, `extra_float_digits=1`), and again with a zone whose offsets
//! have minutes and, before 1935, seconds (`America/St_Johns`) and `extra_float_digits=3`: the decoded value must
//! not depend on either.

use futures::StreamExt;
use philotes_schemas::{has_binary, parse_binary, parse_text, PgType, Value};
use philotes_stages::decode::ColumnData;

use crate::support::{connect, database};

/// Generated rows per column, on top of its edge values and one NULL.
const GENERATED: u32 = 300;

/// One column under test: its SQL type, literal edge values, and an SQL expression of `g` (1..=GENERATED) that
/// generates more.
struct Column {
    name: &'static str,
    sql_type: &'static str,
    edges: &'static [&'static str],
    generated: &'static str,
}

/// `random_text(g)` in SQL: up to 40 code points, tabs, newlines, carriage returns, backslashes, Latin, CJK and
/// astral-plane characters (NULL when the length is 0).
const RANDOM_TEXT: &str = "(SELECT string_agg(chr(CASE WHEN r < 0.1 THEN 9 + floor(r * 50)::int \
     WHEN r < 0.5 THEN 32 + floor((r - 0.1) * 237)::int \
     WHEN r < 0.9 THEN 160 + floor((r - 0.5) * 137000)::int \
     ELSE 65536 + floor((r - 0.9) * 600000)::int END), '') \
     FROM (SELECT random() AS r FROM generate_series(1, g % 41) s) c)";

fn columns() -> Vec<Column> {
    vec![
        Column {
            name: "bool",
            sql_type: "boolean",
            edges: &["true", "false"],
            generated: "random() < 0.5",
        },
        Column {
            name: "int2",
            sql_type: "smallint",
            edges: &["-32768", "32767", "0", "-1", "1"],
            generated: "(floor(random() * 65536) - 32768)::int2",
        },
        Column {
            name: "int4",
            sql_type: "integer",
            edges: &["-2147483648", "2147483647", "0", "-1"],
            generated: "(floor(random() * 4294967296) - 2147483648)::int4",
        },
        Column {
            name: "int8",
            sql_type: "bigint",
            edges: &["-9223372036854775808", "9223372036854775807", "0", "-1"],
            generated: "((floor(random() * 2147483648)::int8 << 32) | floor(random() * 4294967296)::int8) \
                        * (CASE WHEN random() < 0.5 THEN -1 ELSE 1 END)",
        },
        Column {
            name: "float4",
            sql_type: "real",
            edges: &[
                "'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "'0'", "'1e-45'", "'1.1754942e-38'",
                "'1.17549435e-38'", "'3.4028235e+38'", "'-3.4028235e+38'", "'0.1'", "'16777217'",
                "'-nan'", "'Infinity'::real - 'Infinity'::real", "'NaN'::real * -1",
            ],
            generated: "(CASE g % 3 WHEN 0 THEN (random() - 0.5) * 10 ^ (random() * 70 - 35) \
                        WHEN 1 THEN 1e-45 + random() * 1e-38 ELSE random() END)::real",
        },
        Column {
            name: "float8",
            sql_type: "double precision",
            edges: &[
                "'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "'0'", "'5e-324'", "'2.225073858507201e-308'",
                "'2.2250738585072014e-308'", "'1.7976931348623157e+308'", "'-1.7976931348623157e+308'",
                "'0.1'", "'0.30000000000000004'", "'1e23'", "'9007199254740993'", "'-nan'",
                "'Infinity'::float8 - 'Infinity'::float8", "'NaN'::float8 * -1",
            ],
            generated: "CASE g % 3 WHEN 0 THEN (random() - 0.5) * 10 ^ (random() * 600 - 300) \
                        WHEN 1 THEN random() * 1e-310 ELSE random() END",
        },
        Column {
            name: "numeric",
            sql_type: "numeric",
            edges: &[
                "'0'", "'0.00'", "'-1.5'", "'10000'", "'0.0001'", "'123456789.123456789'", "'NaN'",
                "'Infinity'", "'-Infinity'", "'-0.00'", "'1.50000'", "'-0.000001'", "'1e-20'",
                "'99999999999999999999999999999999999999999999'",
                "'-12345678901234567890123456789012345678901234567890.123456789012345678901234567890'",
                "'1e100'", "'1e-1000'", "'9999.9999'", "'10000.0001'", "'0.1'", "'100'", "'1000000'",
                "'0000012.3400'", "'-9999'", "'0.00000001'",
            ],
            generated: "CASE g % 3 \
                WHEN 0 THEN round(((random() - 0.5) * 10 ^ (random() * 30 - 10))::numeric, g % 20) \
                WHEN 1 THEN ((CASE WHEN random() < 0.5 THEN '-' ELSE '' END) \
                    || (SELECT string_agg(floor(random() * 10)::int::text, '') FROM generate_series(0, g % 60) s) \
                    || '.' \
                    || (SELECT string_agg(floor(random() * 10)::int::text, '') FROM generate_series(0, g % 37) s) \
                    )::numeric \
                ELSE random()::numeric / 10 ^ (g % 30)::numeric END",
        },
        Column {
            name: "numeric_12_2",
            sql_type: "numeric(12,2)",
            edges: &[
                "'0'", "'-0.01'", "'0.01'", "'9999999999.99'", "'-9999999999.99'", "'NaN'", "'1'", "'1.5'",
                "'123.456'", "'-0.004'",
            ],
            generated: "CASE WHEN g % 2 = 0 THEN round(((random() - 0.5) * 2e10)::numeric, 2) \
                        ELSE (g % 100)::numeric / 7 END",
        },
        Column {
            name: "numeric_5_m2",
            sql_type: "numeric(5,-2)",
            edges: &["'12345'", "'-99949'", "'0'", "'NaN'", "'49'", "'50'"],
            generated: "(floor(random() * 9999999) - 4999999)::int",
        },
        Column {
            name: "numeric_3_5",
            sql_type: "numeric(3,5)",
            edges: &["'0.00123'", "'-0.00999'", "'0'", "'0.000001'"],
            generated: "round((random() * 0.0198 - 0.0099)::numeric, 5)",
        },
        Column {
            name: "text",
            sql_type: "text",
            edges: &[
                "''", "E'a\\tb'", "E'line\\nbreak\\r\\n'", "E'back\\\\slash \\\\N \\\\.'", "'unicode ü 日本 🎉'",
                "E'\\x01\\x7f'", "'NULL'", "'\\N'", "'it''s'", "' leading and trailing  '",
            ],
            generated: RANDOM_TEXT,
        },
        Column {
            name: "varchar_10",
            sql_type: "varchar(10)",
            edges: &["''", "'abcdefghij'", "'ü'", "' x '", "'日本日本日本日本日本'"],
            generated: "left(md5(g::text) || 'ü', g % 11)",
        },
        Column { name: "varchar", sql_type: "varchar", edges: &["''", "E'\\t'"], generated: RANDOM_TEXT },
        Column {
            name: "char_5",
            sql_type: "char(5)",
            edges: &["''", "'a'", "'abcde'", "'ü'", "' a'", "'ab  '", "'日本'"],
            generated: "left('ü' || md5(g::text), g % 6)",
        },
        Column { name: "bpchar", sql_type: "bpchar", edges: &["'a  '", "''", "'  '"], generated: RANDOM_TEXT },
        Column {
            name: "name",
            sql_type: "name",
            edges: &["'pg_class'", "''", "repeat('x', 63)", "repeat('ü', 40)", "repeat('ab', 40)"],
            generated: "md5(g::text)",
        },
        Column {
            name: "bytea",
            sql_type: "bytea",
            edges: &[
                "'\\x'",
                "(SELECT string_agg(set_byte('\\x00'::bytea, 0, b), ''::bytea ORDER BY b) FROM generate_series(0, 255) b)",
                "'\\x00'", "'\\xff'", "'\\x5c'", "'\\x5c4e'",
            ],
            generated: "CASE WHEN g % 2 = 0 THEN set_byte('\\x00'::bytea, 0, g % 256) \
                        ELSE decode(md5(g::text) || md5((g * 7)::text), 'hex') END",
        },
        Column {
            name: "date",
            sql_type: "date",
            edges: &[
                "'infinity'", "'-infinity'", "'4714-11-24 BC'", "'5874897-12-31'", "'0001-01-01'",
                "'0001-12-31 BC'", "'2000-01-01'", "'1970-01-01'", "'9999-12-31'", "'2024-02-29'",
                "'1999-12-31'", "'0044-03-15 BC'", "'10000-01-01'",
            ],
            generated: "'2000-01-01'::date + (CASE WHEN g % 2 = 0 THEN floor(random() * 4000000 - 2400000) \
                        ELSE floor(random() * 2140000000) END)::int",
        },
        Column {
            name: "time",
            sql_type: "time",
            edges: &["'00:00:00'", "'24:00:00'", "'23:59:59.999999'", "'12:34:56.5'", "'00:00:00.000001'"],
            generated: "'00:00'::time + floor(random() * 86400e6) * interval '1 microsecond'",
        },
        Column {
            name: "timestamp",
            sql_type: "timestamp",
            edges: &[
                "'infinity'", "'-infinity'", "'4714-11-24 00:00:00 BC'", "'294276-12-31 23:59:59.999999'",
                "'294248-01-01 00:00:00'", "'0001-01-01 00:00:00'", "'0001-12-31 23:59:59.999999 BC'",
                "'1970-01-01 00:00:00'", "'2000-01-01 00:00:00'", "'1999-12-31 23:59:59.999999'",
                "'9999-12-31 23:59:59.999999'", "'2024-02-29 12:34:56.789'", "'0044-03-15 12:00:00 BC'",
                "'1900-01-01 00:00:00'",
            ],
            generated: "'2000-01-01'::timestamp + floor(random() * 108400000 - 2400000) * interval '1 day' \
                        + floor(random() * 86400e6) * interval '1 microsecond'",
        },
        Column {
            name: "timestamptz",
            sql_type: "timestamptz",
            edges: &[
                "'infinity'", "'-infinity'", "'4714-11-24 00:00:00+00 BC'", "'294276-12-31 23:59:59.999999+00'",
                "'294248-01-01 00:00:00+00'", "'0001-01-01 00:00:00+00'", "'0001-12-31 23:59:59.999999+00 BC'",
                "'1970-01-01 00:00:00+00'", "'2000-01-01 00:00:00+00'", "'1999-12-31 23:59:59.999999+00'",
                "'9999-12-31 23:59:59.999999+00'", "'2024-03-10 01:59:59.123456-08'",
                "'1900-01-01 00:00:00+05:53:28'", "'0044-03-15 12:00:00+00 BC'",
            ],
            generated: "'2000-01-01 00:00:00+00'::timestamptz + floor(random() * 108400000 - 2400000) * interval '1 day' \
                        + floor(random() * 86400e6) * interval '1 microsecond'",
        },
        Column {
            name: "interval",
            sql_type: "interval",
            edges: &[
                "'0'", "'1 year 2 mons -3 days 04:05:06.789'", "'-1 years -2 mons +3 days -04:05:06'",
                "'178956970 years 7 mons'", "'-178956970 years -8 mons'", "'2147483647 days'",
                "'-2147483648 days'", "'2562047788:00:54.775807'", "interval '-2562047788:00:54.775807' - interval '1 microsecond'",
                "'1 microsecond'", "'-1 microsecond'", "'1 day -00:00:00.000001'", "'-1 day +00:00:00.000001'",
                "'12 mons'", "'1 mon 30 days'",
                "'178956970 years 7 mons 2147483647 days 2562047788:00:54.775807'",
                "interval '-178956970 years -8 mons -2147483648 days -2562047788:00:54.775807' \
                 - interval '1 microsecond'",
            ],
            generated: "make_interval(months => (floor(random() * 2000) - 1000)::int, \
                        days => (floor(random() * 20000) - 10000)::int) \
                        + floor(random() * 2e12 - 1e12) * interval '1 microsecond' \
                        * (CASE WHEN g % 5 = 0 THEN 1000000 ELSE 1 END)",
        },
        Column {
            name: "uuid",
            sql_type: "uuid",
            edges: &[
                "'00000000-0000-0000-0000-000000000000'", "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
                "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
            ],
            generated: "gen_random_uuid()",
        },
        Column {
            name: "json",
            sql_type: "json",
            edges: &[
                "'{}'", "'[]'", "'{\"a\" : 1,  \"b\": [true, null]}'", "'\"\\u00e9\\ud83d\\ude00\"'",
                "'  {\"nested\": {\"deep\": [1, {\"x\": \"y\\n\"}]}}  '", "'1.50'", "'\"tab\\there\"'",
                "'{\"a\": 1, \"a\": 2}'",
            ],
            generated: "json_build_object('g', g, 's', md5(g::text), 'r', random(), \
                        'n', json_build_array(g, 'ü', NULL, json_build_object('deep', g % 7 = 0)))",
        },
        Column {
            name: "jsonb",
            sql_type: "jsonb",
            edges: &[
                "'{}'", "'[]'", "'{\"b\": 1, \"a\": [true, null]}'", "'{\"a\": \"\\u00e9\\ud83d\\ude00\"}'",
                "'{\"nested\": {\"deep\": [1, {\"x\": \"y\\n\"}]}}'", "'[1.50, -0.0, 1e-5, 1e40]'",
                "'{\"key\\u0001\": \"\\\\\"}'", "'\"ü\"'", "'{\"a\": 1, \"a\": 2}'",
            ],
            generated: "jsonb_build_object('g', g, 's', md5(g::text), 'r', random(), \
                        'n', jsonb_build_array(g, 'ü', NULL, jsonb_build_object('deep', g % 7 = 0)))",
        },
    ]
}

/// The fields of a binary COPY stream, row by row (`None`: NULL). Panics on anything malformed: the server wrote it.
fn binary_rows(data: &[u8]) -> Vec<Vec<Option<Vec<u8>>>> {
    let mut at = 0;
    let mut take = |n: usize| -> &[u8] {
        let bytes = data.get(at..at + n).unwrap_or_else(|| panic!("binary COPY truncated at byte {at}"));
        at += n;
        bytes
    };
    assert_eq!(take(11), b"PGCOPY\n\xff\r\n\0", "binary COPY signature");
    let _flags = i32::from_be_bytes(take(4).try_into().expect("4 bytes"));
    let extension = i32::from_be_bytes(take(4).try_into().expect("4 bytes"));
    take(usize::try_from(extension).expect("extension length"));
    let mut rows = Vec::new();
    loop {
        let count = i16::from_be_bytes(take(2).try_into().expect("2 bytes"));
        if count == -1 {
            break;
        }
        let row = (0..count)
            .map(|_| {
                let len = i32::from_be_bytes(take(4).try_into().expect("4 bytes"));
                (len >= 0).then(|| take(usize::try_from(len).expect("length")).to_vec())
            })
            .collect();
        rows.push(row);
    }
    assert_eq!(at, data.len(), "nothing after the binary COPY trailer");
    rows
}

async fn copy_out(client: &tokio_postgres::Client, sql: &str) -> Vec<u8> {
    let stream = client.copy_out(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    futures::pin_mut!(stream);
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.expect("COPY data"));
    }
    data
}

/// The session settings of one text read.
struct Settings {
    label: &'static str,
    sql: &'static str,
}

const SETTINGS: &[Settings] = &[
    Settings {
        label: "stream settings (UTC, extra_float_digits 1)",
        sql: "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET IntervalStyle = postgres; SET bytea_output = hex; \
              SET extra_float_digits = 1; SET client_encoding = UTF8",
    },
    Settings {
        label: "America/St_Johns, extra_float_digits 3",
        sql: "SET DateStyle = ISO; SET TimeZone = 'America/St_Johns'; SET IntervalStyle = postgres; \
              SET bytea_output = hex; SET extra_float_digits = 3; SET client_encoding = UTF8",
    },
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(48).map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_of_every_binary_type_decode_to_what_their_text_parses_to() {
    let db = database("binary_values");
    let client = connect(&db).await;
    client.batch_execute(SETTINGS[0].sql).await.expect("settings");
    client.query_one("SELECT setseed(0.42)", &[]).await.expect("seed");
    let columns = columns();
    for column in &columns {
        let table = format!("v_{}", column.name);
        let mut sql = format!("CREATE TABLE {table} (id serial PRIMARY KEY, v {}); ", column.sql_type);
        let values = column.edges.iter().map(|e| format!("({e})")).collect::<Vec<_>>().join(", ");
        sql.push_str(&format!("INSERT INTO {table} (v) VALUES {values}, (NULL); "));
        sql.push_str(&format!(
            "INSERT INTO {table} (v) SELECT {} FROM generate_series(1, {GENERATED}) g;",
            column.generated
        ));
        client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{}: {e:?}", column.name));
    }

    let mut types = Vec::new();
    for column in &columns {
        let row = client
            .query_one(
                "SELECT atttypid, atttypmod FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = 'v'",
                &[&format!("v_{}", column.name)],
            )
            .await
            .expect("column type");
        let pg_type = PgType::from_builtin(row.get(0), row.get(1)).expect("a built-in type");
        assert!(has_binary(&pg_type), "{pg_type} is decoded from binary");
        types.push(pg_type);
    }

    // One wide COPY, as the snapshot reads a table: column `c` of row `i` is the `i`-th value of `v_c` (NULL
    // past its end).
    let rows = columns.iter().map(|c| c.edges.len()).max().unwrap_or(0) + 1 + GENERATED as usize;
    let select = format!(
        "SELECT {} FROM generate_series(1, {rows}) i ORDER BY i",
        columns
            .iter()
            .map(|c| format!("(SELECT v FROM v_{0} WHERE id = i) AS \"{0}\"", c.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let binary = binary_rows(&copy_out(&client, &format!("COPY ({select}) TO STDOUT (FORMAT binary)")).await);
    assert_eq!(binary.len(), rows, "binary rows");
    let decoded: Vec<Vec<Option<Result<Value, _>>>> = binary
        .iter()
        .map(|row| {
            assert_eq!(row.len(), columns.len(), "one field per column");
            row.iter()
                .zip(&types)
                .map(|(field, pg_type)| field.as_deref().map(|field| parse_binary(pg_type, field)))
                .collect()
        })
        .collect();

    let mut mismatches = Vec::new();
    let mut compared = vec![0usize; columns.len()];
    let mut both_errors = vec![0usize; columns.len()];
    for settings in SETTINGS {
        client.batch_execute(settings.sql).await.expect("settings");
        let text = copy_out(&client, &format!("COPY ({select}) TO STDOUT")).await;
        let lines: Vec<&[u8]> = text.strip_suffix(b"\n").unwrap_or(&text).split(|b| *b == b'\n').collect();
        assert_eq!(lines.len(), rows, "text rows");
        for (i, line) in lines.iter().enumerate() {
            let fields = parse_copy_line(line);
            assert_eq!(fields.len(), columns.len(), "text fields of row {i}");
            for (c, pg_type) in types.iter().enumerate() {
                let what = || {
                    let field = binary[i][c].as_deref().unwrap_or(&[]);
                    format!("{} [{}] row {i}, binary \\x{}", columns[c].name, settings.label, hex(field))
                };
                match (&decoded[i][c], &fields[c]) {
                    (None, ColumnData::Null) => {}
                    (Some(from_binary), ColumnData::Text(text)) => {
                        let text = std::str::from_utf8(text).expect("UTF-8 text");
                        let from_text = parse_text(pg_type, text);
                        match (from_binary, &from_text) {
                            (Ok(a), Ok(b)) if a == b => compared[c] += 1,
                            // Timestamps after 294,247 AD: Postgres holds them, 64-bit µs since 1970 do not.
                            (Err(_), Err(_))
                                if matches!(pg_type, PgType::Timestamp | PgType::TimestampTz)
                                    && text.starts_with("29") =>
                            {
                                both_errors[c] += 1;
                            }
                            _ => mismatches.push(format!(
                                "{}: text {text:?}: binary {from_binary:?}, text {from_text:?}",
                                what()
                            )),
                        }
                    }
                    (binary, text) => mismatches.push(format!("{}: NULL differs: {binary:?} vs {text:?}", what())),
                }
            }
        }
    }
    for (c, column) in columns.iter().enumerate() {
        eprintln!("{:>14}: {} values equal, {} errors both ways", column.name, compared[c], both_errors[c]);
        // Edges and generated values, NULLs aside (random text is NULL for 1 row in 41), in both text reads.
        if compared[c] < 2 * (column.edges.len() + GENERATED as usize * 9 / 10) {
            mismatches.push(format!("{}: only {} values compared", column.name, compared[c]));
        }
        // The two edges past 64-bit µs since 1970, in both text reads.
        let expected_errors = if matches!(types[c], PgType::Timestamp | PgType::TimestampTz) { 4 } else { 0 };
        if both_errors[c] != expected_errors {
            mismatches.push(format!("{}: {} errors both ways, expected {expected_errors}", column.name, both_errors[c]));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} values differ between binary and text:\n{}",
        mismatches.len(),
        mismatches.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// One line of COPY's text format: tab-separated values, `\N` for NULL, backslash escapes.
fn parse_copy_line(line: &[u8]) -> Vec<ColumnData> {
    line.split(|b| *b == b'\t')
        .map(|field| {
            if field == b"\\N" {
                ColumnData::Null
            } else {
                ColumnData::Text(unescape(field).into())
            }
        })
        .collect()
}

/// Undoes COPY's escapes (`\\`, `\n`, `\t`, `\r`, `\b`, `\f`, `\v`, `\ooo`, `\xhh`).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] != b'\\' || i + 1 == field.len() {
            out.push(field[i]);
            i += 1;
            continue;
        }
        let next = field[i + 1];
        i += 2;
        match next {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(value as u8);
            }
            b'x' => {
                let mut value = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push(b'x');
                } else {
                    out.push(value as u8);
                }
            }
            other => out.push(other),
        }
    }
    out
}
