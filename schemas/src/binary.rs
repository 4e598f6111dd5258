//! Decodes a field of `COPY … TO STDOUT (FORMAT binary)` (the bytes of the type's `*send` function, without the
//! length word; NULL is the caller's) into exactly the [`Value`] that [`parse_text`](crate::parse_text) makes of
//! the type's text output in philotes' sessions (`DateStyle=ISO`, `IntervalStyle=postgres`, `bytea_output=hex`,
//! `extra_float_digits` > 0, any TimeZone). It is for the snapshot, whose COPY is cheaper for the server to
//! produce and for us to parse in binary; "exactly" is what lets snapshot rows and streamed rows (pgoutput
//! text) compare equal.
//!
//! Where the text path loses information, this path loses the same: a float NaN is the one NaN `parse_text`
//! makes whatever its bits, a numeric is the text `numeric_out` prints (display scale kept), and out-of-range
//! timestamps are errors in both. Only [`has_binary`] types are decoded; the others are read as `col::text`.
//!
//! The only allocation per value is the one the [`Value`] owns (a numeric's text is written once into a string
//! of the right capacity).

#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use crate::error::ParseError;
use crate::pg_type::PgType;
use crate::text::is_numeric_text;
use crate::value::{
    Interval, Value, DATE_NEG_INFINITY, DATE_POS_INFINITY, TIMESTAMP_NEG_INFINITY,
    TIMESTAMP_POS_INFINITY,
};

/// Days from 1970-01-01 (philotes' epoch) to 2000-01-01 (Postgres' epoch).
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS as i64 * MICROS_PER_DAY;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// `numeric` sign words (`numeric.c`): the two finite signs and the three special values.
const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
/// Largest display scale a numeric can carry (`NUMERIC_DSCALE_MAX`).
const NUMERIC_DSCALE_MAX: u16 = 0x3FFF;
/// Base of numeric's digits: each holds four decimal digits.
const NBASE: u16 = 10_000;
/// The only `jsonb` binary format version Postgres has.
const JSONB_VERSION: u8 = 1;
/// How many bytes of a malformed field an error quotes (as hex; [`ParseError`] cuts the text at 80 characters).
const QUOTED_BYTES: usize = 40;

/// Whether columns of `pg_type` are read in binary and decoded by [`parse_binary`]: the types whose binary form
/// is decoded here to the very value the text path gives. Every other type (arrays, enums, inet/cidr, macaddr,
/// unmapped types) is selected as `col::text`, whose binary form is its text for [`parse_text`](crate::parse_text).
/// Domains are resolved to their base type before this, and send what their base type sends.
pub fn has_binary(pg_type: &PgType) -> bool {
    matches!(
        pg_type,
        PgType::Bool
            | PgType::Int2
            | PgType::Int4
            | PgType::Int8
            | PgType::Float4
            | PgType::Float8
            | PgType::Numeric { .. }
            | PgType::NumericUnconstrained
            | PgType::Text
            | PgType::Varchar(_)
            | PgType::Char(_)
            | PgType::Name
            | PgType::Bytea
            | PgType::Date
            | PgType::Time
            | PgType::Timestamp
            | PgType::TimestampTz
            | PgType::Interval
            | PgType::Uuid
            | PgType::Json
            | PgType::Jsonb
    )
}

/// Decodes one non-NULL binary COPY field of a column of type `pg_type` into the value [`parse_text`] gives for
/// the text Postgres prints of it. A malformed field (wrong length, bad numeric header, unknown jsonb version,
/// invalid UTF-8, a value no text parse accepts) is a [`ParseError`] saying what was wrong, never a panic.
///
/// [`parse_text`]: crate::parse_text
pub fn parse_binary(pg_type: &PgType, bytes: &[u8]) -> Result<Value, ParseError> {
    parse_binary_borrowed(pg_type, bytes).map(BinaryValue::into_value)
}

/// What [`parse_binary`] gives, with a text or byte value left in the field it came from: the snapshot writes
/// those straight into a segment, without an owned copy per value.
#[derive(Debug, Clone, PartialEq)]
pub enum BinaryValue<'a> {
    /// Would be [`Value::Text`] of this text.
    Text(&'a str),
    /// Would be [`Value::Bytes`] of these bytes.
    Bytes(&'a [u8]),
    /// Any other value, as it is.
    Other(Value),
}

impl BinaryValue<'_> {
    /// The owned value ([`parse_binary`]'s).
    pub fn into_value(self) -> Value {
        match self {
            BinaryValue::Text(text) => Value::Text(text.to_owned()),
            BinaryValue::Bytes(bytes) => Value::Bytes(bytes.to_vec()),
            BinaryValue::Other(value) => value,
        }
    }
}

