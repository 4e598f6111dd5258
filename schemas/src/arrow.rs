//! Postgres type → Arrow type, and the value checks the ArrowBatch stage needs where an Arrow/Iceberg type is
//! narrower than Postgres (decimals, `24:00:00`).
//!
//! The Arrow type of a column is, by construction, the one the `iceberg` crate derives from the column's Iceberg
//! type (`type_to_arrow_type` in iceberg 0.10: `string` → `Utf8`, `binary` → `LargeBinary`, `timestamptz` →
//! `Timestamp(µs, "+00:00")`, `uuid` → `FixedSizeBinary(16)`, list elements named `element`), so record batches
//! built from it are accepted by the Iceberg writer without a cast. Field ids are the flusher's to add.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, TimeUnit};

use crate::error::ConvertError;
use crate::iceberg::{iceberg_type, IcebergType};
use crate::pg_type::PgType;

/// The zone of `timestamptz` columns: the `iceberg` crate writes `+00:00` (and reads `UTC` too).
pub const UTC_TIME_ZONE: &str = "+00:00";
/// The name Iceberg gives a list's element field.
pub const LIST_ELEMENT_NAME: &str = "element";

const MICROS_PER_DAY: i64 = 86_400_000_000;

impl IcebergType {
    /// The Arrow type of this Iceberg type, as the `iceberg` crate maps it.
    pub fn arrow_type(&self) -> DataType {
        match self {
            IcebergType::Boolean => DataType::Boolean,
            IcebergType::Int => DataType::Int32,
            IcebergType::Long => DataType::Int64,
            IcebergType::Float => DataType::Float32,
            IcebergType::Double => DataType::Float64,
            // Scale ≤ precision ≤ 38 by construction, so the cast to i8 is exact.
            IcebergType::Decimal { precision, scale } => {
                DataType::Decimal128(*precision, *scale as i8)
            }
            IcebergType::Date => DataType::Date32,
            IcebergType::Time => DataType::Time64(TimeUnit::Microsecond),
            IcebergType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            IcebergType::Timestamptz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(UTC_TIME_ZONE.into()))
            }
            IcebergType::String => DataType::Utf8,
            IcebergType::Uuid => DataType::FixedSizeBinary(16),
            IcebergType::Binary => DataType::LargeBinary,
            IcebergType::Fixed(len) => {
                i32::try_from(*len).map_or(DataType::LargeBinary, DataType::FixedSizeBinary)
            }
            IcebergType::List(element) => DataType::List(Arc::new(Field::new(
                LIST_ELEMENT_NAME,
                element.arrow_type(),
                true,
            ))),
            IcebergType::Struct(fields) => DataType::Struct(Fields::from(
                fields
                    .iter()
                    .map(|f| Field::new(f.name.clone(), f.field_type.arrow_type(), !f.required))
                    .collect::<Vec<_>>(),
            )),
        }
    }
}

/// The Arrow type of a Postgres type: the Arrow type of its Iceberg type. Total, like [`iceberg_type`].
pub fn arrow_type(pg_type: &PgType) -> DataType {
    iceberg_type(pg_type).arrow_type()
}

/// The unscaled `i128` of a [`Value::Numeric`](crate::Value::Numeric) text for an Iceberg `decimal(precision,
/// scale)`. `NaN` and `±Infinity` have no decimal form, and a value needing more digits cannot be stored without
/// changing it: both are errors (the event is dead-lettered), never a silent NULL or rounding.
pub fn decimal128_unscaled(numeric: &str, precision: u8, scale: u8) -> Result<i128, ConvertError> {
    let fail = |reason: &str| ConvertError {
        value: format!("numeric {numeric}"),
        iceberg_type: format!("decimal({precision},{scale})"),
        reason: reason.to_owned(),
    };
    if matches!(numeric, "NaN" | "Infinity" | "-Infinity") {
        return Err(fail("Iceberg decimals have no NaN or infinity"));
    }
    let (negative, unsigned) = match numeric.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, numeric),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(fail("not a numeric"));
    }
    let scale = usize::from(scale);
    let (kept, dropped) = frac.split_at(frac.len().min(scale));
    if dropped.bytes().any(|b| b != b'0') {
        return Err(fail("more fraction digits than the scale holds"));
    }
    // The digits of `int`, `kept` and `scale - kept.len()` zeros, read without building them: the significant
    // ones (after leading zeros) must fit the precision, and their number must fit an i128.
    let padding = scale - kept.len();
    let mut significant = 0usize;
    let mut unscaled: i128 = 0;
    let mut overflow = false;
    for digit in int.bytes().chain(kept.bytes()) {
        let digit = i128::from(digit - b'0');
        if significant == 0 && digit == 0 {
            continue;
        }
        significant += 1;
        match unscaled.checked_mul(10).and_then(|u| u.checked_add(digit)) {
            Some(u) => unscaled = u,
            None => overflow = true,
        }
    }
    if significant > 0 {
        significant += padding;
        for _ in 0..padding.min(40) {
            match unscaled.checked_mul(10) {
                Some(u) => unscaled = u,
                None => overflow = true,
            }
        }
        overflow |= padding > 40;
    }
    if significant > usize::from(precision) || overflow {
        return Err(fail("more digits than the precision holds"));
    }
    Ok(if negative { -unscaled } else { unscaled })
}

