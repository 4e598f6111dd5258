//! Tests of the binary decoder with hand-built fields: each edge value is checked against what `parse_text` makes
//! of the text Postgres prints for it; malformed fields are errors, never panics. (The proof against a real
//! server is the root crate's `binary_values` integration test.)

use proptest::prelude::*;

use super::{has_binary, parse_binary};
use crate::pg_type::PgType;
use crate::text::parse_text;
use crate::value::{
    Interval, Value, DATE_NEG_INFINITY, DATE_POS_INFINITY, TIMESTAMP_NEG_INFINITY,
    TIMESTAMP_POS_INFINITY,
};

const NUMERIC: PgType = PgType::NumericUnconstrained;

/// `numeric_send`'s bytes: ndigits, weight, sign, dscale, digits.
fn numeric(weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

/// Decodes `bytes` and checks it equals the text path's value of `text`.
fn same_as_text(pg_type: &PgType, bytes: &[u8], text: &str) {
    let binary =
        parse_binary(pg_type, bytes).unwrap_or_else(|e| panic!("{text:?} should decode: {e}"));
    let expected =
        parse_text(pg_type, text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"));
    assert_eq!(binary, expected, "{text}");
}

fn reason(pg_type: &PgType, bytes: &[u8]) -> String {
    parse_binary(pg_type, bytes)
        .expect_err("malformed field")
        .to_string()
}

#[test]
fn numerics_print_as_numeric_out_prints_them() {
    let cases: &[(i16, u16, u16, &[i16], &str)] = &[
        (0, 0x0000, 0, &[], "0"),
        (0, 0x0000, 2, &[], "0.00"),
        (0, 0x4000, 1, &[1, 5000], "-1.5"),
        (0, 0x0000, 2, &[1, 5000], "1.50"),
        (1, 0x0000, 0, &[1], "10000"),
        (2, 0x0000, 0, &[1], "100000000"),
        (-1, 0x0000, 4, &[1], "0.0001"),
        (-2, 0x0000, 8, &[1234], "0.00001234"),
        (-1, 0x4000, 6, &[1], "-0.000100"),
        (0, 0x0000, 0, &[7], "7"),
        (0, 0x0000, 0, &[9999], "9999"),
        (1, 0x0000, 0, &[12, 34], "120034"),
        (
            2,
            0x0000,
            9,
            &[1, 2345, 6789, 1234, 5678, 9000],
            "123456789.123456789",
        ),
        (0, 0xC000, 0, &[], "NaN"),
        (0, 0xD000, 0, &[], "Infinity"),
        (0, 0xF000, 0, &[], "-Infinity"),
    ];
    for (weight, sign, dscale, digits, text) in cases {
        let bytes = numeric(*weight, *sign, *dscale, digits);
        assert_eq!(
            parse_binary(&NUMERIC, &bytes),
            Ok(Value::Numeric((*text).to_owned()))
        );
        same_as_text(&NUMERIC, &bytes, text);
        same_as_text(
            &PgType::Numeric {
                precision: 30,
                scale: 9,
            },
            &bytes,
            text,
        );
    }
}

#[test]
fn a_numeric_zero_is_never_negative_and_digits_past_the_display_scale_are_cut() {
    assert_eq!(
        parse_binary(&NUMERIC, &numeric(0, 0x4000, 2, &[])),
        Ok(Value::Numeric("0.00".into()))
    );
    // -0.00001 shown with two decimals: Postgres' numeric_recv truncates it to 0.00, and stores no -0.
    assert_eq!(
        parse_binary(&NUMERIC, &numeric(-2, 0x4000, 2, &[1000])),
        Ok(Value::Numeric("0.00".into()))
    );
    assert_eq!(
        parse_binary(&NUMERIC, &numeric(0, 0x0000, 2, &[1, 2345])),
        Ok(Value::Numeric("1.23".into()))
    );
}

#[test]
fn a_numeric_of_forty_digits_and_a_large_scale_prints_every_digit() {
    let digits = [
        1234, 5678, 9012, 3456, 7890, 1234, 5678, 9012, 3456, 7890, 1,
    ];
    let bytes = numeric(9, 0x4000, 1000, &digits);
    let Ok(Value::Numeric(text)) = parse_binary(&NUMERIC, &bytes) else {
        panic!("decodes")
    };
    let expected = format!(
        "-1234567890123456789012345678901234567890.0001{}",
        "0".repeat(996)
    );
    assert_eq!(text, expected);
}

#[test]
fn a_malformed_numeric_is_an_error_saying_what_is_wrong() {
    assert!(reason(&NUMERIC, &[0, 0, 0]).contains("header"));
    let mut short = numeric(0, 0, 0, &[1, 2]);
    short.pop();
    assert!(reason(&NUMERIC, &short).contains("announces 2 digits"));
    assert!(reason(&NUMERIC, &numeric(0, 0x1234, 0, &[1])).contains("sign word 0x1234"));
    assert!(reason(&NUMERIC, &numeric(0, 0, 0, &[10_000])).contains("digit 10000"));
    assert!(reason(&NUMERIC, &numeric(0, 0, 0, &[-1])).contains("digit 65535"));
    assert!(reason(&NUMERIC, &numeric(0, 0, 0x4000, &[1])).contains("display scale"));
    let mut negative_count = numeric(0, 0, 0, &[]);
    negative_count[..2].copy_from_slice(&(-1i16).to_be_bytes());
    assert!(reason(&NUMERIC, &negative_count).contains("negative"));
}

#[test]
fn integers_and_booleans_decode_big_endian() {
    same_as_text(&PgType::Bool, &[1], "t");
    same_as_text(&PgType::Bool, &[0], "f");
    same_as_text(&PgType::Int2, &i16::MIN.to_be_bytes(), "-32768");
    same_as_text(&PgType::Int4, &i32::MAX.to_be_bytes(), "2147483647");
    same_as_text(&PgType::Int8, &(-1i64).to_be_bytes(), "-1");
    assert!(reason(&PgType::Bool, &[2]).contains("boolean byte 2"));
    assert!(reason(&PgType::Int4, &[0, 0, 1]).contains("exactly 4 bytes"));
}

#[test]
fn floats_keep_infinities_and_every_nan_is_the_text_paths_nan() {
    same_as_text(&PgType::Float8, &f64::INFINITY.to_be_bytes(), "Infinity");
    same_as_text(
        &PgType::Float4,
        &f32::NEG_INFINITY.to_be_bytes(),
        "-Infinity",
    );
    same_as_text(&PgType::Float8, &(-0.0f64).to_be_bytes(), "-0");
    same_as_text(&PgType::Float8, &5e-324f64.to_be_bytes(), "5e-324");
    same_as_text(&PgType::Float4, &1e-45f32.to_be_bytes(), "1e-45");
    // x86's default NaN (sign bit set), a payload NaN, and the plain one all print `NaN`.
    for bits in [
        0xfff8_0000_0000_0000u64,
        0x7ff0_0000_0000_0001,
        0x7ff8_0000_0000_0000,
    ] {
        same_as_text(&PgType::Float8, &bits.to_be_bytes(), "NaN");
    }
    for bits in [0xffc0_0000u32, 0x7f80_0001] {
        same_as_text(&PgType::Float4, &bits.to_be_bytes(), "NaN");
    }
}

#[test]
fn dates_count_from_2000_and_their_infinities_are_the_sentinels() {
    same_as_text(&PgType::Date, &0i32.to_be_bytes(), "2000-01-01");
    same_as_text(&PgType::Date, &(-10_957i32).to_be_bytes(), "1970-01-01");
    same_as_text(
        &PgType::Date,
        &(-2_451_545i32).to_be_bytes(),
        "4714-11-24 BC",
    );
    same_as_text(&PgType::Date, &i32::MAX.to_be_bytes(), "infinity");
    same_as_text(&PgType::Date, &i32::MIN.to_be_bytes(), "-infinity");
    assert_eq!(
        parse_binary(&PgType::Date, &i32::MAX.to_be_bytes()),
        Ok(Value::Date(DATE_POS_INFINITY))
    );
    assert_eq!(
        parse_binary(&PgType::Date, &i32::MIN.to_be_bytes()),
        Ok(Value::Date(DATE_NEG_INFINITY))
    );
    assert!(reason(&PgType::Date, &(i32::MAX - 1).to_be_bytes()).contains("out of range"));
}

#[test]
fn timestamps_count_microseconds_from_2000_and_their_infinities_are_the_sentinels() {
    for pg_type in [PgType::Timestamp, PgType::TimestampTz] {
        let zone = if pg_type == PgType::TimestampTz {
            "+00"
        } else {
            ""
        };
        same_as_text(
            &pg_type,
            &0i64.to_be_bytes(),
            &format!("2000-01-01 00:00:00{zone}"),
        );
        same_as_text(
            &pg_type,
            &(-1i64).to_be_bytes(),
            &format!("1999-12-31 23:59:59.999999{zone}"),
        );
        same_as_text(
            &pg_type,
            &(-63_082_281_600_000_000i64 - 1).to_be_bytes(),
            &format!("0001-12-31 23:59:59.999999{zone} BC"),
        );
        same_as_text(&pg_type, &i64::MAX.to_be_bytes(), "infinity");
        same_as_text(&pg_type, &i64::MIN.to_be_bytes(), "-infinity");
        let sentinel = |v| match pg_type {
            PgType::Timestamp => Value::Timestamp(v),
            _ => Value::TimestampTz(v),
        };
        assert_eq!(
            parse_binary(&pg_type, &i64::MAX.to_be_bytes()),
            Ok(sentinel(TIMESTAMP_POS_INFINITY))
        );
        assert_eq!(
            parse_binary(&pg_type, &i64::MIN.to_be_bytes()),
            Ok(sentinel(TIMESTAMP_NEG_INFINITY))
        );
        // 294276-12-31 23:59:59.999999 (Postgres' last): past 64-bit µs since 1970, an error as its text is.
        let last = 9_223_371_331_199_999_999i64;
        assert!(reason(&pg_type, &last.to_be_bytes()).contains("out of the range"));
        let text = format!("294276-12-31 23:59:59.999999{zone}");
        assert!(parse_text(&pg_type, &text).is_err());
        assert!(reason(&pg_type, &[0; 7]).contains("exactly 8 bytes"));
    }
}

#[test]
fn times_and_intervals_decode_field_by_field() {
    same_as_text(&PgType::Time, &0i64.to_be_bytes(), "00:00:00");
    same_as_text(&PgType::Time, &86_400_000_000i64.to_be_bytes(), "24:00:00");
    same_as_text(
        &PgType::Time,
        &45_296_500_000i64.to_be_bytes(),
        "12:34:56.5",
    );
    assert!(reason(&PgType::Time, &86_400_000_001i64.to_be_bytes()).contains("outside"));
    assert!(reason(&PgType::Time, &(-1i64).to_be_bytes()).contains("outside"));
    let interval = |micros: i64, days: i32, months: i32| {
        let mut out = micros.to_be_bytes().to_vec();
        out.extend_from_slice(&days.to_be_bytes());
        out.extend_from_slice(&months.to_be_bytes());
        out
    };
    same_as_text(
        &PgType::Interval,
        &interval(14_706_789_000, -3, 14),
        "1 year 2 mons -3 days +04:05:06.789",
    );
    same_as_text(&PgType::Interval, &interval(0, 0, 0), "00:00:00");
    same_as_text(
        &PgType::Interval,
        &interval(i64::MIN, i32::MIN, i32::MIN),
        "-178956970 years -8 mons -2147483648 days -2562047788:00:54.775808",
    );
    assert_eq!(
        parse_binary(&PgType::Interval, &interval(i64::MAX, i32::MAX, i32::MAX)),
        Ok(Value::Interval(Interval::POS_INFINITY))
    );
    assert!(reason(&PgType::Interval, &[0; 12]).contains("exactly 16 bytes"));
}

#[test]
fn text_like_types_are_their_utf8_and_jsonb_has_a_version_byte() {
    same_as_text(
        &PgType::Text,
        "a\tb\\c\n日本🎉".as_bytes(),
        "a\tb\\c\n日本🎉",
    );
    same_as_text(&PgType::Char(Some(5)), b"ab   ", "ab   ");
    same_as_text(&PgType::Name, b"pg_class", "pg_class");
    same_as_text(
        &PgType::Json,
        br#" {"a" : "\u00e9"} "#,
        r#" {"a" : "\u00e9"} "#,
    );
    same_as_text(
        &PgType::Jsonb,
        b"\x01{\"a\": [1, 2.50]}",
        r#"{"a": [1, 2.50]}"#,
    );
    same_as_text(&PgType::Varchar(None), b"", "");
    assert!(reason(&PgType::Jsonb, b"\x02{}").contains("jsonb format version 2"));
    assert!(reason(&PgType::Jsonb, b"").contains("version byte"));
    assert!(reason(&PgType::Text, b"a\xffb").contains("invalid UTF-8"));
    assert!(reason(&PgType::Jsonb, b"\x01\xc3").contains("invalid UTF-8"));
}

#[test]
fn bytea_and_uuid_are_their_bytes() {
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(
        parse_binary(&PgType::Bytea, &all),
        Ok(Value::Bytes(all.clone()))
    );
    same_as_text(&PgType::Bytea, &[], "\\x");
    let uuid = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];
    same_as_text(&PgType::Uuid, &uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert!(reason(&PgType::Uuid, &uuid[..15]).contains("exactly 16 bytes"));
}

#[test]
fn types_without_a_binary_decoder_are_named_and_refused() {
    for pg_type in [
        PgType::Array(Box::new(PgType::Int4)),
        PgType::Enum {
            name: "mood".into(),
        },
        PgType::Inet,
        PgType::Cidr,
        PgType::MacAddr,
        PgType::MacAddr8,
        PgType::Unmapped {
            type_name: "point".into(),
        },
    ] {
        assert!(!has_binary(&pg_type), "{pg_type}");
        assert!(reason(&pg_type, b"x").contains("select the column as text"));
    }
    assert!(has_binary(&PgType::Numeric {
        precision: 12,
        scale: 2
    }));
}

#[test]
fn an_error_quotes_the_start_of_the_field_in_hex() {
    let err = parse_binary(&PgType::Int2, &[0xab; 100]).expect_err("too long");
    assert!(err.input.starts_with("\\xabab"), "{}", err.input);
    assert!(
        err.reason.contains("binary field of 100 bytes"),
        "{}",
        err.reason
    );
}

/// Every type the decoder handles, for the property tests.
fn binary_types() -> Vec<PgType> {
    vec![
        PgType::Bool,
        PgType::Int2,
        PgType::Int4,
        PgType::Int8,
        PgType::Float4,
        PgType::Float8,
        PgType::Numeric {
            precision: 12,
            scale: 2,
        },
        PgType::NumericUnconstrained,
        PgType::Text,
        PgType::Varchar(Some(5)),
        PgType::Char(Some(5)),
        PgType::Name,
        PgType::Bytea,
        PgType::Date,
        PgType::Time,
        PgType::Timestamp,
        PgType::TimestampTz,
        PgType::Interval,
        PgType::Uuid,
        PgType::Json,
        PgType::Jsonb,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
        for pg_type in binary_types() {
            prop_assert!(has_binary(&pg_type));
            let _ = parse_binary(&pg_type, &bytes);
        }
    }

    /// A number built in base 10000 (integer part of any size, up to four fraction digits, a display scale up
    /// to ten) prints as the same number formatted here in decimal.
    #[test]
    fn numerics_built_in_base_10000_print_as_the_same_decimal(
        integer in prop_oneof![any::<u64>(), 0u64..10_000, Just(0u64)],
        fraction in 0u32..10_000,
        dscale in 0usize..10,
        negative in any::<bool>(),
    ) {
        let shown = dscale.min(4);
        let fraction = fraction % 10u32.pow(shown as u32);
        let fraction_group = (fraction * 10u32.pow(4 - shown as u32)) as i16;
        let mut digits = Vec::new();
        let mut rest = integer;
        while rest > 0 {
            digits.push((rest % 10_000) as i16);
            rest /= 10_000;
        }
        digits.reverse();
        let weight = match (digits.len(), fraction_group) {
            (0, 0) => 0,
            (0, _) => -1,
            (n, _) => n as i16 - 1,
        };
        if fraction_group > 0 {
            digits.push(fraction_group);
        }
        let bytes = numeric(weight, if negative { 0x4000 } else { 0 }, dscale as u16, &digits);
        let mut expected = integer.to_string();
        if dscale > 0 {
            expected = format!("{expected}.{fraction:0shown$}{}", "0".repeat(dscale - shown));
        }
        if negative && (integer > 0 || fraction > 0) {
            expected.insert(0, '-');
        }
        prop_assert_eq!(parse_binary(&NUMERIC, &bytes), Ok(Value::Numeric(expected.clone())));
        prop_assert_eq!(parse_text(&NUMERIC, &expected), parse_binary(&NUMERIC, &bytes));
    }
}
