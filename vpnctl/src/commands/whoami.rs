//! `vpnctl whoami`: who the cluster takes the caller for and what they may do; the first thing
//! to run when a credential does not work as expected. Needs no permission.

use serde_json::{json, Value};
use vpn_proto::v1::{WhoAmIRequest, WhoAmIResponse};

use crate::client::Client;
use crate::error::CliError;
use crate::output::{fields, Document};

/// Runs `whoami`.
pub async fn run(client: &mut Client) -> Result<Document, CliError> {
    let me = client.access(WhoAmIRequest {}, |mut c, req| async move { c.who_am_i(req).await }).await?;
    Ok(Document { json: whoami_json(&me), table: whoami_table(&me) })
}

fn whoami_json(me: &WhoAmIResponse) -> Value {
    json!({
        "principal": me.principal,
        "authenticated_by": me.authenticated_by,
        "groups": me.groups,
        "roles": me.roles,
        "permissions": me.permissions,
    })
}

fn whoami_table(me: &WhoAmIResponse) -> String {
    let list = |items: &[String]| if items.is_empty() { "none".to_owned() } else { items.join(", ") };
    let how = match me.authenticated_by.as_str() {
        "none" => "none: vpnd --insecure lets every caller do anything".to_owned(),
        how => how.to_owned(),
    };
    fields(&[
        ("Principal", me.principal.clone()),
        ("Authenticated by", how),
        ("Groups", list(&me.groups)),
        ("Roles", list(&me.roles)),
        ("Permissions", list(&me.permissions)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot() -> WhoAmIResponse {
        WhoAmIResponse {
            principal: "token:billing-bot".into(),
            authenticated_by: "token".into(),
            groups: vec![],
            roles: vec!["viewer".into()],
            permissions: vec!["users.read".into(), "nodes.read".into()],
        }
    }

    #[test]
    fn json_has_the_fields_and_the_table_reads_as_sentences() {
        let expected = json!({
            "principal": "token:billing-bot",
            "authenticated_by": "token",
            "groups": [],
            "roles": ["viewer"],
            "permissions": ["users.read", "nodes.read"],
        });
        assert_eq!(whoami_json(&bot()), expected);
        assert_eq!(
            whoami_table(&bot()),
            "Principal:         token:billing-bot\n\
             Authenticated by:  token\n\
             Groups:            none\n\
             Roles:             viewer\n\
             Permissions:       users.read, nodes.read"
        );
        let insecure = WhoAmIResponse { authenticated_by: "none".into(), ..bot() };
        assert!(whoami_table(&insecure).contains("Authenticated by:  none: vpnd --insecure"));
    }
}
