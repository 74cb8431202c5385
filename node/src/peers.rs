//! Lazily connected gRPC channels to other nodes, shared by the Raft network
//! and by request forwarding (one channel per address, reused), and the
//! cluster id that every call to another node's Raft service presents.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use vpn_proto::internal::raft_client::RaftClient;

use crate::error::Error;
use crate::identity::{ClusterCell, ClusterId};

/// The metadata key that carries the sender's cluster id.
pub const HEADER_CLUSTER: &str = "x-vpn-cluster";

/// A client of another node's internal Raft service.
pub type PeerRaftClient = RaftClient<InterceptedService<Channel, PresentCluster>>;

pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    cluster: ClusterCell,
}

impl Peers {
    pub fn new(cluster: ClusterCell) -> Self {
        Self { channels: Mutex::default(), cluster }
    }

    /// This node's cluster id, once known.
    pub fn cluster(&self) -> &ClusterCell {
        &self.cluster
    }

    /// The channel to `addr` (`host:port`); connects on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Internal(format!("peer address {addr:?} is not usable: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// A client of the Raft service on `channel` whose every request says
    /// which cluster it comes from.
    pub fn raft_client(&self, channel: Channel) -> PeerRaftClient {
        RaftClient::with_interceptor(channel, PresentCluster(self.cluster.clone()))
    }
}

/// Adds [`HEADER_CLUSTER`] to a request, once this node knows its cluster.
#[derive(Clone)]
pub struct PresentCluster(ClusterCell);

impl Interceptor for PresentCluster {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(id) = self.0.get() {
            if let Ok(value) = id.to_string().parse() {
                request.metadata_mut().insert(HEADER_CLUSTER, value);
            }
        }
        Ok(request)
    }
}

/// The Raft service's side: refuses a request from another cluster. A
/// request without the header (a node from before cluster ids, or one still
/// joining) or a node that does not know its own cluster yet lets it pass.
#[derive(Clone)]
pub struct RefuseOtherClusters(pub ClusterCell);

impl Interceptor for RefuseOtherClusters {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(ours) = self.0.get() else { return Ok(request) };
        let Some(theirs) = request.metadata().get(HEADER_CLUSTER).and_then(|v| v.to_str().ok()) else {
            return Ok(request);
        };
        if theirs.parse::<ClusterId>().is_ok_and(|theirs| theirs == ours) {
            return Ok(request);
        }
        let from = request.metadata().get(crate::raft::network::HEADER_FROM).and_then(|v| v.to_str().ok());
        let msg = format!(
            "this node belongs to cluster {ours}, but node {} of cluster {theirs} sent it Raft traffic: two clusters \
             share this address; give each node the --initial-members (or --join seeds) of its own cluster",
            from.unwrap_or("?")
        );
        tracing::error!("{msg}");
        Err(tonic::Status::failed_precondition(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_cluster(id: Option<&str>) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        if let Some(id) = id {
            request.metadata_mut().insert(HEADER_CLUSTER, id.parse().expect("ascii"));
        }
        request
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

    #[test]
    fn requests_present_the_cluster_once_it_is_known() {
        let mut before = PresentCluster(ClusterCell::default());
        assert!(before.call(tonic::Request::new(())).expect("ok").metadata().get(HEADER_CLUSTER).is_none());
        let mut after = PresentCluster(ClusterCell::new(Some("00000000000000aa".parse().expect("id"))));
        let request = after.call(tonic::Request::new(())).expect("ok");
        assert_eq!(request.metadata().get(HEADER_CLUSTER).and_then(|v| v.to_str().ok()), Some("00000000000000aa"));
    }
}
