//! Validation of the user fields a request may set: expiry, data limit
//! period, placement constraint. Errors name the request field.

use std::collections::{BTreeMap, HashMap};

use vpn_storage::model::ResetPeriod;

use super::convert;
use crate::error::Error;

/// Longest label key or value in a placement constraint.
const MAX_LABEL_LEN: usize = 63;

/// An RFC 3339 expiry; empty means never (0). On creation it must lie ahead.
pub fn expires_at(raw: &str, now_ms: i64, allow_never_word: bool) -> Result<i64, Error> {
    let raw = raw.trim();
    if raw.is_empty() || (allow_never_word && raw == "never") {
        return Ok(0);
    }
    let ms = convert::parse_rfc3339_ms(raw).ok_or_else(|| Error::InvalidArgument {
        field: "expires_at",
        detail: format!("{raw:?} is not an RFC 3339 time, e.g. 2027-01-31T00:00:00Z"),
    })?;
    if ms <= now_ms {
        return Err(Error::InvalidArgument {
            field: "expires_at",
            detail: format!("{raw} is in the past: give a later time"),
        });
    }
    Ok(ms)
}

/// `none`, `daily`, `weekly` or `monthly`; empty means none.
pub fn reset(raw: &str) -> Result<ResetPeriod, Error> {
    if raw.is_empty() {
        return Ok(ResetPeriod::None);
    }
    ResetPeriod::parse(raw).ok_or_else(|| Error::InvalidArgument {
        field: "reset",
        detail: format!("{raw:?} is not a reset period: use none, daily, weekly or monthly"),
    })
}

/// A placement constraint: at most `CONSTRAINT_PAIRS` label pairs, values not empty.
pub fn constraint(raw: &HashMap<String, String>) -> Result<BTreeMap<String, String>, Error> {
    const FIELD: &str = "placement_constraint";
    if raw.len() > crate::limits::CONSTRAINT_PAIRS {
        let detail = format!("{} pairs: at most {}", raw.len(), crate::limits::CONSTRAINT_PAIRS);
        return Err(Error::InvalidArgument { field: FIELD, detail });
    }
    if let Some(k) = raw.iter().find(|(_, v)| v.is_empty()).map(|(k, _)| k) {
        return Err(Error::InvalidArgument { field: FIELD, detail: format!("{k}=: give a value") });
    }
    labels(FIELD, raw)
}

/// Label pairs: keys of 1-63, values of 0-63 characters of `[A-Za-z0-9._/-]`
/// (what `--labels` takes, so what a node offers can be matched).
pub fn labels(field: &'static str, raw: &HashMap<String, String>) -> Result<BTreeMap<String, String>, Error> {
    let ok = |s: &str| {
        s.len() <= MAX_LABEL_LEN && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    };
    raw.iter()
        .map(|(k, v)| {
            if !k.is_empty() && ok(k) && ok(v) {
                Ok((k.clone(), v.clone()))
            } else {
                Err(Error::InvalidArgument {
                    field,
                    detail: format!(
                        "{k}={v}: keys and values are 1-63 characters of A-Z, a-z, 0-9, '.', '_', '-', '/'"
                    ),
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constraint_takes_at_most_its_limit_of_pairs() {
        let pairs = |n: usize| (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect::<HashMap<_, _>>();
        assert_eq!(constraint(&pairs(crate::limits::CONSTRAINT_PAIRS)).map(|c| c.len()).ok(), Some(16));
        let over = constraint(&pairs(crate::limits::CONSTRAINT_PAIRS + 1));
        assert!(matches!(over, Err(Error::InvalidArgument { field: "placement_constraint", .. })));
    }

    #[test]
    fn fields_are_checked_and_named() {
        assert_eq!(expires_at("", 0, false).ok(), Some(0));
        assert_eq!(expires_at("never", 0, true).ok(), Some(0));
        assert_eq!(expires_at("2030-01-01T00:00:00Z", 0, false).ok(), Some(1_893_456_000_000));
        let field = |r: Result<i64, Error>| match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(expires_at("tomorrow", 0, false)), "expires_at");
        assert_eq!(field(expires_at("never", 0, false)), "expires_at");
        assert_eq!(field(expires_at("2001-01-01T00:00:00Z", 1_700_000_000_000, false)), "expires_at");
        assert_eq!(reset("monthly").ok(), Some(ResetPeriod::Monthly));
        assert!(matches!(reset("yearly"), Err(Error::InvalidArgument { field: "reset", .. })));
        let good = HashMap::from([("region".to_owned(), "eu".to_owned())]);
        assert_eq!(constraint(&good).ok().map(|c| c.len()), Some(1));
        let bad = HashMap::from([("region".to_owned(), "eu west".to_owned())]);
        assert!(matches!(constraint(&bad), Err(Error::InvalidArgument { field: "placement_constraint", .. })));
    }
}
