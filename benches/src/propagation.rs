//! Propagation to the data plane, on the machine's real Docker engine: from
//! the CreateUser acknowledgement until a real sing-box client, configured
//! from the user's own links, fetches through the node's engine
//! (Shadowsocks-2022 and VLESS over TLS, measured at the same time).
//!
//! After each acknowledgement the probe asks for the user's links, starts a
//! sing-box client from each and launches a small fetch through it every
//! [`PROBE_EVERY`] (overlapping, so a refused or held attempt does not delay
//! the next); the first fetch that returns the whole body ends the sample.
//! The same procedure on a user the engine already serves is measured in the
//! same run as the floor of the method (links + client start + first fetch),
//! and so is a bare fetch through a running client.
//!
//! The fixture: 3 voters (`--initial-members`), data-plane learners joined
//! with `--join`, engines on free ports, everything on loopback; every vpnd is
//! killed and every engine container removed when it is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cluster_tests::docker::{unique_node_id, Engines};
use cluster_tests::net::free_port;
use cluster_tests::traffic::{dataplane_cert, fetch_via_socks_within, outbound_from_link, HttpSource, SingBoxClient};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use vpn_proto::v1::nodes_client::NodesClient;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::{CreateUserRequest, GetNodeRequest, GetUserLinksRequest};

use crate::load::Latency;
use crate::proc::{free_ports, Proc};
use crate::vpnd::{channel, wait_leader, VpndCluster};
use crate::{http, ms};

/// A new fetch attempt this often while a user is not served yet.
pub const PROBE_EVERY: Duration = Duration::from_millis(10);
/// One attempt gives up after this (a refused one usually fails at once).
const ATTEMPT: Duration = Duration::from_secs(2);
/// Longest a sample may take before the run fails.
const SAMPLE_DEADLINE: Duration = Duration::from_secs(60);
/// Engines are created on a node's first start: `sing-box check` containers, then the engines.
pub const ENGINES_UP: Duration = Duration::from_secs(180);
pub const SS: &str = "shadowsocks-2022";
pub const VLESS: &str = "vless-tls";
const SERVER_NAME: &str = "vpn.test";

/// One data-plane node; on drop its vpnd is killed, then its engines removed.
pub struct DataplaneNode {
    pub id: u64,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub proc: Proc,
    // Dropped after `proc` (declaration order): no vpnd is left to recreate them.
    _engines: Engines,
}

/// 3 voters, data-plane nodes, a local byte source.
pub struct Fixture {
    pub dataplane: Vec<DataplaneNode>,
    pub cluster: VpndCluster,
    pub source: HttpSource,
    /// Writes and reads go to the leader.
    pub leader: Channel,
    vpnd: PathBuf,
    image: String,
    log_dir: PathBuf,
    data: TempDir,
}

impl Fixture {
    pub async fn start(vpnd: &Path, image: &str, work_dir: &Path, log_dir: &Path) -> Result<Self> {
        let mut cluster = VpndCluster::start(vpnd, 3, work_dir, log_dir, "propagation")?;
        cluster.wait_all_ready(Duration::from_secs(60)).await?;
        let endpoints = cluster.endpoints();
        let leader = wait_leader(&endpoints, Duration::from_secs(30)).await?;
        let leader = channel(&endpoints[leader.index]).await?;
        let data = tempfile::Builder::new().prefix("propagation-dp-").tempdir_in(work_dir)?;
        Ok(Self {
            dataplane: Vec::new(),
            cluster,
            source: HttpSource::start().await,
            leader,
            vpnd: vpnd.to_owned(),
            image: image.to_owned(),
            log_dir: log_dir.join("propagation"),
            data,
        })
    }

