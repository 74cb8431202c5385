//! `vpnctl user add|list|show|delete`: the user lifecycle, and the dispatch of every `user`
//! subcommand (status and limits are in `user_limits`, links and subscriptions in `user_links`).
//!
//! Names are checked here before any network call, with the server's own rule, so a typo fails
//! fast with exit 2 even when the cluster is down.

use serde_json::json;
use time::OffsetDateTime;
use tonic::Code;
use vpn_proto::v1::{CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest, User};

use super::{user_limits, user_links};
use crate::cli::{AddArgs, UserCommand};
use crate::client::Client;
use crate::error::CliError;
use crate::output::{user_json, user_table, users_table, Document};
use crate::parse;

/// The largest page the server allows; fewer round trips for big lists.
const PAGE_SIZE: u32 = 1000;

/// Runs one `user` subcommand.
pub async fn run(command: UserCommand, client: &mut Client) -> Result<Document, CliError> {
    // Tables show expiries relative to now; one reading per command keeps them consistent.
    let now = OffsetDateTime::now_utc();
    match command {
        UserCommand::Add(args) => add(client, &args, now).await,
        UserCommand::List => list(client, now).await,
        UserCommand::Show(arg) => show(client, &arg.name, now).await,
        UserCommand::Delete(arg) => delete(client, &arg.name).await,
        UserCommand::Disable(arg) => user_limits::disable(client, &arg.name).await,
        UserCommand::Enable(args) => user_limits::enable(client, &args, now).await,
        UserCommand::Limit(args) => user_limits::limit(client, &args, now).await,
        UserCommand::ResetTraffic(arg) => user_limits::reset_traffic(client, &arg.name, now).await,
        UserCommand::Links(arg) => user_links::links(client, &arg.name).await,
        UserCommand::Qr(arg) => user_links::qr(client, &arg.name).await,
        UserCommand::RotateToken(arg) => user_links::rotate_token(client, &arg.name).await,
    }
}

/// The server's rule: 1-64 chars of `[a-z0-9._-]`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), CliError> {
    let problem = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.chars().count() > 64 {
        Some(format!("it has {} characters, at most 64 are allowed", name.chars().count()))
    } else if let Some(bad) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-')) {
        Some(format!("'{bad}' is not allowed"))
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("it must start with a letter or digit".to_string())
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(CliError::InvalidInput(format!(
            "invalid user <NAME> '{name}': {problem}; use 1-64 characters of a-z, 0-9, '.', \
             '_', '-', starting with a letter or digit"
        ))),
    }
}

/// The `CreateUser` call `user add` makes; unset flags stay at the API's defaults (no expiry,
/// no limit, no reset, any node).
pub fn create_request(args: &AddArgs) -> Result<CreateUserRequest, CliError> {
    validate_name(&args.name)?;
    let expires_at = match args.expires {
        Some(at) => parse::rfc3339(at).map_err(|err| CliError::InvalidInput(format!("invalid --expires: {err}")))?,
        None => String::new(),
    };
    Ok(CreateUserRequest {
        name: args.name.clone(),
        expires_at,
        data_limit_bytes: args.data_limit.unwrap_or(0),
        reset: args.reset.map(|r| r.as_str().to_owned()).unwrap_or_default(),
        placement_constraint: args.constraint.clone().unwrap_or_default(),
    })
}

async fn add(client: &mut Client, args: &AddArgs, now: OffsetDateTime) -> Result<Document, CliError> {
    let req = create_request(args)?;
    let name = &args.name;
    let user =
        client.users(req, |mut c, req| async move { c.create_user(req).await }).await.map_err(|err| match err {
            CliError::AlreadyExists(_) => {
                CliError::AlreadyExists(format!("user '{name}' already exists; `vpnctl user show {name}` shows it"))
            }
            other => other,
        })?;
    Ok(user_document(&user, now))
}

