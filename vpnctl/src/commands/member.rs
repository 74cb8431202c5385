//! `vpnctl member add|remove`: changes to the Raft membership.

use vpn_proto::v1::{AddMemberRequest, ClusterStatus, RemoveMemberRequest};

use crate::cli::MemberCommand;
use crate::client::Client;
use crate::endpoint::parse_host_port;
use crate::error::CliError;
use crate::output::{status_json, status_table, Document};

/// Runs one `member` subcommand; both print the membership that results.
pub async fn run(command: MemberCommand, client: &mut Client) -> Result<Document, CliError> {
    match command {
        MemberCommand::Add { id, addr, voter } => {
            let (host, port) = parse_host_port(addr.trim()).map_err(|reason| {
                CliError::InvalidInput(format!(
                    "invalid <ADDR> '{addr}': {reason}; give the node's `vpnd --listen` \
                     address as host:port, e.g. 10.0.0.4:7000"
                ))
            })?;
            let addr = format!("{host}:{port}");
            let req = AddMemberRequest {
                id,
                addr: addr.clone(),
                voter,
                // Empty: an operator adding a node by hand has no incarnation to give.
                incarnation: String::new(),
            };
            let status = client.cluster(req, |mut c, req| async move { c.add_member(req).await }).await?;
            let role = if voter { "voter" } else { "learner" };
            Ok(document(&status, format!("added member {id} ({addr}) as {role}")))
        }
        MemberCommand::Remove { id } => {
            let req = RemoveMemberRequest { id };
            let status =
                client.cluster(req, |mut c, req| async move { c.remove_member(req).await }).await.map_err(|err| {
                    match err {
                        CliError::NotFound(_) => CliError::NotFound(format!(
                            "member {id} is not in the cluster; `vpnctl cluster status` lists them"
                        )),
                        other => other,
                    }
                })?;
            Ok(document(&status, format!("removed member {id}")))
        }
    }
}

fn document(status: &ClusterStatus, headline: String) -> Document {
    Document { json: status_json(status), table: format!("{headline}\n\n{}", status_table(status)) }
}
