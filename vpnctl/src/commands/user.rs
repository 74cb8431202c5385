//! `vpnctl user ...`: the user lifecycle.
//!
//! Names are checked here before any network call, with the server's own rule, so a typo fails
//! fast with exit 2 even when the cluster is down.

use serde_json::json;
use tonic::Code;
use vpn_proto::v1::{
    CreateUserRequest, DeleteUserRequest, GetUserLinksRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest,
    User, UserLink, UserStatus,
};

use crate::cli::UserCommand;
use crate::client::Client;
use crate::error::CliError;
use crate::output::{status_name, table, user_json, user_table, users_table, Document};

/// The largest page the server allows; fewer round trips for big lists.
const PAGE_SIZE: u32 = 1000;

/// Runs one `user` subcommand.
pub async fn run(command: UserCommand, client: &mut Client) -> Result<Document, CliError> {
    match command {
        UserCommand::Add(arg) => add(client, &arg.name).await,
        UserCommand::List => list(client).await,
        UserCommand::Show(arg) => show(client, &arg.name).await,
        UserCommand::Delete(arg) => delete(client, &arg.name).await,
        UserCommand::Disable(arg) => set_status(client, &arg.name, UserStatus::Disabled).await,
        UserCommand::Enable(arg) => set_status(client, &arg.name, UserStatus::Active).await,
        UserCommand::Links(arg) => {
            let links = links(client, &arg.name).await?;
            Ok(Document { json: links_json(&links), table: links_table(&arg.name, &links) })
        }
        UserCommand::Qr(arg) => {
            let links = links(client, &arg.name).await?;
            Ok(Document { json: links_json(&links), table: qr_text(&arg.name, &links)? })
        }
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

async fn add(client: &mut Client, name: &str) -> Result<Document, CliError> {
    validate_name(name)?;
    let req = CreateUserRequest { name: name.into() };
    let user =
        client.users(req, |mut c, req| async move { c.create_user(req).await }).await.map_err(|err| match err {
            CliError::AlreadyExists(_) => {
                CliError::AlreadyExists(format!("user '{name}' already exists; `vpnctl user show {name}` shows it"))
            }
            other => other,
        })?;
    Ok(user_document(&user))
}

async fn list(client: &mut Client) -> Result<Document, CliError> {
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
        table: users_table(&users),
    })
}

async fn show(client: &mut Client, name: &str) -> Result<Document, CliError> {
    validate_name(name)?;
    let req = GetUserRequest { name: name.into(), ..Default::default() };
    let user = client
        .users(req, |mut c, req| async move { c.get_user(req).await })
        .await
        .map_err(|err| no_such_user(err, name))?;
    Ok(user_document(&user))
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

async fn set_status(client: &mut Client, name: &str, status: UserStatus) -> Result<Document, CliError> {
    validate_name(name)?;
    let req = UpdateUserRequest { name: name.into(), status: Some(status as i32) };
    let user = client
        .users(req, |mut c, req| async move { c.update_user(req).await })
        .await
        .map_err(|err| no_such_user(err, name))?;
    Ok(Document { json: user_json(&user), table: format!("user '{name}' is now {}", status_name(user.status())) })
}

async fn links(client: &mut Client, name: &str) -> Result<Vec<UserLink>, CliError> {
    validate_name(name)?;
    let req = GetUserLinksRequest { name: name.into(), ..Default::default() };
    let reply = client.users(req, |mut c, req| async move { c.get_user_links(req).await }).await;
    Ok(reply.map_err(|err| no_such_user(err, name))?.links)
}

/// `{"links": [{"node_id", "protocol", "url"}]}`, as the contract fixes it.
pub fn links_json(links: &[UserLink]) -> serde_json::Value {
    let links: Vec<_> =
        links.iter().map(|l| json!({ "node_id": l.node_id, "protocol": l.protocol, "url": l.url })).collect();
    json!({ "links": links })
}

fn links_table(name: &str, links: &[UserLink]) -> String {
    if links.is_empty() {
        return no_links(name);
    }
    let header = ["NODE", "PROTOCOL", "URL"].map(String::from).to_vec();
    let rows = links.iter().map(|l| vec![l.node_id.to_string(), l.protocol.clone(), l.url.clone()]);
    table(&std::iter::once(header).chain(rows).collect::<Vec<_>>())
}

/// One QR code per link, each under a line naming node and protocol.
fn qr_text(name: &str, links: &[UserLink]) -> Result<String, CliError> {
    if links.is_empty() {
        return Ok(no_links(name));
    }
    let mut out = Vec::new();
    for link in links {
        let code = crate::qr::render(&link.url).map_err(|e| CliError::Output(std::io::Error::other(e)))?;
        out.push(format!("node {} {}:\n{code}\n{}", link.node_id, link.protocol, link.url));
    }
    Ok(out.join("\n\n"))
}

fn no_links(name: &str) -> String {
    format!("user '{name}' has no links yet: no data-plane node serves it (see `vpnctl node list`)")
}

fn user_document(user: &User) -> Document {
    Document { json: user_json(user), table: user_table(user) }
}

/// Replaces the server's NOT_FOUND text with one that says what to do.
fn no_such_user(err: CliError, name: &str) -> CliError {
    match err {
        CliError::NotFound(_) => {
            CliError::NotFound(format!("user '{name}' does not exist; `vpnctl user list` shows all users"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(node_id: u64, protocol: &str, url: &str) -> UserLink {
        UserLink { node_id, protocol: protocol.into(), url: url.into() }
    }

    #[test]
    fn links_json_has_the_contract_shape() {
        let links = [link(1, "vless-tls", "vless://u@h:443#a"), link(2, "shadowsocks-2022", "ss://m:p@h:8388#a")];
        assert_eq!(
            links_json(&links),
            json!({"links": [
                {"node_id": 1, "protocol": "vless-tls", "url": "vless://u@h:443#a"},
                {"node_id": 2, "protocol": "shadowsocks-2022", "url": "ss://m:p@h:8388#a"},
            ]})
        );
        assert_eq!(links_json(&[]), json!({"links": []}));
    }

    #[test]
    fn link_tables_and_qr_codes_name_node_and_protocol() {
        let links = [link(3, "vless-tls", "vless://u@h:443#a")];
        assert_eq!(links_table("alice", &links), "NODE  PROTOCOL   URL\n3     vless-tls  vless://u@h:443#a");
        let qr = qr_text("alice", &links).expect("qr");
        assert!(qr.starts_with("node 3 vless-tls:\n"), "{qr}");
        assert!(qr.ends_with("vless://u@h:443#a"), "{qr}");
        assert!(qr.contains('█'));
        assert!(links_table("alice", &[]).contains("no links yet"));
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
