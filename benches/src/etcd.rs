//! A local etcd cluster (Debian's `etcd-server`, v3.4) on free loopback ports,
//! the baseline the load generator compares `vpnd` against. With
//! [`EtcdCluster::start_tls`] clients and peers use mutual TLS
//! (`--client-cert-auth`, `--peer-client-cert-auth`) on certificates of a CA
//! made for the run; health is then read over gRPC (Maintenance.Status), as
//! `/health` would need a client certificate. `throughput --auth` turns
//! etcd's users and roles on as well ([`crate::etcd_auth`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use tonic::transport::ClientTlsConfig;

use crate::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::etcdserverpb::{StatusRequest, StatusResponse};
use crate::http;
use crate::proc::{free_ports, log_tail, Proc};
use crate::tls::TestPki;
use crate::vpnd::lazy_channel_with;

pub struct EtcdCluster {
    pub clients: Vec<SocketAddr>,
    procs: Vec<Proc>,
    /// Mutual TLS on the client and peer ports; the files live under `_data`.
    pki: Option<TestPki>,
    _data: TempDir,
}

impl EtcdCluster {
    /// Starts `n` members with `--initial-cluster-state new` and waits until
    /// every member reports itself healthy.
    pub async fn start(bin: &Path, n: usize, work_dir: &Path, log_dir: &Path) -> Result<Self> {
        Self::start_inner(bin, n, work_dir, log_dir, false, &[]).await
    }

    /// As [`Self::start`], with mutual TLS between clients and members and
    /// between members; clients dial with [`Self::client_tls`].
    pub async fn start_tls(bin: &Path, n: usize, work_dir: &Path, log_dir: &Path) -> Result<Self> {
        Self::start_tls_with(bin, n, work_dir, log_dir, &[]).await
    }

    /// As [`Self::start_tls`], every member also given `extra` flags.
    pub async fn start_tls_with(
        bin: &Path,
        n: usize,
        work_dir: &Path,
        log_dir: &Path,
        extra: &[String],
    ) -> Result<Self> {
        Self::start_inner(bin, n, work_dir, log_dir, true, extra).await
    }

