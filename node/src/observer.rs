//! Follows openraft's metrics: refreshes our Raft gauges and counts snapshots
//! on every change, and (on a short tick, since it asks the Raft core) flips
//! `grpc.health.v1` between SERVING and NOT_SERVING with `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::node::Node;

const HEALTH_TICK: Duration = Duration::from_millis(200);

pub async fn run(node: Arc<Node>, health: HealthReporter, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut changes = node.raft.metrics();
    let mut tick = tokio::time::interval(HEALTH_TICK);
    // Snapshots already on disk at startup are not new.
    let mut last_snapshot = changes.borrow().snapshot;
    let mut serving = None;
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let m = changes.borrow_and_update();
                let metrics = &node.metrics;
                metrics.term.set(as_i64(m.current_term));
                metrics.leader_id.set(m.current_leader.map_or(0, as_i64));
                metrics.is_leader.set(i64::from(m.current_leader == Some(node.id)));
                metrics.last_log_index.set(m.last_log_index.map_or(0, as_i64));
                metrics.applied_index.set(m.last_applied.map_or(0, |l| as_i64(l.index)));
                metrics.snapshot_index.set(m.snapshot.map_or(0, |l| as_i64(l.index)));
                if m.snapshot != last_snapshot {
                    metrics.snapshots.inc();
                    last_snapshot = m.snapshot;
                }
            }
            _ = tick.tick() => {
                let readiness = node.readiness().await;
                node.metrics.commit_index.set(as_i64(readiness.committed));
                if serving != Some(readiness.is_ready()) {
                    serving = Some(readiness.is_ready());
                    let status = if readiness.is_ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
                    health.set_service_status("", status).await;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

pub fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
