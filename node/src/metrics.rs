//! Prometheus metrics of a node (`GET /metrics`). Names follow Prometheus
//! conventions: a `vpn_` prefix, base units, `_total` on counters.

use std::sync::{Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerRpcLabels {
    pub peer: String,
    pub rpc: &'static str,
}

/// A refused call: who (a certificate's identity, `anonymous` or `invalid`)
/// and what the RPC required (see `auth::Rule`; not the path, which the
/// caller chooses and would make the series unbounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthRefusalLabels {
    pub caller: String,
    pub rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: u64,
}

/// What `GET /metrics` renders. A data-plane-only node has one of its own
/// (the agent's and the reconciler's metrics); a control-plane node's is
/// inside its [`Metrics`].
pub struct Exposition(Mutex<Registry>);

impl Exposition {
    fn new() -> Self {
        Self(Mutex::new(Registry::with_prefix("vpn")))
    }

    /// Adds metrics (names get the `vpn_` prefix).
    pub fn register_with(&self, add: impl FnOnce(&mut Registry)) {
        add(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// An empty one, for a data-plane-only node.
    pub fn shared() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::new())
    }
}

/// Every metric of a control-plane node. Raft gauges are refreshed by a
/// watcher on openraft's metrics channel; counters are bumped where things
/// happen. Components that start later (the data-plane agent and its
/// reconciler) add theirs to [`Metrics::exposition`].
pub struct Metrics {
    pub exposition: std::sync::Arc<Exposition>,
    pub term: Gauge,
    pub leader_id: Gauge,
    pub is_leader: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub last_log_index: Gauge,
    pub snapshot_index: Gauge,
    pub snapshots: Counter,
    pub snapshots_received: Counter,
    pub proposals: Family<OutcomeLabel, Counter>,
    pub proposal_duration: Histogram,
    pub forwarded: Family<MethodLabel, Counter>,
    pub rpc_errors: Family<PeerRpcLabels, Counter>,
    pub auth_refusals: Family<AuthRefusalLabels, Counter>,
    pub users: Family<StatusLabel, Gauge>,
    pub dataplane_nodes: Family<StatusLabel, Gauge>,
    pub placements: Family<NodeLabel, Gauge>,
    pub failovers: Counter,
    pub placement_changes: Counter,
    pub plan_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            exposition: std::sync::Arc::new(Exposition::new()),
            term: Gauge::default(),
            leader_id: Gauge::default(),
            is_leader: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            snapshots: Counter::default(),
            snapshots_received: Counter::default(),
            proposals: Family::default(),
            proposal_duration: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            forwarded: Family::default(),
            rpc_errors: Family::default(),
            auth_refusals: Family::default(),
            users: Family::default(),
            dataplane_nodes: Family::default(),
            placements: Family::default(),
            failovers: Counter::default(),
            placement_changes: Counter::default(),
            plan_duration: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
        };
        let mut registry = m.exposition.0.lock().unwrap_or_else(PoisonError::into_inner);
        registry.register("raft_term", "Current Raft term", m.term.clone());
        registry.register("raft_leader_id", "Id of the known leader, 0 when none", m.leader_id.clone());
        registry.register("raft_is_leader", "1 when this node is the leader", m.is_leader.clone());
        registry.register("raft_commit_index", "Highest log index known committed", m.commit_index.clone());
        registry.register(
            "raft_applied_index",
            "Highest log index applied to the state machine",
            m.applied_index.clone(),
        );
        registry.register("raft_last_log_index", "Highest log index in the local log", m.last_log_index.clone());
        registry.register("raft_snapshot_index", "Log index covered by the current snapshot", m.snapshot_index.clone());
        registry.register("raft_snapshots", "Snapshots taken or installed by this node", m.snapshots.clone());
        registry.register(
            "raft_snapshots_received",
            "Snapshots received from a leader and installed",
            m.snapshots_received.clone(),
        );
        registry.register("proposals", "Writes proposed through Raft by outcome", m.proposals.clone());
        registry.register(
            "proposal_duration_seconds",
            "Time from proposal to commit and apply on the leader",
            m.proposal_duration.clone(),
        );
        registry.register("forwarded_requests", "Requests forwarded to the leader", m.forwarded.clone());
        registry.register("raft_rpc_errors", "Failed Raft RPCs to peers", m.rpc_errors.clone());
        registry.register(
            "auth_refusals",
            "Calls refused for their caller's credentials (nothing was changed)",
            m.auth_refusals.clone(),
        );
        registry.register("users", "Users by status", m.users.clone());
        registry.register("dataplane_nodes", "Data-plane nodes by status", m.dataplane_nodes.clone());
        registry.register("placements", "Users placed on each data-plane node", m.placements.clone());
        registry.register(
            "failovers",
            "Data-plane nodes this node, as leader, marked down (their users move)",
            m.failovers.clone(),
        );
        registry.register(
            "placement_changes",
            "Placements added or removed by this node's scheduler",
            m.placement_changes.clone(),
        );
        registry.register(
            "scheduler_plan_duration_seconds",
            "Time one scheduler plan took on the leader",
            m.plan_duration.clone(),
        );
        drop(registry);
        m
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.exposition.render()
    }

    /// Reports whether the applied state reached sled:
    /// `vpn_state_machine_write_failures_total` and `vpn_state_machine_unpersisted`.
    pub fn watch_state_machine(&self, persistence: vpn_storage::Persistence) {
        self.exposition.register_with(|r| r.register_collector(Box::new(StateMachineHealth(persistence))));
    }
}

/// The state machine's persistence, read from the storage at each scrape
/// (the storage owns the counts; nothing here can drift from them).
#[derive(Debug)]
struct StateMachineHealth(vpn_storage::Persistence);

impl Collector for StateMachineHealth {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let failures = ConstCounter::new(self.0.write_failures());
        let help = "Writes of applied changes to sled that failed (the state then stays unpersisted until a restart)";
        failures.encode(encoder.encode_descriptor(
            "state_machine_write_failures",
            help,
            None,
            failures.metric_type(),
        )?)?;
        let unpersisted = ConstGauge::new(i64::from(self.0.unpersisted().is_some()));
        let help = "1 while the applied state is not all in sled: reads are refused and /readyz answers 503";
        unpersisted.encode(encoder.encode_descriptor(
            "state_machine_unpersisted",
            help,
            None,
            unpersisted.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_metrics_are_exposed() {
        let metrics = Metrics::default();
        metrics.watch_state_machine(vpn_storage::Persistence::default());
        let text = metrics.render();
        assert!(text.contains("# TYPE vpn_state_machine_write_failures counter"), "{text}");
        assert!(text.contains("\nvpn_state_machine_write_failures_total 0\n"), "{text}");
        assert!(text.contains("\nvpn_state_machine_unpersisted 0\n"), "{text}");
    }
}
