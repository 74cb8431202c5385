//! `vpnctl user disable|enable|limit|reset-traffic`: whether a user is served, and for how
//! long and how much.
//!
//! The cluster itself moves users to `expired` and `limited`; enabling such a user while the
//! old limit still applies is refused by the server (FAILED_PRECONDITION, exit 1), so `enable`
//! takes the new limit in the same call and the error says how to give one.

use time::OffsetDateTime;
use tonic::Code;
use vpn_proto::v1::{ResetTrafficRequest, UpdateUserRequest, User, UserStatus};

use super::user::{no_such_user, validate_name};
use crate::cli::{EnableArgs, LimitArgs};
use crate::client::Client;
use crate::error::CliError;
use crate::output::{limits_table, status_name, user_json, Document};
use crate::parse::{Expiry, Reset};

/// The `UpdateUser` call: only the fields given are set, the server leaves the others alone.
pub fn update_request(
    name: &str,
    status: Option<UserStatus>,
    expires: Option<Expiry>,
    data_limit: Option<u64>,
    reset: Option<Reset>,
) -> Result<UpdateUserRequest, CliError> {
    validate_name(name)?;
    let expires_at = expires
        .map(Expiry::to_request)
        .transpose()
        .map_err(|err| CliError::InvalidInput(format!("invalid --expires: {err}")))?;
    Ok(UpdateUserRequest {
        name: name.into(),
        status: status.map(|s| s as i32),
        expires_at,
        data_limit_bytes: data_limit,
        reset: reset.map(|r| r.as_str().to_owned()),
    })
}

/// `user disable`: prints one line, as before limits existed.
pub async fn disable(client: &mut Client, name: &str) -> Result<Document, CliError> {
    let req = update_request(name, Some(UserStatus::Disabled), None, None, None)?;
    let user = update(client, req).await?;
    Ok(Document { json: user_json(&user), table: format!("user '{name}' is now {}", status_name(user.status())) })
}

/// `user enable [--expires] [--data-limit]`.
pub async fn enable(client: &mut Client, args: &EnableArgs, now: OffsetDateTime) -> Result<Document, CliError> {
    let name = &args.name;
    let req = update_request(name, Some(UserStatus::Active), args.expires, args.data_limit, None)?;
    let user = update(client, req).await.map_err(|err| match err {
        CliError::Server { code: Code::FailedPrecondition, message } => CliError::Server {
            code: Code::FailedPrecondition,
            message: format!(
                "{message}; give a new limit in the same command, e.g. `vpnctl user enable {name} --expires 30d \
                 --data-limit 50GiB`, or start a new period with `vpnctl user reset-traffic {name}`"
            ),
        },
        other => other,
    })?;
    let headline = format!("user '{name}' is now {}", status_name(user.status()));
    Ok(limits_document(&user, headline, now))
}

/// `user limit`: changes limits, never the status. A user the cluster stopped serving stays
/// stopped until `user enable` (or, for `limited`, `user reset-traffic`), which the output says.
pub async fn limit(client: &mut Client, args: &LimitArgs, now: OffsetDateTime) -> Result<Document, CliError> {
    let name = &args.name;
    let change = &args.change;
    let req = update_request(name, None, change.expires, change.data_limit, change.reset)?;
    let user = update(client, req).await?;
    let headline = match user.status() {
        UserStatus::Limited | UserStatus::Expired | UserStatus::Disabled => format!(
            "changed the limits of user '{name}'; it is still {}: `vpnctl user enable {name}` serves it again",
            status_name(user.status())
        ),
        _ => format!("changed the limits of user '{name}'"),
    };
    Ok(limits_document(&user, headline, now))
}

/// `user reset-traffic`: a new period starts now.
pub async fn reset_traffic(client: &mut Client, name: &str, now: OffsetDateTime) -> Result<Document, CliError> {
    validate_name(name)?;
    let req = ResetTrafficRequest { name: name.into() };
    let user = client
        .users(req, |mut c, req| async move { c.reset_traffic(req).await })
        .await
        .map_err(|err| no_such_user(err, name))?;
    Ok(limits_document(&user, format!("reset the traffic of user '{name}'; a new period started"), now))
}

async fn update(client: &mut Client, req: UpdateUserRequest) -> Result<User, CliError> {
    let name = req.name.clone();
    let reply = client.users(req, |mut c, req| async move { c.update_user(req).await }).await;
    reply.map_err(|err| no_such_user(err, &name))
}

/// A headline saying what happened, then the user's status and limits.
fn limits_document(user: &User, headline: String, now: OffsetDateTime) -> Document {
    Document { json: user_json(user), table: format!("{headline}\n\n{}", limits_table(user, now)) }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn updates_set_only_the_fields_given() {
        let req = update_request("bob", Some(UserStatus::Disabled), None, None, None).ok();
        let expected =
            UpdateUserRequest { name: "bob".into(), status: Some(UserStatus::Disabled as i32), ..Default::default() };
        assert_eq!(req, Some(expected));

        let at = Expiry::At(datetime!(2027-01-31 00:00 UTC));
        let req = update_request("bob", Some(UserStatus::Active), Some(at), Some(50 << 30), None).ok();
        let expected = UpdateUserRequest {
            name: "bob".into(),
            status: Some(UserStatus::Active as i32),
            expires_at: Some("2027-01-31T00:00:00Z".into()),
            data_limit_bytes: Some(50 << 30),
            reset: None,
        };
        assert_eq!(req, Some(expected));
    }

    #[test]
    fn clearing_limits_sends_never_and_zero() {
        let req = update_request("bob", None, Some(Expiry::Never), Some(0), Some(Reset::None)).ok();
        let expected = UpdateUserRequest {
            name: "bob".into(),
            status: None,
            expires_at: Some("never".into()),
            data_limit_bytes: Some(0),
            reset: Some("none".into()),
        };
        assert_eq!(req, Some(expected));
    }

    #[test]
    fn a_bad_name_fails_before_any_call() {
        let err = update_request("-bob", None, None, Some(1), None).err();
        assert_eq!(err.map(|e| e.exit_code()), Some(2));
    }

    #[test]
    fn limit_output_says_what_happened_first() {
        let user = User {
            name: "bob".into(),
            status: UserStatus::Active as i32,
            data_limit_bytes: 50 << 30,
            ..Default::default()
        };
        let doc = limits_document(&user, "changed the limits of user 'bob'".into(), datetime!(2026-03-10 12:00 UTC));
        assert_eq!(
            doc.table,
            "changed the limits of user 'bob'\n\n\
             Status:   active\n\
             Expires:  never\n\
             Data:     0 B of 50 GiB (0%)\n\
             Reset:    none"
        );
        assert_eq!(doc.json["data_limit_bytes"], 50u64 << 30);
    }
}
