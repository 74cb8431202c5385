//! Users in both formats. The JSON keeps the API's values (bytes, RFC 3339 times, `null` for
//! "none") so scripts can compute with them; the tables turn them into sizes and relative
//! times, with a hint where a user is not served.

use serde_json::{json, Value};
use time::OffsetDateTime;
use vpn_proto::v1::{User, UserStatus};

use super::{fields, table};
use crate::human;

/// `active`, `disabled`, `limited`, `expired`, or `unspecified` when a server sends no status.
pub fn status_name(status: UserStatus) -> &'static str {
    match status {
        UserStatus::Active => "active",
        UserStatus::Disabled => "disabled",
        UserStatus::Limited => "limited",
        UserStatus::Expired => "expired",
        UserStatus::Unspecified => "unspecified",
    }
}

/// A user object as scripts see it: every command that prints a user prints this.
pub fn user_json(user: &User) -> Value {
    let credentials =
        user.credentials.as_ref().map(|c| json!({ "vless_uuid": c.vless_uuid, "ss2022_key": c.ss2022_key }));
    let constraint: serde_json::Map<String, Value> =
        sorted_constraint(user).into_iter().map(|(k, v)| (k.to_owned(), Value::from(v))).collect();
    json!({
        "name": user.name,
        "id": user.id,
        "status": status_name(user.status()),
        "created_at": user.created_at,
        "credentials": credentials,
        "expires_at": non_empty(&user.expires_at),
        "data_limit_bytes": user.data_limit_bytes,
        "used_bytes": user.used_bytes,
        "reset": reset_name(user),
        "period_started_at": non_empty(&user.period_started_at),
        "placements": user.placements,
        "placement_constraint": constraint,
        "subscription_url": non_empty(&user.subscription_url),
        "subscription_token": non_empty(&user.subscription_token),
    })
}

/// The API's "" means "none": `null` in JSON, so scripts need not know that convention.
fn non_empty(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::from(text)
    }
}

/// An older server sends no reset period, which means none.
fn reset_name(user: &User) -> &str {
    if user.reset.is_empty() {
        "none"
    } else {
        &user.reset
    }
}

fn sorted_constraint(user: &User) -> Vec<(&str, &str)> {
    let mut labels: Vec<(&str, &str)> =
        user.placement_constraint.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    labels.sort_unstable();
    labels
}

/// One user for people, credentials included (what `user show` and `user add` print).
pub fn user_table(user: &User, now: OffsetDateTime) -> String {
    let credentials = user.credentials.clone().unwrap_or_default();
    let placements = if user.placements.is_empty() {
        "none".to_owned()
    } else {
        let ids: Vec<String> = user.placements.iter().map(u64::to_string).collect();
        format!("nodes {}", ids.join(", "))
    };
    let constraint = sorted_constraint(user).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let subscription = if user.subscription_url.is_empty() { "none".to_owned() } else { user.subscription_url.clone() };
    let mut pairs = vec![
        ("Name", user.name.clone()),
        ("ID", user.id.clone()),
        ("Created", user.created_at.clone()),
        ("Placements", placements),
        ("Constraint", if constraint.is_empty() { "none".into() } else { constraint }),
        ("Subscription", subscription),
        ("VLESS UUID", credentials.vless_uuid),
        ("SS-2022 key", credentials.ss2022_key),
    ];
    pairs.splice(3..3, limit_pairs(user, now));
    fields(&pairs)
}

/// Status and limits only: what the commands that change them print after the change.
pub fn limits_table(user: &User, now: OffsetDateTime) -> String {
    fields(&limit_pairs(user, now))
}

fn limit_pairs(user: &User, now: OffsetDateTime) -> Vec<(&'static str, String)> {
    let expires =
        if user.expires_at.is_empty() { "never".to_owned() } else { human::time_with_relative(&user.expires_at, now) };
    let period = match user.period_started_at.as_str() {
        "" => String::new(),
        started => format!(", period started {}", human::time_with_relative(started, now)),
    };
    vec![
        ("Status", status_line(user)),
        ("Expires", expires),
        ("Data", human::usage(user.used_bytes, user.data_limit_bytes)),
        ("Reset", format!("{}{period}", reset_name(user))),
    ]
}

/// The status, with what serves the user again when the cluster stopped serving them.
fn status_line(user: &User) -> String {
    let name = &user.name;
    match user.status() {
        UserStatus::Limited => format!(
            "limited: the data limit is used up; `vpnctl user reset-traffic {name}` or \
             `vpnctl user limit {name} --data-limit <size>` lifts it"
        ),
        UserStatus::Expired => {
            format!("expired: `vpnctl user enable {name} --expires <when>` serves the user again")
        }
        status => status_name(status).to_owned(),
    }
}

