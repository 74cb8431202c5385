//! Parsers for what operators type into flags: `--expires`, `--data-limit`, `--reset`,
//! `--constraint`, `--timeout`, and the durations of `--ttl` and `--since`.
//!
//! They run as clap value parsers, so a bad value fails before any network call, even with the
//! cluster down, with clap's usage error (which names the flag) and exit code 2. Each message
//! says what would have been accepted. Times are sent to the server as RFC 3339 in UTC.

use std::collections::HashMap;
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

/// A new expiry as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The user stops being served at this instant.
    At(OffsetDateTime),
    /// The user never expires (`--expires never` clears an expiry).
    Never,
}

impl Expiry {
    /// The form `UpdateUserRequest.expires_at` takes: RFC 3339 in UTC, or "never".
    pub fn to_request(self) -> Result<String, String> {
        match self {
            Expiry::At(at) => rfc3339(at),
            Expiry::Never => Ok("never".into()),
        }
    }
}

/// How often a user's used traffic starts again from zero (`--reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reset {
    /// One period for ever: the limit is a total.
    None,
    /// Every day, at the time of day the period started.
    Daily,
    /// Every seven days.
    Weekly,
    /// On the same day of every month.
    Monthly,
}

impl Reset {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Reset::None => "none",
            Reset::Daily => "daily",
            Reset::Weekly => "weekly",
            Reset::Monthly => "monthly",
        }
    }
}

const EXPIRY_FORMS: &str = "RFC 3339 (2027-01-31T00:00:00Z), a date (2027-01-31, midnight UTC) or a \
                            duration from now (12h, 30d, 2w)";

/// `--expires` of `user add`: a time in the future.
pub fn expiry(input: &str) -> Result<OffsetDateTime, String> {
    if input.trim().eq_ignore_ascii_case("never") {
        return Err("a new user never expires unless --expires is given; leave the flag out".into());
    }
    expiry_at(input, OffsetDateTime::now_utc())
}

/// `--expires` where clearing makes sense (`user enable`, `user limit`): a time, or `never`.
pub fn expiry_or_never(input: &str) -> Result<Expiry, String> {
    expiry_or_never_at(input, OffsetDateTime::now_utc())
}

/// [`expiry_or_never`] with the current time given, for tests.
pub fn expiry_or_never_at(input: &str, now: OffsetDateTime) -> Result<Expiry, String> {
    if input.trim().eq_ignore_ascii_case("never") {
        return Ok(Expiry::Never);
    }
    expiry_at(input, now).map(Expiry::At).map_err(|err| format!("{err}; or never to remove the expiry"))
}

/// [`expiry`] with the current time given, for tests. A time in the past is refused: the user
/// would be expired at once, which is what `user disable` is for.
pub fn expiry_at(input: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    let input = input.trim();
    let at = if let Ok(at) = OffsetDateTime::parse(input, &Rfc3339) {
        at.to_offset(UtcOffset::UTC)
    } else if let Ok(date) = Date::parse(input, format_description!("[year]-[month]-[day]")) {
        date.midnight().assume_utc()
    } else if let Some(ahead) = duration_ahead(input)? {
        let at = now.checked_add(ahead).ok_or_else(|| format!("'{input}' from now is too far in the future"))?;
        // Whole seconds: nobody means the nanoseconds of the moment they typed the command.
        at.replace_nanosecond(0).map_err(|err| err.to_string())?
    } else {
        return Err(format!("'{input}' is not a time; use {EXPIRY_FORMS}"));
    };
    if at <= now {
        return Err(format!(
            "{} is in the past; give a later time, or use `vpnctl user disable` to stop a user now",
            rfc3339(at)?
        ));
    }
    Ok(at)
}

