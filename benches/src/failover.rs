//! Failover: one writer creates users continuously against the leader; the
//! leader is killed with SIGKILL; the time from the kill to the first
//! acknowledged write that was sent after it is the failover time. The writer
//! moves to the next endpoint on any error, as a client with every endpoint
//! would. The killed node is restarted before the next round.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Code, Request};
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::CreateUserRequest;

use crate::vpnd::{lazy_channel_with, wait_caught_up, wait_leader_with, VpndCluster};
use crate::{median, ms};

#[derive(Clone, Debug)]
pub struct FailoverConfig {
    pub rounds: usize,
    pub request_timeout: Duration,
    /// Pause after a failed write before trying the next endpoint.
    pub retry_pause: Duration,
}

/// How long one round may take before it counts as failed.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Log {
    /// (sent, acknowledged) of every acknowledged write.
    acks: Vec<(Instant, Instant)>,
    /// (sent, endpoint index, error) of every failed write.
    errors: Vec<(Instant, usize, String)>,
}

struct Shared {
    clients: Vec<UsersClient<Channel>>,
    current: AtomicUsize,
    stop: AtomicBool,
    log: Mutex<Log>,
}

impl Shared {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Acknowledged writes sent at or after `t`, oldest first. One writer
    /// sends one write at a time, so `acks` is ordered by send time.
    fn acks_sent_after(&self, t: Instant) -> (usize, Option<Instant>) {
        let log = self.log();
        let from = log.acks.partition_point(|(sent, _)| *sent < t);
        (log.acks.len() - from, log.acks.get(from).map(|(_, acked)| *acked))
    }
}

async fn writer(shared: Arc<Shared>, prefix: String, timeout: Duration, pause: Duration, hard_stop: Instant) {
    let n = shared.clients.len();
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
        let idx = shared.current.load(Ordering::Relaxed);
        let mut client = shared.clients[idx].clone();
        let mut req = Request::new(CreateUserRequest { name: format!("{prefix}-{seq}"), ..Default::default() });
        req.set_timeout(timeout);
        seq += 1;
        let sent = Instant::now();
        match client.create_user(req).await {
            // ALREADY_EXISTS cannot happen with fresh names, but it would mean committed.
            Ok(_) => shared.log().acks.push((sent, Instant::now())),
            Err(s) if s.code() == Code::AlreadyExists => shared.log().acks.push((sent, Instant::now())),
            Err(s) => {
                let mut msg = format!("{:?}: {}", s.code(), s.message());
                msg.truncate(160);
                shared.log().errors.push((sent, idx, msg));
                let _ = shared.current.compare_exchange(idx, (idx + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Runs the rounds on `cluster` (which must be ready); returns the JSON section.
pub async fn run(cluster: &mut VpndCluster, cfg: &FailoverConfig, run_id: &str) -> Result<Value> {
    let endpoints = cluster.endpoints();
    let tls = cluster.client_tls();
    let clients = endpoints
        .iter()
        .map(|e| lazy_channel_with(e, tls.as_ref()).map(UsersClient::new))
        .collect::<Result<Vec<_>>>()?;
    let shared = Arc::new(Shared {
        clients,
        current: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        log: Mutex::new(Log::default()),
    });
    let hard_stop = Instant::now() + ROUND_DEADLINE * (cfg.rounds as u32 + 1);
    let task =
        tokio::spawn(writer(shared.clone(), format!("{run_id}-fo"), cfg.request_timeout, cfg.retry_pause, hard_stop));
    let result = rounds(cluster, cfg, &endpoints, &shared).await;
    shared.stop.store(true, Ordering::Relaxed);
    let _ = task.await;
    let rounds = result?;

    let gaps: Vec<f64> = rounds.iter().filter_map(|r| r["kill_to_ack_ms"].as_f64()).collect();
    println!("\nfailover (kill -9 of the leader -> next acknowledged write):");
    for r in &rounds {
        println!(
            "  round {}: killed node {} -> new leader {} (term {}): {:.1} ms, {} failed writes meanwhile",
            r["round"],
            r["killed"],
            r["new_leader"],
            r["new_term"],
            r["kill_to_ack_ms"].as_f64().unwrap_or(f64::NAN),
            r["failed_writes"]
        );
    }
    println!("  median {:.1} ms", median(&gaps));
    let total_acks = shared.log().acks.len();
    Ok(json!({
        "tls": tls.is_some(),
        "rounds": rounds,
        "median_kill_to_ack_ms": median(&gaps),
        "max_kill_to_ack_ms": gaps.iter().copied().fold(0.0, f64::max),
        "writes_acknowledged_total": total_acks,
        "request_timeout_ms": ms(cfg.request_timeout),
        "retry_pause_ms": ms(cfg.retry_pause),
    }))
}

async fn rounds(
    cluster: &mut VpndCluster,
    cfg: &FailoverConfig,
    endpoints: &[String],
    shared: &Shared,
) -> Result<Vec<Value>> {
    let tls = cluster.client_tls();
    let tls = tls.as_ref();
    let mut out = Vec::new();
    for round in 1..=cfg.rounds {
        cluster.wait_all_ready(ROUND_DEADLINE).await?;
        // Kill only a steady cluster: the node restarted last round has caught up.
        let catch_up = wait_caught_up(endpoints, tls, ROUND_DEADLINE).await?;
        let leader = wait_leader_with(endpoints, tls, Duration::from_secs(10)).await?;
        shared.current.store(leader.index, Ordering::Relaxed);
        // Let the writer settle on the leader: some acknowledged writes first.
        let settle = Instant::now();
        while shared.acks_sent_after(settle).0 < 20 {
            if settle.elapsed() > Duration::from_secs(10) {
                bail!("round {round}: the writer got no acknowledged writes from the leader within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let killed_at = cluster.kill9(leader.index).await?;
        let ack = loop {
            if let (_, Some(acked)) = shared.acks_sent_after(killed_at) {
                break acked;
            }
            if killed_at.elapsed() > ROUND_DEADLINE {
                bail!("round {round}: no write acknowledged within {ROUND_DEADLINE:?} of killing leader {}", leader.id);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let gap = ack.duration_since(killed_at);
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        for (_, idx, msg) in shared.log().errors.iter().filter(|(s, _, _)| *s >= killed_at && *s <= ack) {
            *kinds.entry(format!("node {}: {msg}", idx + 1)).or_default() += 1;
        }
        let survivors: Vec<String> =
            endpoints.iter().enumerate().filter(|(i, _)| *i != leader.index).map(|(_, e)| e.clone()).collect();
        let new_leader = wait_leader_with(&survivors, tls, Duration::from_secs(10)).await?;
        cluster.spawn(leader.index)?;
        let restart_ready = cluster.wait_ready(leader.index, ROUND_DEADLINE).await?;
        out.push(json!({
            "round": round,
            "killed": leader.id,
            "old_term": leader.term,
            "new_leader": new_leader.id,
            "new_term": new_leader.term,
            "kill_to_ack_ms": ms(gap),
            "failed_writes": kinds.values().sum::<u64>(),
            "errors_until_ack": kinds,
            "killed_node_restart_to_ready_ms": ms(restart_ready),
            "wait_for_caught_up_before_kill_ms": ms(catch_up),
        }));
    }
    Ok(out)
}
