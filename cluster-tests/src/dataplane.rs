//! A cluster with data-plane nodes on the machine's real Docker engine, for
//! the end-to-end traffic tests: voters formed by `--initial-members`,
//! data-plane-only nodes (agents of the voters) with inbounds on free ports, waits
//! until their engines applied the cluster's state, users' links, and real
//! sing-box clients built from those links.

use std::time::Duration;

use serde_json::Value;

use crate::cli::{vpnctl, Run};
use crate::cluster::{http_get, CONVERGE};
use crate::docker::{unique_node_id, Engines, ENGINE_IMAGE};
use crate::net::free_port;
use crate::traffic::{dataplane_cert, outbound_from_link, SingBoxClient};
use crate::{eventually, Cluster};

/// First start runs `sing-box check` containers and creates the engines:
/// generous on a loaded 2-core machine.
pub const ENGINES_UP: Duration = Duration::from_secs(120);
/// Voters start beside Docker-heavy tests on 2 cores: a generous bound.
const VOTERS_READY: Duration = Duration::from_secs(60);
/// The TLS server name the data-plane nodes' certificates are made for.
pub const SERVER_NAME: &str = "vpn.test";

/// One data-plane node: its id and the port of each inbound.
#[derive(Clone, Debug)]
pub struct DataplaneNode {
    pub id: u64,
    pub inbounds: Vec<(String, u16)>,
}

/// One entry of `vpnctl -o json user links`.
#[derive(Clone, Debug)]
pub struct Link {
    pub node_id: u64,
    pub protocol: String,
    pub url: String,
}

/// A [`Cluster`] plus data-plane nodes. Dropping it kills every vpnd first
/// and then removes the nodes' engine containers (so no vpnd recreates one).
pub struct DataplaneCluster {
    pub cluster: Cluster,
    engines: Vec<Engines>,
    /// vpnctl's flags for the admin certificate, when the cluster runs mutual TLS.
    admin_flags: Vec<String>,
}

impl DataplaneCluster {
    /// `voters` voters that agree on a leader, no data-plane node yet.
    pub async fn start(voters: u64) -> Self {
        Self::start_with(Cluster::new(voters, &[]), Vec::new()).await
    }

    /// As [`DataplaneCluster::start`], over mutual TLS: a CA and node
    /// certificates made with `vpnctl pki`, voters with their certificates
    /// and the CA key (so the leader signs for joiners), and data-plane nodes
    /// that get their certificates with a join token (`add_node`).
    pub async fn start_mtls(voters: u64) -> Self {
        Self::start_mtls_with(voters, &[]).await
    }

