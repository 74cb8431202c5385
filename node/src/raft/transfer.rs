//! Leadership transfer before a graceful stop (openraft 0.9 has none built
//! in): pick the voter whose log matches ours, stop heartbeats so the
//! followers' leader lease (election_timeout_max) runs out, tell the target to
//! start an election now (Raft's TimeoutNow), and wait briefly for it to win.
//! Without this the followers would still elect someone, but a stopping
//! leader could split the vote or hand off to a lagging node.

use std::time::Duration;

use vpn_proto::internal::TimeoutNowRequest;

use vpn_storage::types::NodeId;

use crate::node::Node;

/// How long a stopping leader waits for a voter to have its whole log.
const CATCH_UP_WAIT: Duration = Duration::from_millis(500);
/// How long the target has to answer and win its election.
const HANDOFF_WAIT: Duration = Duration::from_secs(2);

/// Best effort: returns when another node leads, or after [`HANDOFF_WAIT`].
pub async fn hand_off_leadership(node: &Node) {
    if !node.is_leader() {
        return;
    }
    // Entries proposed just before the stop (e.g. a member's identity) may
    // still be in flight: give a voter a moment to catch up first.
    let target = node
        .raft
        .wait(Some(CATCH_UP_WAIT))
        .metrics(|m| caught_up_voter(m, node.id).is_some(), "a voter caught up")
        .await
        .ok()
        .and_then(|m| caught_up_voter(&m, node.id));
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
    req.set_timeout(HANDOFF_WAIT);
    if let Err(e) = node.peers.raft_client(channel).timeout_now(req).await {
        tracing::warn!(target, "leadership transfer failed: {}", e.message());
        return;
    }
    let moved = node
        .raft
        .wait(Some(HANDOFF_WAIT))
        .metrics(|m| m.current_leader.is_some_and(|l| l != node.id), "leadership handed off")
        .await;
    match moved {
        Ok(_) => tracing::info!(target, "leadership handed off"),
        Err(e) => tracing::warn!(target, "leadership did not move in time: {e}"),
    }
}

/// The lowest-id voter other than `me` that has every entry of the leader's
/// log, with its address.
fn caught_up_voter(m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>, me: NodeId) -> Option<(NodeId, String)> {
    let membership = m.membership_config.membership();
    let repl = m.replication.as_ref()?;
    membership
        .voter_ids()
        .filter(|v| *v != me && repl.get(v).and_then(|l| l.as_ref()).map(|l| l.index) == m.last_log_index)
        .min()
        .and_then(|v| membership.get_node(&v).map(|n| (v, n.addr.clone())))
}
