//! openraft's network over tonic: one [`PeerClient`] per target, requests
//! in bytes fields (AppendEntries and InstallSnapshot in the binary encoding
//! of `vpn_storage::wire`, votes and replies as JSON), and identity headers
//! on every call so a wiped node that reuses an old id is refused (see
//! `identity.rs`). AppendEntries goes over one long-lived stream per target
//! ([`AppendStream`]), opened on first use and again after any failure.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use vpn_proto::internal::{RaftBinary, RaftPayload};
use vpn_storage::types::{NodeId, TypeConfig};
use vpn_storage::{wire, StateReader};

use crate::identity::Identity;
use crate::metrics::{Metrics, PeerRpcLabels};
use crate::peers::{PeerRaftClient, Peers};

/// The sender's cluster id (see `identity::ClusterId`).
pub const HEADER_CLUSTER: &str = "x-vpn-cluster";
pub const HEADER_FROM: &str = "x-vpn-from";
pub const HEADER_FROM_INCARNATION: &str = "x-vpn-from-incarnation";
pub const HEADER_TO_INCARNATION: &str = "x-vpn-to-incarnation";

/// Creates a client per peer; openraft calls it whenever it needs one.
#[derive(Clone)]
pub struct Network {
    pub identity: Identity,
    pub state: StateReader,
    pub peers: Arc<Peers>,
    pub metrics: Arc<Metrics>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient { net: self.clone(), target, addr: node.addr.clone(), append: None }
    }
}

pub struct PeerClient {
    net: Network,
    target: NodeId,
    addr: String,
    /// Stays here across calls, also across calls openraft cancels, until it fails.
    append: Option<AppendStream>,
}

/// An AppendEntries stream: requests go into `requests`, and each one's reply
/// is the next message of the replies.
///
/// A call that runs out of time does not cancel its request: every cancelled
/// HTTP/2 stream is a RST_STREAM frame, and a link that stalls (a partition,
/// a paused peer) then queues one open-and-reset per heartbeat, which the peer
/// receives in one burst when the link heals; h2 takes that burst for a
/// rapid-reset attack and closes the whole connection with GOAWAY, failing
/// every other call on it (forwarded client writes among them). So the
/// stream stays open, the late reply is read and dropped before the next
/// request goes out, and a stalled link holds at most one request.
struct AppendStream {
    requests: mpsc::Sender<RaftBinary>,
    replies: Replies,
    /// Requests sent whose replies have not been read yet.
    unanswered: usize,
}

enum Replies {
    /// Opened by a task of its own, so a caller that gives up does not
    /// cancel the open (which would reset the stream too).
    Opening(oneshot::Receiver<Result<tonic::Streaming<RaftPayload>, tonic::Status>>),
    Open(Box<tonic::Streaming<RaftPayload>>),
}

/// Why an AppendEntries stream is no longer usable.
enum StreamFailure {
    Status(tonic::Status),
    Closed(&'static str),
}

impl AppendStream {
    /// The next reply on the stream; cancel-safe (awaiting a oneshot receiver
    /// and `Streaming::message` both are), so a reply a cancelled call was
    /// waiting for is the next one read.
    async fn next_reply(&mut self) -> Result<RaftPayload, StreamFailure> {
        if let Replies::Opening(opened) = &mut self.replies {
            let streaming = opened
                .await
                .map_err(|_| StreamFailure::Closed("opening the AppendEntries stream failed"))?
                .map_err(StreamFailure::Status)?;
            self.replies = Replies::Open(Box::new(streaming));
        }
        let Replies::Open(streaming) = &mut self.replies else {
            return Err(StreamFailure::Closed("the AppendEntries stream is not open"));
        };
        match streaming.message().await {
            Ok(Some(reply)) => {
                self.unanswered = self.unanswered.saturating_sub(1);
                Ok(reply)
            }
            Ok(None) => Err(StreamFailure::Closed("the peer ended the AppendEntries stream")),
            Err(status) => Err(StreamFailure::Status(status)),
        }
    }

    /// Reads and drops the replies to requests whose callers gave up.
    async fn drop_late_replies(&mut self) -> Result<(), StreamFailure> {
        while self.unanswered > 0 {
            self.next_reply().await?;
        }
        Ok(())
    }

    fn send(&mut self, data: Vec<u8>) -> Result<(), StreamFailure> {
        // Nothing is unanswered here, so the one-slot channel is empty.
        self.requests
            .try_send(RaftBinary { data })
            .map_err(|_| StreamFailure::Closed("the AppendEntries stream closed"))?;
        self.unanswered += 1;
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    /// With how many entries it carries.
    AppendEntries {
        entries: u64,
    },
    Vote,
    InstallSnapshot,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::AppendEntries { .. } => "append_entries",
            Rpc::Vote => "vote",
            Rpc::InstallSnapshot => "install_snapshot",
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Resp, E>(&mut self, rpc: Rpc, req: std::io::Result<Vec<u8>>, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result = match req {
            Ok(bytes) => self.send(rpc, bytes, option).await,
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        };
        if result.is_err() {
            let labels = PeerRpcLabels { peer: self.target.to_string(), rpc: rpc.name() };
            self.net.metrics.rpc_errors.get_or_create(&labels).inc();
        }
        result
    }

    async fn send<Resp, E>(&mut self, rpc: Rpc, bytes: Vec<u8>, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = match rpc {
            Rpc::AppendEntries { entries } => self.append_on_stream(bytes, entries, option.soft_ttl()).await?,
            Rpc::Vote | Rpc::InstallSnapshot => {
                let mut client = self.client().map_err(|e| RPCError::Unreachable(*e))?;
                let reply = if let Rpc::Vote = rpc {
                    client.vote(self.request(RaftPayload { json: bytes }, option)).await
                } else {
                    client.install_snapshot(self.request(RaftBinary { data: bytes }, option)).await
                };
                reply.map_err(|s| self.status_error(&s))?.into_inner()
            }
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&payload.json).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| {
            RPCError::RemoteError(openraft::error::RemoteError::new_with_node(
                self.target,
                BasicNode::new(self.addr.clone()),
                e,
            ))
        })
    }

