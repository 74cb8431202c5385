//! The node agent of a data-plane node (`vpnd --dataplane`): makes the
//! node's secrets, registers its offer through the cluster, turns the local
//! replicated state into the runtime's [`DesiredState`] and hands it to the
//! reconciler, and reports back what the engines applied.
//!
//! The desired state is built from this node's own copy of the replicated
//! state, so when the leader (or every other node) is away the engines keep
//! serving the last state this node applied: nothing here clears it. Until
//! this node's registration is in that copy the reconciler is given no state
//! at all (it then touches nothing).
//! Stopping vpnd stops the reconciler, never the engine containers.
//!
//! Layout:
//! - `secrets`: the node's keys and certificate in `<data-dir>/dataplane/`.
//! - `desired`: pure builders of the offer and the desired state.
//! - `report`: registration of the node's offer through the leader.
//! - `heartbeat`: liveness, applied generation and traffic to the leader.
//! - `traffic`: the on-disk journal of traffic not yet recorded by the cluster.

mod desired;
mod heartbeat;
mod report;
mod secrets;
mod traffic;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vpn_runtime::desired::{DesiredState, InboundSpec};
use vpn_runtime::{Reconciler, ReconcilerHandle, RuntimeConfig};

use self::heartbeat::Heartbeat;
use self::secrets::Secrets;
pub use self::traffic::JournalError;
use self::traffic::TrafficJournal;
use crate::config::DataplaneConfig;
use crate::error::Error;
use crate::node::Node;
use crate::observer::as_i64;

/// Where the agent keeps its files, under the data dir.
const DIR: &str = "dataplane";

/// A running agent: its reconciler and its tasks.
pub struct Agent {
    reconciler: ReconcilerHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// After `shutdown` turned true: lets a reconcile in flight finish (the
    /// runtime bounds that), then ends the agent's tasks. Engines keep running.
    pub async fn stopped(self) {
        self.reconciler.stopped().await;
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Starts the agent: secrets, the reconciler (a Docker it cannot reach is an
/// error here, at startup), registration, the state follower and the
/// reporter. Everything stops when `shutdown` turns true.
pub async fn start(
    node: &Arc<Node>,
    config: &DataplaneConfig,
    data_dir: &Path,
    shutdown: watch::Receiver<bool>,
) -> Result<Agent, Error> {
    let dir = data_dir.join(DIR);
    let secrets = Secrets::load_or_create(&dir, config)?;
    let inbounds = desired::inbound_specs(config, &secrets);
    let (desired_gauge, applied_gauge, pending_gauge) = (Gauge::default(), Gauge::default(), Gauge::default());
    node.metrics.register_with(|r| {
        r.register(
            "dataplane_desired_generation",
            "Generation of the replicated state this node's engines should serve",
            desired_gauge.clone(),
        );
        r.register(
            "dataplane_applied_generation",
            "Generation this node's engines last applied",
            applied_gauge.clone(),
        );
        r.register(
            "dataplane_traffic_reports_pending",
            "Traffic reports this node measured that the cluster has not recorded yet (accounting lag)",
            pending_gauge.clone(),
        );
    });
    let initial = node.state.read(|s| desired::desired(s, node.id, &inbounds));
    desired_gauge.set(initial.as_ref().map_or(0, |d| as_i64(d.generation)));
    let (desired_tx, desired_rx) = watch::channel(initial);

    let mut runtime = RuntimeConfig::new(node.id, &config.engine_image, dir.join("engines"));
    runtime.resync = config.resync;
    runtime.docker_host = config.docker_host.clone();
    let reconciler = Reconciler::start(runtime, desired_rx, shutdown.clone()).await?;
    node.metrics.register_with(|r| reconciler.metrics.register(r));
    tracing::info!(image = %config.engine_image, inbounds = inbounds.len(), "data-plane agent started");

    let recorded_seq = node.state.read(|s| s.dataplane_nodes.get(&node.id).map_or(0, |n| n.traffic_seq));
    let journal = TrafficJournal::open(&dir, recorded_seq)?;
    let heartbeat = Heartbeat {
        node: node.clone(),
        status: reconciler.status.clone(),
        usage: reconciler.usage.clone(),
        journal,
        interval: node.scheduling.node_heartbeat,
        pending_gauge,
        applied_gauge,
    };
    let mut offer = desired::offer(node.id, config, &secrets);
    offer.cert_not_after_ms = node.tls.as_ref().map(|cert| cert.not_after.saturating_mul(1000));
    let tasks = vec![
        tokio::spawn(report::register(node.clone(), offer, shutdown.clone())),
        tokio::spawn(follow(node.clone(), inbounds, desired_tx, desired_gauge, config.resync, shutdown.clone())),
        tokio::spawn(heartbeat.run(shutdown)),
    ];
    Ok(Agent { reconciler, tasks })
}

/// Rebuilds the desired state whenever the replicated state's generation
/// moved (the cheap check runs on every applied entry; the rebuild walks every
/// user) and on every resync tick, publishing it only when it changed.
async fn follow(
    node: Arc<Node>,
    inbounds: Vec<InboundSpec>,
    desired_tx: watch::Sender<Option<DesiredState>>,
    desired_gauge: Gauge,
    resync: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut raft = node.raft.metrics();
    let mut built = None;
    let mut tick = tokio::time::interval(resync);
    loop {
        tokio::select! {
            changed = raft.changed() => {
                if changed.is_err() {
                    return;
                }
                raft.borrow_and_update();
                if built == Some(node.state.read(|s| s.generation)) {
                    continue;
                }
            }
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        built = Some(node.state.read(|s| s.generation));
        let next = node.state.read(|s| desired::desired(s, node.id, &inbounds));
        if let Some(d) = &next {
            desired_gauge.set(as_i64(d.generation));
        }
        desired_tx.send_if_modified(|current| {
            let changed = *current != next;
            if changed {
                *current = next;
            }
            changed
        });
    }
}
