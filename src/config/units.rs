//! Human units in the pipeline file: durations (`200ms`, `1s`, `5m`) and byte sizes (`8MiB`, `1GB`).
//!
//! Both take a whole number followed by a unit, optionally separated by one space. Byte sizes also
//! accept a plain integer (bytes); durations always need a unit, because `max_age: 200` is ambiguous.
//! Errors are user-facing messages; the caller adds the position and key path.

use std::time::Duration;

/// Duration units and their length in milliseconds.
const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Byte units (matched case-insensitively) and their size in bytes.
const BYTE_UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// Parses `200ms`, `1s`, `5m`, `2h`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text)?;
    if unit.is_empty() {
        return Err(format!(
            "expected a duration with a unit (ms, s, m, h, d), found {text:?}"
        ));
    }
    let millis_per_unit = DURATION_UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, ms)| *ms)
        .ok_or_else(|| {
            format!("unknown duration unit {unit:?} in {text:?} (use ms, s, m, h or d)")
        })?;
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

/// Parses `8MiB`, `512KiB`, `1GB`, `4096` (bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text)?;
    if unit.is_empty() {
        return Ok(number);
    }
    let lower = unit.to_ascii_lowercase();
    let per_unit = BYTE_UNITS
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, bytes)| *bytes)
        .ok_or_else(|| {
            format!(
                "unknown byte unit {unit:?} in {text:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            )
        })?;
    number
        .checked_mul(per_unit)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Renders a duration the way it would be written in the file (`1s`, `200ms`).
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    match DURATION_UNITS.iter().rev().find(|(_, per)| {
        let per = u128::from(*per);
        ms >= per && ms.is_multiple_of(per)
    }) {
        Some((unit, per)) => format!("{}{unit}", ms / u128::from(*per)),
        None => format!("{ms}ms"),
    }
}

/// Splits `"8MiB"` into `(8, "MiB")`; `_` separators in the number are allowed (`10_000`).
fn split_number(text: &str) -> Result<(u64, &str), String> {
    let trimmed = text.trim();
    let end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(end);
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() {
        return Err(format!("expected a number with a unit, found {text:?}"));
    }
    let number = digits
        .parse::<u64>()
        .map_err(|_| format!("number in {text:?} is too large"))?;
    Ok((number, unit.strip_prefix(' ').unwrap_or(unit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("10 s").unwrap(), Duration::from_secs(10));
    }

    #[test]
    fn durations_without_or_with_unknown_units_are_refused() {
        assert!(parse_duration("200").unwrap_err().contains("unit"));
        assert!(parse_duration("3 weeks").unwrap_err().contains("weeks"));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("1.5s").is_err());
    }

    #[test]
    fn byte_sizes_parse_binary_and_decimal_units_and_plain_integers() {
        assert_eq!(parse_bytes("8MiB").unwrap(), 8 * 1024 * 1024);
        assert_eq!(parse_bytes("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("64 mb").unwrap(), 64_000_000);
        assert_eq!(parse_bytes("1_000").unwrap(), 1000);
    }

    #[test]
    fn byte_sizes_with_unknown_units_or_overflow_are_refused() {
        assert!(parse_bytes("8MiBs").unwrap_err().contains("MiBs"));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999999TiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn durations_format_back_to_their_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(format_duration(Duration::from_secs(1)), "1s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
