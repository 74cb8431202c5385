//! Registering this node's offer through the cluster once a leader is known;
//! retried while the leader is away, never blocking serving.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vpn_storage::command::{Command, CommandResponse};
use vpn_storage::model::DataplaneNode;

use crate::node::Node;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Registers `offer` (upsert through the leader) unless the replicated state
/// already holds it; retries with backoff until it is recorded or shutdown.
pub async fn register(node: Arc<Node>, offer: DataplaneNode, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if node.state.read(|s| s.dataplane_nodes.get(&node.id).is_some_and(|known| known.same_offer(&offer))) {
            tracing::info!("this data-plane node's offer is registered");
            return;
        }
        match node.propose_anywhere(Command::RegisterDataplaneNode(offer.clone())).await {
            Ok(CommandResponse::DataplaneNode(_)) => {
                tracing::info!(public_host = %offer.public_host, inbounds = offer.inbounds.len(), "registered this data-plane node");
                return;
            }
            Ok(other) => tracing::warn!("registering this data-plane node: unexpected result {other:?}"),
            Err(e) => tracing::debug!("registering this data-plane node: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
