//! The data-plane node's heartbeat to the leader, every `--node-heartbeat-ms`:
//! its engines' health and applied generation, and its traffic. Traffic is
//! read from the engines, journaled on this node's disk first, and sent until
//! the leader replies that the cluster recorded it (at-least-once delivery,
//! made exactly-once by the leader's per-(node, sequence) deduplication).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use vpn_proto::internal::{HeartbeatReply, HeartbeatRequest, TrafficReport as WireReport, UserUsage as WireUsage};
use vpn_runtime::{ApplyStatus, UsageReader};

use super::traffic::TrafficJournal;
use crate::error::Error;
use crate::leader::heartbeat::MAX_REPORTS;
use crate::node::Node;
use crate::observer::as_i64;

/// A heartbeat the leader did not answer within this is counted as failed.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Heartbeat {
    pub node: Arc<Node>,
    pub status: watch::Receiver<ApplyStatus>,
    pub usage: UsageReader,
    pub journal: TrafficJournal,
    pub interval: Duration,
    /// Traffic reports waiting for the cluster's acknowledgement.
    pub pending_gauge: Gauge,
    pub applied_gauge: Gauge,
}

impl Heartbeat {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let status = self.status.borrow().clone();
            self.applied_gauge.set(as_i64(status.applied_generation));
            if status.last_error != last_error {
                match &status.last_error {
                    Some(e) => tracing::warn!("data plane: {e}"),
                    None => {
                        tracing::info!(generation = status.applied_generation, "data plane applied the desired state")
                    }
                }
                last_error = status.last_error.clone();
            }
            self.measure().await;
            let request = self.request(&status);
            match self.send(request).await {
                Ok(reply) => {
                    if let Err(e) = self.journal.acknowledge(reply.traffic_acked_seq) {
                        tracing::error!("traffic journal: {e}");
                    }
                }
                Err(e) => tracing::debug!("heartbeat not delivered: {e}"),
            }
            self.pending_gauge.set(as_i64(self.journal.pending_len() as u64));
        }
    }

    /// Reads the engines' counters into the journal (persisted before use).
    async fn measure(&mut self) {
        let counters = match self.usage.counters().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("reading traffic counters: {e}");
                return;
            }
        };
        let ids = self.node.state.read(|s| {
            counters
                .iter()
                .filter_map(|c| s.users.get(&c.user).map(|u| (c.user.clone(), u.id)))
                .collect::<std::collections::HashMap<_, _>>()
        });
        if let Err(e) = self.journal.observe(&counters, |name| ids.get(name).copied()) {
            tracing::error!("traffic journal: {e}");
        }
    }

    fn request(&self, status: &ApplyStatus) -> HeartbeatRequest {
        let traffic = self
            .journal
            .pending(MAX_REPORTS)
            .into_iter()
            .map(|r| WireReport {
                seq: r.seq,
                usage: r
                    .usage
                    .into_iter()
                    .map(|u| WireUsage { name: u.name, user_id: u.id.to_string(), bytes: u.bytes })
                    .collect(),
            })
            .collect();
        HeartbeatRequest {
            node_id: self.node.id,
            incarnation: self.node.identity.incarnation.to_string(),
            applied_generation: status.applied_generation,
            engine_error: status.last_error.clone().unwrap_or_default(),
            traffic,
        }
    }

    /// To the leader: handled here when this node leads, else over gRPC.
    async fn send(&self, request: HeartbeatRequest) -> Result<HeartbeatReply, Error> {
        if self.node.is_leader() {
            return crate::leader::heartbeat::handle(&self.node, request).await;
        }
        let (_, addr) = self.node.leader().ok_or_else(|| Error::unavailable("no leader known"))?;
        let mut req = tonic::Request::new(request);
        req.set_timeout(HEARTBEAT_TIMEOUT);
        let reply = self
            .node
            .peers
            .raft_client(self.node.peers.channel(&addr)?)
            .heartbeat(req)
            .await
            .map_err(|s| Error::unavailable(format!("leader at {addr}: {}", s.message())))?;
        Ok(reply.into_inner())
    }
}