/// [`parse_binary`], borrowing text and bytes from `bytes` (same values, same errors).
pub fn parse_binary_borrowed<'a>(pg_type: &PgType, bytes: &'a [u8]) -> Result<BinaryValue<'a>, ParseError> {
    decode(pg_type, bytes).map_err(|reason| {
        let shown = &bytes[..bytes.len().min(QUOTED_BYTES)];
        let mut input = String::with_capacity(2 + 2 * shown.len() + 1);
        input.push_str("\\x");
        for b in shown {
            let _ = write!(input, "{b:02x}");
        }
        if bytes.len() > shown.len() {
            input.push('…');
        }
        ParseError::new(
            pg_type.to_string(),
            &input,
            format!("binary field of {} bytes: {reason}", bytes.len()),
        )
    })
}

fn decode<'a>(pg_type: &PgType, bytes: &'a [u8]) -> Result<BinaryValue<'a>, String> {
    Ok(BinaryValue::Other(match pg_type {
        PgType::Bool => match fixed::<1>(bytes)? {
            [0] => Value::Bool(false),
            [1] => Value::Bool(true),
            [other] => return Err(format!("boolean byte {other}, expected 0 or 1")),
        },
        PgType::Int2 => Value::Int16(i16::from_be_bytes(fixed(bytes)?)),
        PgType::Int4 => Value::Int32(i32::from_be_bytes(fixed(bytes)?)),
        PgType::Int8 => Value::Int64(i64::from_be_bytes(fixed(bytes)?)),
        // Every NaN prints as `NaN`, which the text path reads as this one NaN: sign and payload are not kept.
        PgType::Float4 => {
            let v = f32::from_be_bytes(fixed(bytes)?);
            Value::Float32(if v.is_nan() { f32::NAN } else { v })
        }
        PgType::Float8 => {
            let v = f64::from_be_bytes(fixed(bytes)?);
            Value::Float64(if v.is_nan() { f64::from(f32::NAN) } else { v })
        }
        PgType::Numeric { .. } | PgType::NumericUnconstrained => {
            let text = numeric_text(bytes)?;
            if !is_numeric_text(&text) {
                return Err(format!("numeric printed as {text:?}, not a numeric"));
            }
            Value::Numeric(text)
        }
        PgType::Bytea => return Ok(BinaryValue::Bytes(bytes)),
        PgType::Date => Value::Date(date_days(i32::from_be_bytes(fixed(bytes)?))?),
        PgType::Time => {
            let micros = i64::from_be_bytes(fixed(bytes)?);
            if !(0..=MICROS_PER_DAY).contains(&micros) {
                return Err(format!("time of {micros} µs, outside 00:00:00–24:00:00"));
            }
            Value::Time(micros)
        }
        PgType::Timestamp => Value::Timestamp(timestamp_micros(bytes)?),
        PgType::TimestampTz => Value::TimestampTz(timestamp_micros(bytes)?),
        PgType::Interval => {
            let b: [u8; 16] = fixed(bytes)?;
            let [m0, m1, m2, m3, m4, m5, m6, m7, d0, d1, d2, d3, n0, n1, n2, n3] = b;
            Value::Interval(Interval {
                micros: i64::from_be_bytes([m0, m1, m2, m3, m4, m5, m6, m7]),
                days: i32::from_be_bytes([d0, d1, d2, d3]),
                months: i32::from_be_bytes([n0, n1, n2, n3]),
            })
        }
        PgType::Uuid => Value::Uuid(fixed(bytes)?),
        PgType::Jsonb => match bytes.split_first() {
            Some((&JSONB_VERSION, text)) => return Ok(BinaryValue::Text(utf8(text)?)),
            Some((version, _)) => return Err(format!("unknown jsonb format version {version}")),
            None => return Err("empty jsonb field, expected a version byte".into()),
        },
        PgType::Text | PgType::Varchar(_) | PgType::Char(_) | PgType::Name | PgType::Json => {
            return Ok(BinaryValue::Text(utf8(bytes)?))
        }
        _ => return Err("no binary decoder for this type; select the column as text".into()),
    }))
}

/// The field as exactly `N` bytes.
fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], String> {
    bytes
        .try_into()
        .map_err(|_| format!("expected exactly {N} bytes"))
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("invalid UTF-8: {e}"))
}

/// Days since 2000-01-01 → days since 1970-01-01; `i32::MAX`/`i32::MIN` (`DATEVAL_NOEND`/`NOBEGIN`) are
/// ±infinity, mapped to the sentinels `infinity`/`-infinity` parse to.
fn date_days(pg_days: i32) -> Result<i32, String> {
    match pg_days {
        i32::MAX => Ok(DATE_POS_INFINITY),
        i32::MIN => Ok(DATE_NEG_INFINITY),
        days => days
            .checked_add(PG_EPOCH_DAYS)
            .ok_or_else(|| "date out of range".to_owned()),
    }
}

