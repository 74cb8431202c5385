//! The node agent of a data-plane node (`vpnd --dataplane`): makes the
//! node's secrets, registers its offer with the control plane, follows the
//! node's assignment (the users placed on it) over the agent protocol, hands
//! it to the reconciler as the runtime's [`DesiredState`], and reports back
//! what the engines applied and the traffic they counted.
//!
//! The agent needs nothing of the Raft store: it speaks the same protocol to
//! a control-plane node whether it runs in a data-plane-only vpnd or inside
//! a control-plane node (`--dev`, `--voter --dataplane`). Its last assignment
//! is kept on disk, so when every control-plane node is away the engines
//! keep serving it, also after a restart; nothing here clears it.
//! Stopping vpnd stops the reconciler, never the engine containers.
//!
//! Layout:
//! - `secrets`: the node's keys and certificate in `<data-dir>/dataplane/`.
//! - `desired`: pure builders of the offer and the engines' inbounds.
//! - `session`: registration and the assignment stream, with failover
//!   among the control-plane nodes it knows.
//! - `assignment`: the last assignment on disk.
//! - `heartbeat`: liveness, applied generation and traffic to the leader.
//! - `traffic`: the on-disk journal of traffic not yet recorded by the cluster.

mod assignment;
mod desired;
mod heartbeat;
mod secrets;
mod session;
mod traffic;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;
use vpn_runtime::desired::{DesiredState, InboundSpec};
use vpn_runtime::reconcile::plan::DrainPolicy;
use vpn_runtime::{Reconciler, ReconcilerHandle, RuntimeConfig};

use self::assignment::AssignmentFile;
// The fuzz targets check an assignment as the agent does.
pub(crate) use self::assignment::Stored;
use self::heartbeat::Heartbeat;
use self::secrets::Secrets;
use self::session::{ControlPlane, Event, Session};
pub use self::traffic::JournalError;
use crate::config::DataplaneConfig;
use crate::error::Error;
use crate::identity::Identity;
use crate::metrics::Exposition;
use crate::observer::as_i64;
use crate::peers::Peers;

/// Where the agent keeps its files, under the data dir.
const DIR: &str = "dataplane";
/// How long a removed node waits for its engines to go before it stops anyway.
const ENGINES_GONE_WITHIN: Duration = Duration::from_secs(60);

/// A running agent: its reconciler and its tasks.
pub struct Agent {
    reconciler: ReconcilerHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// What the engines applied last, and whether it failed.
    pub fn status(&self) -> watch::Receiver<vpn_runtime::ApplyStatus> {
        self.reconciler.status.clone()
    }

    /// After `shutdown` turned true: lets a reconcile in flight finish (the
    /// runtime bounds that), then ends the agent's tasks. Engines keep running.
    pub async fn stopped(self) {
        self.reconciler.stopped().await;
        for task in self.tasks {
            task.abort();
        }
    }
}

/// What the agent needs of the process it runs in.
pub struct Host {
    pub identity: Identity,
    pub data_dir: PathBuf,
    /// Channels to the control plane (mutual TLS unless `--insecure`).
    pub peers: Arc<Peers>,
    /// Control-plane nodes to talk to, host:port, tried in this order.
    pub control_plane: Vec<String>,
    pub heartbeat: Duration,
    /// Where the agent's and the reconciler's metrics go.
    pub metrics: Arc<Exposition>,
    /// When the node's certificate expires (seconds since the epoch); it
    /// moves when the certificate renews itself, and the agent then
    /// registers again so that `node list` shows the new expiry.
    pub cert_not_after: watch::Receiver<Option<i64>>,
    /// Where a refusal that no retry can change goes: the process stops.
    pub fatal: mpsc::Sender<Error>,
}

/// User name -> id of the users of the current and the previous assignment:
/// traffic of a user who just left the node is still reported.
type UserIds = Arc<Mutex<HashMap<String, Uuid>>>;

