//! Domain <-> proto conversions for the public API.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use vpn_proto::v1;
use vpn_storage::model::{DataplaneNode, User, UserStatus};
use vpn_storage::state::State;

pub fn user(u: &User) -> v1::User {
    v1::User {
        id: u.id.to_string(),
        name: u.name.clone(),
        status: status(u.status) as i32,
        created_at: rfc3339(u.created_at_ms),
        credentials: Some(v1::Credentials {
            vless_uuid: u.credentials.vless_uuid.to_string(),
            ss2022_key: u.credentials.ss2022_key.clone(),
        }),
    }
}

/// A data-plane node as the API shows it. Every registered node is "ready"
/// until node health exists.
pub fn node(state: &State, n: &DataplaneNode) -> v1::Node {
    v1::Node {
        id: n.id,
        public_host: n.public_host.clone(),
        status: "ready".to_owned(),
        users: state.users_on(n.id).count() as u64,
        applied_generation: n.applied_generation,
        desired_generation: state.generation,
        inbounds: n
            .inbounds
            .iter()
            .map(|i| v1::Inbound { protocol: i.protocol.to_string(), port: u32::from(i.port) })
            .collect(),
        labels: n.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        capacity: n.capacity,
    }
}

fn status(s: UserStatus) -> v1::UserStatus {
    match s {
        UserStatus::Active => v1::UserStatus::Active,
        UserStatus::Disabled => v1::UserStatus::Disabled,
    }
}

/// The domain status for a wire value; `None` for unspecified or unknown values.
pub fn status_from_wire(raw: i32) -> Option<UserStatus> {
    match v1::UserStatus::try_from(raw).ok()? {
        v1::UserStatus::Active => Some(UserStatus::Active),
        v1::UserStatus::Disabled => Some(UserStatus::Disabled),
        v1::UserStatus::Unspecified => None,
    }
}

fn rfc3339(ms: i64) -> String {
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
    }
}
