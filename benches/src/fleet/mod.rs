//! `loadgen fleet`: a fleet of simulated data-plane agents against a real
//! 3-node `vpnd` control plane under mutual TLS (always: an agent's identity
//! is its certificate). Phases, each bounded in count and time:
//!
//! 1. the cluster starts; every agent gets a certificate of its own (role
//!    dataplane) and a channel of its own to one member (round-robin), then
//!    registers, watches its assignment and heartbeats;
//! 2. a window with agents but no users (the cost of idle agents);
//! 3. `--users` users are created (c=64, to the leader) and the run waits
//!    until every agent got an assignment and every user is held by
//!    `replicas` agents;
//! 4. the steady window (heartbeats only): CPU, RSS and network of each member;
//! 5. propagation: users created one at a time, each timed from its
//!    CreateUser acknowledgement to its arrival in the streams of its agents;
//! 6. failover: the agent holding most users stops (no heartbeats, stream
//!    and connection dropped), timed until each of its users is held by
//!    `replicas` other agents.
//!
//! Layout: [`agent`] one simulated agent; [`timed`] phases 5 and 6;
//! [`tracker`] who holds what;
//! [`wire`] the byte-counting connector; [`usage`] /proc and `ss` readings;
//! [`window`] one measured window.

pub mod agent;
pub mod timed;
pub mod tracker;
pub mod usage;
pub mod window;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use vpn_proto::v1::nodes_client::NodesClient;
use vpn_proto::v1::ListNodesRequest;

use self::agent::{Agent, AgentSpec, Fleet};
use self::tracker::{AgentIx, Summary};
use self::window::{latency_ms, Member};
use crate::load::{run_level, Latency, Level};
use crate::vpnd::{channel_with, find_leader_with, VpndCluster};
use crate::writers::VpndWriter;

/// Node ids of the agents start here (the members are 1..=3).
const FIRST_AGENT_ID: u64 = 1001;
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub agents: usize,
    pub users: u64,
    pub heartbeat: Duration,
    /// The replica count of vpnd's scheduler (its default is 2); checks only.
    pub replicas: usize,
    pub create_concurrency: usize,
    /// Agents connecting and registering at once at the start.
    pub connect_concurrency: usize,
    pub idle_window: Duration,
    pub steady_window: Duration,
    pub probe_users: usize,
    pub probe_timeout: Duration,
    /// Bound of each wait for the fleet to converge.
    pub settle_timeout: Duration,
    pub failover_timeout: Duration,
}

/// Runs every phase against a cluster started here; the JSON section.
pub async fn run(bin: &Path, work_dir: &Path, log_dir: &Path, cfg: &FleetConfig) -> Result<Value> {
    check(cfg)?;
    let mut cluster = VpndCluster::start_tls(bin, 3, work_dir, log_dir, "fleet")?;
    cluster.wait_all_ready(Duration::from_secs(60)).await?;
    let result = phases(&mut cluster, cfg).await;
    cluster.stop_all().await;
    result
}