/// Starts the agent: secrets, the last assignment on disk, the reconciler
/// (a Docker it cannot reach is an error here, at startup), the session with
/// the control plane and the heartbeat. Everything stops when `shutdown`
/// turns true.
pub async fn start(host: Host, config: &DataplaneConfig, shutdown: watch::Receiver<bool>) -> Result<Agent, Error> {
    let id = host.identity.node_id;
    let dir = host.data_dir.join(DIR);
    let secrets = Secrets::load_or_create(&dir, config)?;
    let inbounds = desired::inbound_specs(config, &secrets);
    let (desired_gauge, applied_gauge, pending_gauge) = (Gauge::default(), Gauge::default(), Gauge::default());
    host.metrics.register_with(|r| {
        r.register(
            "dataplane_desired_generation",
            "Generation of the assignment this node's engines should serve",
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
    let file = AssignmentFile::new(&dir);
    let last = file.load(id)?;
    if let Some(last) = &last {
        tracing::info!(
            generation = last.generation,
            users = last.users.len(),
            "serving the last assignment kept on disk"
        );
    }
    let ids: UserIds = Arc::new(Mutex::new(last.as_ref().map(Stored::ids).unwrap_or_default()));
    desired_gauge.set(last.as_ref().map_or(0, |l| as_i64(l.generation)));
    let (desired_tx, desired_rx) = watch::channel(last.as_ref().map(|l| l.desired(&inbounds)));

    let mut runtime = RuntimeConfig::new(id, &config.engine_image, dir.join("engines"));
    runtime.resync = config.resync;
    runtime.docker_host = config.docker_host.clone();
    runtime.drain = DrainPolicy { deadline: config.engine_drain, max_generations: config.engine_max_generations };
    runtime.nftables = config.nftables;
    let reconciler = Reconciler::start(runtime, desired_rx, shutdown.clone()).await?;
    host.metrics.register_with(|r| reconciler.metrics.register(r));
    tracing::info!(image = %config.engine_image, inbounds = inbounds.len(), "data-plane agent started");

    let control_plane = Arc::new(ControlPlane::new(host.control_plane.clone(), host.peers.clone()));
    let mut offer = desired::offer(id, config, &secrets);
    offer.incarnation = host.identity.incarnation.to_string();
    offer.accounting = reconciler.accounting.describe();
    let (events_tx, events_rx) = mpsc::channel(16);
    let (registered_tx, registered_rx) = watch::channel(None);
    let session = Session {
        control_plane: control_plane.clone(),
        offer,
        cert_not_after: host.cert_not_after,
        identity: host.identity,
        data_dir: host.data_dir.clone(),
        events: events_tx,
        fatal: host.fatal.clone(),
    };
    let follower = Follower {
        id,
        inbounds,
        file,
        last,
        ids: ids.clone(),
        desired_tx,
        desired_gauge,
        registered_tx,
        engines: reconciler.status.clone(),
        fatal: host.fatal.clone(),
    };
    let heartbeat = Heartbeat {
        identity: host.identity,
        control_plane,
        dir,
        registered: registered_rx,
        ids,
        status: reconciler.status.clone(),
        usage: reconciler.usage.clone(),
        interval: host.heartbeat,
        pending_gauge,
        applied_gauge,
    };
    let tasks = vec![
        tokio::spawn(session.run(shutdown.clone())),
        tokio::spawn(follower.run(events_rx)),
        tokio::spawn(heartbeat.run(shutdown)),
    ];
    Ok(Agent { reconciler, tasks })
}

/// Turns what the session hears into the engines' desired state.
struct Follower {
    id: u64,
    inbounds: Vec<InboundSpec>,
    file: AssignmentFile,
    last: Option<Stored>,
    ids: UserIds,
    desired_tx: watch::Sender<Option<DesiredState>>,
    desired_gauge: Gauge,
    registered_tx: watch::Sender<Option<u64>>,
    /// What the engines applied, to wait for their removal.
    engines: watch::Receiver<vpn_runtime::ApplyStatus>,
    fatal: mpsc::Sender<Error>,
}

impl Follower {
    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        while let Some(event) = events.recv().await {
            match event {
                Event::Registered { traffic_acked_seq } => {
                    self.registered_tx.send_replace(Some(traffic_acked_seq));
                }
                Event::Assignment(wire) => self.assigned(&wire),
                Event::Removed(why) => return self.removed(why).await,
            }
        }
    }

    /// The operator removed this node: its engines go (no inbound, no user),
    /// its kept assignment too, then vpnd stops with the reason.
    async fn removed(mut self, why: String) {
        tracing::error!("{why}: removing this node's engines and stopping");
        let generation = self.last.as_ref().map_or(0, |l| l.generation) + 1;
        let nothing = DesiredState { generation, node_id: self.id, inbounds: Vec::new(), users: Vec::new() };
        self.desired_tx.send_replace(Some(nothing));
        if let Err(e) = self.file.remove() {
            tracing::warn!("removing the kept assignment: {e}");
        }
        let gone = self.engines.wait_for(|s| s.applied_generation >= generation && s.last_error.is_none());
        let detail = match tokio::time::timeout(ENGINES_GONE_WITHIN, gone).await {
            Ok(Ok(_)) => "its engines are removed".to_owned(),
            _ => format!("its engines were not all removed within {ENGINES_GONE_WITHIN:?}: remove its containers"),
        };
        let e = Error::Identity(format!("{why}: {detail}; this vpnd stops (start it under a new --id to rejoin)"));
        let _ = self.fatal.send(e).await;
    }

    /// Takes an assignment newer than the one served; an older one (from a
    /// control-plane node that lags after a failover) is ignored.
    fn assigned(&mut self, wire: &vpn_proto::internal::Assignment) {
        let stored = match Stored::from_wire(self.id, wire) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!("an assignment was refused: {e}");
                return;
            }
        };
        if self.last.as_ref().is_some_and(|l| l.generation >= stored.generation) {
            return;
        }
        if let Err(e) = self.file.save(&stored) {
            // Served all the same; only a restart without the control plane would miss it.
            tracing::warn!("keeping the assignment on disk failed: {e}");
        }
        {
            let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
            let previous = self.last.as_ref().map(Stored::ids).unwrap_or_default();
            *ids = previous.into_iter().chain(stored.ids()).collect();
        }
        self.desired_gauge.set(as_i64(stored.generation));
        tracing::debug!(generation = stored.generation, users = stored.users.len(), "new assignment");
        self.desired_tx.send_replace(Some(stored.desired(&self.inbounds)));
        self.last = Some(stored);
    }
}
