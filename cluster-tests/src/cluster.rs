//! A cluster of `vpnd` processes on one random loopback IP.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, ClientTlsConfig};
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::{ClusterStatus, StatusRequest};

use crate::eventually;
use crate::net::{free_addr, random_loopback_ip};
use crate::netns::Lab;
use crate::process::NodeProcess;

/// Generous bound for elections and catch-up on a loaded 2-core machine.
pub const CONVERGE: Duration = Duration::from_secs(20);

pub struct Cluster {
    pub root: TempDir,
    pub ip: Ipv4Addr,
    pub nodes: BTreeMap<u64, NodeProcess>,
    /// How the test's own clients connect when the nodes run mutual TLS.
    pub client_tls: Option<ClientTlsConfig>,
}

impl Cluster {
    /// `n` nodes (ids 1..=n) sharing one `--initial-members` list, not started.
    pub fn new(n: u64, extra: &[&str]) -> Self {
        // VPN_TEST_KEEP_DIRS=1 keeps every node's data dir and log for a post-mortem.
        let keep = std::env::var_os("VPN_TEST_KEEP_DIRS").is_some();
        let root = tempfile::Builder::new().prefix("vpn-cluster-").disable_cleanup(keep).tempdir().expect("tempdir");
        if keep {
            eprintln!("cluster dir (kept): {}", root.path().display());
        }
        let ip = random_loopback_ip();
        let mut nodes: BTreeMap<u64, NodeProcess> =
            (1..=n).map(|id| (id, NodeProcess::new(id, free_addr(ip), free_addr(ip), root.path()))).collect();
        let members: Vec<String> = nodes.values().map(|p| format!("{}={}", p.id, p.grpc)).collect();
        for p in nodes.values_mut() {
            p.bootstrap = vec!["--initial-members".into(), members.join(",")];
            p.extra = with_security(extra);
        }
        Self { root, ip, nodes, client_tls: None }
    }

    /// One node per node namespace of `lab`, not started; the nodes' and
    /// the clients' addresses exist only inside the lab, so talk to them from
    /// [`Lab::run_as_client`].
    pub fn in_lab(lab: &Lab, extra: &[&str]) -> Self {
        let mut cluster = Self::new(lab.node_ids().len() as u64, extra);
        let members: Vec<String> = lab.node_ids().iter().map(|id| format!("{id}={}:7000", lab.node_ip(*id))).collect();
        for p in cluster.nodes.values_mut() {
            p.grpc = SocketAddr::from((lab.node_ip(p.id), 7000));
            p.http = SocketAddr::from((lab.node_ip(p.id), 7080));
            p.netns = Some(lab.node_ns(p.id));
            p.bootstrap = vec!["--initial-members".into(), members.join(",")];
        }
        cluster
    }

    /// Starts `n` nodes and waits until they agree on a leader.
    pub async fn start(n: u64, extra: &[&str]) -> Self {
        let mut cluster = Self::new(n, extra);
        for p in cluster.nodes.values_mut() {
            p.start();
        }
        cluster.wait_leader().await;
        cluster
    }

    /// Adds (does not start) a node that joins through the running members.
    pub fn add_joining_node(&mut self, id: u64, extra: &[&str]) -> &mut NodeProcess {
        let mut p = NodeProcess::new(id, free_addr(self.ip), free_addr(self.ip), self.root.path());
        p.bootstrap = vec!["--join".into(), self.endpoints()];
        p.extra = with_security(extra);
        self.nodes.insert(id, p);
        self.node_mut(id)
    }

    /// Adds (does not start) node `id` of `lab` (see [`Lab::add_node`]),
    /// joining through the running members, with their flags.
    pub fn add_lab_node(&mut self, lab: &Lab, id: u64) -> &mut NodeProcess {
        let extra = self.control_plane().next().map(|p| p.extra.clone()).unwrap_or_default();
        let ip = lab.node_ip(id);
        let mut p = NodeProcess::new(id, SocketAddr::from((ip, 7000)), SocketAddr::from((ip, 7080)), self.root.path());
        p.netns = Some(lab.node_ns(id));
        p.bootstrap = vec!["--join".into(), self.endpoints()];
        p.extra = extra;
        self.nodes.insert(id, p);
        self.node_mut(id)
    }