async fn list(client: &mut Client, now: OffsetDateTime) -> Result<Document, CliError> {
    let mut users: Vec<User> = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = ListUsersRequest { page_size: PAGE_SIZE, page_token: page_token.clone(), ..Default::default() };
        let page = client.users(req, |mut c, req| async move { c.list_users(req).await }).await?;
        users.extend(page.users);
        if page.next_page_token.is_empty() {
            break;
        }
        // A server that hands back the token it was given would make us loop forever.
        if page.next_page_token == page_token {
            return Err(CliError::Server {
                code: Code::Internal,
                message: "ListUsers returned the same page token twice (a server bug)".into(),
            });
        }
        page_token = page.next_page_token;
    }
    Ok(Document {
        json: json!({ "users": users.iter().map(user_json).collect::<Vec<_>>() }),
        table: users_table(&users, now),
    })
}

async fn show(client: &mut Client, name: &str, now: OffsetDateTime) -> Result<Document, CliError> {
    validate_name(name)?;
    let req = GetUserRequest { name: name.into(), ..Default::default() };
    let user = client
        .users(req, |mut c, req| async move { c.get_user(req).await })
        .await
        .map_err(|err| no_such_user(err, name))?;
    Ok(user_document(&user, now))
}

async fn delete(client: &mut Client, name: &str) -> Result<Document, CliError> {
    validate_name(name)?;
    let req = DeleteUserRequest { name: name.into() };
    client
        .users(req, |mut c, req| async move { c.delete_user(req).await })
        .await
        .map_err(|err| no_such_user(err, name))?;
    Ok(Document { json: json!({ "deleted": name }), table: format!("deleted user '{name}'") })
}

fn user_document(user: &User, now: OffsetDateTime) -> Document {
    Document { json: user_json(user), table: user_table(user, now) }
}

/// Replaces the server's NOT_FOUND text with one that says what to do.
pub fn no_such_user(err: CliError, name: &str) -> CliError {
    match err {
        CliError::NotFound(_) => {
            CliError::NotFound(format!("user '{name}' does not exist; `vpnctl user list` shows all users"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::parse::Reset;

    fn add_args(name: &str) -> AddArgs {
        AddArgs { name: name.into(), expires: None, data_limit: None, reset: None, constraint: None }
    }

    #[test]
    fn user_add_sends_only_what_was_given() {
        assert_eq!(
            create_request(&add_args("bob")).ok(),
            Some(CreateUserRequest { name: "bob".into(), ..Default::default() })
        );
        let args = AddArgs {
            expires: Some(datetime!(2027-01-31 00:00 UTC)),
            data_limit: Some(50 << 30),
            reset: Some(Reset::Monthly),
            constraint: Some([("region".to_owned(), "eu".to_owned())].into()),
            ..add_args("bob")
        };
        let expected = CreateUserRequest {
            name: "bob".into(),
            expires_at: "2027-01-31T00:00:00Z".into(),
            data_limit_bytes: 50 << 30,
            reset: "monthly".into(),
            placement_constraint: [("region".to_owned(), "eu".to_owned())].into(),
        };
        assert_eq!(create_request(&args).ok(), Some(expected));
        assert_eq!(create_request(&add_args("Bob")).err().map(|e| e.exit_code()), Some(2));
    }

    #[test]
    fn valid_names_pass() {
        for name in ["alice", "a", "0day", "bob.smith", "x_y-z", &"a".repeat(64)] {
            assert!(validate_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn invalid_names_fail_with_exit_2_and_a_reason() {
        let cases = [
            ("", "it is empty"),
            ("Alice", "'A' is not allowed"),
            ("al ice", "' ' is not allowed"),
            ("ålice", "'å' is not allowed"),
            ("-alice", "must start with a letter or digit"),
            (".hidden", "must start with a letter or digit"),
            ("_x", "must start with a letter or digit"),
        ];
        for (name, reason) in cases {
            let err = validate_name(name).err();
            let text = err.as_ref().map(|e| e.to_string()).unwrap_or_default();
            assert_eq!(err.map(|e| e.exit_code()), Some(2), "{name}");
            assert!(text.contains(reason), "{name}: {text}");
            assert!(text.starts_with("invalid user <NAME>"), "{text}");
        }
        let long = "a".repeat(65);
        let text = validate_name(&long).err().map(|e| e.to_string());
        assert!(text.unwrap_or_default().contains("it has 65 characters"));
    }
}
