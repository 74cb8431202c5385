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

use crate::propagation::{sum_samples, Fixture, VLESS};

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
        clients.push(fx.client(name, i, VLESS).await?);
    }
    let origin0 = fx.source.moved();
    let recorded0 = recorded(fx, &names).await?;
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
    let ended_early = downloads.iter().filter(|d| d.is_finished()).count();
    drop(downloads);
    let dropped_by_node = fx.gauge(i, "vpn_runtime_sessions_dropped_total").await.unwrap_or(0.0);

    // The users' usage settles once the last reports are recorded.
    let origin = fx.source.moved() - origin0;
    let mut used = 0;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = recorded(fx, &names).await? - recorded0;
        if now == used && now > 0 {
            break;
        }
        used = now;
    }
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
        "sessions_dropped": {"ended_before_the_run": ended_early, "cut_by_the_node": dropped_by_node},
        "accounting": {"origin_bytes": origin, "recorded_bytes": used, "ratio": used as f64 / origin.max(1) as f64},
    }))
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
