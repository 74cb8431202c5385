//! `vpnctl cluster status`.

use vpn_proto::v1::StatusRequest;

use crate::cli::ClusterCommand;
use crate::client::Client;
use crate::error::CliError;
use crate::output::{status_json, status_table, Document};

/// Runs one `cluster` subcommand.
pub async fn run(command: ClusterCommand, client: &mut Client) -> Result<Document, CliError> {
    match command {
        ClusterCommand::Status => {
            let status = client.cluster(StatusRequest {}, |mut c, req| async move { c.status(req).await }).await?;
            Ok(Document { json: status_json(&status), table: status_table(&status) })
        }
    }
}
