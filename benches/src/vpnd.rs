//! A local `vpnd` cluster of real processes on free loopback ports, and the
//! client-side helpers every measurement uses (channels, leader lookup).
//! A cluster runs `--insecure` (the plaintext baseline) unless started with
//! [`VpndCluster::start_tls`]; the `*_with` helpers take the client's TLS
//! settings, the others dial plaintext.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::StatusRequest;

use crate::http;
use crate::proc::{free_ports, log_tail, Proc};
use crate::tls::TestPki;

/// How often readiness is polled: fine enough to time a startup.
pub const READY_POLL: Duration = Duration::from_millis(1);

/// One member's addresses and data dir.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u64,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
}

/// Nodes started with the same `--initial-members`; all are killed on drop.
pub struct VpndCluster {
    bin: PathBuf,
    pub specs: Vec<NodeSpec>,
    procs: Vec<Option<Proc>>,
    initial_members: String,
    /// Flags every member gets besides its own (e.g. scheduling settings).
    extra: Vec<String>,
    log_dir: PathBuf,
    /// Mutual TLS instead of `--insecure`; the files live under `_data`.
    pki: Option<TestPki>,
    // Removed on drop, after the processes (fields drop in order).
    _data: TempDir,
}

impl VpndCluster {
    /// Lays out `n` members (data under `work_dir`, logs in `log_dir`) and
    /// spawns them; call [`Self::wait_all_ready`] next.
    pub fn start(bin: &Path, n: usize, work_dir: &Path, log_dir: &Path, label: &str) -> Result<Self> {
        Self::start_with(bin, n, work_dir, log_dir, label, &[])
    }

    /// As [`Self::start`], but every member runs mutual TLS on certificates of
    /// a CA made for this cluster; clients dial with [`Self::client_tls`].
    pub fn start_tls(bin: &Path, n: usize, work_dir: &Path, log_dir: &Path, label: &str) -> Result<Self> {
        Self::start_inner(bin, n, work_dir, log_dir, label, &[], true)
    }

    /// As [`Self::start`], every member also given `extra` flags.
    pub fn start_with(
        bin: &Path,
        n: usize,
        work_dir: &Path,
        log_dir: &Path,
        label: &str,
        extra: &[String],
    ) -> Result<Self> {
        Self::start_inner(bin, n, work_dir, log_dir, label, extra, false)
    }

