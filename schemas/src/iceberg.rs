//! Postgres type → Iceberg type ([`iceberg_type`]), and which Iceberg type changes are safe promotions.
//!
//! [`IcebergType`] is our own small mirror of the Iceberg types we produce; the flusher converts it into the
//! `iceberg` crate's `Type` (assigning field ids) so that this crate stays free of that dependency.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pg_type::PgType;

/// The largest decimal precision Iceberg allows.
pub const MAX_DECIMAL_PRECISION: u8 = 38;

/// An Iceberg type as philotes writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IcebergType {
    /// `boolean`.
    Boolean,
    /// `int` (32-bit).
    Int,
    /// `long` (64-bit).
    Long,
    /// `float` (32-bit IEEE 754).
    Float,
    /// `double` (64-bit IEEE 754).
    Double,
    /// `decimal(P,S)`, P ≤ 38.
    Decimal {
        /// Total digits, 1–38.
        precision: u8,
        /// Digits after the point, 0–P.
        scale: u8,
    },
    /// `date` (days since 1970-01-01).
    Date,
    /// `time` (µs since midnight).
    Time,
    /// `timestamp` (µs, no zone).
    Timestamp,
    /// `timestamptz` (µs since 1970 UTC).
    Timestamptz,
    /// `string` (UTF-8).
    String,
    /// `uuid`.
    Uuid,
    /// `binary`.
    Binary,
    /// `fixed(L)`.
    Fixed(u32),
    /// `list<element>`; elements are optional (Postgres arrays may hold NULLs).
    List(Box<IcebergType>),
    /// `struct<…>`, for the fields of an interval.
    Struct(Vec<IcebergField>),
}

/// A field of an [`IcebergType::Struct`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IcebergField {
    /// The field's name.
    pub name: String,
    /// The field's type.
    pub field_type: IcebergType,
    /// Whether the field is required (never null) inside a non-null struct.
    pub required: bool,
}

impl IcebergType {
    /// The struct an `interval` is written as: `struct<months: int, days: int, microseconds: long>`, its three
    /// fields as Postgres keeps them (a month is not a fixed number of days, nor a day of microseconds).
    pub fn interval() -> IcebergType {
        let field = |name: &str, field_type| IcebergField {
            name: name.into(),
            field_type,
            required: true,
        };
        IcebergType::Struct(vec![
            field("months", IcebergType::Int),
            field("days", IcebergType::Int),
            field("microseconds", IcebergType::Long),
        ])
    }

    /// Whether an Iceberg column of type `self` may be changed to `to` (equal, or an Iceberg type promotion:
    /// int→long, float→double, decimal(P,S)→decimal(P',S) with P'≥P, and the same inside lists).
    pub fn can_become(&self, to: &IcebergType) -> bool {
        match (self, to) {
            (a, b) if a == b => true,
            (IcebergType::Int, IcebergType::Long) | (IcebergType::Float, IcebergType::Double) => {
                true
            }
            (
                IcebergType::Decimal {
                    precision: p1,
                    scale: s1,
                },
                IcebergType::Decimal {
                    precision: p2,
                    scale: s2,
                },
            ) => s1 == s2 && p2 >= p1,
            (IcebergType::List(a), IcebergType::List(b)) => a.can_become(b),
            _ => false,
        }
    }
}

impl fmt::Display for IcebergType {
    /// The type as the Iceberg spec writes it (`decimal(10,2)`, `list<int>`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IcebergType::Boolean => f.write_str("boolean"),
            IcebergType::Int => f.write_str("int"),
            IcebergType::Long => f.write_str("long"),
            IcebergType::Float => f.write_str("float"),
            IcebergType::Double => f.write_str("double"),
            IcebergType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            IcebergType::Date => f.write_str("date"),
            IcebergType::Time => f.write_str("time"),
            IcebergType::Timestamp => f.write_str("timestamp"),
            IcebergType::Timestamptz => f.write_str("timestamptz"),
            IcebergType::String => f.write_str("string"),
            IcebergType::Uuid => f.write_str("uuid"),
            IcebergType::Binary => f.write_str("binary"),
            IcebergType::Fixed(len) => write!(f, "fixed[{len}]"),
            IcebergType::List(element) => write!(f, "list<{element}>"),
            IcebergType::Struct(fields) => {
                f.write_str("struct<")?;
                for (i, field) in fields.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{}: {}", field.name, field.field_type)?;
                }
                f.write_str(">")
            }
        }
    }
}

