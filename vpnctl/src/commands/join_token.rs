//! `vpnctl join-token create | list | revoke`: tokens a new node joins with
//! (`vpnd --join HOST:PORT --join-token TOKEN`), carrying the CA's digest and
//! a secret the cluster keeps only a hash of.

use serde_json::json;
use vpn_proto::v1::{CreateJoinTokenRequest, JoinTokenInfo, ListJoinTokensRequest, RevokeJoinTokenRequest};

use crate::cli::JoinTokenCommand;
use crate::client::Client;
use crate::error::CliError;
use crate::output::{table, Document};

pub async fn run(command: JoinTokenCommand, client: &mut Client) -> Result<Document, CliError> {
    match command {
        JoinTokenCommand::Create { role, ttl, uses } => {
            let req = CreateJoinTokenRequest { role: role.as_str().to_owned(), ttl_seconds: ttl.as_secs(), uses };
            let t = client.cluster(req, |mut c, req| async move { c.create_join_token(req).await }).await?;
            let json = json!({ "id": t.id, "token": t.token, "role": t.role, "expires_at": t.expires_at });
            // The token alone, so `TOKEN=$(vpnctl join-token create ...)` works.
            Ok(Document { json, table: t.token })
        }
        JoinTokenCommand::List => {
            let reply = client
                .cluster(ListJoinTokensRequest {}, |mut c, req| async move { c.list_join_tokens(req).await })
                .await?;
            let mut rows = vec![vec!["ID".into(), "ROLE".into(), "EXPIRES".into(), "USES LEFT".into()]];
            rows.extend(
                reply
                    .join_tokens
                    .iter()
                    .map(|t| vec![t.id.clone(), t.role.clone(), t.expires_at.clone(), t.uses_left.to_string()]),
            );
            let listed: Vec<_> = reply.join_tokens.iter().map(info_json).collect();
            Ok(Document { json: json!({ "join_tokens": listed }), table: table(&rows) })
        }
        JoinTokenCommand::Revoke { id } => {
            let req = RevokeJoinTokenRequest { id: id.clone() };
            let t = client.cluster(req, |mut c, req| async move { c.revoke_join_token(req).await }).await?;
            Ok(Document { json: info_json(&t), table: format!("revoked join token {id}") })
        }
    }
}

fn info_json(t: &JoinTokenInfo) -> serde_json::Value {
    json!({ "id": t.id, "role": t.role, "expires_at": t.expires_at, "uses_left": t.uses_left })
}