    pub fn node(&self, id: u64) -> &NodeProcess {
        self.nodes.get(&id).unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn node_mut(&mut self, id: u64) -> &mut NodeProcess {
        self.nodes.get_mut(&id).unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.values().filter(|p| p.is_running()).map(|p| p.id).collect()
    }

    /// The control-plane nodes (every node but data-plane-only ones, which
    /// serve no gRPC), in id order.
    pub fn control_plane(&self) -> impl Iterator<Item = &NodeProcess> {
        self.nodes.values().filter(|p| p.is_control_plane())
    }

    /// Comma-separated gRPC addresses of every control-plane node (for
    /// vpnctl --endpoints); data-plane-only nodes serve no gRPC.
    pub fn endpoints(&self) -> String {
        self.control_plane().map(|p| p.grpc.to_string()).collect::<Vec<_>>().join(",")
    }

    /// A channel to node `id`, over TLS when [`Cluster::client_tls`] is set.
    pub fn channel(&self, id: u64) -> Channel {
        match &self.client_tls {
            Some(tls) => tls_channel(self.node(id).grpc, tls.clone()),
            None => channel(self.node(id).grpc),
        }
    }

    pub fn users(&self, id: u64) -> UsersClient<Channel> {
        UsersClient::new(self.channel(id))
    }

    pub fn cluster_client(&self, id: u64) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel(id))
    }

    pub async fn status(&self, id: u64) -> Result<ClusterStatus, String> {
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_secs(2));
        self.cluster_client(id)
            .status(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| format!("node {id}: {}", s.message()))
    }

    /// Waits until every running control-plane node names the same running
    /// leader and is ready.
    pub async fn wait_leader(&self) -> u64 {
        let running: Vec<u64> = self.running().into_iter().filter(|id| self.node(*id).is_control_plane()).collect();
        eventually("a leader agreed by every running node", CONVERGE, || async {
            let mut leader = None;
            for id in &running {
                let s = self.status(*id).await?;
                let l = s.leader_id.ok_or(format!("node {id} knows no leader"))?;
                if leader.is_some_and(|x| x != l) {
                    return Err(format!("nodes disagree: {leader:?} vs {l}"));
                }
                leader = Some(l);
            }
            let l = leader.ok_or("no running node")?;
            if !running.contains(&l) {
                return Err(format!("leader {l} is not running"));
            }
            for id in &running {
                let (code, body) = http_get(self.node(*id).http, "/readyz?verbose").await?;
                if code != 200 {
                    return Err(format!("node {id} not ready: {body}"));
                }
            }
            Ok(l)
        })
        .await
    }

    /// The value of a metric (first sample whose line starts with `name`) on node `id`.
    pub async fn metric(&self, id: u64, name: &str) -> Result<f64, String> {
        let (_, body) = http_get(self.node(id).http, "/metrics").await?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("metric {name} not found on node {id}"))
    }
}

/// `extra`, plus `--insecure` unless it sets up TLS itself (files or a join token): the scenario
/// tests run plaintext; the mutual TLS tests (t15) give their own files.
fn with_security(extra: &[&str]) -> Vec<String> {
    let mut flags: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    if !extra.iter().any(|f| ["--trusted-ca-file", "--insecure", "--join-token"].contains(f)) {
        flags.push("--insecure".into());
    }
    flags
}

/// A lazily connected TLS channel to `addr` (the node's certificate names its IP).
pub fn tls_channel(addr: SocketAddr, tls: ClientTlsConfig) -> Channel {
    Channel::from_shared(format!("https://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(1))
        .tls_config(tls)
        .expect("TLS settings")
        .connect_lazy()
}

/// A lazily connected channel to `addr`.
pub fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

/// A minimal HTTP/1.1 GET; returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .map_err(|_| format!("GET {path} on {addr} timed out"))?
        .map_err(|e| format!("GET {path} on {addr}: {e}"))?;
    let code = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or(format!("bad HTTP reply from {addr}"))?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((code, body))
}
