//! Parses the pgoutput **text** representation of a column value (what the type's output function prints in the
//! walsender session: `DateStyle=ISO`, `IntervalStyle=postgres`, `bytea_output=hex` or `escape`, any TimeZone)
//! into a [`Value`]. NULL and unchanged-TOAST are tuple-level markers that the decoder handles before this;
//! NULL *elements* of arrays are handled here.
//!
//! A value that does not parse is a [`ParseError`] carrying the reason: the event goes to the dead-letter table.

mod array;
mod datetime;
#[cfg(test)]
mod tests;

use crate::error::ParseError;
use crate::pg_type::PgType;
use crate::value::Value;

use datetime::{parse_date, parse_interval, parse_time, parse_timestamp, parse_timestamptz};

/// Parses `text`, as pgoutput sent it for a column of type `pg_type`, into its typed value.
pub fn parse_text(pg_type: &PgType, text: &str) -> Result<Value, ParseError> {
    let fail = |reason: &str| ParseError::new(pg_type.to_string(), text, reason);
    match pg_type {
        PgType::Bool => match text {
            "t" | "true" => Ok(Value::Bool(true)),
            "f" | "false" => Ok(Value::Bool(false)),
            _ => Err(fail("expected t or f")),
        },
        PgType::Int2 => text
            .parse()
            .map(Value::Int16)
            .map_err(|e| fail(&e.to_string())),
        PgType::Int4 => text
            .parse()
            .map(Value::Int32)
            .map_err(|e| fail(&e.to_string())),
        PgType::Int8 => text
            .parse()
            .map(Value::Int64)
            .map_err(|e| fail(&e.to_string())),
        PgType::Float4 => parse_float::<f32>(text)
            .map(Value::Float32)
            .ok_or_else(|| fail("not a number")),
        PgType::Float8 => parse_float::<f64>(text)
            .map(Value::Float64)
            .ok_or_else(|| fail("not a number")),
        PgType::Numeric { .. } | PgType::NumericUnconstrained => {
            if is_numeric_text(text) {
                Ok(Value::Numeric(text.to_owned()))
            } else {
                Err(fail(
                    "expected [-]digits[.digits], NaN, Infinity or -Infinity",
                ))
            }
        }
        PgType::Bytea => parse_bytea(text)
            .map(Value::Bytes)
            .map_err(|reason| fail(&reason)),
        PgType::Date => parse_date(text)
            .map(Value::Date)
            .map_err(|reason| fail(&reason)),
        PgType::Time => parse_time(text)
            .map(Value::Time)
            .map_err(|reason| fail(&reason)),
        PgType::Timestamp => parse_timestamp(text)
            .map(Value::Timestamp)
            .map_err(|reason| fail(&reason)),
        PgType::TimestampTz => parse_timestamptz(text)
            .map(Value::TimestampTz)
            .map_err(|reason| fail(&reason)),
        PgType::Interval => parse_interval(text)
            .map(Value::Interval)
            .map_err(|reason| fail(&reason)),
        PgType::Uuid => parse_uuid(text)
            .map(Value::Uuid)
            .ok_or_else(|| fail("expected 32 hex digits in 8-4-4-4-12 groups")),
        PgType::Array(element) => array::parse_array(element, text),
        t if t.is_text_like() => Ok(Value::Text(text.to_owned())),
        _ => Err(fail("no text parser for this type")),
    }
}

/// `float4`/`float8` output: shortest round-trip digits, exponent form `1e+30`, and `NaN`, `Infinity`,
/// `-Infinity`. Special names are matched exactly (Rust's own parser would also take `inf`).
/// Parsed straight into the column's width: going through `f64` would round twice.
/// A finite literal too large for the width (`1e+39` as `real`) is refused rather than read as infinity.
fn parse_float<F: std::str::FromStr + From<f32> + Into<f64> + Copy>(text: &str) -> Option<F> {
    match text {
        "NaN" => Some(F::from(f32::NAN)),
        "Infinity" => Some(F::from(f32::INFINITY)),
        "-Infinity" => Some(F::from(f32::NEG_INFINITY)),
        _ if text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')) =>
        {
            text.parse::<F>().ok().filter(|v| (*v).into().is_finite())
        }
        _ => None,
    }
}

/// Whether `text` is a `numeric` as Postgres prints it.
pub(crate) fn is_numeric_text(text: &str) -> bool {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(int) && digits(frac)
}

/// `bytea` in the `hex` output format (`\x0aff`) or the older `escape` format (`a\000\\b`).
fn parse_bytea(text: &str) -> Result<Vec<u8>, String> {
    if let Some(hex) = text.strip_prefix("\\x") {
        if hex.len() % 2 != 0 {
            return Err("odd number of hex digits".into());
        }
        return hex
            .as_bytes()
            .chunks(2)
            .map(|pair| match (hex_digit(pair[0]), hex_digit(pair[1])) {
                (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
                _ => Err("invalid hex digit".to_owned()),
            })
            .collect();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = bytes.get(i + 1..i + 4).ok_or("truncated escape")?;
            if !octal.iter().all(|b| (b'0'..=b'7').contains(b)) || octal[0] > b'3' {
                return Err("invalid octal escape".into());
            }
            out.push(octal.iter().fold(0u8, |acc, b| acc << 3 | (b - b'0')));
            i += 4;
        }
    }
    Ok(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `uuid` as Postgres prints it: `a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11`.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
        return None;
    }
    let mut digits = bytes.iter().filter(|&&b| b != b'-');
    let mut out = [0u8; 16];
    for byte in &mut out {
        let hi = hex_digit(*digits.next()?)?;
        let lo = hex_digit(*digits.next()?)?;
        *byte = hi << 4 | lo;
    }
    Some(out)
}
