//! Leadership transfer before a graceful stop (openraft 0.9 has none built
//! in): pick the voter whose log matches ours, stop heartbeats so the
//! followers' leader lease (election_timeout_max) runs out, tell the target to
//! start an election now (Raft's TimeoutNow), and wait briefly for it to win.
//! Without this the followers would still elect someone, but a stopping
//! leader could split the vote or hand off to a lagging node.

use std::time::Duration;

use vpn_proto::internal::raft_client::RaftClient;
use vpn_proto::internal::TimeoutNowRequest;

use crate::node::Node;

/// Best effort: returns when another node leads, or after `wait`.
pub async fn hand_off_leadership(node: &Node, wait: Duration) {
    if !node.is_leader() {
        return;
    }
    let target = {
        let metrics = node.raft.metrics();
        let m = metrics.borrow();
        let last = m.last_log_index;
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().filter(|v| *v != node.id).collect();
        m.replication.as_ref().and_then(|repl| {
            voters
                .into_iter()
                .filter(|v| repl.get(v).and_then(|l| l.as_ref()).map(|l| l.index) == last)
                .min()
                .and_then(|v| m.membership_config.membership().get_node(&v).map(|n| (v, n.addr.clone())))
        })
    };
    let Some((target, addr)) = target else {
        tracing::info!("no caught-up voter to hand leadership to");
        return;
    };
    let Ok(channel) = node.peers.channel(&addr) else { return };
    node.raft.runtime_config().heartbeat(false);
    node.raft.runtime_config().elect(false);
    let lease = Duration::from_millis(node.raft.config().election_timeout_max);
    tokio::time::sleep(lease + Duration::from_millis(20)).await;
    let mut req = tonic::Request::new(TimeoutNowRequest {});
    req.set_timeout(wait);
    if let Err(e) = RaftClient::new(channel).timeout_now(req).await {
        tracing::warn!(target, "leadership transfer failed: {}", e.message());
        return;
    }
    let moved = node
        .raft
        .wait(Some(wait))
        .metrics(|m| m.current_leader.is_some_and(|l| l != node.id), "leadership handed off")
        .await;
    match moved {
        Ok(_) => tracing::info!(target, "leadership handed off"),
        Err(e) => tracing::warn!(target, "leadership did not move in time: {e}"),
    }
}
