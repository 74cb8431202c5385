//! The control plane's side of the agent protocol (`vpn.internal.v1.Agent`),
//! served by every control-plane node: data-plane nodes register, watch
//! their own assignment, and heartbeat here. SwarmKit's dispatcher is the
//! model: a data-plane node is not a Raft member and receives only the users
//! placed on it, with only the credentials its engines need.
//!
//! Every call names a node; under mutual TLS it must be the caller's own
//! (`auth::require_node`). Writes (a registration, what a heartbeat reports)
//! go to the leader; assignments are answered from this node's copy of the
//! state, so an agent can watch any control-plane node.
//!
//! Layout: `assignments`: each node's assignment, rebuilt as the state moves.

mod assignments;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;
use vpn_proto::internal::agent_server::Agent as AgentRpc;
use vpn_proto::internal::{
    Assignment, HeartbeatReply, HeartbeatRequest, OfferedInbound, RegisterReply, RegisterRequest,
    WatchAssignmentRequest,
};
use vpn_storage::command::{Command, CommandResponse};
use vpn_storage::model::{DataplaneNode, InboundRecord, MemberRecord, Protocol};
use vpn_storage::types::NodeId;

pub use self::assignments::Assignments;
use crate::auth::require_node;
use crate::error::Error;
use crate::limits;
use crate::node::Node;

/// How long a relayed heartbeat may wait for the leader.
const RELAY_TIMEOUT: Duration = Duration::from_secs(3);
/// Shortest time between two assignments sent to one agent.
const SEND_INTERVAL: Duration = Duration::from_millis(200);

pub struct AgentService {
    pub node: Arc<Node>,
    pub assignments: Assignments,
}

type AssignmentStream = Pin<Box<dyn Stream<Item = Result<Assignment, Status>> + Send>>;

#[tonic::async_trait]
impl AgentRpc for AgentService {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterReply>, Status> {
        require_node(&req, req.get_ref().node_id, "register")?;
        let req = req.into_inner();
        let (offer, incarnation) = registration(&req)?;
        // An agent registers at the start of every session: when this copy
        // already holds the same identity and offer, nothing needs writing.
        let known = self.node.state.read(|s| {
            let member = s.members.get(&req.node_id).is_some_and(|m| m.incarnation == incarnation);
            let registered = s.dataplane_nodes.get(&req.node_id).filter(|n| n.same_offer(&offer));
            registered.filter(|_| member).map(|n| n.traffic_seq)
        });
        let cluster_id = self.node.peers.cluster().get().map(|id| id.to_string()).unwrap_or_default();
        if let Some(traffic_acked_seq) = known {
            return Ok(Response::new(RegisterReply { traffic_acked_seq, cluster_id }));
        }
        // The data dir's identity first: a wiped node must not take over the
        // record (and the placements) of the node it was.
        let member = MemberRecord { id: req.node_id, addr: String::new(), incarnation };
        match self.node.propose_anywhere(Command::RegisterMember(member)).await? {
            CommandResponse::MemberRegistered => {}
            CommandResponse::Refused(r) => {
                return Err(Error::FailedPrecondition(format!(
                    "{r}: this data dir was wiped or replaced; run `vpnctl member remove {id}` and start it under a new --id",
                    id = req.node_id
                ))
                .into())
            }
            other => return Err(Error::Internal(format!("unexpected apply result {other:?}")).into()),
        }
        let recorded = match self.node.propose_anywhere(Command::RegisterDataplaneNode(offer)).await? {
            CommandResponse::DataplaneNode(node) => node,
            other => return Err(Error::Internal(format!("unexpected apply result {other:?}")).into()),
        };
        Ok(Response::new(RegisterReply { traffic_acked_seq: recorded.traffic_seq, cluster_id }))
    }

    type WatchAssignmentStream = AssignmentStream;

