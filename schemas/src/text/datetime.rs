//! Dates, times, timestamps and intervals as Postgres prints them with `DateStyle=ISO` and
//! `IntervalStyle=postgres`: `2024-03-10`, `0044-03-15 BC`, `24:00:00`, `2024-03-10 01:59:59.123456-08`,
//! `1900-01-01 00:00:00+05:53:28`, `0044-03-15 12:00:00+00 BC`, `infinity`, `1 year 2 mons -3 days +04:05:06.789`.

use crate::civil::{days_from_civil, days_in_month};
use crate::value::{
    Interval, DATE_NEG_INFINITY, DATE_POS_INFINITY, TIMESTAMP_NEG_INFINITY, TIMESTAMP_POS_INFINITY,
};

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// `date` → days since 1970-01-01; `infinity`/`-infinity` → [`DATE_POS_INFINITY`]/[`DATE_NEG_INFINITY`].
pub(super) fn parse_date(text: &str) -> Result<i32, String> {
    match text {
        "infinity" => return Ok(DATE_POS_INFINITY),
        "-infinity" => return Ok(DATE_NEG_INFINITY),
        _ => {}
    }
    let (date, bc) = strip_bc(text);
    let days = parse_ymd(date, bc)?;
    // 9999-12-31 and 0001-01-01 are accepted although they equal the infinity sentinels (see `value`).
    i32::try_from(days).map_err(|_| "date out of range".to_owned())
}

/// `time` → microseconds since midnight, `24:00:00` included.
pub(super) fn parse_time(text: &str) -> Result<i64, String> {
    let micros = parse_clock(text, 24)?;
    if micros > i128::from(MICROS_PER_DAY) {
        return Err("time after 24:00:00".into());
    }
    Ok(micros as i64)
}

/// `timestamp` → microseconds since 1970-01-01 00:00:00 of the same wall clock; `±infinity` →
/// [`TIMESTAMP_POS_INFINITY`]/[`TIMESTAMP_NEG_INFINITY`].
pub(super) fn parse_timestamp(text: &str) -> Result<i64, String> {
    match text {
        "infinity" => return Ok(TIMESTAMP_POS_INFINITY),
        "-infinity" => return Ok(TIMESTAMP_NEG_INFINITY),
        _ => {}
    }
    let (rest, bc) = strip_bc(text);
    let (date, time) = rest.split_once(' ').ok_or("expected a date and a time")?;
    local_micros(date, time, bc)
}

/// `timestamptz` printed in any session TimeZone (`…-08`, `…+05:30`, `…+05:53:28`) → microseconds since
/// 1970-01-01 00:00:00 UTC; `±infinity` as for `timestamp`.
pub(super) fn parse_timestamptz(text: &str) -> Result<i64, String> {
    match text {
        "infinity" => return Ok(TIMESTAMP_POS_INFINITY),
        "-infinity" => return Ok(TIMESTAMP_NEG_INFINITY),
        _ => {}
    }
    let (rest, bc) = strip_bc(text);
    let (date, time_and_zone) = rest
        .split_once(' ')
        .ok_or("expected a date, a time and a UTC offset")?;
    let zone_at = time_and_zone.find(['+', '-']).ok_or("missing UTC offset")?;
    let (time, zone) = time_and_zone.split_at(zone_at);
    let local = local_micros(date, time, bc)?;
    let offset = parse_offset(zone)?;
    checked_instant(i128::from(local) - i128::from(offset) * i128::from(MICROS_PER_SECOND))
}

/// `interval` in IntervalStyle `postgres` → months, days, microseconds; Postgres 17's `±infinity` →
/// [`Interval::POS_INFINITY`]/[`Interval::NEG_INFINITY`].
pub(super) fn parse_interval(text: &str) -> Result<Interval, String> {
    match text {
        "infinity" => return Ok(Interval::POS_INFINITY),
        "-infinity" => return Ok(Interval::NEG_INFINITY),
        _ => {}
    }
    let overflow = || "interval field out of range".to_owned();
    let (mut months, mut days, mut micros) = (0i32, 0i32, 0i64);
    let mut tokens = text.split_ascii_whitespace().peekable();
    if tokens.peek().is_none() {
        return Err("empty interval".into());
    }
    while let Some(token) = tokens.next() {
        if token.contains(':') {
            if tokens.peek().is_some() {
                return Err("the time part must come last".into());
            }
            let (negative, clock) = match token.as_bytes()[0] {
                b'-' => (true, &token[1..]),
                b'+' => (false, &token[1..]),
                _ => (false, token),
            };
            let magnitude = parse_clock(clock, u64::MAX)?;
            micros = i64::try_from(if negative { -magnitude } else { magnitude })
                .map_err(|_| overflow())?;
            continue;
        }
        let amount: i32 = token
            .parse()
            .map_err(|_| format!("expected a number, found {token:?}"))?;
        let unit = tokens.next().ok_or("a number without a unit")?;
        match unit {
            "year" | "years" => {
                months = amount
                    .checked_mul(12)
                    .and_then(|m| m.checked_add(months))
                    .ok_or_else(overflow)?;
            }
            "mon" | "mons" => months = months.checked_add(amount).ok_or_else(overflow)?,
            "day" | "days" => days = days.checked_add(amount).ok_or_else(overflow)?,
            _ => return Err(format!("unknown interval unit {unit:?}")),
        }
    }
    Ok(Interval {
        months,
        days,
        micros,
    })
}

