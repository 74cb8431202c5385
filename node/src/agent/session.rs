//! The agent's session with the control plane: it registers the node's offer
//! with one control-plane node, then watches the node's assignment there;
//! when that node fails, the session moves to the next one it knows.
//! Heartbeats go to the node the session is on ([`ControlPlane::current`]);
//! when one fails (that node died, or is cut off from the leader and so
//! may serve a stale assignment) both move on, the session included.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tonic::Code;
use vpn_proto::internal::{Assignment, RegisterRequest, WatchAssignmentRequest};

use crate::error::Error;
use crate::identity::{self, ClusterId, Identity};
use crate::peers::{PeerAgentClient as Client, Peers};

/// A call that got no answer within this counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits after a failed session, doubled up to the longest.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LONGEST_BACKOFF: Duration = Duration::from_secs(5);
/// An unreachable control plane is said (a warning) after this, then this often.
const SAY_UNREACHABLE_AFTER: Duration = Duration::from_secs(10);
const SAY_UNREACHABLE_EVERY: Duration = Duration::from_secs(60);

/// The control-plane nodes an agent knows, and which of them it talks to.
pub struct ControlPlane {
    endpoints: Vec<String>,
    /// Index (modulo the endpoints) of the node talked to; every move bumps it.
    current: watch::Sender<usize>,
    peers: Arc<Peers>,
}

impl ControlPlane {
    pub fn new(endpoints: Vec<String>, peers: Arc<Peers>) -> Self {
        Self { endpoints, current: watch::channel(0).0, peers }
    }

    /// The node at position `i` of the endless rotation over the endpoints.
    fn at(&self, i: usize) -> Option<&String> {
        self.endpoints.get(i % self.endpoints.len().max(1))
    }

    /// The node talked to now: its address and a client of its agent service.
    pub fn current(&self) -> Result<(String, Client), Error> {
        let addr = self.at(*self.current.borrow()).ok_or_else(|| Error::unavailable("no control-plane node known"))?;
        let channel = self.peers.channel(addr)?;
        Ok((addr.clone(), self.peers.agent_client(channel)))
    }

    /// Moves on from `addr` to the next node (unless someone already did).
    pub fn failed(&self, addr: &str) {
        self.current.send_if_modified(|i| {
            let on_it = self.at(*i).is_some_and(|a| a == addr);
            if on_it {
                *i = i.wrapping_add(1);
            }
            on_it
        });
    }

    /// Resolves when the agent moved on to another node.
    async fn moved(&self, from: &str) {
        let mut current = self.current.subscribe();
        let _ = current.wait_for(|i| self.at(*i).is_none_or(|a| a != from)).await;
    }
}

/// What the session tells the rest of the agent.
pub enum Event {
    /// The cluster recorded the offer; its last recorded traffic report.
    Registered { traffic_acked_seq: u64 },
    /// An assignment, as the control-plane node sent it.
    Assignment(Assignment),
    /// The cluster removed this node (what it said).
    Removed(String),
}

pub struct Session {
    pub control_plane: Arc<ControlPlane>,
    /// The offer without the certificate's expiry, which comes from
    /// `cert_not_after` at each registration.
    pub offer: RegisterRequest,
    pub cert_not_after: watch::Receiver<Option<i64>>,
    pub identity: Identity,
    pub data_dir: PathBuf,
    pub events: mpsc::Sender<Event>,
    /// Where a refusal that no retry can change goes (this node must stop).
    pub fatal: mpsc::Sender<Error>,
}