/// `12h`, `30d`, `2w` as a duration; `None` when `input` does not look like one at all.
fn duration_ahead(input: &str) -> Result<Option<time::Duration>, String> {
    let split = input.find(|c: char| !c.is_ascii_digit()).unwrap_or(input.len());
    let (number, unit) = input.split_at(split);
    if number.is_empty() || unit.is_empty() || !unit.chars().all(|c| c.is_ascii_alphabetic()) {
        return Ok(None);
    }
    let hours: i64 = match unit.to_ascii_lowercase().as_str() {
        "h" => 1,
        "d" => 24,
        "w" => 24 * 7,
        _ => return Err(format!("unknown unit '{unit}' in '{input}'; use h (hours), d (days) or w (weeks)")),
    };
    let too_far = || format!("'{input}' from now is too far in the future");
    let number: i64 = number.parse().map_err(|_| too_far())?;
    if number == 0 {
        return Err(format!("'{input}' is now; give a duration of more than zero"));
    }
    let hours = number.checked_mul(hours).ok_or_else(too_far)?;
    let seconds = hours.checked_mul(3600).ok_or_else(too_far)?;
    Ok(Some(time::Duration::seconds(seconds)))
}

/// RFC 3339 as the API wants it, e.g. `2027-01-31T00:00:00Z`.
pub fn rfc3339(at: OffsetDateTime) -> Result<String, String> {
    at.to_offset(UtcOffset::UTC).format(&Rfc3339).map_err(|err| format!("cannot write {at} as RFC 3339: {err}"))
}

/// `--data-limit`: bytes, with an optional unit (B, KB..TB in powers of 1000, KiB..TiB in powers
/// of 1024, any case, e.g. `50GiB`, `1.5 TB`); `0` or `unlimited` for no limit. Fractions are
/// rounded down to whole bytes.
pub fn data_limit(input: &str) -> Result<u64, String> {
    let input = input.trim();
    if input.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    let forms = "use bytes with an optional unit, e.g. 50GiB, 1.5TB, 500MB or 1000000, or 0 or unlimited \
                 for no limit";
    let split = input.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(input.len());
    let (number, unit) = input.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(format!("'{input}' is not an amount of data; {forms}"));
    }
    let multiplier: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit '{}' in '{input}'; use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB \
                 (powers of 1024)",
                unit.trim()
            ))
        }
    };
    let too_large = || format!("'{input}' is more than the largest limit ({} bytes)", u64::MAX);
    // Exact decimal arithmetic: 1.1GB must be 1100000000 bytes, not what a float makes of it.
    if whole.len() > 20 || fraction.len() > 18 {
        return Err(too_large());
    }
    let scale = 10u128.pow(fraction.len() as u32);
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_large())? };
    let fraction: u128 = if fraction.is_empty() { 0 } else { fraction.parse().map_err(|_| too_large())? };
    let scaled = whole.checked_mul(scale).and_then(|w| w.checked_add(fraction)).ok_or_else(too_large)?;
    let bytes = scaled.checked_mul(multiplier).ok_or_else(too_large)? / scale;
    if bytes == 0 && scaled != 0 {
        return Err(format!("'{input}' is less than one byte; use 0 or unlimited for no limit"));
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// `--constraint`: comma-separated `key=value` node labels, with the rule vpnd applies to its
/// `--labels` (letters, digits, '.', '_', '/', '-'), so a constraint no node could ever match
/// because of a typo in its syntax is caught here.
pub fn constraint(input: &str) -> Result<HashMap<String, String>, String> {
    let valid = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
    let mut labels = HashMap::new();
    for item in input.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let pair = item.split_once('=').map(|(key, value)| (key.trim(), value.trim()));
        let Some((key, value)) = pair.filter(|(key, value)| !key.is_empty() && valid(key) && valid(value)) else {
            return Err(format!("'{item}' is not key=value of letters, digits, '.', '_', '/', '-', e.g. region=eu"));
        };
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("label '{key}' is given twice"));
        }
    }
    if labels.is_empty() {
        return Err("no labels given; use key=value,..., e.g. region=eu,tier=gold".into());
    }
    Ok(labels)
}

