//! Lazily connected gRPC channels to other nodes, shared by the Raft network,
//! request forwarding and the data-plane agent (one channel per address,
//! reused), and the cluster id that every call to another node presents.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use vpn_proto::internal::agent_client::AgentClient;
use vpn_proto::internal::raft_client::RaftClient;

use crate::error::Error;
use crate::identity::ClusterCell;
use crate::raft::network::HEADER_CLUSTER;

/// A link that stops answering pings is closed within interval + timeout,
/// and calls then fail at connect instead of queueing on a dead connection.
/// Kept short because whatever a stalled connection queues (a vote that
/// timed out is a reset stream) reaches the peer in one burst when the link
/// heals, and h2 closes a connection that sends it more than 20 resets of
/// streams it had not yet accepted (its rapid-reset guard).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(4);

/// A client of another node's internal Raft service.
pub type PeerRaftClient = RaftClient<InterceptedService<Channel, PresentCluster>>;
/// A data-plane agent's client of a control-plane node.
pub type PeerAgentClient = AgentClient<InterceptedService<Channel, PresentCluster>>;

pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    cluster: ClusterCell,
    /// This node's client side of mutual TLS; `None` under `--insecure`.
    tls: Mutex<Option<ClientTlsConfig>>,
}

impl Peers {
    pub fn new(cluster: ClusterCell, tls: Option<ClientTlsConfig>) -> Self {
        Self { channels: Mutex::default(), cluster, tls: Mutex::new(tls) }
    }

    /// Presents a renewed certificate from now on: channels are made anew
    /// (connections already open keep the old one until they close).
    pub fn set_tls(&self, tls: ClientTlsConfig) {
        *self.tls.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(tls);
        self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
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
        let tls = self.tls.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let unusable =
            |e: tonic::transport::Error| Error::Internal(format!("peer address {addr:?} is not usable: {e}"));
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(unusable)?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(unusable)?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// A client of the Raft service on `channel` whose every request says
    /// which cluster it comes from.
    pub fn raft_client(&self, channel: Channel) -> PeerRaftClient {
        RaftClient::with_interceptor(channel, PresentCluster(self.cluster.clone()))
    }

    /// A client of the agent service on `channel`, presenting the cluster too.
    pub fn agent_client(&self, channel: Channel) -> PeerAgentClient {
        AgentClient::with_interceptor(channel, PresentCluster(self.cluster.clone()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_present_the_cluster_once_it_is_known() {
        let mut before = PresentCluster(ClusterCell::default());
        assert!(before.call(tonic::Request::new(())).expect("ok").metadata().get(HEADER_CLUSTER).is_none());
        let mut after = PresentCluster(ClusterCell::new(Some("00000000000000aa".parse().expect("id"))));
        let request = after.call(tonic::Request::new(())).expect("ok");
        assert_eq!(request.metadata().get(HEADER_CLUSTER).and_then(|v| v.to_str().ok()), Some("00000000000000aa"));
    }
}