async fn phases(cluster: &mut VpndCluster, cfg: &FleetConfig) -> Result<Value> {
    let admin = cluster.client_tls().ok_or_else(|| anyhow!("the fleet cluster runs TLS"))?;
    let endpoints = cluster.endpoints();
    let leader = find_leader_with(&endpoints, Some(&admin)).await?;
    let members: Vec<Member> = (0..cluster.specs.len())
        .map(|i| Ok(Member { id: cluster.specs[i].id, pid: cluster.proc(i)?.pid()?, leader: i == leader.index }))
        .collect::<Result<_>>()?;
    let rss = |label: &str| -> Result<Value> {
        let kib: Vec<u64> = members.iter().map(|m| crate::proc::rss_kib(m.pid)).collect::<Result<_>>()?;
        Ok(json!({ "at": label, "rss_kib": kib }))
    };
    let mut rss_points = vec![rss("started")?];
    let leader_channel = channel_with(&endpoints[leader.index], Some(&admin)).await?;
    println!("fleet: cluster ready, leader node {}; issuing {} agent certificates", leader.id, cfg.agents);

    // Phase 1: the agents.
    let pki = cluster.pki().ok_or_else(|| anyhow!("the fleet cluster runs TLS"))?;
    let issuing = Instant::now();
    let mut specs = Vec::with_capacity(cfg.agents);
    for i in 0..cfg.agents {
        let id = pki.dataplane_identity(FIRST_AGENT_ID + i as u64)?;
        let control_plane = cluster.specs[i % cluster.specs.len()].grpc;
        specs.push(AgentSpec {
            ix: i as AgentIx,
            node_id: FIRST_AGENT_ID + i as u64,
            control_plane,
            tls: id.tls,
            cert_not_after_ms: id.not_after_ms,
        });
    }
    let issue_s = issuing.elapsed().as_secs_f64();
    let fleet = Arc::new(Fleet::new(cfg.agents, cfg.heartbeat));
    let gate = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let started = Instant::now();
    let mut agents =
        specs.into_iter().map(|spec| Agent::spawn(spec, fleet.clone(), gate.clone())).collect::<Result<Vec<_>>>()?;
    let all = cfg.agents as u64;
    let registered =
        wait_for(cfg.settle_timeout, || fleet.registered.load(Ordering::Relaxed) >= all, || progress(&fleet, cfg))
            .await;
    let registered_s = started.elapsed().as_secs_f64();
    let watching =
        wait_for(cfg.settle_timeout, || fleet.view().first_arrivals().len() >= cfg.agents, || progress(&fleet, cfg))
            .await;
    let watching_s = started.elapsed().as_secs_f64();
    let register_latency =
        Latency::from_samples(std::mem::take(&mut *fleet.register_us.lock().unwrap_or_else(PoisonError::into_inner)));
    println!(
        "fleet: {} of {} agents registered in {registered_s:.1} s (each: p50 {:.0} ms, p99 {:.0} ms), \
         all watching: {watching} after {watching_s:.1} s",
        fleet.registered.load(Ordering::Relaxed),
        cfg.agents,
        register_latency.p50_us as f64 / 1000.0,
        register_latency.p99_us as f64 / 1000.0,
    );
    if !registered {
        println!("fleet: not every agent registered; errors: {:?}", errors(&fleet));
    }
    rss_points.push(rss("agents registered")?);
    let fleet_start = json!({
        "issue_certificates_s": issue_s,
        "all_registered": registered,
        "all_registered_s": registered_s,
        "all_watching": watching,
        "all_watching_s": watching_s,
        "register_latency_ms": latency_ms(&register_latency),
        "connect_concurrency": cfg.connect_concurrency,
    });

    // Phase 2: idle agents.
    let idle = window::measure("agents, no users", &members, &fleet, cfg.idle_window).await?;
    window::print(&idle);

    // Phase 3: the users.
    let create = create_users(cfg, &leader_channel, cluster.specs[leader.index].http, &fleet).await?;
    rss_points.push(rss("users placed")?);

    // Phase 4: steady state.
    let steady = window::measure("steady", &members, &fleet, cfg.steady_window).await?;
    window::print(&steady);

    // Phase 5: propagation.
    let propagation = timed::propagation(cfg, &leader_channel, &fleet).await;
    println!("{}", timed::describe_propagation(&propagation));

    // Phase 6: failover.
    let failover = timed::failover(cfg, &mut agents, &fleet, &leader_channel).await;
    println!("{}", timed::describe_failover(&failover));
    rss_points.push(rss("end")?);

    for agent in agents {
        agent.stop().await;
    }
    let (wire_sent, wire_received) = fleet.wire.bytes();
    Ok(json!({
        "config": {
            "agents": cfg.agents,
            "users": cfg.users,
            "heartbeat_ms": cfg.heartbeat.as_millis() as u64,
            "replicas": cfg.replicas,
            "create_concurrency": cfg.create_concurrency,
            "tls": "mutual TLS: each agent presents its own data-plane certificate",
            "vpnd_flags": "defaults (--node-heartbeat-ms 1000, --down-after-ms 5000, 2 replicas, 2000 moves/s)",
        },
        "leader_id": leader.id,
        "fleet_start": fleet_start,
        "idle_window": idle,
        "create": create,
        "steady_window": steady,
        "propagation": propagation,
        "failover": failover,
        "rss": rss_points,
        "agents_total": {
            "heartbeats_ok": fleet.heartbeats_ok.load(Ordering::Relaxed),
            "heartbeats_failed": fleet.heartbeats_failed.load(Ordering::Relaxed),
            "sessions_failed": fleet.sessions_failed.load(Ordering::Relaxed),
            "assignment_messages": fleet.assignment_messages.load(Ordering::Relaxed),
            "assignment_protobuf_bytes": fleet.assignment_bytes.load(Ordering::Relaxed),
            "tcp_connects": fleet.wire.connects(),
            "wire_sent_bytes": wire_sent,
            "wire_received_bytes": wire_received,
            "errors": errors(&fleet),
        },
    }))
}