impl Session {
    /// Runs sessions until `stop`, or until the cluster says this node was
    /// removed or is another data dir (then stops and reports it as fatal).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = FIRST_BACKOFF;
        let mut cert = self.cert_not_after.clone();
        // Since when no control-plane node took a session, and when that was last said.
        let (mut failing_since, mut said_at): (Option<Instant>, Option<Instant>) = (None, None);
        loop {
            let expires = *cert.borrow_and_update();
            let offer = RegisterRequest {
                cert_not_after_ms: expires.map_or(0, |s| s.saturating_mul(1000)),
                ..self.offer.clone()
            };
            let (addr, client) = match self.control_plane.current() {
                Ok(current) => current,
                Err(e) => {
                    let _ = self.fatal.send(e).await;
                    return;
                }
            };
            let outcome = tokio::select! {
                outcome = self.once(client, offer, &mut backoff, &mut failing_since) => outcome,
                // A renewed certificate: register again with its expiry (a
                // node whose certificate never renews drops the sender: no branch).
                Ok(()) = cert.changed() => continue,
                () = self.control_plane.moved(&addr) => {
                    tracing::info!(control_plane = %addr, "heartbeats failed there; moving on");
                    continue;
                }
                _ = stop.changed() => return,
            };
            match outcome {
                Ok(()) => tracing::info!(control_plane = %addr, "assignment stream ended; reconnecting"),
                // The operator removed this node: the agent stops its engines, then vpnd stops.
                Err(Failure { status, .. }) if status.code() == Code::NotFound => {
                    let _ = self.events.send(Event::Removed(status.message().to_owned())).await;
                    return;
                }
                Err(failure) if failure.is_final() => {
                    let why = failure.status.message();
                    let e = Error::Identity(format!("the control plane at {addr} refused this node: {why}"));
                    let _ = self.fatal.send(e).await;
                    return;
                }
                Err(Failure { status, .. }) => {
                    match status.code() {
                        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                            tracing::debug!(control_plane = %addr, "agent session: {}", status.message())
                        }
                        _ => tracing::warn!(control_plane = %addr, "agent session refused: {}", status.message()),
                    }
                    self.control_plane.failed(&addr);
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= SAY_UNREACHABLE_AFTER
                        && said_at.is_none_or(|at| at.elapsed() >= SAY_UNREACHABLE_EVERY)
                    {
                        said_at = Some(Instant::now());
                        tracing::warn!(
                            last = %addr,
                            "no control-plane node of --join has taken a session for {:?}; the engines serve the last assignment ({})",
                            since.elapsed(),
                            status.message()
                        );
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(LONGEST_BACKOFF);
        }
    }

    /// One session: register, then follow the assignment until the stream fails.
    async fn once(
        &self,
        mut client: Client,
        offer: RegisterRequest,
        backoff: &mut Duration,
        failing_since: &mut Option<Instant>,
    ) -> Result<(), Failure> {
        let mut req = tonic::Request::new(offer);
        req.set_timeout(CALL_TIMEOUT);
        let reply = client.register(req).await.map_err(|status| Failure { status, registered: false })?.into_inner();
        *failing_since = None;
        let failed = |status| Failure { status, registered: true };
        self.learn_cluster(&reply.cluster_id);
        let _ = self.events.send(Event::Registered { traffic_acked_seq: reply.traffic_acked_seq }).await;
        // No deadline: the stream lasts as long as the session. A node that
        // dies or is cut off is noticed by the channel's keepalive pings.
        let req = tonic::Request::new(WatchAssignmentRequest { node_id: self.offer.node_id });
        let mut stream = client.watch_assignment(req).await.map_err(failed)?.into_inner();
        while let Some(assignment) = stream.message().await.map_err(failed)? {
            *backoff = FIRST_BACKOFF;
            if self.events.send(Event::Assignment(assignment)).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Records the cluster's id in the data dir the first time it is heard.
    fn learn_cluster(&self, id: &str) {
        let cell = self.control_plane.peers.cluster();
        if cell.get().is_some() {
            return;
        }
        if let Ok(id) = id.parse::<ClusterId>() {
            if let Err(e) = identity::record_cluster(&self.data_dir, self.identity, cell, id) {
                tracing::warn!("recording the cluster id: {e}");
            }
        }
    }
}

/// Why a session ended, and whether its registration had been taken.
struct Failure {
    status: tonic::Status,
    registered: bool,
}

impl Failure {
    /// Whether this data dir must not serve under this id: a registration
    /// refused as another incarnation (FAILED_PRECONDITION), or a certificate
    /// for another node. After a registration was taken, FAILED_PRECONDITION
    /// ("not registered" on a watch that raced a removal) only asks for a new
    /// session.
    fn is_final(&self) -> bool {
        match self.status.code() {
            Code::PermissionDenied => true,
            Code::FailedPrecondition => !self.registered,
            _ => false,
        }
    }
}
