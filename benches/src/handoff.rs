//! Engine generations under churn, on the machine's real Docker engine: a
//! data-plane node serves `sessions` long-lived, paced VLESS sessions of a
//! few users while `changes` VLESS user changes (an add, then a delete of
//! an earlier add, and so on) arrive evenly over `over`. Sampled every
//! [`SAMPLE_EVERY`]: the generations alive (the node's own gauge) and the
//! memory and CPU of the node's vpnd and of all its engine processes. At the
//! end: the sessions dropped (those that ended before the run did, and the
//! node's own count of cut sessions: target 0), and the accounting error
//! (the usage the cluster recorded for the session users against the bytes
//! the origin server moved for them).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use cluster_tests::traffic::{Download, SingBoxClient};
use serde_json::{json, Value};
use vpn_proto::v1::{CreateUserRequest, DeleteUserRequest, GetUserRequest};

use crate::propagation::{first_success, sum_samples, Fixture, VLESS};

pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The origin's `/trickle/` pace, bytes per second.
const TRICKLE_BYTES_PER_SEC: u64 = 10 * 1024;

pub struct Config {
    pub changes: usize,
    pub over: Duration,
    pub sessions: usize,
    pub session_users: usize,
}

/// One sample of the node's cost.
struct Sample {
    generations: f64,
    vpnd_rss_kib: u64,
    engines_rss_kib: u64,
    /// CPU seconds (user + system) of vpnd and the engines, cumulative.
    cpu_secs: f64,
}

/// Runs the churn on data-plane node `i` of `fx` (already serving).
pub async fn run(fx: &Fixture, i: usize, cfg: &Config) -> Result<Value> {
    let mut users = fx.users();
    let names: Vec<String> = (0..cfg.session_users).map(|n| format!("holder-{n}")).collect();
    for name in &names {
        users.create_user(CreateUserRequest { name: name.clone(), ..Default::default() }).await?;
    }
    let mut clients: Vec<SingBoxClient> = Vec::new();
    for name in &names {
        let client = fx.client(name, i, VLESS).await?;
        // Served before its sessions start: a link exists as soon as the user is placed.
        first_success(client.proxy, fx.source.addr).await?;
        clients.push(client);
    }
    // The baselines once the probes' usage is recorded.
    let recorded0 = settled(fx, &names).await?;
    let origin0 = fx.source.moved();
    let kernel0 = kernel_bytes(fx, i, &names).await?;
    // Long enough to outlast the run: the sessions are ended by us, not by their size.
    let size = (TRICKLE_BYTES_PER_SEC * (cfg.over.as_secs() + 120)) as usize;
    let downloads: Vec<Download> = (0..cfg.sessions)
        .map(|s| {
            let client = &clients[s % clients.len()];
            Download::start(client.proxy, fx.source.addr, &format!("/trickle/{size}"), size)
        })
        .collect();

    let pid = fx.dataplane[i].proc.pid()?;
    let start = Instant::now();
    let mut samples = vec![sample(fx, i, pid).await?];
    let mut next_sample = start + SAMPLE_EVERY;
    let mut added: Vec<String> = Vec::new();
    for k in 0..cfg.changes {
        let at = start + cfg.over.mul_f64(k as f64 / cfg.changes as f64);
        while Instant::now() < at {
            if Instant::now() >= next_sample {
                samples.push(sample(fx, i, pid).await?);
                next_sample += SAMPLE_EVERY;
            }
            tokio::time::sleep(Duration::from_millis(50).min(at.saturating_duration_since(Instant::now()))).await;
        }
        if k % 2 == 1 && !added.is_empty() {
            let name = added.remove(0);
            users.delete_user(DeleteUserRequest { name }).await?;
        } else {
            let name = format!("churn-{k}");
            users.create_user(CreateUserRequest { name: name.clone(), ..Default::default() }).await?;
            added.push(name);
        }
    }
    while Instant::now() < start + cfg.over {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples.push(sample(fx, i, pid).await?);
    let (ended, running): (Vec<Download>, Vec<Download>) = downloads.into_iter().partition(Download::is_finished);
    drop(running);
    // The engine may hold an upstream connection a little after its client left, and the
    // origin keeps sending meanwhile: compare once the origin went quiet.
    let mut last = fx.source.moved();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = fx.source.moved();
        if now == last {
            break;
        }
        last = now;
    }
    let mut reasons = Vec::new();
    for download in ended.into_iter() {
        reasons.push(download.end(Duration::from_secs(1)).await.0.err().unwrap_or_else(|| "completed".into()));
    }
    let dropped_by_node = fx.gauge(i, "vpn_runtime_sessions_dropped_total").await.unwrap_or(0.0);

    let origin = fx.source.moved() - origin0;
    let kernel = kernel_bytes(fx, i, &names).await? - kernel0;
    let used = settled(fx, &names).await? - recorded0;
    let elapsed = samples.last().map_or(0.0, |s| s.cpu_secs) - samples[0].cpu_secs;
    let wall = start.elapsed().as_secs_f64();
    let max = |f: fn(&Sample) -> f64| samples.iter().map(f).fold(0.0, f64::max);
    let mean = |f: fn(&Sample) -> f64| samples.iter().map(f).sum::<f64>() / samples.len() as f64;
    Ok(json!({
        "changes": cfg.changes, "over_s": cfg.over.as_secs(), "sessions": cfg.sessions,
        "generations_alive": {"max": max(|s| s.generations), "mean": mean(|s| s.generations)},
        "vpnd_rss_kib": {"max": max(|s| s.vpnd_rss_kib as f64), "mean": mean(|s| s.vpnd_rss_kib as f64)},
        "engines_rss_kib": {"max": max(|s| s.engines_rss_kib as f64), "mean": mean(|s| s.engines_rss_kib as f64)},
        "cpu_share_of_one_core": elapsed / wall,
        "sessions_dropped": {"ended_before_the_run": reasons.len(), "how": reasons, "cut_by_the_node": dropped_by_node},
        "accounting": {
            "origin_bytes": origin, "kernel_bytes": kernel, "recorded_bytes": used,
            "ratio": used as f64 / origin.max(1) as f64,
        },
    }))
}

