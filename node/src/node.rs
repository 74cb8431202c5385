//! [`Node`]: the handle every service shares: Raft, the applied state, peers
//! and metrics, with the few operations the API is built from (propose a
//! write, wait for a linearizable read, find the leader).

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ServerState;
use tonic::transport::Channel;
use vpn_proto::internal::{RaftPayload, ReadIndexRequest};
use vpn_storage::command::{Command, CommandResponse};
use vpn_storage::types::{NodeId, Raft};
use vpn_storage::{Proposer, StateReader};

use crate::config::SchedulingConfig;
use crate::error::Error;
use crate::identity::Identity;
use crate::leader::liveness::Liveness;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::peers::Peers;

/// How long a follower waits to apply up to the leader's read index.
const READ_INDEX_WAIT: Duration = Duration::from_secs(5);
/// How long a forwarded proposal may take (commit and apply on the leader).
const PROPOSE_WAIT: Duration = Duration::from_secs(10);

pub struct Node {
    pub id: NodeId,
    pub identity: Identity,
    pub raft: Raft,
    /// Batches concurrent proposals into one log entry (group commit above the log).
    pub proposer: Proposer,
    pub state: StateReader,
    pub metrics: Arc<Metrics>,
    pub peers: Arc<Peers>,
    /// Heartbeats of data-plane nodes, kept while this node leads.
    pub liveness: Liveness,
    pub scheduling: SchedulingConfig,
    /// This node's own certificate, when the gRPC port runs TLS (not `--insecure`).
    pub tls: Option<vpn_pki::CertInfo>,
    /// The CA with its key, when this node may sign joining nodes' certificates.
    pub ca_signer: Option<Arc<vpn_pki::Ca>>,
    /// SHA-256 of the CA this node trusts (what join tokens pin), under TLS.
    pub ca_digest: Option<String>,
    /// The lifetime of the node certificates this node signs (`--node-cert-lifetime`).
    pub cert_lifetime: Duration,
    /// What the audit log keeps (this node writes records while it leads).
    pub audit_retention: crate::auth::audit::Retention,
    /// The LDAP and OIDC logins this node offers.
    pub logins: crate::login::Logins,
}

/// Where a write must run.
pub enum Route {
    Local,
    /// On the leader, reached through this channel.
    Leader(Channel),
}

/// Whether this node leads, as far as it can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    Follower,
    /// Leads, and a majority acknowledged it within the election timeout.
    Leading,
    /// Leads by its own record, but no majority has acknowledged it within
    /// the election timeout (for `silent_ms`, if it ever heard one). openraft
    /// 0.9 keeps a leader cut off from its majority in the Leader state until
    /// it hears a higher term; a write sent to it would wait for a commit that
    /// cannot come, and its state may lag what the majority has since written.
    CutOff {
        silent_ms: Option<u64>,
    },
}

/// What `/readyz` reports.
pub struct Readiness {
    pub leader: Option<NodeId>,
    pub applied: u64,
    pub committed: u64,
    /// Why the applied state is not all on disk, while it is not.
    pub unpersisted: Option<String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.leader.is_some() && self.applied >= self.committed && self.unpersisted.is_none()
    }
}