    fn start_inner(
        bin: &Path,
        n: usize,
        work_dir: &Path,
        log_dir: &Path,
        label: &str,
        extra: &[String],
        tls: bool,
    ) -> Result<Self> {
        if !bin.is_file() {
            bail!(
                "no vpnd binary at {}: build it with `cargo build --release -p vpn-node` or pass --vpnd",
                bin.display()
            );
        }
        let data = tempfile::Builder::new()
            .prefix(&format!("loadgen-{label}-"))
            .tempdir_in(work_dir)
            .with_context(|| format!("temp dir in {}", work_dir.display()))?;
        let ports = free_ports(2 * n)?;
        let specs: Vec<NodeSpec> = (0..n)
            .map(|i| NodeSpec {
                id: i as u64 + 1,
                grpc: ports[2 * i],
                http: ports[2 * i + 1],
                data_dir: data.path().join(format!("node{}", i + 1)),
            })
            .collect();
        let pki = if tls { Some(TestPki::create(&data.path().join("pki"), label, n)?) } else { None };
        let initial_members = specs.iter().map(|s| format!("{}={}", s.id, s.grpc)).collect::<Vec<_>>().join(",");
        let mut cluster = Self {
            bin: bin.to_owned(),
            procs: specs.iter().map(|_| None).collect(),
            specs,
            initial_members,
            extra: extra.to_vec(),
            log_dir: log_dir.join(label),
            pki,
            _data: data,
        };
        std::fs::create_dir_all(&cluster.log_dir).with_context(|| format!("log dir {}", cluster.log_dir.display()))?;
        for i in 0..n {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// (Re)starts member `i` on its data dir with the original flags.
    pub fn spawn(&mut self, i: usize) -> Result<()> {
        let s = &self.specs[i];
        let mut args: Vec<String> = vec![
            "--id".into(),
            s.id.to_string(),
            "--listen".into(),
            s.grpc.to_string(),
            "--http".into(),
            s.http.to_string(),
            "--data-dir".into(),
            s.data_dir.display().to_string(),
            "--initial-members".into(),
            self.initial_members.clone(),
        ];
        match &self.pki {
            Some(pki) => {
                let files = &pki.members[i];
                for (flag, path) in
                    [("--trusted-ca-file", &pki.ca_file), ("--cert-file", &files.cert), ("--key-file", &files.key)]
                {
                    args.extend([flag.to_owned(), path.display().to_string()]);
                }
            }
            // The plaintext baseline; `loadgen throughput --tls` measures mutual TLS against it.
            None => args.push("--insecure".into()),
        }
        args.extend(self.extra.iter().cloned());
        let log = self.log_dir.join(format!("node{}.log", s.id));
        self.procs[i] = Some(Proc::spawn(&format!("vpnd node {}", s.id), &self.bin, &args, &log)?);
        Ok(())
    }

    pub fn proc(&self, i: usize) -> Result<&Proc> {
        self.procs[i].as_ref().ok_or_else(|| anyhow!("node {} is not running", self.specs[i].id))
    }

    /// `http://` or, under TLS, `https://` URLs of the members' gRPC ports.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        self.specs.iter().map(|s| format!("{scheme}://{}", s.grpc)).collect()
    }

    /// The client's TLS settings; `None` for an `--insecure` cluster.
    pub fn client_tls(&self) -> Option<ClientTlsConfig> {
        self.pki.as_ref().map(TestPki::client_tls)
    }

    /// The run's CA and certificates; `None` for an `--insecure` cluster.
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// Waits for `/readyz` = 200 on member `i`; returns the time since its spawn.
    pub async fn wait_ready(&mut self, i: usize, deadline: Duration) -> Result<Duration> {
        let http = self.specs[i].http;
        let proc = self.procs[i].as_mut().ok_or_else(|| anyhow!("node {} is not running", i + 1))?;
        wait_ready(proc, http, deadline).await
    }

    pub async fn wait_all_ready(&mut self, deadline: Duration) -> Result<()> {
        for i in 0..self.specs.len() {
            if self.procs[i].is_some() {
                self.wait_ready(i, deadline).await?;
            }
        }
        Ok(())
    }

    /// kill -9 member `i`; returns the instant just before the signal.
    pub async fn kill9(&mut self, i: usize) -> Result<Instant> {
        let mut proc = self.procs[i].take().ok_or_else(|| anyhow!("node {} is not running", i + 1))?;
        let at = Instant::now();
        proc.kill9().await?;
        Ok(at)
    }

    /// SIGTERM member `i` and wait for its exit.
    pub async fn terminate(&mut self, i: usize, deadline: Duration) -> Result<ExitStatus> {
        let mut proc = self.procs[i].take().ok_or_else(|| anyhow!("node {} is not running", i + 1))?;
        proc.terminate(deadline).await
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.log_dir.join(format!("node{}.log", self.specs[i].id))
    }
}

/// Polls `GET /readyz` on `http` until 200; fails early when the process exits.
pub async fn wait_ready(proc: &mut Proc, http: SocketAddr, deadline: Duration) -> Result<Duration> {
    let until = Instant::now() + deadline;
    loop {
        proc.check_alive()?;
        if let Ok((200, _)) = http::get(http, "/readyz", Duration::from_millis(500)).await {
            return Ok(proc.started.elapsed());
        }
        if Instant::now() >= until {
            bail!("{} not ready within {deadline:?}; last log lines:\n{}", proc.name, log_tail(&proc.log, 20));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// `host:port` or `http://host:port` as a URL.
pub fn url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// `endpoint` without its scheme: `host:port`.
fn host_port(endpoint: &str) -> &str {
    endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest).trim_end_matches('/')
}

fn endpoint(endpoint: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint> {
    let ep = Endpoint::from_shared(url(endpoint))?.tcp_nodelay(true);
    Ok(match tls {
        Some(tls) => ep.tls_config(tls.clone()).with_context(|| format!("TLS settings for {endpoint}"))?,
        None => ep,
    })
}

/// A channel that connects on first use, over TLS when `tls` is given (the endpoint is then `https://`).
pub fn lazy_channel_with(ep: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel> {
    Ok(endpoint(ep, tls)?.connect_timeout(Duration::from_millis(500)).connect_lazy())
}

/// A connected channel.
pub async fn channel(endpoint: &str) -> Result<Channel> {
    channel_with(endpoint, None).await
}

/// [`channel`], over TLS when `tls` is given.
pub async fn channel_with(ep: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel> {
    endpoint(ep, tls)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("connect to {ep}"))
}

/// The leader as one member sees it.
#[derive(Clone, Copy, Debug)]
pub struct Leader {
    pub id: u64,
    /// Its index in the endpoint list.
    pub index: usize,
    pub term: u64,
}

/// The leader as the first answering member with a known leader sees it.
pub async fn find_leader(endpoints: &[String]) -> Result<Leader> {
    find_leader_with(endpoints, None).await
}

/// [`find_leader`], over TLS when `tls` is given.
pub async fn find_leader_with(endpoints: &[String], tls: Option<&ClientTlsConfig>) -> Result<Leader> {
    let mut last_err = anyhow!("no endpoints");
    for ep in endpoints {
        let mut client = ClusterClient::new(lazy_channel_with(ep, tls)?);
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_secs(1));
        match client.status(req).await {
            Ok(resp) => {
                let status = resp.into_inner();
                let Some(leader) = status.leader_id else {
                    last_err = anyhow!("{ep} knows no leader");
                    continue;
                };
                let addr = status
                    .members
                    .iter()
                    .find(|m| m.id == leader)
                    .map(|m| m.addr.clone())
                    .ok_or_else(|| anyhow!("leader {leader} is not in the member list of {ep}"))?;
                let idx = endpoints
                    .iter()
                    .position(|e| host_port(e) == host_port(&addr))
                    .ok_or_else(|| anyhow!("leader {leader} at {addr} is not one of the endpoints"))?;
                return Ok(Leader { id: leader, index: idx, term: status.term });
            }
            Err(e) => last_err = anyhow!("{ep}: {}", e.message()),
        }
    }
    Err(last_err)
}

/// [`find_leader`], retried until `deadline`.
pub async fn wait_leader(endpoints: &[String], deadline: Duration) -> Result<Leader> {
    wait_leader_with(endpoints, None, deadline).await
}

/// [`wait_leader`], over TLS when `tls` is given.
pub async fn wait_leader_with(
    endpoints: &[String],
    tls: Option<&ClientTlsConfig>,
    deadline: Duration,
) -> Result<Leader> {
    let until = Instant::now() + deadline;
    loop {
        match find_leader_with(endpoints, tls).await {
            Ok(found) => return Ok(found),
            Err(e) if Instant::now() >= until => return Err(e.context("no leader")),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

impl VpndCluster {
    /// Kills every running member and reaps it (the normal end of a run;
    /// dropping the cluster does the same without waiting).
    pub async fn stop_all(&mut self) {
        for proc in self.procs.iter_mut().filter_map(Option::take) {
            let mut proc = proc;
            let _ = proc.kill9().await;
        }
    }
}

/// Waits until every endpoint reports the same leader and has applied at
/// least what the leader had committed when the wait began (a restarted node
/// can answer `/readyz` = 200 before it has caught up). Returns the time taken.
/// Over TLS when `tls` is given.
pub async fn wait_caught_up(
    endpoints: &[String],
    tls: Option<&ClientTlsConfig>,
    deadline: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let leader = wait_leader_with(endpoints, tls, deadline).await?;
    let target = status(&endpoints[leader.index], tls).await?.commit_index;
    loop {
        let mut behind = Vec::new();
        for ep in endpoints {
            match status(ep, tls).await {
                Ok(s) if s.leader_id == Some(leader.id) && s.applied_index >= target => {}
                Ok(s) => {
                    behind.push(format!("{ep}: leader {:?}, applied {} of {target}", s.leader_id, s.applied_index))
                }
                Err(e) => behind.push(format!("{ep}: {e}")),
            }
        }
        if behind.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= deadline {
            bail!("not caught up within {deadline:?}: {}", behind.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `Cluster/Status` of one endpoint.
pub async fn status(endpoint: &str, tls: Option<&ClientTlsConfig>) -> Result<vpn_proto::v1::ClusterStatus> {
    let mut client = ClusterClient::new(lazy_channel_with(endpoint, tls)?);
    let mut req = tonic::Request::new(StatusRequest {});
    req.set_timeout(Duration::from_secs(1));
    Ok(client.status(req).await.map_err(|e| anyhow!("{endpoint}: {}", e.message()))?.into_inner())
}