    /// Spawns a data-plane node with a vless-tls and a shadowsocks-2022
    /// inbound; returns its index in [`Self::dataplane`] (not waited for).
    pub fn add_dataplane_node(&mut self) -> Result<usize> {
        let id = unique_node_id();
        let ports = free_ports(2)?;
        let data_dir = self.data.path().join(format!("dp-{id}"));
        let seeds: Vec<String> = self.cluster.specs.iter().map(|s| s.grpc.to_string()).collect();
        let mut args: Vec<String> = vec![
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            ports[0].to_string(),
            "--http".into(),
            ports[1].to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--join".into(),
            seeds.join(","),
            "--insecure".into(),
            "--dataplane".into(),
            "--public-host".into(),
            "127.0.0.1".into(),
            "--engine-image".into(),
            self.image.clone(),
            "--tls-server-name".into(),
            SERVER_NAME.into(),
        ];
        for protocol in [VLESS, SS] {
            args.extend(["--inbound".to_owned(), format!("{protocol}={}", free_port())]);
        }
        let log = self.log_dir.join(format!("dataplane-{id}.log"));
        let engines = Engines { owner: id };
        let proc = Proc::spawn(&format!("vpnd data-plane node {id}"), &self.vpnd, &args, &log)?;
        self.dataplane.push(DataplaneNode { id, http: ports[1], data_dir, proc, _engines: engines });
        Ok(self.dataplane.len() - 1)
    }

    pub fn users(&self) -> UsersClient<Channel> {
        UsersClient::new(self.leader.clone())
    }

    /// The generation the cluster wants data-plane node `i` to reach (linearizable).
    pub async fn desired_generation(&self, i: usize) -> Result<u64> {
        let id = self.dataplane[i].id;
        let mut nodes = NodesClient::new(self.leader.clone());
        let node =
            nodes.get_node(GetNodeRequest { id, consistency: 0 }).await.map_err(|s| anyhow!("GetNode {id}: {s}"))?;
        Ok(node.into_inner().desired_generation)
    }

    /// A gauge of data-plane node `i`, from its own /metrics (not the
    /// replicated report, which is sent at most once a second).
    pub async fn gauge(&self, i: usize, name: &str) -> Result<f64> {
        let (_, body) = http::get(self.dataplane[i].http, "/metrics", Duration::from_secs(2)).await?;
        sum_samples(&body, name).ok_or_else(|| anyhow!("no {name} on data-plane node {}", self.dataplane[i].id))
    }