/// A [`Value::Time`](crate::Value::Time) for an Iceberg `time`, which ends at `23:59:59.999999`: Postgres'
/// `24:00:00` is an error (dead-lettered), not silently moved to another instant.
pub fn iceberg_time_micros(micros: i64) -> Result<i64, ConvertError> {
    if (0..MICROS_PER_DAY).contains(&micros) {
        Ok(micros)
    } else {
        Err(ConvertError {
            value: format!("time {micros} µs"),
            iceberg_type: "time".into(),
            reason: "Iceberg times end at 23:59:59.999999 (Postgres allows 24:00:00)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg_type::{oids, TypeResolver};

    /// Every `PgType` variant with the Arrow and Iceberg types the crate docs promise.
    fn mapping() -> Vec<(PgType, DataType, &'static str)> {
        let utc = DataType::Timestamp(TimeUnit::Microsecond, Some(UTC_TIME_ZONE.into()));
        let interval = DataType::Struct(Fields::from(vec![
            Field::new("months", DataType::Int32, false),
            Field::new("days", DataType::Int32, false),
            Field::new("microseconds", DataType::Int64, false),
        ]));
        let list = |element| DataType::List(Arc::new(Field::new(LIST_ELEMENT_NAME, element, true)));
        vec![
            (PgType::Bool, DataType::Boolean, "boolean"),
            (PgType::Int2, DataType::Int32, "int"),
            (PgType::Int4, DataType::Int32, "int"),
            (PgType::Int8, DataType::Int64, "long"),
            (PgType::Float4, DataType::Float32, "float"),
            (PgType::Float8, DataType::Float64, "double"),
            (
                PgType::Numeric {
                    precision: 10,
                    scale: 2,
                },
                DataType::Decimal128(10, 2),
                "decimal(10,2)",
            ),
            (
                PgType::Numeric {
                    precision: 5,
                    scale: -2,
                },
                DataType::Decimal128(7, 0),
                "decimal(7,0)",
            ),
            (
                PgType::Numeric {
                    precision: 60,
                    scale: 2,
                },
                DataType::Utf8,
                "string",
            ),
            (PgType::NumericUnconstrained, DataType::Utf8, "string"),
            (PgType::Text, DataType::Utf8, "string"),
            (PgType::Varchar(Some(20)), DataType::Utf8, "string"),
            (PgType::Char(Some(3)), DataType::Utf8, "string"),
            (PgType::Name, DataType::Utf8, "string"),
            (PgType::Bytea, DataType::LargeBinary, "binary"),
            (PgType::Date, DataType::Date32, "date"),
            (
                PgType::Time,
                DataType::Time64(TimeUnit::Microsecond),
                "time",
            ),
            (
                PgType::Timestamp,
                DataType::Timestamp(TimeUnit::Microsecond, None),
                "timestamp",
            ),
            (PgType::TimestampTz, utc.clone(), "timestamptz"),
            (
                PgType::Interval,
                interval,
                "struct<months: int, days: int, microseconds: long>",
            ),
            (PgType::Uuid, DataType::FixedSizeBinary(16), "uuid"),
            (PgType::Json, DataType::Utf8, "string"),
            (PgType::Jsonb, DataType::Utf8, "string"),
            (PgType::Inet, DataType::Utf8, "string"),
            (PgType::Cidr, DataType::Utf8, "string"),
            (PgType::MacAddr, DataType::Utf8, "string"),
            (PgType::MacAddr8, DataType::Utf8, "string"),
            (
                PgType::Enum {
                    name: "mood".into(),
                },
                DataType::Utf8,
                "string",
            ),
            (
                PgType::Array(Box::new(PgType::Int4)),
                list(DataType::Int32),
                "list<int>",
            ),
            (
                PgType::Array(Box::new(PgType::TimestampTz)),
                list(utc),
                "list<timestamptz>",
            ),
            (
                PgType::Unmapped {
                    type_name: "point".into(),
                },
                DataType::Utf8,
                "string",
            ),
        ]
    }

    #[test]
    fn every_supported_type_has_the_documented_arrow_and_iceberg_type() {
        for (pg_type, arrow, iceberg) in mapping() {
            assert_eq!(arrow_type(&pg_type), arrow, "{pg_type}");
            assert_eq!(iceberg_type(&pg_type).to_string(), iceberg, "{pg_type}");
        }
    }

    #[test]
    fn every_built_in_oid_resolves_to_a_type_with_an_arrow_and_an_iceberg_type() {
        let resolver = TypeResolver::new(false);
        let scalars = [
            oids::BOOL,
            oids::BYTEA,
            oids::NAME,
            oids::INT8,
            oids::INT2,
            oids::INT4,
            oids::TEXT,
            oids::JSON,
            oids::FLOAT4,
            oids::FLOAT8,
            oids::MACADDR8,
            oids::MACADDR,
            oids::INET,
            oids::CIDR,
            oids::BPCHAR,
            oids::VARCHAR,
            oids::DATE,
            oids::TIME,
            oids::TIMESTAMP,
            oids::TIMESTAMPTZ,
            oids::INTERVAL,
            oids::NUMERIC,
            oids::UUID,
            oids::JSONB,
        ];
        let arrays = oids::ARRAYS.iter().map(|(array, _)| *array);
        for oid in scalars.into_iter().chain(arrays) {
            let pg_type = resolver
                .resolve("t", "c", oid, -1)
                .expect("built-in types resolve");
            let arrow = arrow_type(&pg_type);
            assert_eq!(arrow, iceberg_type(&pg_type).arrow_type());
            assert_eq!(
                matches!(pg_type, PgType::Array(_)),
                matches!(arrow, DataType::List(_)),
                "{pg_type}"
            );
        }
    }

    /// The first, allocating form of [`decimal128_unscaled`]: the fast one must give the same answers.
    fn reference_unscaled(numeric: &str, precision: u8, scale: u8) -> Result<i128, &'static str> {
        if matches!(numeric, "NaN" | "Infinity" | "-Infinity") {
            return Err("Iceberg decimals have no NaN or infinity");
        }
        let (negative, unsigned) = match numeric.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, numeric),
        };
        let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err("not a numeric");
        }
        let scale = usize::from(scale);
        let (kept, dropped) = frac.split_at(frac.len().min(scale));
        if dropped.bytes().any(|b| b != b'0') {
            return Err("more fraction digits than the scale holds");
        }
        let digits = format!("{int}{kept:0<scale$}");
        let significant = digits.trim_start_matches('0');
        if significant.len() > usize::from(precision) {
            return Err("more digits than the precision holds");
        }
        let unscaled: i128 = if significant.is_empty() {
            0
        } else {
            significant
                .parse()
                .map_err(|_| "more digits than the precision holds")?
        };
        Ok(if negative { -unscaled } else { unscaled })
    }

    #[test]
    fn the_fast_decimal_parse_agrees_with_the_reference() {
        let mut texts: Vec<String> = [
            "0",
            "-0",
            "00",
            "0.00",
            "-0.000",
            "1",
            "-1",
            "12.5",
            "12.500",
            "12.501",
            "0.001",
            ".5",
            "5.",
            "-",
            "",
            "1e5",
            "+1",
            "1.2.3",
            "--1",
            "NaN",
            "Infinity",
            "-Infinity",
            "nan",
            "007.10",
            "99999999999999999999999999999999999999",
            "999999999999999999999999999999999999999",
            "170141183460469231731687303715884105727",
            "170141183460469231731687303715884105728",
            "1000000000000000000000000000000000000000000",
            "0.0000000000000000000000000000000000000000001",
            "12345678901.99",
            "-9999999999.99",
            "1٣",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for i in 0..2000u64 {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            texts.push(format!(
                "{}{}.{:0w$}",
                if x % 3 == 0 { "-" } else { "" },
                x >> (x % 50),
                x % 1000,
                w = (i % 7) as usize
            ));
        }
        for text in &texts {
            for (precision, scale) in [
                (1, 0),
                (5, 2),
                (10, 2),
                (12, 2),
                (18, 6),
                (38, 0),
                (38, 3),
                (38, 38),
                (60, 30),
                (255, 0),
                (255, 200),
            ] {
                assert_eq!(
                    decimal128_unscaled(text, precision, scale).map_err(|e| e.reason),
                    reference_unscaled(text, precision, scale).map_err(str::to_owned),
                    "{text} as decimal({precision},{scale})"
                );
            }
        }
    }

    #[test]
    fn numeric_text_converts_exactly_to_unscaled_decimals() {
        assert_eq!(decimal128_unscaled("0", 10, 2), Ok(0));
        assert_eq!(decimal128_unscaled("-0.000001", 10, 6), Ok(-1));
        assert_eq!(decimal128_unscaled("12.5", 10, 2), Ok(1250));
        assert_eq!(decimal128_unscaled("12.500", 10, 2), Ok(1250));
        assert_eq!(
            decimal128_unscaled("99999999999999999999999999999999999.999", 38, 3),
            Ok(99_999_999_999_999_999_999_999_999_999_999_999_999)
        );
        assert_eq!(decimal128_unscaled("-1200", 7, 0), Ok(-1200));
    }

    #[test]
    fn numeric_values_a_decimal_cannot_hold_are_errors_not_nulls() {
        for text in ["NaN", "Infinity", "-Infinity"] {
            let err = decimal128_unscaled(text, 10, 2).expect_err("no decimal form");
            assert!(err.to_string().contains("decimal(10,2)"), "{err}");
        }
        assert!(decimal128_unscaled("1.234", 10, 2).is_err());
        assert!(decimal128_unscaled("123456789", 5, 0).is_err());
    }

    #[test]
    fn midnight_at_the_end_of_the_day_cannot_be_an_iceberg_time() {
        assert_eq!(
            iceberg_time_micros(MICROS_PER_DAY - 1),
            Ok(MICROS_PER_DAY - 1)
        );
        assert!(iceberg_time_micros(MICROS_PER_DAY).is_err());
    }
}
