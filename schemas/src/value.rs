//! The typed value of one column of one row, as it travels through the buffer (MessagePack, `rmp-serde`).
//!
//! One variant per *representation*, not per Postgres type: the column's [`PgType`](crate::PgType) says what a
//! `Text` or an `Int64` means. Special values Postgres has are kept, never turned into NULL:
//!
//! | Postgres value | `Value` |
//! | --- | --- |
//! | unchanged TOAST (`'u'`) | [`Value::Unchanged`] (not NULL: the flusher fills it from an older image) |
//! | float `NaN`, `±Infinity` | the IEEE value in `Float32`/`Float64` |
//! | numeric `NaN`, `±Infinity` | `Numeric("NaN")`, `Numeric("Infinity")`, `Numeric("-Infinity")` |
//! | date `±infinity` | 9999-12-31 / 0001-01-01 ([`DATE_POS_INFINITY`], [`DATE_NEG_INFINITY`]) |
//! | timestamp(tz) `±infinity` | 9999-12-31 23:59:59.999999 / 0001-01-01 00:00:00 ([`TIMESTAMP_POS_INFINITY`], [`TIMESTAMP_NEG_INFINITY`]) |
//! | interval `±infinity` (PG 17) | every field at its max / min ([`Interval::POS_INFINITY`]) |
//!
//! Why those dates: they are the ends of the range every common reader holds (Python's `datetime`, hence
//! pyarrow's `to_pylist()` and pyiceberg; DuckDB; Spark; Trino; Java's `LocalDate` formatters). The type's own
//! extremes (`i32::MAX` days, `i64::MAX` µs), which philotes wrote before, made those readers fail with "date
//! value out of range" on the whole column. The price: a real value equal to a sentinel (`9999-12-31`) is
//! indistinguishable from infinity. Interval sentinels stay at the field extremes: they are plain integers in a
//! struct, which every reader holds.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `Date` of Postgres' `infinity`: 9999-12-31, the last day every common reader can hold.
pub const DATE_POS_INFINITY: i32 = 2_932_896;
/// `Date` of Postgres' `-infinity`: 0001-01-01, the first day every common reader can hold.
pub const DATE_NEG_INFINITY: i32 = -719_162;
/// `Timestamp`/`TimestampTz` of Postgres' `infinity`: 9999-12-31 23:59:59.999999 (UTC for `timestamptz`).
pub const TIMESTAMP_POS_INFINITY: i64 = 253_402_300_799_999_999;
/// `Timestamp`/`TimestampTz` of Postgres' `-infinity`: 0001-01-01 00:00:00 (UTC for `timestamptz`).
pub const TIMESTAMP_NEG_INFINITY: i64 = -62_135_596_800_000_000;

/// The date sentinels of builds before these ones (`i32::MAX`/`i32::MIN` days, past any finite Postgres date) →
/// today's. Segments such a build left in the buffer are written readable; every other value is returned as it is.
pub fn current_date_sentinel(days: i32) -> i32 {
    match days {
        i32::MAX => DATE_POS_INFINITY,
        i32::MIN => DATE_NEG_INFINITY,
        days => days,
    }
}

/// The timestamp sentinels of builds before these ones (`i64::MAX`/`i64::MIN` µs, which their parser refused
/// as finite values) → today's; every other value as it is.
pub fn current_timestamp_sentinel(micros: i64) -> i64 {
    match micros {
        i64::MAX => TIMESTAMP_POS_INFINITY,
        i64::MIN => TIMESTAMP_NEG_INFINITY,
        micros => micros,
    }
}

/// A Postgres interval, field by field as Postgres stores it: months and days are not fixed lengths of time, so
/// they are not folded into microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Interval {
    /// Whole months (years are 12 months).
    pub months: i32,
    /// Whole days.
    pub days: i32,
    /// The time part, in microseconds.
    pub micros: i64,
}