/// µs since 2000-01-01 (UTC for `timestamptz`) → µs since 1970-01-01; `i64::MAX`/`i64::MIN` are ±infinity.
/// A finite timestamp past what 64-bit µs since 1970 hold (after about 294,247 AD, Postgres allows up to
/// 294,276) is an error, as its text is.
fn timestamp_micros(bytes: &[u8]) -> Result<i64, String> {
    match i64::from_be_bytes(fixed(bytes)?) {
        i64::MAX => Ok(TIMESTAMP_POS_INFINITY),
        i64::MIN => Ok(TIMESTAMP_NEG_INFINITY),
        micros => micros.checked_add(PG_EPOCH_MICROS).ok_or_else(|| {
            "timestamp out of the range of microseconds since 1970 in 64 bits".to_owned()
        }),
    }
}

/// `numeric_send`'s form (ndigits, weight, sign, dscale, then ndigits base-10000 digits, all big-endian) →
/// the text `numeric_out` prints (`get_str_from_var`): the integer part without leading zeros (`0` below one),
/// then exactly `dscale` fraction digits, trailing zeros kept and digits beyond `dscale` cut, as Postgres'
/// `numeric_recv` cuts them. A zero is never negative (Postgres stores no `-0`).
fn numeric_text(bytes: &[u8]) -> Result<String, String> {
    let Some((header, body)) = bytes.split_first_chunk::<8>() else {
        return Err("numeric header needs 8 bytes".into());
    };
    let word = |i: usize| [header[i], header[i + 1]];
    let ndigits = i16::from_be_bytes(word(0));
    let weight = i32::from(i16::from_be_bytes(word(2)));
    let sign = u16::from_be_bytes(word(4));
    let dscale = u16::from_be_bytes(word(6));
    let Ok(ndigits) = usize::try_from(ndigits) else {
        return Err(format!("numeric digit count {ndigits} is negative"));
    };
    if body.len() != 2 * ndigits {
        return Err(format!(
            "numeric header announces {ndigits} digits ({} bytes), the field has {} bytes after it",
            2 * ndigits,
            body.len()
        ));
    }
    match sign {
        NUMERIC_POS | NUMERIC_NEG => {}
        NUMERIC_NAN => return Ok("NaN".into()),
        NUMERIC_PINF => return Ok("Infinity".into()),
        NUMERIC_NINF => return Ok("-Infinity".into()),
        other => return Err(format!("unknown numeric sign word 0x{other:04x}")),
    }
    if dscale > NUMERIC_DSCALE_MAX {
        return Err(format!(
            "numeric display scale {dscale} above {NUMERIC_DSCALE_MAX}"
        ));
    }
    if let Some(bad) = body
        .chunks_exact(2)
        .map(|d| u16::from_be_bytes([d[0], d[1]]))
        .find(|d| *d >= NBASE)
    {
        return Err(format!("numeric digit {bad} is not below {NBASE}"));
    }
    let digit = |d: i32| -> u16 {
        usize::try_from(d)
            .ok()
            .filter(|&d| d < ndigits)
            .map_or(0, |d| u16::from_be_bytes([body[2 * d], body[2 * d + 1]]))
    };
    let dscale = usize::from(dscale);
    let int_digits = usize::try_from((weight + 1) * 4).unwrap_or(0).max(1);
    let mut out = String::with_capacity(1 + int_digits + 1 + dscale + 4);
    if sign == NUMERIC_NEG {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for d in 0..=weight {
            let dig = digit(d);
            // The first group without its leading zeros (at least one digit), the others as four digits.
            let start = if d > 0 {
                0
            } else {
                match dig {
                    1000.. => 0,
                    100.. => 1,
                    10.. => 2,
                    _ => 3,
                }
            };
            push_group(&mut out, dig, start);
        }
    }
    // The fraction's first group follows the integer part's last (or, below one, starts after leading zeros).
    let mut d = weight + 1;
    if dscale > 0 {
        out.push('.');
        let end = out.len() + dscale;
        while out.len() < end {
            push_group(&mut out, digit(d), 0);
            d += 1;
        }
        out.truncate(end);
    }
    if sign == NUMERIC_NEG && out[1..].bytes().all(|b| b == b'0' || b == b'.') {
        out.remove(0);
    }
    Ok(out)
}

/// Appends the four decimal digits of a base-10000 digit, from the `start`-th (0: all four).
fn push_group(out: &mut String, dig: u16, start: usize) {
    let digits = [dig / 1000, dig / 100 % 10, dig / 10 % 10, dig % 10];
    for d in &digits[start..] {
        // `d` is one decimal digit (dig < NBASE was checked).
        out.push(char::from(b'0' + *d as u8));
    }
}
