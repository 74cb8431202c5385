//! Domain <-> proto conversions for the public API.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use vpn_proto::v1;
use vpn_storage::model::{DataplaneNode, User, UserStatus};

/// `sub_base`: where this cluster's subscriptions are served (no trailing slash).
pub fn user(u: &User, sub_base: &str) -> v1::User {
    v1::User {
        id: u.id.to_string(),
        name: u.name.clone(),
        status: status(u.status) as i32,
        created_at: rfc3339(u.created_at_ms),
        credentials: Some(v1::Credentials {
            vless_uuid: u.credentials.vless_uuid.to_string(),
            ss2022_key: u.credentials.ss2022_key.clone(),
        }),
        expires_at: if u.limits.expires_at_ms == 0 { String::new() } else { rfc3339(u.limits.expires_at_ms) },
        data_limit_bytes: u.limits.data_limit_bytes,
        used_bytes: u.used_bytes,
        reset: u.limits.reset.as_str().to_owned(),
        period_started_at: rfc3339(u.period_start_ms),
        placements: u.placements.iter().map(|p| p.node).collect(),
        subscription_url: if u.sub_token.is_empty() {
            String::new()
        } else {
            format!("{sub_base}/sub/{}", u.sub_token)
        },
        subscription_token: u.sub_token.clone(),
        placement_constraint: u.constraint.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// A data-plane node as the API shows it; `users` is how many are placed on it.
pub fn node(n: &DataplaneNode, users: u64) -> v1::Node {
    v1::Node {
        id: n.id,
        public_host: n.public_host.clone(),
        status: n.status().to_owned(),
        users,
        applied_generation: n.applied_generation,
        desired_generation: n.assigned_generation,
        inbounds: n
            .inbounds
            .iter()
            .map(|i| v1::Inbound { protocol: i.protocol.to_string(), port: u32::from(i.port) })
            .collect(),
        labels: n.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        capacity: n.capacity,
        engine_error: n.engine_error.clone().unwrap_or_default(),
        cert_expires_at: n.cert_not_after_ms.map(rfc3339).unwrap_or_default(),
        accounting: n.accounting.clone().unwrap_or_default(),
    }
}

fn status(s: UserStatus) -> v1::UserStatus {
    match s {
        UserStatus::Active => v1::UserStatus::Active,
        UserStatus::Disabled => v1::UserStatus::Disabled,
        UserStatus::Limited => v1::UserStatus::Limited,
        UserStatus::Expired => v1::UserStatus::Expired,
    }
}

/// The status an operator may set (active or disabled); `None` for the
/// statuses only the cluster sets and for unknown values.
pub fn status_from_wire(raw: i32) -> Option<UserStatus> {
    match v1::UserStatus::try_from(raw).ok()? {
        v1::UserStatus::Active => Some(UserStatus::Active),
        v1::UserStatus::Disabled => Some(UserStatus::Disabled),
        v1::UserStatus::Unspecified | v1::UserStatus::Limited | v1::UserStatus::Expired => None,
    }
}

/// Milliseconds since the epoch for an RFC 3339 time; `None` when malformed.
pub fn parse_rfc3339_ms(raw: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(raw, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn unknown_wire_status_is_none() {
        assert_eq!(status_from_wire(0), None);
        assert_eq!(status_from_wire(99), None);
        assert_eq!(status_from_wire(2), Some(UserStatus::Disabled));
        assert_eq!(status_from_wire(3), None, "limited is the cluster's to set");
    }
}