impl Node {
    /// The current leader and its address, as this node knows them.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// The addresses of the current voters.
    pub fn voter_addrs(&self) -> Vec<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        membership.voter_ids().filter_map(|v| membership.get_node(&v).map(|n| n.addr.clone())).collect()
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader
    }

    pub fn leadership(&self) -> Leadership {
        let lease = self.raft.config().election_timeout_max;
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader {
            return Leadership::Follower;
        }
        match m.millis_since_quorum_ack {
            Some(ms) if ms < lease => Leadership::Leading,
            silent_ms => Leadership::CutOff { silent_ms },
        }
    }

    /// Ok when this node leads with a majority behind it; else UNAVAILABLE
    /// with the leader it knows of, for the caller to retry there.
    pub fn ensure_leading(&self) -> Result<(), Error> {
        match self.leadership() {
            Leadership::Leading => Ok(()),
            Leadership::CutOff { silent_ms } => Err(cut_off(self.id, silent_ms)),
            Leadership::Follower => Err(match self.leader() {
                Some((id, addr)) => Error::Unavailable {
                    detail: format!("this node is not the leader (node {id} at {addr} is); retry there"),
                    leader_addr: Some(addr),
                },
                None => Error::unavailable("no leader elected yet; retry shortly"),
            }),
        }
    }

    /// Decides where a write runs. A request that was already forwarded once
    /// is never forwarded again: the caller retries instead (no loops).
    pub fn route_write(&self, already_forwarded: bool) -> Result<Route, Error> {
        match self.leadership() {
            Leadership::Leading => return Ok(Route::Local),
            Leadership::CutOff { silent_ms } => return Err(cut_off(self.id, silent_ms)),
            Leadership::Follower => {}
        }
        match self.leader() {
            Some((_, addr)) if !already_forwarded => Ok(Route::Leader(self.peers.channel(&addr)?)),
            Some((id, addr)) => Err(Error::Unavailable {
                detail: format!("leadership is moving (node {id} at {addr} was named leader); retry"),
                leader_addr: Some(addr),
            }),
            None => Err(Error::unavailable("no leader elected yet; retry shortly")),
        }
    }

    /// Proposes `cmd` on this node (the leader) and waits for commit and
    /// apply. Inside a public call, `cmd` goes with its audit record.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, Error> {
        let cmd = crate::auth::audit::wrap(cmd, self.audit_retention);
        let started = Instant::now();
        let result = self.proposer.client_write(cmd).await;
        self.metrics.proposal_duration.observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(r) if matches!(r.data, CommandResponse::Refused(_)) => "refused",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        self.metrics.proposals.get_or_create(&OutcomeLabel { outcome }).inc();
        result.map(|r| r.data).map_err(propose_error)
    }

    /// Proposes `cmd` here when this node leads, else once through the
    /// leader's internal `Propose` RPC. For the node's own components (agent,
    /// identity); the public API forwards its own requests instead.
    pub async fn propose_anywhere(&self, cmd: Command) -> Result<CommandResponse, Error> {
        let channel = match self.route_write(false)? {
            Route::Local => return self.propose(cmd).await,
            Route::Leader(channel) => channel,
        };
        let json = serde_json::to_vec(&cmd).map_err(|e| Error::Internal(format!("encoding a command: {e}")))?;
        let mut req = tonic::Request::new(RaftPayload { json });
        req.set_timeout(PROPOSE_WAIT);
        let reply = self.peers.raft_client(channel).propose(req).await.map_err(|s| match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Error::unavailable(format!("the leader did not take the proposal: {}; retry", s.message()))
            }
            _ if crate::api::forward::is_transport_failure(&s) => {
                Error::unavailable(format!("the proposal could not reach the leader: {}; retry", s.message()))
            }
            _ => Error::Internal(format!("the leader refused a forwarded proposal: {}", s.message())),
        })?;
        serde_json::from_slice(&reply.into_inner().json)
            .map_err(|e| Error::Internal(format!("the leader's reply to a proposal is not a command response: {e}")))
    }

    /// Membership changes go through openraft's own API but fail the same way.
    pub fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>) -> Error {
        write_error(e)
    }

    /// Returns once this node's state reflects every write acknowledged before
    /// the call: read-index on the leader, or asked of the leader by a follower.
    pub async fn linearizable_barrier(&self) -> Result<(), Error> {
        let index = match self.leadership() {
            Leadership::CutOff { silent_ms } => return Err(cut_off(self.id, silent_ms)),
            Leadership::Leading => self.read_index().await?,
            Leadership::Follower => {
                let (_, addr) =
                    self.leader().ok_or_else(|| Error::unavailable("no leader elected yet; retry shortly"))?;
                let mut client = self.peers.raft_client(self.peers.channel(&addr)?);
                let mut req = tonic::Request::new(ReadIndexRequest {});
                req.set_timeout(READ_INDEX_WAIT);
                let reply = client.read_index(req).await.map_err(|s| Error::Unavailable {
                    detail: format!("leader at {addr} did not confirm a read index: {}; retry", s.message()),
                    leader_addr: Some(addr.clone()),
                })?;
                Some(reply.into_inner().index)
            }
        };
        let Some(index) = index else { return Ok(()) };
        self.raft
            .wait(Some(READ_INDEX_WAIT))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|e| {
                Error::unavailable(format!(
                    "this node has not caught up with the leader: {e}; retry or read from another node"
                ))
            })
    }

    /// The leader's read index: the log index a linearizable read must wait
    /// for, after a quorum confirmed this node still leads. Bounded in time:
    /// a leader cut off from its quorum answers UNAVAILABLE, not never.
    pub async fn read_index(&self) -> Result<Option<u64>, Error> {
        match tokio::time::timeout(READ_INDEX_WAIT, self.raft.get_read_log_id()).await {
            Ok(Ok((read, _applied))) => Ok(read.map(|l| l.index)),
            Ok(Err(e)) => Err(Error::unavailable(format!("leadership check failed: {e}; retry"))),
            Err(_) => Err(Error::unavailable("the leader could not reach a quorum to confirm a read; retry")),
        }
    }

    pub async fn readiness(&self) -> Readiness {
        // A node that believes it leads counts as a known leader only while
        // a quorum keeps acknowledging it: a restarted old leader restores
        // its vote and claims leadership until it hears the new term.
        let confirmed = !matches!(self.leadership(), Leadership::CutOff { .. });
        let (leader, applied) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.current_leader.filter(|_| confirmed), m.last_applied.map_or(0, |l| l.index))
        };
        let committed = self.raft.with_raft_state(|s| s.committed.map_or(0, |l| l.index)).await.unwrap_or(u64::MAX);
        Readiness { leader, applied, committed, unpersisted: self.state.persistence().unpersisted() }
    }

    /// Ok while the applied state this node reads from is all on disk; else
    /// UNAVAILABLE saying why, for the caller to read from another node. The
    /// state in memory is the one the log applied, but a node whose disk
    /// failed under it is not one to answer from (see `vpn_storage::Persistence`).
    pub fn ensure_persisted(&self) -> Result<(), Error> {
        match self.state.persistence().unpersisted() {
            None => Ok(()),
            Some(cause) => Err(Error::unavailable(format!(
                "node {} serves no reads: its applied state did not reach its disk ({cause}); read from another \
                 node, and restart this one once its disk is fixed",
                self.id
            ))),
        }
    }
}

fn cut_off(id: NodeId, silent_ms: Option<u64>) -> Error {
    let silent = silent_ms.map_or_else(|| "since it was elected".to_owned(), |ms| format!("for {ms} ms"));
    Error::unavailable(format!(
        "node {id} leads by its own record, but no majority has answered it {silent} (cut off from its peers?); \
         retry on another node"
    ))
}

fn propose_error(e: vpn_storage::ProposeError) -> Error {
    match e {
        vpn_storage::ProposeError::Busy { .. } => Error::ResourceExhausted(e.to_string()),
        vpn_storage::ProposeError::Raft(e) => write_error(*e),
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::Unavailable {
            detail: match f.leader_id {
                Some(id) => format!("this node is no longer the leader (node {id} is); retry"),
                None => "this node is no longer the leader and no new one is known yet; retry".to_owned(),
            },
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        // Another change still running (several nodes joining at once) passes: retryable.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(e))) => {
            Error::unavailable(format!("another membership change is in progress ({e}); retry"))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::FailedPrecondition(format!("membership change refused: {e}"))
        }
        RaftError::Fatal(e) => Error::unavailable(format!("this node's Raft has stopped ({e}); use another node")),
    }
}