/// Splits the ` BC` suffix Postgres puts after dates (and after the zone of timestamps) before year 1.
fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

/// `YYYY-MM-DD` (four or more year digits, the year counted from 1 AD or, with `bc`, back from 1 BC) → days.
fn parse_ymd(text: &str, bc: bool) -> Result<i64, String> {
    let mut parts = text.splitn(3, '-');
    let mut field = |name: &str| -> Result<i64, String> {
        let digits = parts
            .next()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let digits = digits.ok_or_else(|| format!("expected YYYY-MM-DD, bad {name}"))?;
        digits
            .parse::<i64>()
            .map_err(|_| format!("{name} out of range"))
    };
    let (year, month, day) = (field("year")?, field("month")?, field("day")?);
    if year == 0 || year > 10_000_000 {
        return Err("year out of range".into());
    }
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) {
        return Err("month out of range".into());
    }
    let month = month as u32;
    if day < 1 || day > i64::from(days_in_month(year, month)) {
        return Err("day out of range for its month".into());
    }
    Ok(days_from_civil(year, month, day as u32))
}

/// `HH:MM:SS[.ffffff]` → microseconds; hours up to `max_hours` (intervals print millions of hours).
fn parse_clock(text: &str, max_hours: u64) -> Result<i128, String> {
    let bad = || format!("expected HH:MM:SS[.ffffff], found {text:?}");
    let mut parts = text.splitn(3, ':');
    let (hours, minutes, seconds) = match (parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(m), Some(s)) => (h, m, s),
        _ => return Err(bad()),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (seconds, fraction) = match seconds.split_once('.') {
        Some((_, fraction)) if fraction.len() > 6 || !all_digits(fraction) => return Err(bad()),
        Some(split) => split,
        None => (seconds, ""),
    };
    if hours.len() < 2
        || !all_digits(hours)
        || minutes.len() != 2
        || !all_digits(minutes)
        || seconds.len() != 2
        || !all_digits(seconds)
    {
        return Err(bad());
    }
    let hours: u64 = hours.parse().map_err(|_| bad())?;
    let minutes: i128 = minutes.parse().map_err(|_| bad())?;
    let seconds: i128 = seconds.parse().map_err(|_| bad())?;
    if hours > max_hours || minutes > 59 || seconds > 59 {
        return Err("time field out of range".into());
    }
    let fraction: i128 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").parse().map_err(|_| bad())?
    };
    let second = i128::from(MICROS_PER_SECOND);
    Ok(i128::from(hours) * 3_600 * second + (minutes * 60 + seconds) * second + fraction)
}

/// A UTC offset as Postgres prints it (`+HH`, `-HH:MM`, `+HH:MM:SS`) → seconds east of Greenwich.
fn parse_offset(text: &str) -> Result<i64, String> {
    let bad = || format!("expected a UTC offset like +05:30, found {text:?}");
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(bad()),
    };
    let mut seconds = 0i64;
    let mut count = 0;
    for (i, part) in rest.split(':').enumerate() {
        if i > 2 || part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: i64 = part.parse().map_err(|_| bad())?;
        if i > 0 && n > 59 {
            return Err(bad());
        }
        seconds += n * [3_600, 60, 1][i];
        count += 1;
    }
    if count == 0 {
        return Err(bad());
    }
    Ok(sign * seconds)
}

/// A date and a time of day (at most `23:59:59.999999`) → microseconds since 1970-01-01 00:00:00.
fn local_micros(date: &str, time: &str, bc: bool) -> Result<i64, String> {
    let days = parse_ymd(date, bc)?;
    let time = parse_clock(time, 23)?;
    checked_instant(i128::from(days) * i128::from(MICROS_PER_DAY) + time)
}

/// Keeps finite timestamps inside the `i64` range (Postgres accepts years up to 294276, a few thousand years more
/// than `i64` microseconds since 1970 hold). Values equal to the infinity sentinels are accepted (see `value`).
fn checked_instant(micros: i128) -> Result<i64, String> {
    i64::try_from(micros)
        .map_err(|_| "timestamp out of the range of microseconds since 1970 in 64 bits".to_owned())
}