    /// As [`Self::start_mtls`], every voter also given `extra` flags (e.g.
    /// `--node-cert-lifetime 30s` for what it signs).
    pub async fn start_mtls_with(voters: u64, extra: &[&str]) -> Self {
        let mut cluster = Cluster::new(voters, &[]);
        let root = cluster.root.path().to_owned();
        let path = |p: std::path::PathBuf| p.display().to_string();
        let pki = |args: &[&str]| {
            let run = vpnctl("127.0.0.1:1", &[&["pki"], args].concat());
            assert_eq!(run.code, 0, "vpnctl pki {args:?}: {}", run.stderr);
        };
        // The real `vpnctl pki`, as an operator would run it.
        let ca = root.join("ca");
        pki(&["init", "--out", &path(ca.clone())]);
        let host = cluster.ip.to_string();
        let (ca_cert, ca_key) = (path(ca.join("ca.crt")), path(ca.join("ca.key")));
        for node in cluster.nodes.values_mut() {
            let out = root.join(format!("pki-node-{}", node.id));
            pki(&[
                "node-cert",
                "--ca",
                &path(ca.clone()),
                "--id",
                &node.id.to_string(),
                "--host",
                &host,
                "--out",
                &path(out.clone()),
            ]);
            let (cert, key) = (path(out.join("node.crt")), path(out.join("node.key")));
            node.extra =
                ["--trusted-ca-file", &ca_cert, "--cert-file", &cert, "--key-file", &key, "--ca-key-file", &ca_key]
                    .map(String::from)
                    .to_vec();
            node.extra.extend(extra.iter().map(|f| (*f).to_owned()));
        }
        let read = |name: &str| std::fs::read(ca.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.crt")))
            .identity(tonic::transport::Identity::from_pem(read("admin.crt"), read("admin.key")));
        cluster.client_tls = Some(tls);
        let admin_flags = vec![
            "--ca-cert".to_owned(),
            ca_cert,
            "--cert".to_owned(),
            path(ca.join("admin.crt")),
            "--key".to_owned(),
            path(ca.join("admin.key")),
        ];
        Self::start_with(cluster, admin_flags).await
    }

    /// As [`DataplaneCluster::start`], on `cluster`'s voters as they are
    /// made (e.g. [`Cluster::in_lab`] of a lab with a host link, which the
    /// data-plane nodes, on the host, reach them through).
    pub async fn with_voters(cluster: Cluster) -> Self {
        Self::start_with(cluster, Vec::new()).await
    }

    async fn start_with(mut cluster: Cluster, admin_flags: Vec<String>) -> Self {
        for node in cluster.nodes.values_mut() {
            node.start();
        }
        // As `Cluster::start`, but a node that never gets ready fails the test with its log.
        let ready = tokio::time::timeout(VOTERS_READY, async {
            for node in cluster.nodes.values() {
                while !matches!(http_get(node.http, "/readyz").await, Ok((200, _))) {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        })
        .await;
        if ready.is_err() {
            let logs: Vec<String> =
                cluster.nodes.values().map(|n| format!("--- node {} log\n{}", n.id, n.log_tail())).collect();
            panic!("the voters were not ready within {VOTERS_READY:?}:\n{}", logs.join("\n"));
        }
        cluster.wait_leader().await;
        Self { cluster, engines: Vec::new(), admin_flags }
    }

    /// Starts a data-plane-only node (its agent talks to the voters) with
    /// one inbound per protocol in `protocols`, each on a free port, public
    /// host 127.0.0.1 and the engine image the tests build.
    pub fn add_node(&mut self, protocols: &[&str]) -> DataplaneNode {
        self.add_node_with(protocols, &[])
    }

    /// As [`Self::add_node`], with `extra` flags (e.g. `--labels region=eu`).
    pub fn add_node_with(&mut self, protocols: &[&str], extra: &[&str]) -> DataplaneNode {
        let id = loop {
            let id = unique_node_id();
            if !self.cluster.nodes.contains_key(&id) {
                break id;
            }
        };
        self.engines.push(Engines { owner: id });
        let inbounds: Vec<(String, u16)> = protocols.iter().map(|p| ((*p).to_owned(), free_port())).collect();
        let mut flags: Vec<String> =
            ["--dataplane", "--public-host", "127.0.0.1", "--engine-image", ENGINE_IMAGE].map(String::from).to_vec();
        for (protocol, port) in &inbounds {
            flags.extend(["--inbound".to_owned(), format!("{protocol}={port}")]);
        }
        if protocols.contains(&"vless-tls") {
            flags.extend(["--tls-server-name".to_owned(), SERVER_NAME.to_owned()]);
        }
        flags.extend(extra.iter().map(|f| (*f).to_owned()));
        if !self.admin_flags.is_empty() {
            // Under mutual TLS the node gets its certificate with a join token.
            let mut args: Vec<&str> = self.admin_flags.iter().map(String::as_str).collect();
            args.extend(["join-token", "create", "--role", "dataplane"]);
            let run = vpnctl(&self.endpoints(), &args);
            assert_eq!(run.code, 0, "join-token create: {}", run.stderr);
            flags.extend(["--join-token".to_owned(), run.stdout.trim().to_owned()]);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.cluster.add_joining_node(id, &flags).start();
        DataplaneNode { id, inbounds }
    }

    /// Kills data-plane node `id` as a host failure would: its vpnd (kill -9)
    /// and its engine containers.
    pub fn kill_node(&mut self, id: u64) {
        self.cluster.node_mut(id).kill9();
        let guard = self.engines.iter().find(|e| e.owner == id);
        guard.unwrap_or_else(|| panic!("{id} is not a data-plane node of this cluster")).remove_all();
    }

    /// `vpnctl -o json user show <name>`.
    pub async fn user(&self, name: &str) -> Value {
        self.ok(&["-o", "json", "user", "show", name]).await.json()
    }

    /// The nodes `name` is placed on, in placement order.
    pub async fn placements(&self, name: &str) -> Vec<u64> {
        let user = self.user(name).await;
        let list = user["placements"].as_array().unwrap_or_else(|| panic!("no placements in {user}"));
        list.iter().map(|p| p.as_u64().unwrap_or_else(|| panic!("placement {p}"))).collect()
    }

    /// `GET` of the user's subscription URL (as `user show` gives it) with
    /// `query` appended: the status and body.
    pub async fn subscription(&self, name: &str, query: &str) -> (u16, String) {
        let user = self.user(name).await;
        let url = user["subscription_url"].as_str().unwrap_or_else(|| panic!("no subscription_url in {user}"));
        let url = url::Url::parse(url).unwrap_or_else(|e| panic!("subscription_url {url}: {e}"));
        let addr = format!("{}:{}", url.host_str().unwrap_or_default(), url.port().unwrap_or(80));
        let addr = addr.parse().unwrap_or_else(|e| panic!("subscription address {addr}: {e}"));
        http_get(addr, &format!("{}{query}", url.path())).await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// The links of the user's default (base64) subscription.
    pub async fn subscription_links(&self, name: &str) -> Vec<String> {
        use base64::Engine as _;
        let (code, body) = self.subscription(name, "").await;
        assert_eq!(code, 200, "subscription of {name}: {body}");
        let raw = base64::engine::general_purpose::STANDARD.decode(body.trim()).expect("base64 subscription");
        String::from_utf8(raw).expect("utf-8 links").lines().filter(|l| !l.is_empty()).map(String::from).collect()
    }

    /// The data-plane node a link points at (by its port).
    pub fn node_of_link(&self, nodes: &[DataplaneNode], url: &str) -> u64 {
        let port = url::Url::parse(url).ok().and_then(|u| u.port()).unwrap_or_else(|| panic!("no port in {url}"));
        let node = nodes.iter().find(|n| n.inbounds.iter().any(|(_, p)| *p == port));
        node.unwrap_or_else(|| panic!("no node serves port {port}")).id
    }

    /// Ids of node `id`'s running engine containers.
    pub fn engines(&self, id: u64) -> Vec<String> {
        let guard = self.engines.iter().find(|e| e.owner == id);
        guard.unwrap_or_else(|| panic!("{id} is not a data-plane node of this cluster")).running()
    }

    /// Comma-separated gRPC addresses of every node (for vpnctl --endpoints).
    pub fn endpoints(&self) -> String {
        self.cluster.endpoints()
    }

    /// `vpnctl <args>` against this cluster, off the async workers (it blocks).
    pub async fn vpnctl(&self, args: &[&str]) -> Run {
        let eps = self.endpoints();
        let args: Vec<String> = self.admin_flags.iter().cloned().chain(args.iter().map(|a| (*a).to_owned())).collect();
        tokio::task::spawn_blocking(move || vpnctl(&eps, &args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .expect("vpnctl task")
    }

    /// `vpnctl <args>` that must succeed.
    pub async fn ok(&self, args: &[&str]) -> Run {
        let run = self.vpnctl(args).await;
        assert_eq!(run.code, 0, "vpnctl {}: {}", args.join(" "), run.stderr);
        run
    }

    /// Waits until node `id` serves `users` users and its engines applied the
    /// generation the cluster wants them to (as `vpnctl node list` reports).
    /// On a timeout the panic carries the node's log and engines.
    pub async fn caught_up(&self, id: u64, users: u64) -> Value {
        let endpoints = self.endpoints();
        let flags = self.admin_flags.clone();
        match tokio::spawn(async move { node_caught_up(&endpoints, &flags, id, users).await }).await {
            Ok(node) => node,
            Err(e) => panic!("{e}\n{}", self.diagnose(id)),
        }
    }

    /// The user's links, from `vpnctl -o json user links <name>`.
    pub async fn links(&self, name: &str) -> Vec<Link> {
        let doc = self.ok(&["-o", "json", "user", "links", name]).await.json();
        let links = doc["links"].as_array().unwrap_or_else(|| panic!("no links array: {doc}"));
        links
            .iter()
            .map(|l| Link {
                node_id: l["node_id"].as_u64().unwrap_or_else(|| panic!("node_id in {l}")),
                protocol: l["protocol"].as_str().unwrap_or_else(|| panic!("protocol in {l}")).to_owned(),
                url: l["url"].as_str().unwrap_or_else(|| panic!("url in {l}")).to_owned(),
            })
            .collect()
    }

    /// The user's one link for `protocol` on node `id`, once the scheduler
    /// placed the user there (it runs about once a second).
    pub async fn link(&self, name: &str, id: u64, protocol: &str) -> Link {
        eventually(&format!("{name}'s {protocol} link on node {id}"), CONVERGE, || async {
            let links = self.links(name).await;
            let found = links.iter().find(|l| l.node_id == id && l.protocol == protocol).cloned();
            found.ok_or(format!("links so far: {links:?}"))
        })
        .await
    }

    /// A real sing-box client configured from `link` alone, trusting the
    /// node's self-signed certificate through its file.
    pub async fn client(&self, link: &Link) -> SingBoxClient {
        let cert = dataplane_cert(&self.cluster.node(link.node_id).data_dir);
        SingBoxClient::start(outbound_from_link(&link.url, Some(&cert))).await
    }

    /// A metric of node `id` (see [`Cluster::metric`]).
    pub async fn metric(&self, id: u64, name: &str) -> Result<f64, String> {
        self.cluster.metric(id, name).await
    }

    /// The last log lines of node `id`, for failure messages.
    pub fn log_tail(&self, id: u64) -> String {
        self.cluster.node(id).log_tail()
    }

    /// For failure messages: node `id`'s log tail, its engine containers and
    /// their last log lines.
    pub fn diagnose(&self, id: u64) -> String {
        let docker = |args: &[&str]| {
            std::process::Command::new("docker").args(args).output().map_or_else(
                |e| format!("(docker {}: {e})", args.join(" ")),
                |o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            )
        };
        let filter = format!("label=vpn.owner-node={id}");
        let names = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]);
        let mut out = format!("--- node {id} log\n{}\n--- engines\n", self.log_tail(id));
        out.push_str(&docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}} {{.Status}}"]));
        for name in names.lines() {
            out.push_str(&format!("--- {name} log\n{}", docker(&["logs", "--tail", "20", name])));
        }
        out
    }
}

impl Drop for DataplaneCluster {
    fn drop(&mut self) {
        for node in self.cluster.nodes.values_mut() {
            node.kill9();
        }
        self.engines.clear();
    }
}

/// Waits until data-plane node `id` serves `users` users and its engines
/// applied the generation the cluster wants (as `vpnctl node list` on
/// `endpoints` reports); returns that node's entry.
pub async fn node_caught_up(endpoints: &str, flags: &[String], id: u64, users: u64) -> Value {
    eventually(&format!("data-plane node {id} to serve {users} users"), ENGINES_UP, || async {
        let eps = endpoints.to_owned();
        let args: Vec<String> =
            flags.iter().map(String::as_str).chain(["-o", "json", "node", "list"]).map(String::from).collect();
        let list =
            tokio::task::spawn_blocking(move || vpnctl(&eps, &args.iter().map(String::as_str).collect::<Vec<_>>()))
                .await
                .expect("vpnctl task");
        if list.code != 0 {
            return Err(list.stderr);
        }
        let doc = list.json();
        let node = doc["nodes"].as_array().and_then(|n| n.iter().find(|n| n["id"] == id).cloned());
        let node = node.ok_or(format!("node {id} not listed: {doc}"))?;
        let (applied, desired) = (node["applied_generation"].as_u64(), node["desired_generation"].as_u64());
        if node["users"] == users && applied.is_some() && applied == desired {
            Ok(node)
        } else {
            Err(format!("not there yet: {node}"))
        }
    })
    .await
}