    /// Sends one request of `entries` entries on the AppendEntries stream
    /// (opening it first when there is none) and waits up to `ttl` for its
    /// reply, after the late replies of earlier requests.
    ///
    /// openraft 0.9 gives an AppendEntries one heartbeat interval and then
    /// resends the same range: a follower that cannot take that many entries
    /// in time (a slow disk, a loaded machine) would never catch up. So a
    /// request that runs out of time answers "payload too large" with half
    /// its entries as the hint, and openraft sends fewer for its next sends.
    async fn append_on_stream<E>(
        &mut self,
        data: Vec<u8>,
        entries: u64,
        ttl: Duration,
    ) -> Result<RaftPayload, RPCError<NodeId, BasicNode, E>>
    where
        E: std::error::Error,
    {
        let deadline = tokio::time::Instant::now() + ttl;
        let stream = match self.append.take() {
            Some(stream) => stream,
            None => self.open_append_stream().map_err(|e| RPCError::Unreachable(*e))?,
        };
        let stream = self.append.insert(stream);
        let failure = match tokio::time::timeout_at(deadline, stream.drop_late_replies()).await {
            Err(_) => return Err(timed_out(format!("an earlier AppendEntries is still unanswered after {ttl:?}"))),
            Ok(Err(failure)) => failure,
            Ok(Ok(())) => match stream.send(data) {
                Err(failure) => failure,
                Ok(()) => match tokio::time::timeout_at(deadline, stream.next_reply()).await {
                    Ok(Ok(reply)) => return Ok(reply),
                    Ok(Err(failure)) => failure,
                    Err(_) if entries > 1 => {
                        tracing::warn!(
                            peer = self.target,
                            "{entries} entries not taken within {ttl:?}: sending fewer at a time"
                        );
                        return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries / 2)));
                    }
                    Err(_) => return Err(timed_out(format!("no AppendEntries reply within {ttl:?}"))),
                },
            },
        };
        self.append = None;
        Err(match failure {
            StreamFailure::Status(status) => self.status_error(&status),
            StreamFailure::Closed(why) => RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why))),
        })
    }

    /// Starts opening an AppendEntries stream in a task of its own (see [`Replies::Opening`]).
    fn open_append_stream(&self) -> Result<AppendStream, Box<Unreachable>> {
        // One request in the channel: a request is sent only once every
        // earlier one was answered.
        let (requests, rx) = mpsc::channel(1);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        self.stamp(request.metadata_mut());
        let mut client = self.client()?;
        let (opened, replies) = oneshot::channel();
        tokio::spawn(async move {
            let _ = opened.send(client.append_entries(request).await.map(tonic::Response::into_inner));
        });
        Ok(AppendStream { requests, replies: Replies::Opening(replies), unanswered: 0 })
    }

    fn client(&self) -> Result<PeerRaftClient, Box<Unreachable>> {
        let channel = self.net.peers.channel(&self.addr).map_err(|e| Box::new(Unreachable::new(&e)))?;
        Ok(self.net.peers.raft_client(channel).max_decoding_message_size(256 * 1024 * 1024))
    }

    fn status_error<E>(&self, status: &tonic::Status) -> RPCError<NodeId, BasicNode, E>
    where
        E: std::error::Error,
    {
        match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(status)),
            // Unreachable, so openraft backs off instead of retrying at once
            // (a refusing peer otherwise logged a thousand refusals a second).
            tonic::Code::FailedPrecondition => {
                tracing::error!(peer = self.target, addr = %self.addr, "peer refused Raft traffic: {}", status.message());
                RPCError::Unreachable(Unreachable::new(status))
            }
            _ => RPCError::Network(NetworkError::new(status)),
        }
    }

    fn request<T>(&self, message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        self.stamp(request.metadata_mut());
        request
    }

    /// Says who sends, and which data dir the sender expects at the target.
    fn stamp(&self, meta: &mut tonic::metadata::MetadataMap) {
        let me = &self.net.identity;
        let expected = self.net.state.read(|s| s.members.get(&self.target).map(|m| m.incarnation));
        let pairs = [
            (HEADER_FROM, Some(me.node_id.to_string())),
            (HEADER_FROM_INCARNATION, Some(me.incarnation.to_string())),
            (HEADER_TO_INCARNATION, expected.map(|i| i.to_string())),
        ];
        for (key, value) in pairs {
            if let Some(value) = value.and_then(|v| v.parse().ok()) {
                meta.insert(key, value);
            }
        }
    }
}

fn timed_out<E: std::error::Error>(what: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::new(std::io::ErrorKind::TimedOut, what)))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, Infallible> {
        let entries = rpc.entries.len() as u64;
        self.call(Rpc::AppendEntries { entries }, wire::encode_append_entries(&rpc), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Rpc::InstallSnapshot, wire::encode_install_snapshot(&rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, Infallible> {
        let json = serde_json::to_vec(&rpc).map_err(std::io::Error::other);
        self.call(Rpc::Vote, json, &option).await
    }
}
