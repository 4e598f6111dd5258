//! The value checks the ArrowBatch stage needs where an Arrow/Iceberg type is narrower than Postgres (decimals,
//! `24:00:00`). A column's Arrow type is the one the `iceberg` crate derives from its Iceberg type
//! ([`crate::iceberg_type`]); the stages' tests check that derivation against the documented table.

use crate::error::ConvertError;

const MICROS_PER_DAY: i64 = 86_400_000_000;

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