    /// Waits until node `i`'s engines applied the generation the cluster
    /// wants now; returns the time waited. Polls every millisecond.
    pub async fn wait_applied(&mut self, i: usize, deadline: Duration) -> Result<Duration> {
        let start = Instant::now();
        let target = loop {
            match self.desired_generation(i).await {
                Ok(g) if g > 0 => break g,
                _ if start.elapsed() > deadline => bail!("data-plane node {} never registered", self.dataplane[i].id),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        loop {
            self.dataplane[i].proc.check_alive()?;
            if self.gauge(i, "vpn_dataplane_applied_generation").await.is_ok_and(|g| g >= target as f64) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > deadline {
                bail!("data-plane node {} did not apply generation {target} within {deadline:?}", self.dataplane[i].id);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// `name`'s link for `protocol` on data-plane node `i`, polled every
    /// [`PROBE_EVERY`] until the scheduler placed the user there (part of the
    /// propagation being measured).
    pub async fn link(&self, name: &str, i: usize, protocol: &str) -> Result<String> {
        let id = self.dataplane[i].id;
        let deadline = Instant::now() + SAMPLE_DEADLINE;
        loop {
            let links = self
                .users()
                .get_user_links(GetUserLinksRequest { name: name.to_owned(), consistency: 0 })
                .await
                .map_err(|s| anyhow!("GetUserLinks {name}: {s}"))?
                .into_inner()
                .links;
            if let Some(link) = links.into_iter().find(|l| l.node_id == id && l.protocol == protocol) {
                return Ok(link.url);
            }
            if Instant::now() > deadline {
                bail!("{name} has no {protocol} link on node {id} after {SAMPLE_DEADLINE:?}");
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// A sing-box client for `name` over `protocol` on node `i`, from the link.
    pub async fn client(&self, name: &str, i: usize, protocol: &str) -> Result<SingBoxClient> {
        let url = self.link(name, i, protocol).await?;
        let cert = dataplane_cert(&self.dataplane[i].data_dir);
        Ok(SingBoxClient::start(outbound_from_link(&url, Some(&cert))).await)
    }

    /// Links, a fresh client, fetches every [`PROBE_EVERY`] until one returns
    /// the whole body: the instant it did.
    pub async fn first_fetch(&self, name: &str, i: usize, protocol: &str) -> Result<Instant> {
        let client = self.client(name, i, protocol).await?;
        first_success(client.proxy, self.source.addr).await.with_context(|| format!("{name} over {protocol}"))
    }

    /// Kills every vpnd (data-plane nodes first) and removes their engines.
    pub async fn stop(mut self) {
        for mut node in self.dataplane.drain(..) {
            let _ = node.proc.kill9().await;
        }
        self.cluster.stop_all().await;
    }
}

/// Overlapping attempts through `proxy`; the instant the first one succeeded.
pub async fn first_success(proxy: SocketAddr, target: SocketAddr) -> Result<Instant> {
    let start = Instant::now();
    let mut attempts = JoinSet::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut last = String::from("no attempt finished");
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if start.elapsed() > SAMPLE_DEADLINE {
                    bail!("not served within {SAMPLE_DEADLINE:?}: {last}");
                }
                attempts.spawn(fetch_via_socks_within(proxy, target, "/1024", 1024, ATTEMPT));
            }
            Some(done) = attempts.join_next() => match done {
                Ok(Ok(_)) => return Ok(Instant::now()),
                Ok(Err(e)) => last = e,
                Err(e) => last = e.to_string(),
            },
        }
    }
}

/// The sum of every sample of `name` (with or without labels) in a Prometheus text body.
pub fn sum_samples(body: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = body
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Milliseconds percentiles of `samples`.
pub fn summary(samples: &[Duration]) -> Value {
    let l = Latency::from_samples(samples.iter().map(|d| d.as_micros() as u64).collect());
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": l.count, "p50_ms": ms(l.p50_us), "p90_ms": ms(l.p90_us), "p99_ms": ms(l.p99_us),
        "max_ms": ms(l.max_us), "mean_ms": ms(l.mean_us),
    })
}

/// `users` samples of propagation over both protocols on data-plane node
/// `i`, each followed by a sample of the same procedure on `served` (a user
/// the engines already serve); names are `{prefix}-{n}`.
pub async fn measure(fx: &Fixture, i: usize, served: &str, prefix: &str, users: usize) -> Result<Value> {
    let (mut create, mut ss, mut vless, mut ref_ss, mut ref_vless) = (vec![], vec![], vec![], vec![], vec![]);
    let mut users_client = fx.users();
    for n in 0..users {
        let name = format!("{prefix}-{n}");
        let sent = Instant::now();
        users_client
            .create_user(CreateUserRequest { name: name.clone(), ..Default::default() })
            .await
            .map_err(|s| anyhow!("CreateUser {name}: {s}"))?;
        let ack = Instant::now();
        create.push(ack - sent);
        let (a, b) = tokio::join!(fx.first_fetch(&name, i, SS), fx.first_fetch(&name, i, VLESS));
        ss.push(a? - ack);
        vless.push(b? - ack);

        let start = Instant::now();
        let (a, b) = tokio::join!(fx.first_fetch(served, i, SS), fx.first_fetch(served, i, VLESS));
        ref_ss.push(a? - start);
        ref_vless.push(b? - start);
        if (n + 1) % 10 == 0 {
            eprintln!("propagation: {} users, last: ss {:.0} ms, vless {:.0} ms", n + 1, ms(ss[n]), ms(vless[n]));
        }
    }
    Ok(json!({
        "users": users,
        "create_user_ack": summary(&create),
        "ack_to_first_fetch": {SS: summary(&ss), VLESS: summary(&vless)},
        "same_procedure_on_a_served_user": {SS: summary(&ref_ss), VLESS: summary(&ref_vless)},
    }))
}

/// `n` fetches of 1 KiB through a running client of a served user, one at a time.
pub async fn bare_fetches(fx: &Fixture, i: usize, served: &str, n: usize) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for protocol in [SS, VLESS] {
        let client = fx.client(served, i, protocol).await?;
        first_success(client.proxy, fx.source.addr).await?;
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            fetch_via_socks_within(client.proxy, fx.source.addr, "/1024", 1024, ATTEMPT)
                .await
                .map_err(|e| anyhow!("bare fetch over {protocol}: {e}"))?;
            samples.push(t.elapsed());
        }
        out.insert(protocol.to_owned(), summary(&samples));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_over_labels_and_names_match_exactly() {
        let body =
            "# HELP x\nvpn_a_total{protocol=\"ss\"} 2\nvpn_a_total{protocol=\"vless\"} 3\nvpn_a_total_x 9\nvpn_b 7\n";
        assert_eq!(sum_samples(body, "vpn_a_total"), Some(5.0));
        assert_eq!(sum_samples(body, "vpn_b"), Some(7.0));
        assert_eq!(sum_samples(body, "vpn_c"), None);
    }
}
