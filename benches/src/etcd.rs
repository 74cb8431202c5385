//! A local etcd cluster (Debian's `etcd-server`, v3.4) on free loopback ports,
//! the baseline the load generator compares `vpnd` against.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::etcdserverpb::StatusRequest;
use crate::http;
use crate::proc::{free_ports, log_tail, Proc};
use crate::vpnd::lazy_channel;

pub struct EtcdCluster {
    pub clients: Vec<SocketAddr>,
    procs: Vec<Proc>,
    _data: TempDir,
}

impl EtcdCluster {
    /// Starts `n` members with `--initial-cluster-state new` and waits until
    /// every member reports itself healthy.
    pub async fn start(bin: &Path, n: usize, work_dir: &Path, log_dir: &Path) -> Result<Self> {
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
        let log_dir = log_dir.join("etcd");
        std::fs::create_dir_all(&log_dir).with_context(|| format!("log dir {}", log_dir.display()))?;
        let ports = free_ports(2 * n)?;
        let (clients, peers): (Vec<SocketAddr>, Vec<SocketAddr>) =
            (0..n).map(|i| (ports[2 * i], ports[2 * i + 1])).unzip();
        let initial_cluster =
            peers.iter().enumerate().map(|(i, p)| format!("m{}=http://{p}", i + 1)).collect::<Vec<_>>().join(",");
        let token = format!("loadgen-{}", std::process::id());
        let mut procs = Vec::new();
        for i in 0..n {
            let dir: PathBuf = data.path().join(format!("m{}", i + 1));
            let args = vec![
                format!("--name=m{}", i + 1),
                format!("--data-dir={}", dir.display()),
                format!("--listen-client-urls=http://{}", clients[i]),
                format!("--advertise-client-urls=http://{}", clients[i]),
                format!("--listen-peer-urls=http://{}", peers[i]),
                format!("--initial-advertise-peer-urls=http://{}", peers[i]),
                format!("--initial-cluster={initial_cluster}"),
                "--initial-cluster-state=new".into(),
                format!("--initial-cluster-token={token}"),
                "--logger=zap".into(),
                "--log-level=warn".into(),
            ];
            let log = log_dir.join(format!("m{}.log", i + 1));
            procs.push(Proc::spawn(&format!("etcd m{}", i + 1), bin, &args, &log)?);
        }
        let mut cluster = Self { clients, procs, _data: data };
        cluster.wait_healthy(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    async fn wait_healthy(&mut self, deadline: Duration) -> Result<()> {
        let until = Instant::now() + deadline;
        for (proc, addr) in self.procs.iter_mut().zip(&self.clients) {
            loop {
                proc.check_alive()?;
                if let Ok((200, body)) = http::get(*addr, "/health", Duration::from_secs(1)).await {
                    if body.contains("\"health\":\"true\"") {
                        break;
                    }
                }
                if Instant::now() >= until {
                    bail!("{} not healthy within {deadline:?}:\n{}", proc.name, log_tail(&proc.log, 20));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.clients.iter().map(|a| format!("http://{a}")).collect()
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

/// The index in `endpoints` of the etcd leader (Maintenance.Status).
pub async fn find_leader(endpoints: &[String]) -> Result<usize> {
    let mut leader = None;
    let mut ids = Vec::new();
    for ep in endpoints {
        let mut client = MaintenanceClient::new(lazy_channel(ep)?);
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_secs(2));
        let status =
            client.status(req).await.map_err(|e| anyhow!("etcd status on {ep}: {}", e.message()))?.into_inner();
        let member = status.header.map(|h| h.member_id).unwrap_or_default();
        ids.push(member);
        if status.leader != 0 {
            leader = Some(status.leader);
        }
    }
    let leader = leader.ok_or_else(|| anyhow!("no etcd member knows a leader"))?;
    ids.iter().position(|id| *id == leader).ok_or_else(|| anyhow!("etcd leader {leader:x} is not one of the endpoints"))
}
