//! One measured window of the fleet run: what each control-plane process and
//! the load generator itself used, and the traffic between them, over a
//! stretch where the agents only heartbeat.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use super::agent::Fleet;
use super::usage::{clock_ticks, loadavg, loopback_bytes, machine_ticks, ProcSample, Sockets};
use crate::load::Latency;
use crate::proc::rss_kib;

/// One control-plane process measured.
pub struct Member {
    pub id: u64,
    pub pid: u32,
    pub leader: bool,
}

struct Start {
    at: Instant,
    members: Vec<ProcSample>,
    me: ProcSample,
    sockets: Sockets,
    lo: u64,
    machine: (u64, u64),
    wire: (u64, u64),
    heartbeats: (u64, u64),
    assignments: u64,
}

/// Samples everything at the start, waits `length`, samples again.
pub async fn measure(label: &str, members: &[Member], fleet: &Arc<Fleet>, length: Duration) -> Result<Value> {
    let me = std::process::id();
    let mut pids: Vec<u32> = members.iter().map(|m| m.pid).collect();
    pids.push(me);
    let start = Start {
        at: Instant::now(),
        members: members.iter().map(|m| ProcSample::now(m.pid)).collect::<Result<_>>()?,
        me: ProcSample::now(me)?,
        sockets: Sockets::read(&pids)?,
        lo: loopback_bytes()?,
        machine: machine_ticks()?,
        wire: fleet.wire.bytes(),
        heartbeats: heartbeats(fleet),
        assignments: fleet.assignment_messages.load(Ordering::Relaxed),
    };
    fleet.record_heartbeats(true);
    tokio::time::sleep(length).await;
    let hb_latency = Latency::from_samples(fleet.record_heartbeats(false));
    let end_members = members.iter().map(|m| ProcSample::now(m.pid)).collect::<Result<Vec<_>>>()?;
    let end_me = ProcSample::now(me)?;
    let sockets = Sockets::read(&pids)?;
    let (lo, machine, wire) = (loopback_bytes()?, machine_ticks()?, fleet.wire.bytes());
    let (hb, assignments) = (heartbeats(fleet), fleet.assignment_messages.load(Ordering::Relaxed));
    let secs = start.at.elapsed().as_secs_f64().max(1e-9);
    let ticks = clock_ticks();
    let agents = fleet.agents.max(1) as f64;

    let mut rows = Vec::new();
    let (mut cpu_total, mut agent_facing, mut between_members) = (0.0, 0u64, 0u64);
    for (i, m) in members.iter().enumerate() {
        let cpu = end_members[i].cpu_pct_since(&start.members[i], ticks);
        // The loadgen's sockets are the agents' (its admin channels are idle here).
        let split = sockets.since(&start.sockets, m.pid, me);
        let rss = rss_kib(m.pid)?;
        cpu_total += cpu;
        agent_facing += split.with_peer.0 + split.with_peer.1;
        // Each byte between members is sent by one and received by another: count it once.
        between_members += split.others.0;
        rows.push(json!({
            "id": m.id,
            "leader": m.leader,
            "cpu_pct_of_one_core": cpu,
            "rss_kib": rss,
            "tcp_to_agents_bytes_per_s": split.with_peer.0 as f64 / secs,
            "tcp_from_agents_bytes_per_s": split.with_peer.1 as f64 / secs,
            "tcp_to_members_bytes_per_s": split.others.0 as f64 / secs,
            "tcp_from_members_bytes_per_s": split.others.1 as f64 / secs,
            "established_sockets": sockets.count(m.pid),
        }));
    }
    let bytes_total = (agent_facing + between_members) as f64 / secs;
    let (wire_sent, wire_received) = (wire.0 - start.wire.0, wire.1 - start.wire.1);
    let agent_bytes_per_s = (wire_sent + wire_received) as f64 / secs;
    let (busy, total) = (machine.0 - start.machine.0, machine.1 - start.machine.1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let out = json!({
        "label": label,
        "seconds": secs,
        "agents": fleet.agents,
        "members": rows,
        "control_plane": {
            "cpu_pct_of_one_core": cpu_total,
            "tcp_bytes_per_s": bytes_total,
            "tcp_agent_bytes_per_s": agent_facing as f64 / secs,
            "tcp_member_to_member_bytes_per_s": between_members as f64 / secs,
            "cpu_pct_per_agent": cpu_total / agents,
            "tcp_bytes_per_s_per_agent": bytes_total / agents,
        },
        "agents_wire": {
            "what": "TLS bytes over the agents' own TCP streams (no TCP/IP headers), both directions",
            "sent_bytes_per_s": wire_sent as f64 / secs,
            "received_bytes_per_s": wire_received as f64 / secs,
            "bytes_per_s_per_agent": agent_bytes_per_s / agents,
        },
        "heartbeats": {
            "ok_per_s": (hb.0 - start.heartbeats.0) as f64 / secs,
            "failed": hb.1 - start.heartbeats.1,
            "latency_ms": latency_ms(&hb_latency),
        },
        "assignment_messages": assignments - start.assignments,
        "loopback_bytes_per_s": (lo - start.lo) as f64 / secs,
        "loadgen": {
            "cpu_pct_of_one_core": end_me.cpu_pct_since(&start.me, ticks),
            "rss_kib": rss_kib(me)?,
        },
        "machine_busy_pct_of_all_cores": 100.0 * busy as f64 / total.max(1) as f64,
        "machine_cores": cores,
        "loadavg_at_end": loadavg(),
    });
    Ok(out)
}

fn heartbeats(fleet: &Fleet) -> (u64, u64) {
    (fleet.heartbeats_ok.load(Ordering::Relaxed), fleet.heartbeats_failed.load(Ordering::Relaxed))
}

/// Percentiles in milliseconds for the JSON.
pub fn latency_ms(l: &Latency) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": l.count,
        "p50": ms(l.p50_us),
        "p90": ms(l.p90_us),
        "p99": ms(l.p99_us),
        "max": ms(l.max_us),
        "mean": ms(l.mean_us),
    })
}