    /// The assignment now, then each new one, until the agent hangs up or
    /// the node is removed from the cluster (then NOT_FOUND ends the stream).
    async fn watch_assignment(
        &self,
        req: Request<WatchAssignmentRequest>,
    ) -> Result<Response<AssignmentStream>, Status> {
        let id = req.get_ref().node_id;
        require_node(&req, id, "watch the assignment")?;
        let registered = |node: &Node| node.state.read(|s| s.dataplane_nodes.contains_key(&id));
        if !registered(&self.node) {
            // Registered a moment ago through another node, maybe: look again
            // once this copy holds every acknowledged write.
            self.node.linearizable_barrier().await?;
            if !registered(&self.node) {
                return Err(not_registered(id).into());
            }
        }
        let (watching, table) = self.assignments.watch(id);
        let start = Follow { table, _watching: watching, sent: 0, sent_at: None, done: false };
        let stream = futures::stream::unfold(start, move |mut f| async move {
            if f.done {
                return None;
            }
            // A burst of changes (a bulk import, a failover) reaches the agent
            // as its newest assignment at most once per SEND_INTERVAL, not as
            // every intermediate one; a change after a quiet spell goes at once.
            if let Some(at) = f.sent_at {
                tokio::time::sleep_until((at + SEND_INTERVAL).into()).await;
            }
            loop {
                let current = f.table.borrow_and_update().get(&id).cloned();
                match current {
                    None if f.sent > 0 => {
                        f.done = true;
                        return Some((Err(Status::not_found(format!("node {id} was removed from the cluster"))), f));
                    }
                    // Not in this node's table yet (the next rebuild adds it): wait.
                    None => {}
                    Some(a) if a.generation != f.sent => {
                        (f.sent, f.sent_at) = (a.generation, Some(std::time::Instant::now()));
                        return Some((Ok(Assignment::clone(&a)), f));
                    }
                    Some(_) => {}
                }
                if f.table.changed().await.is_err() {
                    f.done = true;
                    return Some((Err(Status::unavailable("this node is stopping")), f));
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatReply>, Status> {
        require_node(&req, req.get_ref().node_id, "heartbeat or report traffic")?;
        let req = req.into_inner();
        if self.node.is_leader() {
            return Ok(Response::new(crate::leader::heartbeat::handle(&self.node, req).await?));
        }
        let (_, addr) = self.node.leader().ok_or_else(|| Error::unavailable("no leader known; retry shortly"))?;
        let mut relayed = Request::new(req);
        relayed.set_timeout(RELAY_TIMEOUT);
        let reply = self.node.peers.raft_client(self.node.peers.channel(&addr)?).heartbeat(relayed).await;
        reply.map_err(|s| match s.code() {
            tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                Status::unavailable(format!("the leader at {addr} did not take the heartbeat: {}", s.message()))
            }
            _ => s,
        })
    }
}

/// One watch stream's state: what it last sent, and the guard that keeps its
/// node in the table while the stream lives.
struct Follow {
    table: tokio::sync::watch::Receiver<Arc<assignments::Table>>,
    /// Held, never read: dropping the stream drops it.
    _watching: assignments::Watching,
    sent: u64,
    sent_at: Option<std::time::Instant>,
    done: bool,
}

fn not_registered(id: NodeId) -> Error {
    Error::FailedPrecondition(format!("node {id} is not registered as a data-plane node: call Register first"))
}

/// The record a registration asks for and the data dir's incarnation,
/// checked field by field.
pub(crate) fn registration(req: &RegisterRequest) -> Result<(DataplaneNode, Uuid), Error> {
    let offer = offer(req)?;
    let incarnation = req.incarnation.parse().map_err(|_| Error::InvalidArgument {
        field: "incarnation",
        detail: format!("{:?} is not a UUID", req.incarnation),
    })?;
    Ok((offer, incarnation))
}

/// Bound on the accounting note a node registers (a sentence and an error message).
const MAX_ACCOUNTING: usize = 1024;

/// The record a registration asks for, checked field by field.
fn offer(req: &RegisterRequest) -> Result<DataplaneNode, Error> {
    if req.node_id == 0 {
        return Err(Error::InvalidArgument {
            field: "node_id",
            detail: "0 is reserved: use a positive node id".into(),
        });
    }
    if req.public_host.trim().is_empty() {
        return Err(Error::InvalidArgument {
            field: "public_host",
            detail: "empty: give the host name or address clients connect to".into(),
        });
    }
    if req.inbounds.len() > limits::NODE_INBOUNDS {
        let detail = format!("{}: at most {}", req.inbounds.len(), limits::NODE_INBOUNDS);
        return Err(Error::InvalidArgument { field: "inbounds", detail });
    }
    if req.labels.len() > limits::NODE_LABELS {
        let detail = format!("{}: at most {}", req.labels.len(), limits::NODE_LABELS);
        return Err(Error::InvalidArgument { field: "labels", detail });
    }
    let labels = crate::api::user_fields::labels("labels", &req.labels)?;
    let inbounds = req.inbounds.iter().map(inbound).collect::<Result<Vec<_>, _>>()?;
    let mut node = DataplaneNode::new(req.node_id, req.public_host.clone(), inbounds);
    node.labels = labels;
    node.capacity = req.capacity;
    node.cert_not_after_ms = Some(req.cert_not_after_ms).filter(|ms| *ms > 0);
    if req.accounting.len() > MAX_ACCOUNTING {
        return Err(Error::InvalidArgument {
            field: "accounting",
            detail: format!("{} bytes: at most {MAX_ACCOUNTING}", req.accounting.len()),
        });
    }
    node.accounting = Some(req.accounting.clone()).filter(|a| !a.is_empty());
    Ok(node)
}

fn inbound(wire: &OfferedInbound) -> Result<InboundRecord, Error> {
    let protocol = Protocol::parse(&wire.protocol).ok_or_else(|| Error::InvalidArgument {
        field: "inbounds.protocol",
        detail: format!("{:?} is not one of shadowsocks-2022, vless-tls, vless-reality", wire.protocol),
    })?;
    let port = u16::try_from(wire.port).ok().filter(|p| *p > 0).ok_or_else(|| Error::InvalidArgument {
        field: "inbounds.port",
        detail: format!("{} is not a port (1-65535)", wire.port),
    })?;
    let some = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
    let mut record = InboundRecord::new(protocol, port);
    record.ss2022_server_key = some(&wire.ss2022_server_key);
    record.tls_server_name = some(&wire.tls_server_name);
    record.tls_cert_sha256 = some(&wire.tls_cert_sha256);
    record.tls_self_signed = wire.tls_self_signed;
    record.reality_public_key = some(&wire.reality_public_key);
    record.reality_short_id = some(&wire.reality_short_id);
    record.reality_server_name = some(&wire.reality_server_name);
    Ok(record)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn request(labels: usize, inbounds: usize) -> RegisterRequest {
        let ss = OfferedInbound { protocol: "shadowsocks-2022".into(), port: 8388, ..Default::default() };
        RegisterRequest {
            node_id: 4,
            public_host: "n4.example.com".into(),
            labels: (0..labels).map(|i| (format!("k{i}"), "v".to_owned())).collect::<HashMap<_, _>>(),
            inbounds: vec![ss; inbounds],
            ..Default::default()
        }
    }

    #[test]
    fn a_registration_takes_at_most_its_limits_of_labels_and_inbounds() {
        assert!(offer(&request(limits::NODE_LABELS, limits::NODE_INBOUNDS)).is_ok());
        let labels = offer(&request(limits::NODE_LABELS + 1, 1));
        assert!(matches!(labels, Err(Error::InvalidArgument { field: "labels", .. })), "{labels:?}");
        let inbounds = offer(&request(1, limits::NODE_INBOUNDS + 1));
        assert!(matches!(inbounds, Err(Error::InvalidArgument { field: "inbounds", .. })), "{inbounds:?}");
        let mut odd = request(1, 1);
        odd.labels.insert("bad key".into(), "v".into());
        assert!(matches!(offer(&odd), Err(Error::InvalidArgument { field: "labels", .. })));
    }
}