/// The usage recorded for `names` once it stops changing (the last reports
/// are recorded within a few heartbeats), at most 30 s.
async fn settled(fx: &Fixture, names: &[String]) -> Result<u64> {
    let start = Instant::now();
    let mut last = recorded(fx, names).await?;
    while start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = recorded(fx, names).await?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

/// What node `i`'s kernel counted for `names` (payload bytes, from its nftables table and marks).
async fn kernel_bytes(fx: &Fixture, i: usize, names: &[String]) -> Result<u64> {
    let node = &fx.dataplane[i];
    let path = node.data_dir.join("dataplane/engines/marks.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let prefix = doc["prefix"].as_u64().ok_or_else(|| anyhow!("no prefix in {}", path.display()))? as u32;
    let marks: Vec<u32> =
        names.iter().filter_map(|n| doc["slots"][n]["slot"].as_u64()).map(|slot| prefix | slot as u32).collect();
    let counted = vpn_runtime::nftables::NodeTable::new(node.id).payload_bytes(prefix).await?;
    Ok(counted.iter().filter(|(m, _)| marks.contains(m)).map(|(_, b)| b).sum())
}

/// The usage the cluster recorded for `names`, summed.
async fn recorded(fx: &Fixture, names: &[String]) -> Result<u64> {
    let mut users = fx.users();
    let mut sum = 0;
    for name in names {
        let user = users.get_user(GetUserRequest { name: name.clone(), ..Default::default() }).await?;
        sum += user.into_inner().used_bytes;
    }
    Ok(sum)
}

async fn sample(fx: &Fixture, i: usize, pid: u32) -> Result<Sample> {
    let body = crate::http::get(fx.dataplane[i].http, "/metrics", Duration::from_secs(2)).await?.1;
    let generations = sum_samples(&body, "vpn_runtime_engine_generations").unwrap_or(0.0);
    let mut engines_rss_kib = 0;
    let mut cpu_secs = cpu_secs(pid)?;
    for engine_pid in engine_pids(fx.dataplane[i].id)? {
        // An engine may end between the listing and the read: it costs nothing any more.
        engines_rss_kib += crate::proc::rss_kib(engine_pid).unwrap_or(0);
        cpu_secs += self::cpu_secs(engine_pid).unwrap_or(0.0);
    }
    Ok(Sample { generations, vpnd_rss_kib: crate::proc::rss_kib(pid)?, engines_rss_kib, cpu_secs })
}

/// The main processes of node `owner`'s running engine containers.
fn engine_pids(owner: u64) -> Result<Vec<u32>> {
    let filter = format!("label=vpn.owner-node={owner}");
    let ids = std::process::Command::new("docker").args(["ps", "-q", "--filter", &filter]).output()?;
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).split_whitespace().map(String::from).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let out = std::process::Command::new("docker").args(["inspect", "-f", "{{.State.Pid}}"]).args(&ids).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).filter(|p| *p > 0).collect())
}

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds of `pid` so far.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command (which may hold spaces) start after the last ')';
    // utime and stime, fields 14 and 15 of the line, are the 12th and 13th of those.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| -> Result<f64> {
        fields.get(n).and_then(|f| f.parse().ok()).ok_or_else(|| anyhow!("short /proc/{pid}/stat"))
    };
    Ok((ticks(11)? + ticks(12)?) / USER_HZ)
}
