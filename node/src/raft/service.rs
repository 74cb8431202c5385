//! The internal Raft gRPC service: feeds peers' RPCs into openraft, answers
//! read-index requests, leadership-transfer nudges and proposals forwarded by
//! other nodes' components. Refuses traffic whose identity headers do not
//! match what the cluster knows.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};
use vpn_pki::Principal;
use vpn_proto::internal::raft_server::Raft as RaftRpc;
use vpn_proto::internal::{
    HeartbeatReply, HeartbeatRequest, RaftBinary, RaftPayload, ReadIndexReply, ReadIndexRequest, TimeoutNowReply,
    TimeoutNowRequest,
};
use vpn_storage::command::Command;
use vpn_storage::wire;

use super::network::{HEADER_CLUSTER, HEADER_FROM, HEADER_FROM_INCARNATION, HEADER_TO_INCARNATION};
use crate::auth::Caller;
use crate::identity::{ClusterCell, ClusterId};
use crate::node::Node;

pub struct RaftService {
    pub node: Arc<Node>,
    chunks: ChunkOrder,
}

impl RaftService {
    pub fn new(node: Arc<Node>) -> Self {
        RaftService { node, chunks: ChunkOrder::default() }
    }
}

/// The snapshot being received and how far its chunks reach. openraft
/// writes a chunk at its offset into the snapshot buffer, so an offset past
/// the end would make the buffer that long (a sender could make a node
/// allocate anything): a chunk must start within what the earlier chunks of
/// the same snapshot covered (a retried chunk starts before the end), or at 0.
#[derive(Default)]
struct ChunkOrder(std::sync::Mutex<Option<(String, u64)>>);

impl ChunkOrder {
    fn check(&self, snapshot_id: &str, offset: u64, len: usize) -> Result<(), Status> {
        let mut receiving = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let end = match &*receiving {
            Some((id, end)) if id == snapshot_id => *end,
            _ => 0,
        };
        if offset > end {
            return Err(Status::invalid_argument(format!(
                "offset: snapshot {snapshot_id} chunk at {offset}, but the chunks so far end at {end}"
            )));
        }
        *receiving = Some((snapshot_id.to_owned(), end.max(offset.saturating_add(len as u64))));
        Ok(())
    }
}

pub(crate) fn decode<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().json)
        .map_err(|e| Status::invalid_argument(format!("payload: not a valid Raft message: {e}")))
}

