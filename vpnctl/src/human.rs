//! Numbers and times the way people read them in tables: `1.2 GiB of 50 GiB (2.4%)`,
//! `2027-01-31T00:00:00Z (in 240 days)`. JSON output never goes through here; scripts get the
//! raw values.
//!
//! Every function takes the current time as an argument so tests are exact.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const BINARY_UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// `512 B`, `1.5 KiB`, `50 GiB`: powers of 1024, one decimal, none when it is `.0`.
pub fn bytes(n: u64) -> String {
    let mut unit = 0;
    while unit + 1 < BINARY_UNITS.len() && u128::from(n) >= 1u128 << (10 * (unit + 1)) {
        unit += 1;
    }
    let mut tenths = rounded_tenths(u128::from(n), 1u128 << (10 * unit));
    // 1023.96 KiB rounds to 1024.0 KiB: say 1 MiB instead.
    if tenths >= 10 * 1024 && unit + 1 < BINARY_UNITS.len() {
        unit += 1;
        tenths = rounded_tenths(u128::from(n), 1u128 << (10 * unit));
    }
    format!("{} {}", one_decimal(tenths), BINARY_UNITS[unit])
}

/// `1.2 GiB of 50 GiB (2.4%)`, or `1.2 GiB, no limit`.
pub fn usage(used: u64, limit: u64) -> String {
    if limit == 0 {
        return format!("{}, no limit", bytes(used));
    }
    format!("{} of {} ({}%)", bytes(used), bytes(limit), percent(used, limit))
}

/// `1.2 GiB / 50 GiB`, or `1.2 GiB` without a limit: the narrow form for list columns.
pub fn usage_short(used: u64, limit: u64) -> String {
    if limit == 0 {
        return bytes(used);
    }
    format!("{} / {}", bytes(used), bytes(limit))
}

/// `used` as a percentage of `limit` (non-zero), one decimal.
fn percent(used: u64, limit: u64) -> String {
    one_decimal(rounded_tenths(u128::from(used) * 100, u128::from(limit)))
}

/// `value / unit` in tenths, rounded half up.
fn rounded_tenths(value: u128, unit: u128) -> u128 {
    (value * 10 + unit / 2) / unit
}

fn one_decimal(tenths: u128) -> String {
    match tenths % 10 {
        0 => (tenths / 10).to_string(),
        digit => format!("{}.{digit}", tenths / 10),
    }
}

/// `in 3 days`, `5 hours ago`, `in 12 minutes`, `less than a minute ago`: whole units, rounded
/// down, days from two days on so "in 30 hours" stays precise.
pub fn relative(at: OffsetDateTime, now: OffsetDateTime) -> String {
    let seconds = (at - now).whole_seconds();
    let span = seconds.unsigned_abs();
    let (count, unit) = match span {
        0..60 => {
            return if at >= now { "in less than a minute".into() } else { "less than a minute ago".into() };
        }
        60..3_600 => (span / 60, "minute"),
        3_600..172_800 => (span / 3_600, "hour"),
        _ => (span / 86_400, "day"),
    };
    let plural = if count == 1 { "" } else { "s" };
    if seconds >= 0 {
        format!("in {count} {unit}{plural}")
    } else {
        format!("{count} {unit}{plural} ago")
    }
}

/// An RFC 3339 time from the server with how far it is from now; the text as is when it does
/// not parse (a newer server's format is still worth showing).
pub fn time_with_relative(rfc3339: &str, now: OffsetDateTime) -> String {
    match OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(at) => format!("{rfc3339} ({})", relative(at, now)),
        Err(_) => rfc3339.to_owned(),
    }
}

/// Just the relative part of an RFC 3339 time, for narrow list columns.
pub fn relative_rfc3339(rfc3339: &str, now: OffsetDateTime) -> String {
    match OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(at) => relative(at, now),
        Err(_) => rfc3339.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use time::Duration;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);

    #[test]
    fn bytes_use_binary_units_and_one_decimal() {
        let cases = [
            (0, "0 B"),
            (512, "512 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (1_048_575, "1 MiB"),
            (1_288_490_189, "1.2 GiB"),
            (50 << 30, "50 GiB"),
            (1 << 40, "1 TiB"),
            (u64::MAX, "16 EiB"),
        ];
        for (n, text) in cases {
            assert_eq!(bytes(n), text, "{n}");
        }
    }

    #[test]
    fn usage_shows_the_share_of_the_limit() {
        assert_eq!(usage(1_288_490_189, 50 << 30), "1.2 GiB of 50 GiB (2.4%)");
        assert_eq!(usage(0, 50 << 30), "0 B of 50 GiB (0%)");
        assert_eq!(usage(60 << 30, 50 << 30), "60 GiB of 50 GiB (120%)");
        assert_eq!(usage(1_288_490_189, 0), "1.2 GiB, no limit");
        assert_eq!(usage_short(1_288_490_189, 50 << 30), "1.2 GiB / 50 GiB");
        assert_eq!(usage_short(512, 0), "512 B");
    }

    #[test]
    fn relative_times_pick_a_readable_unit() {
        let cases = [
            (Duration::seconds(30), "in less than a minute"),
            (Duration::seconds(-30), "less than a minute ago"),
            (Duration::milliseconds(-300), "less than a minute ago"),
            (Duration::minutes(1), "in 1 minute"),
            (Duration::minutes(-12), "12 minutes ago"),
            (Duration::hours(30), "in 30 hours"),
            (Duration::hours(-1), "1 hour ago"),
            (Duration::days(2), "in 2 days"),
            (Duration::days(240) + Duration::hours(5), "in 240 days"),
            (Duration::days(-3), "3 days ago"),
        ];
        for (offset, text) in cases {
            assert_eq!(relative(NOW + offset, NOW), text, "{offset}");
        }
    }

    #[test]
    fn server_times_keep_their_text() {
        assert_eq!(time_with_relative("2026-03-13T12:00:00Z", NOW), "2026-03-13T12:00:00Z (in 3 days)");
        assert_eq!(relative_rfc3339("2026-03-07T12:00:00Z", NOW), "3 days ago");
        assert_eq!(time_with_relative("next tuesday", NOW), "next tuesday");
    }
}