/// Polls `done` until true or `deadline`; `tick` runs every 5 s meanwhile.
async fn wait_for(deadline: Duration, mut done: impl FnMut() -> bool, mut tick: impl FnMut()) -> bool {
    let start = Instant::now();
    let mut next_tick = start + Duration::from_secs(5);
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= deadline {
            return false;
        }
        if Instant::now() >= next_tick {
            tick();
            next_tick += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn progress(fleet: &Fleet, cfg: &FleetConfig) {
    let s = fleet.view().summary(cfg.replicas);
    println!(
        "  ... {} registered, {} with an assignment, {} placements of {} users ({} fully replicated), \
         {} heartbeats ok / {} failed, {} failed sessions",
        fleet.registered.load(Ordering::Relaxed),
        s.with_assignment,
        s.placements,
        s.users,
        s.fully_replicated,
        fleet.heartbeats_ok.load(Ordering::Relaxed),
        fleet.heartbeats_failed.load(Ordering::Relaxed),
        fleet.sessions_failed.load(Ordering::Relaxed),
    );
}

fn errors(fleet: &Fleet) -> Value {
    json!(*fleet.errors.lock().unwrap_or_else(PoisonError::into_inner))
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "agents_with_assignment": s.with_assignment,
        "agents_with_users": s.with_users,
        "placements": s.placements,
        "users_held": s.users,
        "users_fully_replicated": s.fully_replicated,
        "min_users_per_agent": s.min_per_agent,
        "max_users_per_agent": s.max_per_agent,
    })
}