/// `user list` for people, one row per user.
pub fn users_table(users: &[User], now: OffsetDateTime) -> String {
    if users.is_empty() {
        return "no users yet; add one with `vpnctl user add <name>`".into();
    }
    let header = ["NAME", "STATUS", "USAGE", "EXPIRES", "NODES", "CREATED", "ID"].map(String::from).to_vec();
    let rows = users.iter().map(|u| {
        let expires =
            if u.expires_at.is_empty() { "never".to_owned() } else { human::relative_rfc3339(&u.expires_at, now) };
        let nodes: Vec<String> = u.placements.iter().map(u64::to_string).collect();
        vec![
            u.name.clone(),
            status_name(u.status()).into(),
            human::usage_short(u.used_bytes, u.data_limit_bytes),
            expires,
            if nodes.is_empty() { "-".into() } else { nodes.join(",") },
            u.created_at.clone(),
            u.id.clone(),
        ]
    });
    table(&std::iter::once(header).chain(rows).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use vpn_proto::v1::Credentials;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);

    fn alice() -> User {
        User {
            id: "u-1".into(),
            name: "alice".into(),
            status: UserStatus::Active as i32,
            created_at: "2025-01-02T03:04:05Z".into(),
            credentials: Some(Credentials {
                vless_uuid: "0b6f0e6e-4c1e-4b8a-9d3e-2f1a7c5d9e10".into(),
                ss2022_key: "c2VjcmV0LWtleS0xNmJ5dA==".into(),
            }),
            expires_at: "2026-04-09T12:00:00Z".into(),
            data_limit_bytes: 50 << 30,
            used_bytes: 1_288_490_189,
            reset: "monthly".into(),
            period_started_at: "2026-03-01T00:00:00Z".into(),
            placements: vec![4, 1],
            subscription_token: "tok".into(),
            subscription_url: "http://10.0.0.1:8080/sub/tok".into(),
            placement_constraint: [("tier".into(), "gold".into()), ("region".into(), "eu".into())].into(),
        }
    }

    /// What an older server, or a new user without limits, sends.
    fn bob() -> User {
        User {
            id: "u-2".into(),
            name: "bob".into(),
            status: UserStatus::Disabled as i32,
            created_at: "2025-01-02T03:04:05Z".into(),
            ..Default::default()
        }
    }

    #[test]
    fn user_json_has_the_contract_shape() {
        let expected = json!({
            "name": "alice",
            "id": "u-1",
            "status": "active",
            "created_at": "2025-01-02T03:04:05Z",
            "credentials": {
                "vless_uuid": "0b6f0e6e-4c1e-4b8a-9d3e-2f1a7c5d9e10",
                "ss2022_key": "c2VjcmV0LWtleS0xNmJ5dA==",
            },
            "expires_at": "2026-04-09T12:00:00Z",
            "data_limit_bytes": 53_687_091_200u64,
            "used_bytes": 1_288_490_189,
            "reset": "monthly",
            "period_started_at": "2026-03-01T00:00:00Z",
            "placements": [4, 1],
            "placement_constraint": {"region": "eu", "tier": "gold"},
            "subscription_url": "http://10.0.0.1:8080/sub/tok",
            "subscription_token": "tok",
        });
        assert_eq!(user_json(&alice()), expected);
    }

    #[test]
    fn missing_values_are_null_or_none_in_json() {
        let json = user_json(&bob());
        for key in ["expires_at", "period_started_at", "subscription_url", "subscription_token", "credentials"] {
            assert_eq!(json[key], Value::Null, "{key}");
        }
        assert_eq!((json["reset"].clone(), json["placements"].clone()), (json!("none"), json!([])));
        assert_eq!((json["data_limit_bytes"].clone(), json["status"].clone()), (json!(0), json!("disabled")));
    }

    #[test]
    fn statuses_have_the_contract_names() {
        let names =
            [UserStatus::Active, UserStatus::Disabled, UserStatus::Limited, UserStatus::Expired].map(status_name);
        assert_eq!(names, ["active", "disabled", "limited", "expired"]);
    }

    #[test]
    fn user_show_reads_like_an_operator_talks() {
        let expected = "\
Name:          alice
ID:            u-1
Created:       2025-01-02T03:04:05Z
Status:        active
Expires:       2026-04-09T12:00:00Z (in 30 days)
Data:          1.2 GiB of 50 GiB (2.4%)
Reset:         monthly, period started 2026-03-01T00:00:00Z (9 days ago)
Placements:    nodes 4, 1
Constraint:    region=eu,tier=gold
Subscription:  http://10.0.0.1:8080/sub/tok
VLESS UUID:    0b6f0e6e-4c1e-4b8a-9d3e-2f1a7c5d9e10
SS-2022 key:   c2VjcmV0LWtleS0xNmJ5dA==";
        assert_eq!(user_table(&alice(), NOW), expected);
        let shown = user_table(&bob(), NOW);
        for line in
            ["Expires:       never", "Data:          0 B, no limit", "Reset:         none", "Placements:    none"]
        {
            assert!(shown.contains(line), "{line}\n{shown}");
        }
    }

    #[test]
    fn users_not_served_say_what_serves_them_again() {
        let limited = User { status: UserStatus::Limited as i32, ..alice() };
        assert!(limits_table(&limited, NOW).contains("`vpnctl user reset-traffic alice`"));
        let expired = User { status: UserStatus::Expired as i32, ..alice() };
        assert!(limits_table(&expired, NOW).contains("`vpnctl user enable alice --expires <when>`"));
    }

    #[test]
    fn user_list_has_usage_expiry_and_nodes() {
        assert_eq!(
            users_table(&[alice(), bob()], NOW),
            "NAME   STATUS    USAGE             EXPIRES     NODES  CREATED               ID\n\
             alice  active    1.2 GiB / 50 GiB  in 30 days  4,1    2025-01-02T03:04:05Z  u-1\n\
             bob    disabled  0 B               never       -      2025-01-02T03:04:05Z  u-2"
        );
        assert!(users_table(&[], NOW).starts_with("no users yet"));
    }
}