/// The decimal that holds every value of `numeric(precision, scale)` exactly, or `None` when it needs more than
/// 38 digits (then the column is a string, like unconstrained numeric). A negative scale (`numeric(5,-2)`: whole
/// hundreds) needs `precision - scale` integer digits; a scale above the precision (`numeric(3,5)`: 0.00xyz)
/// needs `scale` digits.
pub fn decimal_for_numeric(precision: u16, scale: i16) -> Option<(u8, u8)> {
    let integer_digits = (i32::from(precision) - i32::from(scale)).max(0);
    let fraction_digits = i32::from(scale).max(0);
    let total = (integer_digits + fraction_digits).max(1);
    (total <= i32::from(MAX_DECIMAL_PRECISION)).then_some((total as u8, fraction_digits as u8))
}

/// The Iceberg type of a Postgres type. Total: every [`PgType`] has one (see the crate docs for the table).
pub fn iceberg_type(pg_type: &PgType) -> IcebergType {
    match pg_type {
        PgType::Bool => IcebergType::Boolean,
        PgType::Int2 | PgType::Int4 => IcebergType::Int,
        PgType::Int8 => IcebergType::Long,
        PgType::Float4 => IcebergType::Float,
        PgType::Float8 => IcebergType::Double,
        PgType::Numeric { precision, scale } => match decimal_for_numeric(*precision, *scale) {
            Some((precision, scale)) => IcebergType::Decimal { precision, scale },
            None => IcebergType::String,
        },
        PgType::NumericUnconstrained => IcebergType::String,
        PgType::Bytea => IcebergType::Binary,
        PgType::Date => IcebergType::Date,
        PgType::Time => IcebergType::Time,
        PgType::Timestamp => IcebergType::Timestamp,
        PgType::TimestampTz => IcebergType::Timestamptz,
        PgType::Interval => IcebergType::interval(),
        PgType::Uuid => IcebergType::Uuid,
        PgType::Array(element) => IcebergType::List(Box::new(iceberg_type(element))),
        PgType::Text
        | PgType::Varchar(_)
        | PgType::Char(_)
        | PgType::Name
        | PgType::Json
        | PgType::Jsonb
        | PgType::Inet
        | PgType::Cidr
        | PgType::MacAddr
        | PgType::MacAddr8
        | PgType::Enum { .. }
        | PgType::Unmapped { .. } => IcebergType::String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constrained_numerics_become_decimals_that_hold_every_value() {
        assert_eq!(decimal_for_numeric(10, 2), Some((10, 2)));
        assert_eq!(decimal_for_numeric(38, 3), Some((38, 3)));
        assert_eq!(decimal_for_numeric(5, -2), Some((7, 0)));
        assert_eq!(decimal_for_numeric(3, 5), Some((5, 5)));
        assert_eq!(decimal_for_numeric(39, 2), None);
        assert_eq!(decimal_for_numeric(37, -2), None);
    }

    #[test]
    fn numerics_too_wide_for_a_decimal_and_unconstrained_numerics_are_strings() {
        assert_eq!(
            iceberg_type(&PgType::Numeric {
                precision: 50,
                scale: 10
            }),
            IcebergType::String
        );
        assert_eq!(
            iceberg_type(&PgType::NumericUnconstrained),
            IcebergType::String
        );
    }

    #[test]
    fn iceberg_promotions_are_the_ones_the_spec_allows() {
        let dec = |precision, scale| IcebergType::Decimal { precision, scale };
        assert!(IcebergType::Int.can_become(&IcebergType::Long));
        assert!(IcebergType::Float.can_become(&IcebergType::Double));
        assert!(dec(10, 2).can_become(&dec(12, 2)));
        assert!(!dec(10, 2).can_become(&dec(12, 3)));
        assert!(!dec(12, 2).can_become(&dec(10, 2)));
        assert!(!IcebergType::Long.can_become(&IcebergType::Int));
        assert!(!IcebergType::String.can_become(&IcebergType::Int));
        assert!(!IcebergType::Timestamp.can_become(&IcebergType::Timestamptz));
        assert!(IcebergType::List(Box::new(IcebergType::Int))
            .can_become(&IcebergType::List(Box::new(IcebergType::Long))));
    }

    #[test]
    fn iceberg_types_print_as_the_spec_writes_them() {
        assert_eq!(
            IcebergType::List(Box::new(IcebergType::Decimal {
                precision: 10,
                scale: 2
            }))
            .to_string(),
            "list<decimal(10,2)>"
        );
        assert_eq!(
            IcebergType::interval().to_string(),
            "struct<months: int, days: int, microseconds: long>"
        );
    }
}