/// Phase 3: bulk creation, then the wait until the fleet holds every user
/// `replicas` times and the leader sees every node ready and caught up.
async fn create_users(
    cfg: &FleetConfig,
    leader: &Channel,
    leader_http: SocketAddr,
    fleet: &Arc<Fleet>,
) -> Result<Value> {
    println!("fleet: creating {} users (c={}, to the leader)", cfg.users, cfg.create_concurrency);
    let metrics_before = leader_metrics(leader_http).await;
    let machine_before = usage::machine_ticks()?;
    let writer = Arc::new(VpndWriter::new(vec![leader.clone()], CREATE_TIMEOUT));
    let level = Level { concurrency: cfg.create_concurrency, duration: Duration::from_secs(3600), max_ops: cfg.users };
    let start = Instant::now();
    let created = run_level(writer, "fu", &level).await;
    let created_s = start.elapsed().as_secs_f64();
    println!(
        "fleet: {} users created in {created_s:.1} s ({:.0}/s), {} errors; waiting for placement",
        created.ok,
        created.throughput(),
        created.error_count()
    );
    let want = created.ok as usize;
    let converged = |s: &Summary| {
        s.with_assignment == cfg.agents && s.fully_replicated >= want && s.placements >= want * cfg.replicas
    };
    let placed =
        wait_for(cfg.settle_timeout, || converged(&fleet.view().summary(cfg.replicas)), || progress(fleet, cfg)).await;
    let placed_s = start.elapsed().as_secs_f64();
    let summary = fleet.view().summary(cfg.replicas);
    // The leader's view: every node ready, its applied generation caught up
    // (reported by the next heartbeats, so up to an interval later).
    let mut nodes = NodesClient::new(leader.clone());
    let mut leader_view = json!(null);
    let until = Instant::now() + cfg.settle_timeout;
    let caught_up_s = loop {
        match nodes.list_nodes(ListNodesRequest::default()).await {
            Ok(r) => {
                let nodes = r.into_inner().nodes;
                let ready = nodes.iter().filter(|n| n.status == "ready").count();
                let caught_up = nodes.iter().filter(|n| n.applied_generation >= n.desired_generation).count();
                leader_view = json!({ "nodes": nodes.len(), "ready": ready, "caught_up": caught_up });
                if ready == cfg.agents && caught_up == cfg.agents {
                    break Some(start.elapsed().as_secs_f64());
                }
            }
            Err(e) => leader_view = json!({ "error": e.message() }),
        }
        if Instant::now() >= until {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let machine = usage::machine_ticks()?;
    let busy_pct = 100.0 * (machine.0 - machine_before.0) as f64 / (machine.1 - machine_before.1).max(1) as f64;
    let metrics = metrics_delta(&metrics_before, &leader_metrics(leader_http).await);
    println!(
        "fleet: placement {} after {placed_s:.1} s: {} placements of {} users, {} of them held by {} agents, \
         {}-{} users per agent; the leader saw every node caught up after {caught_up_s:?} s: {leader_view}",
        if placed { "complete" } else { "INCOMPLETE" },
        summary.placements,
        want,
        summary.fully_replicated,
        cfg.replicas,
        summary.min_per_agent,
        summary.max_per_agent,
    );
    println!("fleet: during creation and placement: machine busy {busy_pct:.0} % of all cores; leader metrics grew by {metrics}");
    Ok(json!({
        "create": created.to_json(),
        "created_s": created_s,
        "placed": placed,
        "create_to_placed_s": placed_s,
        "fleet": summary_json(&summary),
        "create_to_leader_saw_all_caught_up_s": caught_up_s,
        "leader_nodes": leader_view,
        "leader_metrics_delta": metrics,
        "machine_busy_pct_of_all_cores": busy_pct,
        "loadavg_at_end": usage::loadavg(),
        "assignment_messages_so_far": fleet.assignment_messages.load(Ordering::Relaxed),
        "assignment_protobuf_bytes_so_far": fleet.assignment_bytes.load(Ordering::Relaxed),
    }))
}

/// What the leader's `/metrics` says of its Raft log, proposals and planner.
const LEADER_METRICS: &[&str] = &[
    "vpn_proposals_total",
    "vpn_raft_commit_index",
    "vpn_raft_snapshots_total",
    "vpn_scheduler_plan_duration_seconds_sum",
    "vpn_scheduler_plan_duration_seconds_count",
    "vpn_placement_changes_total",
];

async fn leader_metrics(http: SocketAddr) -> BTreeMap<String, f64> {
    match crate::http::get_up_to(http, "/metrics", Duration::from_secs(5), 16 << 20).await {
        Ok((200, page)) => usage::metric_samples(&page, LEADER_METRICS),
        _ => BTreeMap::new(),
    }
}

/// Growth of each sample between two scrapes (an empty scrape gives nothing).
fn metrics_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Value {
    let delta: BTreeMap<&String, f64> =
        after.iter().map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0.0))).collect();
    json!(delta)
}

/// Checks the flags before any process starts.
pub fn check(cfg: &FleetConfig) -> Result<()> {
    if cfg.agents == 0 || cfg.replicas == 0 {
        bail!("--agents and --replicas must be positive");
    }
    if cfg.create_concurrency == 0 || cfg.connect_concurrency == 0 {
        bail!("--create-concurrency and --connect-concurrency must be positive");
    }
    if cfg.heartbeat < Duration::from_millis(50) {
        bail!("--heartbeat: at least 50ms (vpnd's own lower bound)");
    }
    u32::try_from(cfg.agents).context("--agents: at most 4294967295")?;
    Ok(())
}