fn encode_payload<T: Serialize>(value: &T) -> Result<RaftPayload, Status> {
    serde_json::to_vec(value)
        .map(|json| RaftPayload { json })
        .map_err(|e| Status::internal(format!("encoding the Raft reply failed: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    encode_payload(value).map(Response::new)
}

/// A binary request (see `vpn_storage::wire`) decoded by `decode`.
pub(crate) fn decode_binary<T>(req: RaftBinary, decode: fn(&[u8]) -> std::io::Result<T>) -> Result<T, Status> {
    decode(&req.data).map_err(|e| Status::invalid_argument(format!("data: not a valid Raft message: {e}")))
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send>>;

fn header<'a, T>(req: &'a Request<T>, key: &str) -> Option<&'a str> {
    req.metadata().get(key).and_then(|v| v.to_str().ok())
}

/// The Raft service's side: refuses a request from another cluster. A
/// request without the header (a node from before cluster ids, or one still
/// joining) or a node that does not know its own cluster yet lets it pass.
#[derive(Clone)]
pub struct RefuseOtherClusters(pub ClusterCell);

impl tonic::service::Interceptor for RefuseOtherClusters {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(ours) = self.0.get() else { return Ok(request) };
        let Some(theirs) = header(&request, HEADER_CLUSTER) else { return Ok(request) };
        if theirs.parse::<ClusterId>().is_ok_and(|theirs| theirs == ours) {
            return Ok(request);
        }
        let from = header(&request, HEADER_FROM);
        let msg = format!(
            "this node belongs to cluster {ours}, but node {} of cluster {theirs} sent it Raft traffic: two clusters \
             share this address; give each node the --initial-members (or --join seeds) of its own cluster",
            from.unwrap_or("?")
        );
        tracing::error!("{msg}");
        Err(tonic::Status::failed_precondition(msg))
    }
}

impl RaftService {
    /// Refuses a peer that expects another data dir here, or that presents an
    /// incarnation other than the one the cluster recorded for its id.
    fn check_identity<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let me = &self.node.identity;
        if let Some(expected) = header(req, HEADER_TO_INCARNATION) {
            if expected != me.incarnation.to_string() {
                let msg = format!(
                    "node {} here runs data dir incarnation {}, but the cluster knows node {} as incarnation {expected}: \
                     a wiped node must not rejoin under its old id; run `vpnctl member remove {}` and start it with a new --id and --join",
                    me.node_id, me.incarnation, me.node_id, me.node_id
                );
                tracing::error!("{msg}");
                return Err(Status::failed_precondition(msg));
            }
        }
        let from = header(req, HEADER_FROM).and_then(|v| v.parse::<u64>().ok());
        if let (Some(from), Some(presented)) = (from, header(req, HEADER_FROM_INCARNATION)) {
            let known = self.node.state.read(|s| s.members.get(&from).map(|m| m.incarnation.to_string()));
            if let Some(known) = known.filter(|k| k != presented) {
                let msg = format!(
                    "node {from} presents data dir incarnation {presented}, but the cluster knows it as {known}: \
                     refusing a wiped node under an old id; remove member {from} and re-add it under a new id"
                );
                tracing::error!("{msg}");
                return Err(Status::failed_precondition(msg));
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    type AppendEntriesStream = ReplyStream;

    /// Answers each request of the leader's stream in order. The stream ends
    /// when the leader closes it or sends something that does not decode.
    async fn append_entries(&self, req: Request<Streaming<RaftBinary>>) -> Result<Response<ReplyStream>, Status> {
        self.check_identity(&req)?;
        let raft = self.node.raft.clone();
        let replies = futures::stream::unfold(Some(req.into_inner()), move |requests| {
            let raft = raft.clone();
            async move {
                let mut requests = requests?;
                let request = requests.message().await.ok()??;
                let reply = match decode_binary(request, wire::decode_append_entries) {
                    Ok(rpc) => encode_payload(&raft.append_entries(rpc).await),
                    Err(status) => Err(status),
                };
                let more = reply.is_ok().then_some(requests);
                Some((reply, more))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_identity(&req)?;
        let rpc = decode(req)?;
        encode(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftBinary>) -> Result<Response<RaftPayload>, Status> {
        self.check_identity(&req)?;
        let rpc = decode_binary(req.into_inner(), wire::decode_install_snapshot)?;
        self.chunks.check(&rpc.meta.snapshot_id, rpc.offset, rpc.data.len())?;
        let done = rpc.done;
        let result = self.node.raft.install_snapshot(rpc).await;
        if done && result.is_ok() {
            self.node.metrics.snapshots_received.inc();
        }
        encode(&result)
    }

    async fn read_index(&self, _req: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        let index = self.node.read_index().await?;
        Ok(Response::new(ReadIndexReply { index: index.unwrap_or(0) }))
    }

    /// Only the leader proposes; a follower says where the leader is, so a
    /// proposal is never forwarded twice.
    async fn propose(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let cmd: Command = decode(req)?;
        if let Some(Caller(principal)) = caller {
            may_propose(&principal, &cmd)?;
        }
        self.node.ensure_leading()?;
        encode(&self.node.propose(cmd).await?)
    }

    /// A heartbeat a member relays for an agent it serves (which it checked
    /// against the agent's certificate); only control-plane members get here.
    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatReply>, Status> {
        Ok(Response::new(crate::leader::heartbeat::handle(&self.node, req.into_inner()).await?))
    }

    async fn timeout_now(&self, _req: Request<TimeoutNowRequest>) -> Result<Response<TimeoutNowReply>, Status> {
        tracing::info!("leadership transfer requested: starting an election");
        self.node
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot start an election: {e}")))?;
        Ok(Response::new(TimeoutNowReply {}))
    }
}

/// What a control-plane member (the only caller the auth layer lets in) may
/// propose through this service: identity and data-plane registrations, its
/// own or those of the agents it serves, which it checked against their
/// certificates. Everything else is written by the leader's own API
/// handlers, so a raw command from elsewhere is never applied.
pub(crate) fn may_propose(caller: &Principal, cmd: &Command) -> Result<(), Status> {
    match cmd {
        Command::RegisterMember(_) | Command::RegisterDataplaneNode(_) => Ok(()),
        _ => Err(Status::permission_denied(format!("{caller} may not propose this command"))),
    }
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor as _;

    use super::*;

    fn from_cluster(id: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(id) = id {
            request.metadata_mut().insert(HEADER_CLUSTER, id.parse().expect("ascii"));
        }
        request
    }

    #[test]
    fn a_snapshot_chunk_must_start_where_the_last_one_ended() {
        let chunks = ChunkOrder::default();
        assert!(chunks.check("s1", 0, 100).is_ok());
        assert!(chunks.check("s1", 100, 100).is_ok());
        let gap = chunks.check("s1", 201, 10).expect_err("just past the end");
        assert_eq!(gap.code(), tonic::Code::InvalidArgument);
        assert!(chunks.check("s1", u64::MAX, 1).is_err(), "far past the end");
        assert!(chunks.check("s2", 100, 1).is_err(), "another snapshot starts at 0");
        assert!(chunks.check("s2", 0, 1).is_ok());
        assert!(chunks.check("s1", 0, 1).is_ok(), "a sender may start over");
        assert!(chunks.check("s1", 1, 100).is_ok() && chunks.check("s1", 50, 51).is_ok(), "a retried chunk");
        assert!(chunks.check("s1", 102, 1).is_err(), "the chunks end at 101");
    }

    #[test]
    fn another_clusters_traffic_is_refused_naming_both_clusters() {
        let ours: ClusterId = "00000000000000aa".parse().expect("id");
        let mut check = RefuseOtherClusters(ClusterCell::new(Some(ours)));
        assert!(check.call(from_cluster(Some("00000000000000aa"))).is_ok());
        assert!(check.call(from_cluster(None)).is_ok(), "a node that predates cluster ids");
        let refused = check.call(from_cluster(Some("00000000000000bb"))).expect_err("other cluster");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("00000000000000aa") && refused.message().contains("00000000000000bb"));
        assert!(check.call(from_cluster(Some("garbage"))).is_err(), "an unreadable id is not ours");

        let mut unknown = RefuseOtherClusters(ClusterCell::default());
        assert!(unknown.call(from_cluster(Some("00000000000000bb"))).is_ok(), "not known yet: cannot tell");
    }
}
