//! The agent's two writes through the cluster: registering this node's offer
//! once a leader is known, and reporting the generation its engines applied
//! (only when it advanced, at most once per [`REPORT_EVERY`]). Both retry
//! while the leader is away; neither ever blocks serving.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::Instant;
use vpn_runtime::ApplyStatus;
use vpn_storage::command::{Command, CommandResponse};
use vpn_storage::model::DataplaneNode;

use crate::node::Node;
use crate::observer::as_i64;

/// Least time between two reports of this node's applied generation.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often a node waiting to report looks at the replicated state again.
const RECHECK: Duration = Duration::from_secs(1);
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

/// Follows the reconciler's status: logs errors when they change, sets the
/// applied-generation gauge, and reports an advanced generation to the
/// cluster (coalesced: the newest value is sent, at most once per second).
pub async fn report_applied(
    node: Arc<Node>,
    mut status: watch::Receiver<ApplyStatus>,
    applied_gauge: Gauge,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_error: Option<String> = None;
    let mut acknowledged: Option<u64> = None;
    let mut next_report = Instant::now();
    loop {
        let current = status.borrow_and_update().clone();
        applied_gauge.set(as_i64(current.applied_generation));
        if current.last_error != last_error {
            match &current.last_error {
                Some(e) => tracing::warn!("data plane: {e}"),
                None => tracing::info!(generation = current.applied_generation, "data plane applied the desired state"),
            }
            last_error = current.last_error.clone();
        }
        let target = current.applied_generation;
        let recorded = node.state.read(|s| s.dataplane_nodes.get(&node.id).map(|n| n.applied_generation));
        // Only a registered node reports, and only a generation it has not reported yet.
        let due = recorded.is_some_and(|r| r < target) && acknowledged != Some(target);
        tokio::select! {
            () = tokio::time::sleep_until(next_report), if due => {
                match node.propose_anywhere(Command::ReportApplied { node: node.id, generation: target }).await {
                    Ok(_) => {
                        acknowledged = Some(target);
                        next_report = Instant::now() + REPORT_EVERY;
                    }
                    Err(e) => {
                        tracing::debug!("reporting applied generation {target}: {e}");
                        next_report = Instant::now() + RECHECK;
                    }
                }
            }
            () = tokio::time::sleep(RECHECK), if !due => {}
            changed = status.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
