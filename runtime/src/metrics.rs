//! Prometheus metrics of the reconciler, registered into the node's registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::Protocol;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: String,
}

impl From<Protocol> for ProtocolLabel {
    fn from(p: Protocol) -> Self {
        ProtocolLabel { protocol: p.as_str().to_string() }
    }
}

/// Cheap to clone: every clone updates the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    reconcile_runs: Counter,
    reconcile_errors: Counter,
    reconcile_duration: Histogram,
    desired_generation: Gauge,
    applied_generation: Gauge,
    generations_started: Family<ProtocolLabel, Counter>,
    generations_live: Family<ProtocolLabel, Gauge>,
    sessions_dropped: Family<ProtocolLabel, Counter>,
    engine_users: Family<ProtocolLabel, Gauge>,
    sessions_closed: Family<ProtocolLabel, Counter>,
    accounting_source: Family<SourceLabel, Gauge>,
    accounting_gaps: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconcile_runs: Counter::default(),
            reconcile_errors: Counter::default(),
            // 5 ms .. ~40 s.
            reconcile_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            desired_generation: Gauge::default(),
            applied_generation: Gauge::default(),
            generations_started: Family::default(),
            generations_live: Family::default(),
            sessions_dropped: Family::default(),
            engine_users: Family::default(),
            sessions_closed: Family::default(),
            accounting_source: Family::default(),
            accounting_gaps: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every series (names start with `runtime_`) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("runtime");
        r.register("reconcile_runs", "Reconciles started", self.reconcile_runs.clone());
        r.register("reconcile_errors", "Reconciles that failed", self.reconcile_errors.clone());
        r.register(
            "reconcile_duration_seconds",
            "Time per reconcile (observe, plan, apply until converged)",
            self.reconcile_duration.clone(),
        );
        r.register(
            "desired_generation",
            "Generation of the desired state last received",
            self.desired_generation.clone(),
        );
        r.register(
            "applied_generation",
            "Generation of the desired state last fully applied",
            self.applied_generation.clone(),
        );
        r.register(
            "engine_generations_started",
            "Engine generations started (each takes the new connections; the previous one drains)",
            self.generations_started.clone(),
        );
        r.register(
            "engine_generations",
            "Engine generations alive (the current one plus those still serving their sessions)",
            self.generations_live.clone(),
        );
        r.register(
            "sessions_dropped",
            "Live sessions cut because their generation hit --engine-drain or the cap on live generations",
            self.sessions_dropped.clone(),
        );
        r.register("engine_users", "Users each engine serves", self.engine_users.clone());
        r.register(
            "sessions_closed",
            "Live sessions closed because their user was removed",
            self.sessions_closed.clone(),
        );
        r.register(
            "accounting_source",
            "Where per-user traffic counts come from: 1 for kernel (nftables) or engine-stream (the engines' connection events, without nftables)",
            self.accounting_source.clone(),
        );
        r.register(
            "accounting_gaps",
            "Connections counted up to their last known bytes because their end was not seen (engine-stream accounting)",
            self.accounting_gaps.clone(),
        );
    }

    pub fn generations_started(&self, protocol: Protocol) -> u64 {
        self.generations_started.get_or_create(&protocol.into()).get()
    }

    pub fn sessions_dropped(&self, protocol: Protocol) -> u64 {
        self.sessions_dropped.get_or_create(&protocol.into()).get()
    }

    pub fn sessions_closed(&self, protocol: Protocol) -> u64 {
        self.sessions_closed.get_or_create(&protocol.into()).get()
    }

    pub(crate) fn run_started(&self) {
        self.reconcile_runs.inc();
    }

    pub(crate) fn run_finished(&self, seconds: f64, ok: bool) {
        self.reconcile_duration.observe(seconds);
        if !ok {
            self.reconcile_errors.inc();
        }
    }

    pub(crate) fn set_generations(&self, desired: u64, applied: Option<u64>) {
        self.desired_generation.set(i64::try_from(desired).unwrap_or(i64::MAX));
        if let Some(applied) = applied {
            self.applied_generation.set(i64::try_from(applied).unwrap_or(i64::MAX));
        }
    }

    pub(crate) fn generation_started(&self, protocol: Protocol) {
        self.generations_started.get_or_create(&protocol.into()).inc();
    }

    /// A generation was removed, cutting `dropped` sessions.
    pub(crate) fn generation_ended(&self, protocol: Protocol, dropped: usize) {
        self.sessions_dropped.get_or_create(&protocol.into()).inc_by(u64::try_from(dropped).unwrap_or(u64::MAX));
    }

    pub(crate) fn set_generations_live(&self, protocol: Protocol, n: usize) {
        self.generations_live.get_or_create(&protocol.into()).set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_users(&self, protocol: Protocol, users: usize) {
        self.engine_users.get_or_create(&protocol.into()).set(i64::try_from(users).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_accounting_source(&self, source: &str) {
        self.accounting_source.get_or_create(&SourceLabel { source: source.to_owned() }).set(1);
    }

    pub(crate) fn accounting_gaps(&self, n: u64) {
        self.accounting_gaps.inc_by(n);
    }

    pub(crate) fn closed_sessions(&self, protocol: Protocol, n: u64) {
        self.sessions_closed.get_or_create(&protocol.into()).inc_by(n);
    }
}