    async fn start_inner(
        bin: &Path,
        n: usize,
        work_dir: &Path,
        log_dir: &Path,
        tls: bool,
        extra: &[String],
    ) -> Result<Self> {
        if !bin.is_file() {
            bail!(
                "no etcd at {}: install Debian's etcd-server (apt-get install -y etcd-server) or pass --etcd",
                bin.display()
            );
        }
        let data = tempfile::Builder::new()
            .prefix("loadgen-etcd-")
            .tempdir_in(work_dir)
            .with_context(|| format!("temp dir in {}", work_dir.display()))?;
        let log_dir = log_dir.join(if tls { "etcd-tls" } else { "etcd" });
        std::fs::create_dir_all(&log_dir).with_context(|| format!("log dir {}", log_dir.display()))?;
        let ports = free_ports(2 * n)?;
        let (clients, peers): (Vec<SocketAddr>, Vec<SocketAddr>) =
            (0..n).map(|i| (ports[2 * i], ports[2 * i + 1])).unzip();
        let pki = if tls { Some(TestPki::create(&data.path().join("pki"), "loadgen etcd", n)?) } else { None };
        let scheme = if tls { "https" } else { "http" };
        let initial_cluster =
            peers.iter().enumerate().map(|(i, p)| format!("m{}={scheme}://{p}", i + 1)).collect::<Vec<_>>().join(",");
        let token = format!("loadgen-{}", std::process::id());
        let mut procs = Vec::new();
        for i in 0..n {
            let dir: PathBuf = data.path().join(format!("m{}", i + 1));
            let mut args = vec![
                format!("--name=m{}", i + 1),
                format!("--data-dir={}", dir.display()),
                format!("--listen-client-urls={scheme}://{}", clients[i]),
                format!("--advertise-client-urls={scheme}://{}", clients[i]),
                format!("--listen-peer-urls={scheme}://{}", peers[i]),
                format!("--initial-advertise-peer-urls={scheme}://{}", peers[i]),
                format!("--initial-cluster={initial_cluster}"),
                "--initial-cluster-state=new".into(),
                format!("--initial-cluster-token={token}"),
                "--logger=zap".into(),
                "--log-level=warn".into(),
            ];
            if let Some(pki) = &pki {
                let (ca, m) = (pki.ca_file.display(), &pki.members[i]);
                let (cert, key) = (m.cert.display(), m.key.display());
                args.extend([
                    format!("--trusted-ca-file={ca}"),
                    format!("--cert-file={cert}"),
                    format!("--key-file={key}"),
                    "--client-cert-auth".into(),
                    format!("--peer-trusted-ca-file={ca}"),
                    format!("--peer-cert-file={cert}"),
                    format!("--peer-key-file={key}"),
                    "--peer-client-cert-auth".into(),
                ]);
            }
            args.extend(extra.iter().cloned());
            let log = log_dir.join(format!("m{}.log", i + 1));
            procs.push(Proc::spawn(&format!("etcd m{}", i + 1), bin, &args, &log)?);
        }
        let mut cluster = Self { clients, procs, pki, _data: data };
        cluster.wait_healthy(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    async fn wait_healthy(&mut self, deadline: Duration) -> Result<()> {
        let until = Instant::now() + deadline;
        let tls = self.client_tls();
        let endpoints = self.endpoints();
        for ((proc, addr), ep) in self.procs.iter_mut().zip(&self.clients).zip(&endpoints) {
            loop {
                proc.check_alive()?;
                let healthy = match &tls {
                    None => matches!(
                        http::get(*addr, "/health", Duration::from_secs(1)).await,
                        Ok((200, body)) if body.contains("\"health\":\"true\"")
                    ),
                    Some(tls) => member_status(ep, Some(tls)).await.is_ok_and(|s| s.leader != 0),
                };
                if healthy {
                    break;
                }
                if Instant::now() >= until {
                    bail!("{} not healthy within {deadline:?}:\n{}", proc.name, log_tail(&proc.log, 20));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// `http://` or, under TLS, `https://` URLs of the client ports.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        self.clients.iter().map(|a| format!("{scheme}://{a}")).collect()
    }

    /// The client's TLS settings; `None` for a plaintext cluster.
    pub fn client_tls(&self) -> Option<ClientTlsConfig> {
        self.pki.as_ref().map(TestPki::client_tls)
    }

    /// VmRSS of every member, KiB.
    pub fn rss_kib(&self) -> Result<Vec<u64>> {
        self.procs.iter().map(Proc::rss_kib).collect()
    }

    pub async fn stop_all(&mut self) {
        for proc in &mut self.procs {
            let _ = proc.kill9().await;
        }
    }
}

/// Maintenance.Status of one member.
async fn member_status(ep: &str, tls: Option<&ClientTlsConfig>) -> Result<StatusResponse> {
    let mut client = MaintenanceClient::new(lazy_channel_with(ep, tls)?);
    let mut req = tonic::Request::new(StatusRequest {});
    req.set_timeout(Duration::from_secs(2));
    Ok(client.status(req).await.map_err(|e| anyhow!("etcd status on {ep}: {}", e.message()))?.into_inner())
}

/// The index in `endpoints` of the etcd leader (Maintenance.Status).
pub async fn find_leader(endpoints: &[String]) -> Result<usize> {
    find_leader_with(endpoints, None).await
}

/// [`find_leader`], over TLS when `tls` is given.
pub async fn find_leader_with(endpoints: &[String], tls: Option<&ClientTlsConfig>) -> Result<usize> {
    let mut leader = None;
    let mut ids = Vec::new();
    for ep in endpoints {
        let status = member_status(ep, tls).await?;
        let member = status.header.map(|h| h.member_id).unwrap_or_default();
        ids.push(member);
        if status.leader != 0 {
            leader = Some(status.leader);
        }
    }
    let leader = leader.ok_or_else(|| anyhow!("no etcd member knows a leader"))?;
    ids.iter().position(|id| *id == leader).ok_or_else(|| anyhow!("etcd leader {leader:x} is not one of the endpoints"))
}
