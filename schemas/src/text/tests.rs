//! Tests of the text parsers: edge values one by one, then a property test that formats random values the way
//! Postgres prints them (a small formatter written here, following `date.c`/`timestamp.c`/`arrayfuncs.c`) and
//! parses them back.

use proptest::prelude::*;

use super::parse_text;
use crate::civil::{civil_from_days, days_from_civil};
use crate::pg_type::PgType;
use crate::value::{
    current_date_sentinel, current_timestamp_sentinel, Interval, Value, DATE_NEG_INFINITY,
    DATE_POS_INFINITY, TIMESTAMP_NEG_INFINITY, TIMESTAMP_POS_INFINITY,
};

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;

fn parse(pg_type: &PgType, text: &str) -> Value {
    parse_text(pg_type, text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
}

fn utc(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64, micros: i64) -> i64 {
    days_from_civil(y, mo, d) * DAY + h * HOUR + mi * 60_000_000 + s * 1_000_000 + micros
}

#[test]
fn booleans_parse_from_t_and_f() {
    assert_eq!(parse(&PgType::Bool, "t"), Value::Bool(true));
    assert_eq!(parse(&PgType::Bool, "f"), Value::Bool(false));
    assert!(parse_text(&PgType::Bool, "yes").is_err());
}

#[test]
fn integers_parse_at_their_limits_and_overflow_is_an_error() {
    assert_eq!(parse(&PgType::Int2, "-32768"), Value::Int16(i16::MIN));
    assert_eq!(parse(&PgType::Int4, "2147483647"), Value::Int32(i32::MAX));
    assert_eq!(
        parse(&PgType::Int8, "-9223372036854775808"),
        Value::Int64(i64::MIN)
    );
    let err = parse_text(&PgType::Int2, "32768").expect_err("overflows");
    assert!(err.to_string().contains("smallint"), "{err}");
}

#[test]
fn floats_keep_nan_and_infinities() {
    assert!(matches!(parse(&PgType::Float8, "NaN"), Value::Float64(v) if v.is_nan()));
    assert_eq!(
        parse(&PgType::Float8, "Infinity"),
        Value::Float64(f64::INFINITY)
    );
    assert_eq!(
        parse(&PgType::Float4, "-Infinity"),
        Value::Float32(f32::NEG_INFINITY)
    );
    assert_eq!(parse(&PgType::Float8, "1e+300"), Value::Float64(1e300));
    assert_eq!(
        parse(&PgType::Float4, "1.17549435e-38"),
        Value::Float32(f32::MIN_POSITIVE)
    );
    assert_eq!(parse(&PgType::Float8, "-0"), Value::Float64(-0.0));
    assert!(parse_text(&PgType::Float8, "inf").is_err());
    assert!(
        parse_text(&PgType::Float4, "1e+39").is_err(),
        "out of range, not infinity"
    );
}

#[test]
fn numerics_are_kept_exactly_including_nan_and_infinity() {
    let num = PgType::Numeric {
        precision: 38,
        scale: 3,
    };
    for text in [
        "0",
        "-0.000001",
        "99999999999999999999999999999999999.999",
        "NaN",
        "Infinity",
        "-Infinity",
        "1.50",
    ] {
        assert_eq!(parse(&num, text), Value::Numeric(text.into()));
        assert_eq!(
            parse(&PgType::NumericUnconstrained, text),
            Value::Numeric(text.into())
        );
    }
    let long = format!("{}.{}", "9".repeat(1000), "1".repeat(500));
    assert_eq!(
        parse(&PgType::NumericUnconstrained, &long),
        Value::Numeric(long.clone())
    );
    for bad in ["", "-", "1.", ".5", "1e5", "+1", "nan", "1,5"] {
        assert!(parse_text(&num, bad).is_err(), "{bad:?}");
    }
}

#[test]
fn string_like_types_are_carried_verbatim() {
    let types = [
        PgType::Text,
        PgType::Varchar(Some(3)),
        PgType::Char(Some(5)),
        PgType::Name,
        PgType::Json,
        PgType::Jsonb,
        PgType::Inet,
        PgType::Cidr,
        PgType::MacAddr,
        PgType::MacAddr8,
        PgType::Enum {
            name: "mood".into(),
        },
        PgType::Unmapped {
            type_name: "point".into(),
        },
    ];
    for (pg_type, text) in types.iter().zip([
        "héllo",
        "abc",
        "ab   ",
        "pg_class",
        "{\"a\": [1, 2]}",
        "{\"a\": 1}",
        "192.168.0.1/24",
        "10.0.0.0/8",
        "08:00:2b:01:02:03",
        "08:00:2b:01:02:03:04:05",
        "happy",
        "(1,2)",
    ]) {
        assert_eq!(parse(pg_type, text), Value::Text(text.into()));
    }
}

#[test]
fn bytea_parses_from_hex_and_escape_output() {
    assert_eq!(parse(&PgType::Bytea, "\\x"), Value::Bytes(vec![]));
    assert_eq!(
        parse(&PgType::Bytea, "\\x00ff7Fa0"),
        Value::Bytes(vec![0, 255, 127, 160])
    );
    assert_eq!(
        parse(&PgType::Bytea, "a\\000\\\\b\\377"),
        Value::Bytes(vec![b'a', 0, b'\\', b'b', 255])
    );
    for bad in ["\\x0", "\\xzz", "a\\9"] {
        assert!(parse_text(&PgType::Bytea, bad).is_err(), "{bad:?}");
    }
}

#[test]
fn uuids_parse_to_their_sixteen_bytes() {
    let expected = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];
    assert_eq!(
        parse(&PgType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        Value::Uuid(expected)
    );
    assert!(parse_text(&PgType::Uuid, "a0eebc999c0b4ef8bb6d6bb9bd380a11").is_err());
    assert!(parse_text(&PgType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g").is_err());
}

#[test]
fn dates_parse_with_bc_years_and_infinities() {
    assert_eq!(parse(&PgType::Date, "1970-01-01"), Value::Date(0));
    assert_eq!(parse(&PgType::Date, "2024-02-29"), Value::Date(19_782));
    assert_eq!(parse(&PgType::Date, "0001-01-01"), Value::Date(-719_162));
    assert_eq!(parse(&PgType::Date, "0001-12-31 BC"), Value::Date(-719_163));
    assert_eq!(
        parse(&PgType::Date, "4714-11-24 BC"),
        Value::Date(-2_440_588)
    );
    assert_eq!(
        parse(&PgType::Date, "5874897-12-31"),
        Value::Date(days_from_civil(5_874_897, 12, 31) as i32)
    );
    assert_eq!(
        parse(&PgType::Date, "infinity"),
        Value::Date(DATE_POS_INFINITY)
    );
    assert_eq!(
        parse(&PgType::Date, "-infinity"),
        Value::Date(DATE_NEG_INFINITY)
    );
    for bad in [
        "2023-02-29",
        "2024-13-01",
        "0000-01-01",
        "2024-1-1x",
        "20240101",
    ] {
        assert!(parse_text(&PgType::Date, bad).is_err(), "{bad:?}");
    }
}

#[test]
fn infinities_are_the_first_and_last_instants_every_reader_can_hold() {
    assert_eq!(
        i64::from(DATE_POS_INFINITY),
        days_from_civil(9999, 12, 31),
        "infinity is 9999-12-31"
    );
    assert_eq!(
        i64::from(DATE_NEG_INFINITY),
        days_from_civil(1, 1, 1),
        "-infinity is 0001-01-01"
    );
    assert_eq!(
        TIMESTAMP_POS_INFINITY,
        utc(9999, 12, 31, 23, 59, 59, 999_999),
        "infinity is 9999-12-31 23:59:59.999999"
    );
    assert_eq!(
        TIMESTAMP_NEG_INFINITY,
        utc(1, 1, 1, 0, 0, 0, 0),
        "-infinity is 0001-01-01 00:00:00"
    );
    // The price of readable sentinels: the real values at the ends read as infinity.
    assert_eq!(
        parse(&PgType::Date, "9999-12-31"),
        parse(&PgType::Date, "infinity")
    );
    assert_eq!(
        parse(&PgType::Timestamp, "0001-01-01 00:00:00"),
        parse(&PgType::Timestamp, "-infinity")
    );
    assert_eq!(
        parse(&PgType::TimestampTz, "9999-12-31 23:59:59.999999+00"),
        parse(&PgType::TimestampTz, "infinity")
    );
    // Values past them are kept exactly (Postgres allows dates to 5874897 AD).
    assert_eq!(
        parse(&PgType::Date, "10000-01-01"),
        Value::Date(days_from_civil(10_000, 1, 1) as i32)
    );
}

#[test]
fn sentinels_of_older_builds_left_in_the_buffer_become_todays() {
    assert_eq!(current_date_sentinel(i32::MAX), DATE_POS_INFINITY);
    assert_eq!(current_date_sentinel(i32::MIN), DATE_NEG_INFINITY);
    assert_eq!(current_timestamp_sentinel(i64::MAX), TIMESTAMP_POS_INFINITY);
    assert_eq!(current_timestamp_sentinel(i64::MIN), TIMESTAMP_NEG_INFINITY);
    for days in [0, -1, 2_932_897, i32::MAX - 1, i32::MIN + 1] {
        assert_eq!(current_date_sentinel(days), days);
    }
    for micros in [0, -1, 253_402_300_800_000_000, i64::MAX - 1] {
        assert_eq!(current_timestamp_sentinel(micros), micros);
    }
}

#[test]
fn times_parse_up_to_the_end_of_the_day() {
    assert_eq!(parse(&PgType::Time, "00:00:00"), Value::Time(0));
    assert_eq!(
        parse(&PgType::Time, "04:05:06.789"),
        Value::Time(4 * HOUR + 5 * 60_000_000 + 6_789_000)
    );
    assert_eq!(
        parse(&PgType::Time, "23:59:59.999999"),
        Value::Time(DAY - 1)
    );
    assert_eq!(parse(&PgType::Time, "24:00:00"), Value::Time(DAY));
    for bad in [
        "24:00:01",
        "12:60:00",
        "1:02:03",
        "12:00:00.",
        "12:00:00.1234567",
    ] {
        assert!(parse_text(&PgType::Time, bad).is_err(), "{bad:?}");
    }
}

#[test]
fn timestamps_parse_before_1970_in_bc_and_at_infinity() {
    let ts = PgType::Timestamp;
    assert_eq!(parse(&ts, "1970-01-01 00:00:00"), Value::Timestamp(0));
    assert_eq!(
        parse(&ts, "1969-12-31 23:59:59.999999"),
        Value::Timestamp(-1)
    );
    assert_eq!(
        parse(&ts, "0001-01-01 00:00:00"),
        Value::Timestamp(-62_135_596_800_000_000)
    );
    assert_eq!(
        parse(&ts, "0044-03-15 12:00:00 BC"),
        Value::Timestamp(utc(-43, 3, 15, 12, 0, 0, 0))
    );
    assert_eq!(
        parse(&ts, "infinity"),
        Value::Timestamp(TIMESTAMP_POS_INFINITY)
    );
    assert_eq!(
        parse(&ts, "-infinity"),
        Value::Timestamp(TIMESTAMP_NEG_INFINITY)
    );
    assert_eq!(
        parse(&ts, "294247-01-10 04:00:54.775807"),
        Value::Timestamp(i64::MAX),
        "the last instant 64 bits hold is a finite value, not infinity"
    );
    assert!(
        parse_text(&ts, "294276-12-31 23:59:59").is_err(),
        "beyond 64-bit microseconds since 1970"
    );
    assert!(parse_text(&ts, "2024-01-01 24:00:00").is_err());
}

#[test]
fn timestamptz_in_any_session_offset_becomes_utc() {
    let tz = PgType::TimestampTz;
    assert_eq!(
        parse(&tz, "1969-12-31 23:59:59.999999+00"),
        Value::TimestampTz(-1)
    );
    // US Pacific, the second before the spring-forward gap and the first after it
    assert_eq!(
        parse(&tz, "2024-03-10 01:59:59.123456-08"),
        Value::TimestampTz(utc(2024, 3, 10, 9, 59, 59, 123_456))
    );
    assert_eq!(
        parse(&tz, "2024-03-10 03:00:00-07"),
        Value::TimestampTz(utc(2024, 3, 10, 10, 0, 0, 0))
    );
    // Europe/Berlin fall-back: the same wall clock twice, an hour apart
    let first = parse(&tz, "2024-10-27 02:30:00+02");
    let second = parse(&tz, "2024-10-27 02:30:00+01");
    assert_eq!(first, Value::TimestampTz(utc(2024, 10, 27, 0, 30, 0, 0)));
    assert_eq!(second, Value::TimestampTz(utc(2024, 10, 27, 1, 30, 0, 0)));
    assert_eq!(
        parse(&tz, "2024-03-10 12:00:00+05:30"),
        Value::TimestampTz(utc(2024, 3, 10, 6, 30, 0, 0))
    );
    assert_eq!(
        parse(&tz, "2024-03-10 12:00:00-09:30"),
        Value::TimestampTz(utc(2024, 3, 10, 21, 30, 0, 0))
    );
    // local mean time offsets before standard time zones print seconds
    assert_eq!(
        parse(&tz, "1900-01-01 00:00:00+05:53:28"),
        Value::TimestampTz(utc(1899, 12, 31, 18, 6, 32, 0))
    );
    assert_eq!(
        parse(&tz, "0044-03-15 12:00:00+00 BC"),
        Value::TimestampTz(utc(-43, 3, 15, 12, 0, 0, 0))
    );
    assert_eq!(
        parse(&tz, "infinity"),
        Value::TimestampTz(TIMESTAMP_POS_INFINITY)
    );
    assert_eq!(
        parse(&tz, "-infinity"),
        Value::TimestampTz(TIMESTAMP_NEG_INFINITY)
    );
    for bad in [
        "2024-03-10 12:00:00",
        "2024-03-10 12:00:00+5",
        "2024-03-10 12:00:00+05:60",
        "2024-03-10T12:00:00+00",
    ] {
        assert!(parse_text(&tz, bad).is_err(), "{bad:?}");
    }
}

#[test]
fn intervals_parse_in_the_postgres_style_with_negative_parts() {
    let iv = |months, days, micros| {
        Value::Interval(Interval {
            months,
            days,
            micros,
        })
    };
    let p = |text| parse(&PgType::Interval, text);
    assert_eq!(
        p("1 year 2 mons 3 days 04:05:06.789"),
        iv(14, 3, 4 * HOUR + 5 * 60_000_000 + 6_789_000)
    );
    assert_eq!(p("00:00:00"), iv(0, 0, 0));
    assert_eq!(p("-00:00:01"), iv(0, 0, -1_000_000));
    assert_eq!(
        p("-1 years -2 mons +3 days -04:05:06"),
        iv(-14, 3, -(4 * HOUR + 5 * 60_000_000 + 6_000_000))
    );
    assert_eq!(p("1 day"), iv(0, 1, 0));
    assert_eq!(p("-3 days +01:00:00"), iv(0, -3, HOUR));
    assert_eq!(p("2562047788:00:54.775807"), iv(0, 0, i64::MAX));
    assert_eq!(p("-2562047788:00:54.775808"), iv(0, 0, i64::MIN));
    assert_eq!(p("infinity"), Value::Interval(Interval::POS_INFINITY));
    for bad in [
        "",
        "1 fortnight",
        "1",
        "01:00:00 1 day",
        "2562047788:00:54.775808",
        "178956971 years",
    ] {
        assert!(parse_text(&PgType::Interval, bad).is_err(), "{bad:?}");
    }
}

#[test]
fn arrays_parse_with_quoting_escapes_and_null_elements() {
    let text_array = PgType::Array(Box::new(PgType::Text));
    let t = |s: &str| Value::Text(s.into());
    assert_eq!(
        parse(
            &text_array,
            r#"{1,2,NULL,"a \"q\" b","",null,"NULL","x\\y","{}"}"#
        ),
        Value::Array(vec![
            t("1"),
            t("2"),
            Value::Null,
            t("a \"q\" b"),
            t(""),
            Value::Null,
            t("NULL"),
            t("x\\y"),
            t("{}")
        ])
    );
    assert_eq!(parse(&text_array, "{}"), Value::Array(vec![]));
    let int_array = PgType::Array(Box::new(PgType::Int4));
    assert_eq!(
        parse(&int_array, "{1,NULL,-3}"),
        Value::Array(vec![Value::Int32(1), Value::Null, Value::Int32(-3)])
    );
    let tz_array = PgType::Array(Box::new(PgType::TimestampTz));
    assert_eq!(
        parse(&tz_array, r#"{"1970-01-01 01:00:00+01",infinity}"#),
        Value::Array(vec![
            Value::TimestampTz(0),
            Value::TimestampTz(TIMESTAMP_POS_INFINITY)
        ])
    );
    let bytea_array = PgType::Array(Box::new(PgType::Bytea));
    assert_eq!(
        parse(&bytea_array, r#"{"\\x01ff"}"#),
        Value::Array(vec![Value::Bytes(vec![1, 255])])
    );
}

#[test]
fn malformed_and_multidimensional_arrays_are_errors_with_a_reason() {
    let int_array = PgType::Array(Box::new(PgType::Int4));
    for (bad, reason) in [
        ("{{1,2},{3,4}}", "multi-dimensional"),
        ("[0:1]={1,2}", "explicit bounds"),
        ("{1,2", "expected {"),
        ("{1,,2}", "empty"),
        ("{\"1}", "unterminated"),
        ("{1,x}", "integer"),
    ] {
        let err = parse_text(&int_array, bad).expect_err(bad);
        assert!(err.to_string().contains(reason), "{bad:?}: {err}");
    }
}

#[test]
fn a_parse_error_quotes_the_value_and_names_the_type() {
    let err = parse_text(&PgType::Date, "not a date").expect_err("bad");
    assert_eq!(err.type_name, "date");
    assert!(err.to_string().contains("\"not a date\""), "{err}");
    let long = "x".repeat(1000);
    assert!(
        parse_text(&PgType::Int4, &long)
            .expect_err("bad")
            .input
            .chars()
            .count()
            <= 81
    );
}

// ---- a formatter that prints values the way Postgres does, for the round-trip property ----

fn fmt_ymd(days: i64) -> (String, bool) {
    let (year, month, day) = civil_from_days(days);
    let bc = year <= 0;
    (
        format!(
            "{:04}-{month:02}-{day:02}",
            if bc { 1 - year } else { year }
        ),
        bc,
    )
}

fn fmt_clock(micros: i128) -> String {
    let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
    let mut out = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac != 0 {
        out.push_str(format!(".{frac:06}").trim_end_matches('0'));
    }
    out
}

fn fmt_date(days: i32) -> String {
    match days {
        DATE_POS_INFINITY => "infinity".into(),
        DATE_NEG_INFINITY => "-infinity".into(),
        _ => {
            let (date, bc) = fmt_ymd(days.into());
            if bc {
                format!("{date} BC")
            } else {
                date
            }
        }
    }
}

fn fmt_timestamp(micros: i64, offset_secs: Option<i64>) -> String {
    match micros {
        TIMESTAMP_POS_INFINITY => return "infinity".into(),
        TIMESTAMP_NEG_INFINITY => return "-infinity".into(),
        _ => {}
    }
    let local = micros + offset_secs.unwrap_or(0) * 1_000_000;
    let (date, bc) = fmt_ymd(local.div_euclid(DAY));
    let mut out = format!("{date} {}", fmt_clock(local.rem_euclid(DAY).into()));
    if let Some(offset) = offset_secs {
        let abs = offset.abs();
        out.push(if offset >= 0 { '+' } else { '-' });
        out.push_str(&format!("{:02}", abs / 3600));
        if abs % 3600 != 0 {
            out.push_str(&format!(":{:02}", abs / 60 % 60));
        }
        if abs % 60 != 0 {
            out.push_str(&format!(":{:02}", abs % 60));
        }
    }
    if bc {
        out.push_str(" BC");
    }
    out
}

fn fmt_interval(iv: Interval) -> String {
    if iv == Interval::POS_INFINITY {
        return "infinity".into();
    }
    let mut out = String::new();
    let mut is_before = false;
    for (value, unit) in [
        (iv.months / 12, "year"),
        (iv.months % 12, "mon"),
        (iv.days, "day"),
    ] {
        if value != 0 {
            let sep = if out.is_empty() { "" } else { " " };
            let plus = if is_before && value > 0 { "+" } else { "" };
            let plural = if value != 1 { "s" } else { "" };
            out.push_str(&format!("{sep}{plus}{value} {unit}{plural}"));
            is_before = value < 0;
        }
    }
    if out.is_empty() || iv.micros != 0 {
        let sign = if iv.micros < 0 {
            "-"
        } else if is_before {
            "+"
        } else {
            ""
        };
        let sep = if out.is_empty() { "" } else { " " };
        out.push_str(&format!(
            "{sep}{sign}{}",
            fmt_clock(i128::from(iv.micros).abs())
        ));
    }
    out
}

fn fmt_float(text: String) -> String {
    // Postgres (shortest-exact output) switches to exponent form outside 1e-4 ≤ |x| < 1e15 (1e6 for real)
    match text.split_once('e') {
        Some((mantissa, exp)) => {
            let exp: i32 = exp.parse().expect("exponent");
            format!(
                "{mantissa}e{}{:02}",
                if exp < 0 { '-' } else { '+' },
                exp.abs()
            )
        }
        None => text,
    }
}

fn fmt_numeric(unscaled: i128, scale: u32) -> String {
    let digits = format!(
        "{:0>width$}",
        unscaled.unsigned_abs(),
        width = scale as usize + 1
    );
    let (int, frac) = digits.split_at(digits.len() - scale as usize);
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

fn fmt_array_element(text: &str) -> String {
    let needs_quotes = text.is_empty()
        || text.eq_ignore_ascii_case("NULL")
        || text.chars().any(|c| {
            matches!(
                c,
                '{' | '}' | ',' | '"' | '\\' | ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'
            )
        });
    if !needs_quotes {
        return text.into();
    }
    let escaped: String = text
        .chars()
        .flat_map(|c| {
            matches!(c, '"' | '\\')
                .then_some('\\')
                .into_iter()
                .chain([c])
        })
        .collect();
    format!("\"{escaped}\"")
}

/// Prints `value` of type `pg_type` as Postgres' output function would; `offset` is the session's UTC offset.
fn format_pg(pg_type: &PgType, value: &Value, offset: i64) -> String {
    match (pg_type, value) {
        (_, Value::Bool(v)) => if *v { "t" } else { "f" }.into(),
        (_, Value::Int16(v)) => v.to_string(),
        (_, Value::Int32(v)) => v.to_string(),
        (_, Value::Int64(v)) => v.to_string(),
        (_, Value::Float32(v)) if v.is_nan() => "NaN".into(),
        (_, Value::Float64(v)) if v.is_nan() => "NaN".into(),
        (_, Value::Float32(v)) if v.is_infinite() => {
            if *v > 0.0 { "Infinity" } else { "-Infinity" }.into()
        }
        (_, Value::Float64(v)) if v.is_infinite() => {
            if *v > 0.0 { "Infinity" } else { "-Infinity" }.into()
        }
        (_, Value::Float32(v)) if *v == 0.0 || (1e-4..1e6).contains(&v.abs()) => v.to_string(),
        (_, Value::Float64(v)) if *v == 0.0 || (1e-4..1e15).contains(&v.abs()) => v.to_string(),
        (_, Value::Float32(v)) => fmt_float(format!("{v:e}")),
        (_, Value::Float64(v)) => fmt_float(format!("{v:e}")),
        (_, Value::Numeric(v) | Value::Text(v)) => v.clone(),
        (_, Value::Bytes(v)) => format!(
            "\\x{}",
            v.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        (_, Value::Date(v)) => fmt_date(*v),
        (_, Value::Time(v)) => fmt_clock((*v).into()),
        (_, Value::Timestamp(v)) => fmt_timestamp(*v, None),
        (_, Value::TimestampTz(v)) => fmt_timestamp(*v, Some(offset)),
        (_, Value::Interval(v)) => fmt_interval(*v),
        (_, Value::Uuid(b)) => {
            let hex: String = b.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        }
        (PgType::Array(element), Value::Array(items)) => {
            let items: Vec<String> = items
                .iter()
                .map(|item| match item {
                    Value::Null => "NULL".into(),
                    item => fmt_array_element(&format_pg(element, item, offset)),
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
        (pg_type, value) => panic!("no formatter for {value:?} of {pg_type}"),
    }
}

// ---- strategies ----

/// Postgres' date range: 4714-11-24 BC to 5874897-12-31.
fn finite_days() -> impl Strategy<Value = i32> {
    (days_from_civil(-4713, 11, 24) as i32)..=(days_from_civil(5_874_897, 12, 31) as i32)
}

/// 4714-11-24 BC to a day before the 64-bit limit (with room for a UTC offset).
fn finite_micros() -> impl Strategy<Value = i64> {
    prop_oneof![
        (days_from_civil(-4713, 11, 24) * DAY)..(i64::MAX - DAY),
        // dense around 1970 and DST-era dates, where sign and offset mistakes show
        -3_000_000_000_000_000i64..3_000_000_000_000_000i64,
    ]
}

fn numeric_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (-(10i128.pow(38) - 1)..10i128.pow(38), 0u32..=20)
            .prop_map(|(unscaled, scale)| fmt_numeric(unscaled, scale)),
        "-?[1-9][0-9]{0,60}(\\.[0-9]{1,40})?",
        Just("NaN".to_owned()),
        Just("Infinity".to_owned()),
        Just("-Infinity".to_owned()),
    ]
}

/// The scalar types the property covers.
fn scalar_types() -> Vec<PgType> {
    vec![
        PgType::Bool,
        PgType::Int2,
        PgType::Int4,
        PgType::Int8,
        PgType::Float4,
        PgType::Float8,
        PgType::NumericUnconstrained,
        PgType::Text,
        PgType::Char(Some(10)),
        PgType::Bytea,
        PgType::Date,
        PgType::Time,
        PgType::Timestamp,
        PgType::TimestampTz,
        PgType::Interval,
        PgType::Uuid,
    ]
}

/// Random values of one scalar type, edge values included.
fn value_of(pg_type: &PgType) -> BoxedStrategy<Value> {
    match pg_type {
        PgType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        PgType::Int2 => any::<i16>().prop_map(Value::Int16).boxed(),
        PgType::Int4 => any::<i32>().prop_map(Value::Int32).boxed(),
        PgType::Int8 => any::<i64>().prop_map(Value::Int64).boxed(),
        // Postgres prints every NaN as `NaN`, which parses to the canonical NaN
        PgType::Float4 => any::<f32>().prop_map(|v| Value::Float32(if v.is_nan() { f32::NAN } else { v })).boxed(),
        PgType::Float8 => any::<f64>().prop_map(|v| Value::Float64(if v.is_nan() { f64::NAN } else { v })).boxed(),
        PgType::NumericUnconstrained => numeric_text().prop_map(Value::Numeric).boxed(),
        PgType::Text => prop_oneof!["\\PC*", "[a-zA-Z \"\\\\{},]{0,8}|NULL|null"].prop_map(Value::Text).boxed(),
        PgType::Char(_) => "[ -~]{0,10}".prop_map(|v| Value::Text(format!("{v:<10}"))).boxed(),
        PgType::Bytea => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Bytes).boxed(),
        PgType::Date => {
            prop_oneof![8 => finite_days(), 1 => Just(DATE_POS_INFINITY), 1 => Just(DATE_NEG_INFINITY)].prop_map(Value::Date).boxed()
        }
        PgType::Time => prop_oneof![0..=DAY, Just(DAY)].prop_map(Value::Time).boxed(),
        PgType::Timestamp | PgType::TimestampTz => {
            let micros = prop_oneof![8 => finite_micros(), 1 => Just(TIMESTAMP_POS_INFINITY), 1 => Just(TIMESTAMP_NEG_INFINITY)];
            if *pg_type == PgType::Timestamp {
                micros.prop_map(Value::Timestamp).boxed()
            } else {
                micros.prop_map(Value::TimestampTz).boxed()
            }
        }
        PgType::Interval => {
            let small = (-30i32..30, -40i32..40, -3 * DAY..3 * DAY);
            prop_oneof![(any::<i32>(), any::<i32>(), any::<i64>()), small]
                .prop_map(|(months, days, micros)| Value::Interval(Interval { months, days, micros }))
                .boxed()
        }
        PgType::Uuid => any::<[u8; 16]>().prop_map(Value::Uuid).boxed(),
        other => panic!("no strategy for {other}"),
    }
}

fn case() -> impl Strategy<Value = (PgType, Value)> {
    let scalar = proptest::sample::select(scalar_types()).prop_flat_map(|pg_type| {
        value_of(&pg_type).prop_map(move |value| (pg_type.clone(), value))
    });
    let array = proptest::sample::select(scalar_types()).prop_flat_map(|element| {
        let items =
            proptest::collection::vec(proptest::option::weighted(0.8, value_of(&element)), 0..6);
        items.prop_map(move |items| {
            let items = items
                .into_iter()
                .map(|item| item.unwrap_or(Value::Null))
                .collect();
            (
                PgType::Array(Box::new(element.clone())),
                Value::Array(items),
            )
        })
    });
    prop_oneof![3 => scalar, 1 => array]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn values_printed_as_postgres_prints_them_parse_back_equal(
        (pg_type, value) in case(),
        offset in prop_oneof![Just(0i64), -15 * 3600i64..=15 * 3600, Just(19_800), Just(-28_800), Just(21_208)],
    ) {
        let text = format_pg(&pg_type, &value, offset);
        let parsed = parse_text(&pg_type, &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed, value, "text {:?}", text);
    }

    #[test]
    fn values_survive_the_messagepack_buffer_encoding((_, value) in case()) {
        let bytes = rmp_serde::to_vec(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let decoded: Value = rmp_serde::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded, value);
    }
}
