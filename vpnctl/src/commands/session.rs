//! `vpnctl session revoke`: ends login sessions (`vpnctl login`) before they expire, on every
//! node at once: one person's (a lost laptop, a person who left), or everyone's.

use serde_json::json;
use vpn_proto::v1::RevokeSessionsRequest;

use crate::cli::SessionCommand;
use crate::client::Client;
use crate::error::CliError;
use crate::output::Document;

/// Runs one `session` subcommand.
pub async fn run(command: SessionCommand, client: &mut Client) -> Result<Document, CliError> {
    let SessionCommand::Revoke { user, all } = command;
    let req = RevokeSessionsRequest { principal: user.clone().unwrap_or_default(), all };
    let reply = client.access(req, |mut c, req| async move { c.revoke_sessions(req).await }).await?;
    let table = match &user {
        Some(principal) => format!(
            "revoked every session of {principal}: they fail as unauthenticated on every node; a new login works"
        ),
        None => "revoked every session of everyone (a new session key): everyone logs in again".to_owned(),
    };
    Ok(Document { json: json!({ "principal": reply.principal, "all": reply.all }), table })
}