/// The window's table on stdout.
pub fn print(w: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "\n{} window: {:.1} s, {} agents (heartbeats {:.0}/s ok, {} failed; p50 {:.2} ms, p99 {:.2} ms)",
        w["label"].as_str().unwrap_or("?"),
        f(&w["seconds"]),
        w["agents"],
        f(&w["heartbeats"]["ok_per_s"]),
        w["heartbeats"]["failed"],
        f(&w["heartbeats"]["latency_ms"]["p50"]),
        f(&w["heartbeats"]["latency_ms"]["p99"]),
    );
    println!(
        "{:>6} {:>7} {:>8} {:>9} | {:>10} {:>10} | {:>10} {:>10} | {:>7}",
        "node", "leader", "CPU %", "RSS MiB", "->agents", "agents->", "->members", "members->", "sockets"
    );
    for m in w["members"].as_array().into_iter().flatten() {
        let kb = |k: &str| f(&m[k]) / 1000.0;
        println!(
            "{:>6} {:>7} {:>8.1} {:>9.1} | {:>10.1} {:>10.1} | {:>10.1} {:>10.1} | {:>7}",
            m["id"],
            if m["leader"].as_bool() == Some(true) { "yes" } else { "" },
            f(&m["cpu_pct_of_one_core"]),
            f(&m["rss_kib"]) / 1024.0,
            kb("tcp_to_agents_bytes_per_s"),
            kb("tcp_from_agents_bytes_per_s"),
            kb("tcp_to_members_bytes_per_s"),
            kb("tcp_from_members_bytes_per_s"),
            m["established_sockets"],
        );
    }
    println!("(TCP columns in kB/s: sent to / received from the agents, and the other members)");
    let cp = &w["control_plane"];
    println!(
        "control plane: {:.1} % of one core, {:.1} kB/s TCP; per agent {:.4} % CPU, {:.1} B/s TCP; \
         agents' own TLS wire {:.1} B/s each",
        f(&cp["cpu_pct_of_one_core"]),
        f(&cp["tcp_bytes_per_s"]) / 1000.0,
        f(&cp["cpu_pct_per_agent"]),
        f(&cp["tcp_bytes_per_s_per_agent"]),
        f(&w["agents_wire"]["bytes_per_s_per_agent"]),
    );
    println!(
        "loadgen itself: {:.1} % of one core; whole machine busy {:.1} % of {} cores (load average {}); \
         loopback {:.1} kB/s",
        f(&w["loadgen"]["cpu_pct_of_one_core"]),
        f(&w["machine_busy_pct_of_all_cores"]),
        w["machine_cores"],
        w["loadavg_at_end"][0],
        f(&w["loopback_bytes_per_s"]) / 1000.0,
    );
}