impl Interval {
    /// Postgres 17's `infinity` interval.
    pub const POS_INFINITY: Interval = Interval {
        months: i32::MAX,
        days: i32::MAX,
        micros: i64::MAX,
    };
    /// Postgres 17's `-infinity` interval.
    pub const NEG_INFINITY: Interval = Interval {
        months: i32::MIN,
        days: i32::MIN,
        micros: i64::MIN,
    };
}

/// One typed column value. Serialised into the buffer: `rmp-serde` writes an enum as `{variant name: value}`, so
/// each variant is renamed to a one-letter tag (`Int32(5)` is 4 bytes, not 8). The tags are the stored format:
/// never change one; new variants get new tags.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL.
    #[serde(rename = "n")]
    Null,
    /// An unchanged TOASTed value that pgoutput did not send (`'u'`): not NULL, "same as before".
    #[serde(rename = "u")]
    Unchanged,
    /// `boolean`.
    #[serde(rename = "b")]
    Bool(bool),
    /// `smallint`.
    #[serde(rename = "h")]
    Int16(i16),
    /// `integer`.
    #[serde(rename = "i")]
    Int32(i32),
    /// `bigint`.
    #[serde(rename = "l")]
    Int64(i64),
    /// `real`, including NaN and ±infinity.
    #[serde(rename = "f")]
    Float32(f32),
    /// `double precision`, including NaN and ±infinity.
    #[serde(rename = "d")]
    Float64(f64),
    /// `numeric`, exactly as Postgres printed it: `-?digits(.digits)?` (no exponent, display scale kept), or
    /// `NaN`, `Infinity`, `-Infinity`. Text because unconstrained numerics have up to 147,455 digits.
    #[serde(rename = "N")]
    Numeric(String),
    /// Every string-like type: text, varchar, char(n) (with its padding), name, json, jsonb (as Postgres printed
    /// them), inet, cidr, macaddr, enum labels, and unmapped types carried as text.
    #[serde(rename = "s")]
    Text(String),
    /// `bytea`.
    #[serde(rename = "x")]
    Bytes(#[serde(with = "byte_buf")] Vec<u8>),
    /// `date`: days since 1970-01-01; ±infinity are [`DATE_POS_INFINITY`]/[`DATE_NEG_INFINITY`].
    #[serde(rename = "D")]
    Date(i32),
    /// `time`: microseconds since midnight, `0..=86_400_000_000` (Postgres allows `24:00:00`).
    #[serde(rename = "t")]
    Time(i64),
    /// `timestamp` (no zone): microseconds since 1970-01-01 00:00:00 of the wall clock.
    #[serde(rename = "T")]
    Timestamp(i64),
    /// `timestamptz`: microseconds since 1970-01-01 00:00:00 UTC, whatever the session TimeZone printed.
    #[serde(rename = "Z")]
    TimestampTz(i64),
    /// `interval`.
    #[serde(rename = "I")]
    Interval(Interval),
    /// `uuid`, its 16 bytes in order.
    #[serde(rename = "U")]
    Uuid(#[serde(with = "uuid_bytes")] [u8; 16]),
    /// A one-dimensional array; elements may be [`Value::Null`].
    #[serde(rename = "a")]
    Array(Vec<Value>),
}

impl Value {
    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// Values are data: two NaNs with the same bits are the same value, and `0.0` differs from `-0.0`, so that a
/// round trip through the buffer compares equal and a change of sign is a change.
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) | (Unchanged, Unchanged) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int16(a), Int16(b)) => a == b,
            (Int32(a), Int32(b)) => a == b,
            (Int64(a), Int64(b)) => a == b,
            (Float32(a), Float32(b)) => a.to_bits() == b.to_bits(),
            (Float64(a), Float64(b)) => a.to_bits() == b.to_bits(),
            (Numeric(a), Numeric(b)) | (Text(a), Text(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Date(a), Date(b)) => a == b,
            (Time(a), Time(b))
            | (Timestamp(a), Timestamp(b))
            | (TimestampTz(a), TimestampTz(b)) => a == b,
            (Interval(a), Interval(b)) => a == b,
            (Uuid(a), Uuid(b)) => a == b,
            (Array(a), Array(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl fmt::Display for Value {
    /// A short human form for error messages and dead letters (not a Postgres literal).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Unchanged => f.write_str("<unchanged toast>"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int16(v) => write!(f, "{v}"),
            Value::Int32(v) => write!(f, "{v}"),
            Value::Int64(v) => write!(f, "{v}"),
            Value::Float32(v) => write!(f, "{v}"),
            Value::Float64(v) => write!(f, "{v}"),
            Value::Numeric(v) => write!(f, "numeric {v}"),
            Value::Text(v) => write!(f, "{v:?}"),
            Value::Bytes(v) => write!(f, "{} bytes", v.len()),
            Value::Date(v) => write!(f, "date {v} (days since 1970)"),
            Value::Time(v) => write!(f, "time {v} µs"),
            Value::Timestamp(v) => write!(f, "timestamp {v} µs"),
            Value::TimestampTz(v) => write!(f, "timestamptz {v} µs UTC"),
            Value::Interval(v) => write!(
                f,
                "interval {} months {} days {} µs",
                v.months, v.days, v.micros
            ),
            Value::Uuid(v) => write!(
                f,
                "uuid {}",
                v.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
            Value::Array(v) => write!(f, "array of {}", v.len()),
        }
    }
}

/// Bytes as one MessagePack `bin`, not as an array of small integers (half the size, one copy).
mod byte_buf {
    use std::fmt;

    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    pub(super) struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// A UUID as one 16-byte `bin`.
mod uuid_bytes {
    use serde::de::Error;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 16], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 16], D::Error> {
        let bytes = deserializer.deserialize_byte_buf(super::byte_buf::BytesVisitor)?;
        <[u8; 16]>::try_from(bytes.as_slice())
            .map_err(|_| D::Error::invalid_length(bytes.len(), &"16 bytes of a uuid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(value: &Value) -> Value {
        let bytes = rmp_serde::to_vec(value).expect("encodes");
        rmp_serde::from_slice(&bytes).expect("decodes")
    }

    #[test]
    fn every_kind_of_value_survives_messagepack() {
        let values = vec![
            Value::Null,
            Value::Unchanged,
            Value::Bool(true),
            Value::Int16(-3),
            Value::Int32(i32::MIN),
            Value::Int64(i64::MAX),
            Value::Float32(f32::NAN),
            Value::Float64(f64::NEG_INFINITY),
            Value::Float64(-0.0),
            Value::Numeric("-0.000001".into()),
            Value::Numeric("NaN".into()),
            Value::Text("héllo".into()),
            Value::Bytes(vec![0, 255, 128]),
            Value::Date(DATE_NEG_INFINITY),
            Value::Time(86_400_000_000),
            Value::Timestamp(TIMESTAMP_POS_INFINITY),
            Value::TimestampTz(-1),
            Value::Interval(Interval {
                months: -14,
                days: 3,
                micros: -1,
            }),
            Value::Uuid([7; 16]),
            Value::Array(vec![Value::Int32(1), Value::Null]),
        ];
        for value in &values {
            assert_eq!(&round_trip(value), value);
        }
    }

    #[test]
    fn small_values_encode_in_a_few_bytes() {
        assert_eq!(rmp_serde::to_vec(&Value::Null).expect("encodes").len(), 2);
        assert_eq!(
            rmp_serde::to_vec(&Value::Int32(5)).expect("encodes").len(),
            4
        );
    }

    #[test]
    fn bytes_are_encoded_as_one_binary_string() {
        let encoded = rmp_serde::to_vec(&Value::Bytes(vec![200; 100])).expect("encodes");
        assert!(encoded.len() < 120, "{} bytes", encoded.len());
    }

    #[test]
    fn positive_and_negative_zero_are_different_values_and_nan_equals_itself() {
        assert_ne!(Value::Float64(0.0), Value::Float64(-0.0));
        assert_eq!(Value::Float32(f32::NAN), Value::Float32(f32::NAN));
        assert_ne!(Value::Null, Value::Unchanged);
    }
}
