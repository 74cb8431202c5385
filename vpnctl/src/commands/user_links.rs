//! `vpnctl user links|qr|rotate-token`: how a user's clients connect.
//!
//! Links come from the server (it knows the nodes' hosts, ports and keys); the subscription URL
//! lists the same links for client apps that refresh themselves.

use serde_json::json;
use vpn_proto::v1::{GetUserLinksRequest, RotateTokenRequest, User, UserLink};

use super::user::{no_such_user, validate_name};
use crate::client::Client;
use crate::error::CliError;
use crate::output::{table, user_json, Document};

/// `user links`: a table of links, or `{"links": [...]}`.
pub async fn links(client: &mut Client, name: &str) -> Result<Document, CliError> {
    let links = fetch(client, name).await?;
    Ok(Document { json: links_json(&links), table: links_table(name, &links) })
}

/// `user qr`: the links as QR codes; the JSON is the same as `user links`.
pub async fn qr(client: &mut Client, name: &str) -> Result<Document, CliError> {
    let links = fetch(client, name).await?;
    Ok(Document { json: links_json(&links), table: qr_text(name, &links)? })
}

/// `user rotate-token`: prints the new subscription URL (the JSON is the whole user).
pub async fn rotate_token(client: &mut Client, name: &str) -> Result<Document, CliError> {
    validate_name(name)?;
    let req = RotateTokenRequest { name: name.into() };
    let user = client
        .users(req, |mut c, req| async move { c.rotate_token(req).await })
        .await
        .map_err(|err| no_such_user(err, name))?;
    Ok(Document { json: user_json(&user), table: rotated_text(&user) })
}

/// The new URL on a line of its own, so it is easy to copy.
fn rotated_text(user: &User) -> String {
    let name = &user.name;
    match user.subscription_url.as_str() {
        "" => format!("rotated the subscription token of user '{name}'; the old URL no longer works"),
        url => format!("new subscription URL of user '{name}' (the old one no longer works):\n{url}"),
    }
}

async fn fetch(client: &mut Client, name: &str) -> Result<Vec<UserLink>, CliError> {
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
    fn a_rotated_token_prints_the_new_url_alone_on_its_line() {
        let user =
            User { name: "alice".into(), subscription_url: "http://h:8080/sub/new".into(), ..Default::default() };
        assert_eq!(rotated_text(&user).lines().last(), Some("http://h:8080/sub/new"));
        let user = User { name: "alice".into(), ..Default::default() };
        assert!(rotated_text(&user).contains("no longer works"));
    }
}
