//! The data-plane node's heartbeat, every `--node-heartbeat-ms`, through the
//! control-plane node the agent talks to (which relays it to the leader):
//! its engines' health and applied generation, and its traffic. Traffic is
//! read from the engines, journaled on this node's disk first, and sent until
//! the leader replies that the cluster recorded it (at-least-once delivery,
//! made exactly-once by the leader's per-(node, sequence) deduplication).
//! The journal opens once the cluster said which report it recorded last (at
//! registration), so a journal lost with its disk never reuses a number.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use vpn_proto::internal::{HeartbeatReply, HeartbeatRequest, TrafficReport as WireReport, UserUsage as WireUsage};
use vpn_runtime::{ApplyStatus, UsageReader};

use super::session::ControlPlane;
use super::traffic::TrafficJournal;
use super::UserIds;
use crate::error::Error;
use crate::identity::Identity;
use crate::observer::as_i64;

/// A heartbeat not answered within this is counted as failed (two tries fit
/// in the leader's default 5 s before it marks a node down).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Heartbeat {
    pub identity: Identity,
    pub control_plane: Arc<ControlPlane>,
    /// The agent's directory, where the traffic journal lives.
    pub dir: PathBuf,
    /// The last traffic report the cluster recorded, once registered.
    pub registered: watch::Receiver<Option<u64>>,
    pub ids: UserIds,
    pub status: watch::Receiver<ApplyStatus>,
    pub usage: UsageReader,
    pub interval: Duration,
    /// Traffic reports waiting for the cluster's acknowledgement.
    pub pending_gauge: Gauge,
    pub applied_gauge: Gauge,
}

impl Heartbeat {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: Option<String> = None;
        let mut journal: Option<TrafficJournal> = None;
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
            if journal.is_none() {
                journal = self.open_journal();
            }
            if let Some(journal) = journal.as_mut() {
                self.measure(journal).await;
            }
            let request = self.request(&status, journal.as_ref());
            match self.send(request).await {
                Ok(reply) => {
                    if let Some(Err(e)) = journal.as_mut().map(|j| j.acknowledge(reply.traffic_acked_seq)) {
                        tracing::error!("traffic journal: {e}");
                    }
                }
                Err(e) => tracing::debug!("heartbeat not delivered: {e}"),
            }
            self.pending_gauge.set(as_i64(journal.as_ref().map_or(0, |j| j.pending_len() as u64)));
        }
    }

    /// The journal, once the cluster said what it recorded; a damaged file
    /// is logged with its fix on every try (traffic then waits, serving not).
    fn open_journal(&self) -> Option<TrafficJournal> {
        let recorded = (*self.registered.borrow())?;
        TrafficJournal::open(&self.dir, recorded).map_err(|e| tracing::error!("{e}")).ok()
    }

    /// Reads the engines' counters into the journal (persisted before use).
    async fn measure(&self, journal: &mut TrafficJournal) {
        let counters = match self.usage.counters().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("reading traffic counters: {e}");
                return;
            }
        };
        let ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Err(e) = journal.observe(&counters, |name| ids.get(name).copied()) {
            tracing::error!("traffic journal: {e}");
        }
    }

    fn request(&self, status: &ApplyStatus, journal: Option<&TrafficJournal>) -> HeartbeatRequest {
        let traffic = journal
            .map(|j| j.pending(crate::limits::MAX_REPORTS))
            .unwrap_or_default()
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
            node_id: self.identity.node_id,
            incarnation: self.identity.incarnation.to_string(),
            applied_generation: status.applied_generation,
            engine_error: status.last_error.clone().unwrap_or_default(),
            traffic,
        }
    }

    /// Through the control-plane node talked to now; when that fails, once
    /// more through the next one, so that one dead or cut-off control-plane
    /// node costs no missed heartbeat (the leader marks a node down after a
    /// few).
    async fn send(&self, request: HeartbeatRequest) -> Result<HeartbeatReply, Error> {
        let mut failure = None;
        for _ in 0..2 {
            let (addr, mut client) = self.control_plane.current()?;
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(HEARTBEAT_TIMEOUT);
            match client.heartbeat(req).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(s) => {
                    self.control_plane.failed(&addr);
                    failure = Some(Error::unavailable(format!("control-plane node {addr}: {}", s.message())));
                }
            }
        }
        Err(failure.unwrap_or_else(|| Error::unavailable("no control-plane node answered")))
    }
}
