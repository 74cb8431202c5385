//! The two timed phases of the fleet run: propagation (a new user's way
//! from its CreateUser acknowledgement into its agents' assignment streams)
//! and failover (an agent that stops, until its users are held elsewhere).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tonic::transport::Channel;
use vpn_proto::v1::nodes_client::NodesClient;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::{CreateUserRequest, GetNodeRequest};

use super::agent::{Agent, Fleet};
use super::window::latency_ms;
use super::{FleetConfig, CREATE_TIMEOUT};
use crate::load::Latency;

/// How often a probe looks at the fleet's view.
const POLL: Duration = Duration::from_millis(2);

/// Phase 5: users created one at a time; each timed from its acknowledgement
/// to its arrival at its first and at its `replicas`-th agent.
pub async fn propagation(cfg: &FleetConfig, leader: &Channel, fleet: &Arc<Fleet>) -> Value {
    let mut users = UsersClient::new(leader.clone());
    let (mut first, mut all, mut acks) = (Vec::new(), Vec::new(), Vec::new());
    let (mut failed, mut missed) = (Vec::new(), 0usize);
    for k in 0..cfg.probe_users {
        let name = format!("fp-{k}");
        fleet.view().probe(&name);
        let mut req = tonic::Request::new(CreateUserRequest { name: name.clone(), ..Default::default() });
        req.set_timeout(CREATE_TIMEOUT);
        let sent = Instant::now();
        if let Err(s) = users.create_user(req).await {
            fleet.view().take_probe(&name);
            failed.push(format!("{name}: {:?}: {}", s.code(), s.message()));
            continue;
        }
        let acked = Instant::now();
        acks.push((acked - sent).as_micros() as u64);
        while fleet.view().probe_count(&name) < cfg.replicas && acked.elapsed() < cfg.probe_timeout {
            tokio::time::sleep(POLL).await;
        }
        let arrivals = fleet.view().take_probe(&name);
        let since = |at: Instant| at.saturating_duration_since(acked).as_micros() as u64;
        if let Some((_, at)) = arrivals.first() {
            first.push(since(*at));
        }
        match arrivals.get(cfg.replicas - 1) {
            Some((_, at)) => all.push(since(*at)),
            None => missed += 1,
        }
    }
    json!({
        "users": cfg.probe_users,
        "what": "CreateUser ack -> assignment holding the user delivered to an agent's stream",
        "first_agent_ms": latency_ms(&Latency::from_samples(first)),
        "all_replicas_ms": latency_ms(&Latency::from_samples(all)),
        "create_ack_ms": latency_ms(&Latency::from_samples(acks)),
        "not_on_all_replicas_within_timeout": missed,
        "probe_timeout_s": cfg.probe_timeout.as_secs_f64(),
        "create_failed": failed,
    })
}

pub fn describe_propagation(p: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let (a, first) = (&p["all_replicas_ms"], &p["first_agent_ms"]);
    format!(
        "\npropagation of {} users (ack -> stream): all replicas p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; \
         first agent p50 {:.0} ms, p99 {:.0} ms; {} missed, {} failed creates",
        p["users"],
        f(&a["p50"]),
        f(&a["p99"]),
        f(&a["max"]),
        f(&first["p50"]),
        f(&first["p99"]),
        p["not_on_all_replicas_within_timeout"],
        p["create_failed"].as_array().map_or(0, Vec::len),
    )
}

/// Phase 6: the busiest agent stops; timed until each of its users is held
/// by `replicas` other agents, and until the leader reports the node down.
pub async fn failover(cfg: &FleetConfig, agents: &mut Vec<Agent>, fleet: &Arc<Fleet>, leader: &Channel) -> Value {
    let Some((ix, held_count)) = fleet.view().busiest() else {
        return json!({ "skipped": "no agent holds users" });
    };
    let Some(pos) = agents.iter().position(|a| a.ix == ix) else {
        return json!({ "skipped": "the busiest agent is not running" });
    };
    let victim = agents.swap_remove(pos);
    let node_id = victim.node_id;
    let held = fleet.view().held_by(ix);
    println!("\nfailover: stopping agent {node_id}, which holds {held_count} users");
    let stopped = Instant::now();
    victim.stop().await;
    fleet.view().forget(ix, Instant::now());
    let mut nodes = NodesClient::new(leader.clone());
    let (mut down_at, mut first_moved, mut all_moved) = (None, None, None);
    let mut next_node_poll = Instant::now();
    while stopped.elapsed() < cfg.failover_timeout && (all_moved.is_none() || down_at.is_none()) {
        let short = {
            let view = fleet.view();
            held.iter().filter(|u| view.holders_except(u, ix) < cfg.replicas).count()
        };
        if short < held.len() && first_moved.is_none() {
            first_moved = Some(stopped.elapsed());
        }
        if short == 0 && all_moved.is_none() {
            all_moved = Some(stopped.elapsed());
        }
        if down_at.is_none() && Instant::now() >= next_node_poll {
            next_node_poll = Instant::now() + Duration::from_millis(100);
            let req = GetNodeRequest { id: node_id, ..Default::default() };
            if let Ok(n) = nodes.get_node(req).await {
                if n.get_ref().status == "down" {
                    down_at = Some(stopped.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    json!({
        "node_id": node_id,
        "users_held": held.len(),
        "what": "agent stopped -> each of its users held by `replicas` other agents (their streams)",
        "marked_down_s": secs(down_at),
        "first_user_replaced_s": secs(first_moved),
        "all_users_replaced_s": secs(all_moved),
        "timeout_s": cfg.failover_timeout.as_secs_f64(),
        "down_after_s": 5.0,
    })
}

pub fn describe_failover(f: &Value) -> String {
    if let Some(why) = f["skipped"].as_str() {
        return format!("failover skipped: {why}");
    }
    let s = |v: &Value| v.as_f64().map_or("never (timeout)".to_owned(), |v| format!("{v:.2} s"));
    format!(
        "failover of node {} ({} users): marked down after {}, first user replaced after {}, all replaced after {}",
        f["node_id"],
        f["users_held"],
        s(&f["marked_down_s"]),
        s(&f["first_user_replaced_s"]),
        s(&f["all_users_replaced_s"]),
    )
}