/// A duration: a number with s, m, h or d (`90m`, `12h`, `30d`); `0` is allowed (`token create
/// --ttl 0` asks for the server's default).
pub fn duration(input: &str) -> Result<Duration, String> {
    let input = input.trim();
    let split = input.find(|c: char| !c.is_ascii_digit()).unwrap_or(input.len());
    let (number, unit) = input.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("'{input}' is not a duration; use e.g. 90m, 12h or 30d"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        "d" => number.saturating_mul(86_400),
        "" if number == 0 => 0,
        "" => return Err(format!("'{input}' has no unit; use s, m, h or d, e.g. {input}d")),
        _ => return Err(format!("unknown unit '{unit}' in '{input}'; use s, m, h or d")),
    };
    Ok(Duration::from_secs(seconds))
}

/// A [`duration`] of more than zero: a join token's `--ttl`, `audit list --since`.
pub fn lifetime(input: &str) -> Result<Duration, String> {
    let duration = duration(input)?;
    if duration.is_zero() {
        return Err("the duration must be more than zero".into());
    }
    Ok(duration)
}

/// `--timeout`: `500ms`, `10s`, `2m` or a bare number of seconds.
pub fn timeout(input: &str) -> Result<Duration, String> {
    let input = input.trim();
    let split = input.find(|c: char| !c.is_ascii_digit()).unwrap_or(input.len());
    let (number, unit) = input.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("'{input}' is not a duration; use e.g. 500ms, 10s or 2m"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        _ => return Err(format!("unknown unit '{unit}'; use ms, s or m")),
    };
    if duration.is_zero() {
        return Err("the timeout must be more than zero".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-03-10 14:30:15.123 UTC);

    fn expires(input: &str) -> Result<String, String> {
        expiry_at(input, NOW).and_then(rfc3339)
    }

    #[test]
    fn expiry_accepts_rfc3339_dates_and_durations() {
        assert_eq!(expires("2027-01-31T00:00:00Z").as_deref(), Ok("2027-01-31T00:00:00Z"));
        assert_eq!(expires("2027-01-31T02:00:00+02:00").as_deref(), Ok("2027-01-31T00:00:00Z"));
        assert_eq!(expires(" 2027-01-31 ").as_deref(), Ok("2027-01-31T00:00:00Z"));
        assert_eq!(expires("30d").as_deref(), Ok("2026-04-09T14:30:15Z"));
        assert_eq!(expires("12h").as_deref(), Ok("2026-03-11T02:30:15Z"));
        assert_eq!(expires("2w").as_deref(), Ok("2026-03-24T14:30:15Z"));
        assert_eq!(expires("2W").as_deref(), Ok("2026-03-24T14:30:15Z"));
    }

    #[test]
    fn bad_expiries_say_what_is_accepted() {
        let cases = [
            ("tomorrow", "is not a time; use RFC 3339"),
            ("2027-02-30", "is not a time"),
            ("30m", "unknown unit 'm'"),
            ("0d", "give a duration of more than zero"),
            ("99999999999999999999d", "too far in the future"),
            ("9999999w", "too far in the future"),
            ("2026-03-10", "2026-03-10T00:00:00Z is in the past"),
            ("2020-01-01T00:00:00Z", "is in the past"),
            ("", "is not a time"),
        ];
        for (input, reason) in cases {
            let err = expires(input).err().unwrap_or_default();
            assert!(err.contains(reason), "{input}: {err}");
        }
    }

    #[test]
    fn never_clears_only_where_allowed() {
        assert_eq!(expiry_or_never_at("never", NOW), Ok(Expiry::Never));
        assert_eq!(expiry_or_never_at("Never", NOW).and_then(Expiry::to_request).as_deref(), Ok("never"));
        let at = expiry_or_never_at("2027-01-31", NOW).and_then(Expiry::to_request);
        assert_eq!(at.as_deref(), Ok("2027-01-31T00:00:00Z"));
        assert!(expiry_or_never_at("soon", NOW).err().unwrap_or_default().ends_with("or never to remove the expiry"));
        assert!(expiry_at("never", NOW).is_err());
        assert!(expiry("never").err().unwrap_or_default().contains("leave the flag out"));
    }

    #[test]
    fn data_limits_take_both_unit_families_in_any_case() {
        let cases = [
            ("0", 0),
            ("unlimited", 0),
            ("Unlimited", 0),
            ("0GiB", 0),
            ("1000000", 1_000_000),
            ("512B", 512),
            ("1KB", 1_000),
            ("1kib", 1_024),
            ("50GiB", 50 * (1 << 30)),
            ("50gib", 50 * (1 << 30)),
            ("50 GiB", 50 * (1 << 30)),
            ("1.5GiB", 1_610_612_736),
            ("1.1GB", 1_100_000_000),
            ("2TB", 2_000_000_000_000),
            ("1TiB", 1 << 40),
            (".5MB", 500_000),
            ("1.5", 1),
            ("18446744073709551615", u64::MAX),
        ];
        for (input, bytes) in cases {
            assert_eq!(data_limit(input), Ok(bytes), "{input}");
        }
    }

    #[test]
    fn bad_data_limits_say_why() {
        let cases = [
            ("50GB/s", "unknown unit 'GB/s'"),
            ("50G", "unknown unit 'G'"),
            ("-5GB", "is not an amount of data"),
            ("lots", "is not an amount of data"),
            ("1.2.3GB", "is not an amount of data"),
            (".", "is not an amount of data"),
            ("", "is not an amount of data"),
            ("0.1B", "less than one byte"),
            ("18446744073709551616", "more than the largest limit"),
            ("20000000TiB", "more than the largest limit"),
            ("1e9", "unknown unit 'e9'"),
        ];
        for (input, reason) in cases {
            let err = data_limit(input).err().unwrap_or_default();
            assert!(err.contains(reason), "{input}: {err}");
        }
    }

    #[test]
    fn constraints_are_labels() {
        let parsed = constraint("region=eu, tier=gold");
        let expected: HashMap<String, String> = [("region".into(), "eu".into()), ("tier".into(), "gold".into())].into();
        assert_eq!(parsed, Ok(expected));
        for (input, reason) in [
            ("region", "is not key=value"),
            ("=eu", "is not key=value"),
            ("a b=c", "is not key=value"),
            ("a=1,a=2", "given twice"),
            (",", "no labels"),
        ] {
            let err = constraint(input).err().unwrap_or_default();
            assert!(err.contains(reason), "{input}: {err}");
        }
    }

    #[test]
    fn timeouts_parse_with_units() {
        assert_eq!(timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(timeout("3"), Ok(Duration::from_secs(3)));
        assert_eq!(timeout("2m"), Ok(Duration::from_secs(120)));
        assert!(timeout("0s").is_err());
        assert!(timeout("1h").is_err());
        assert!(timeout("ten").is_err());
    }

    #[test]
    fn durations_take_s_m_h_d_and_only_lifetimes_refuse_zero() {
        assert_eq!(duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(duration(" 90m "), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("0d"), Ok(Duration::ZERO));
        assert_eq!(lifetime("1h"), Ok(Duration::from_secs(3600)));
        for (input, reason) in [
            ("30", "'30' has no unit; use s, m, h or d, e.g. 30d"),
            ("2w", "unknown unit 'w'"),
            ("1.5h", "unknown unit '.5h'"),
            ("soon", "is not a duration"),
            ("-1h", "is not a duration"),
            ("", "is not a duration"),
        ] {
            let err = duration(input).err().unwrap_or_default();
            assert!(err.contains(reason), "{input}: {err}");
        }
        assert_eq!(lifetime("0h"), Err("the duration must be more than zero".into()));
        assert_eq!(lifetime("0"), Err("the duration must be more than zero".into()));
    }
}
