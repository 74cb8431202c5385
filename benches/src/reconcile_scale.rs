//! A data-plane node with many users (10,000 by default), on the real
//! Docker engine:
//! - bulk: users created through gRPC CreateUser (concurrent, to the leader)
//!   while the node runs; the time from the last acknowledgement until the
//!   node's engines applied the cluster's generation (render + apply);
//! - join: a fresh data-plane node joins the cluster that holds them: from
//!   its spawn until its engines serve every user (secrets, registration,
//!   `sing-box check`, engine creation, live users added);
//! - render only: the runtime's own render function (no Docker, no I/O but
//!   the TLS files), for each protocol.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use vpn_runtime::engine::singbox::SingBox;
use vpn_runtime::engine::{ApiAccess, Engine};
use vpn_runtime::{keys, tls, EngineUser, InboundSpec, Protocol};

use crate::load::{run_level, Level};
use crate::ms;
use crate::propagation::Fixture;
use crate::writers::VpndWriter;

/// Creates `users` users at `concurrency` through the leader while
/// data-plane node `i` runs; then waits until it applied them.
pub async fn bulk(fx: &mut Fixture, i: usize, users: u64, concurrency: usize) -> Result<Value> {
    let generations_before = fx.gauge(i, "vpn_runtime_engine_generations_started_total").await.unwrap_or(0.0);
    let runs_before = fx.gauge(i, "vpn_runtime_reconcile_runs_total").await.unwrap_or(0.0);
    let writer = Arc::new(VpndWriter::new(vec![fx.leader.clone()], Duration::from_secs(10)));
    let level = Level { concurrency, duration: Duration::from_secs(900), max_ops: users };
    let start = Instant::now();
    let created = run_level(writer, "bulk", &level).await;
    let last_ack = Instant::now();
    if created.ok != users {
        return Err(anyhow!("only {} of {users} users were created: {:?}", created.ok, created.errors));
    }
    let tail = fx.wait_applied(i, Duration::from_secs(900)).await?;
    let served = fx.gauge(i, "vpn_runtime_engine_users").await?;
    eprintln!(
        "bulk: {users} users created in {:.1} s; applied {:.0} ms after the last ack ({:.0} users per engine on average)",
        created.elapsed.as_secs_f64(),
        ms(tail),
        served / 2.0
    );
    Ok(json!({
        "users": users,
        "create": created.to_json(),
        "last_ack_to_applied_ms": ms(tail),
        "first_create_to_applied_ms": ms(last_ack.duration_since(start) + tail),
        "engine_users_sum": served,
        "engine_generations_during": fx.gauge(i, "vpn_runtime_engine_generations_started_total").await.unwrap_or(0.0) - generations_before,
        "reconcile_runs_during": fx.gauge(i, "vpn_runtime_reconcile_runs_total").await.unwrap_or(0.0) - runs_before,
    }))
}

/// A fresh data-plane node joins; the time from its spawn until its engines
/// applied the cluster's state.
pub async fn join(fx: &mut Fixture) -> Result<Value> {
    let spawned = Instant::now();
    let i = fx.add_dataplane_node()?;
    fx.wait_applied(i, Duration::from_secs(900)).await?;
    let took = spawned.elapsed();
    let served = fx.gauge(i, "vpn_runtime_engine_users").await?;
    eprintln!("join: a new data-plane node served {served:.0} user slots {:.0} ms after its spawn", ms(took));
    Ok(json!({"spawn_to_applied_ms": ms(took), "engine_users_sum": served}))
}

/// Median time of the runtime's render function for `users` users, per protocol.
pub fn render_only(users: usize, reps: usize) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let files = tls::write_self_signed(dir.path(), "vpn.test").map_err(|e| anyhow!("certificate: {e}"))?;
    let all: Vec<EngineUser> = (0..users)
        .map(|n| {
            serde_json::from_value(json!({
                "name": format!("user-{n}"),
                "vless_uuid": format!("{:08x}-0000-4000-8000-{:012x}", n, n),
                "ss2022_key": keys::generate_ss2022_key(),
            }))
        })
        .collect::<Result<_, _>>()?;
    let api = ApiAccess { ports: vec![40001], secret: "s".repeat(32) };
    let marks: std::collections::BTreeMap<String, u32> =
        all.iter().enumerate().map(|(i, u)| (u.name.clone(), 0x8abc_0000 + i as u32 + 1)).collect();
    let mut out = serde_json::Map::new();
    for protocol in [Protocol::Shadowsocks2022, Protocol::VlessTls] {
        let inbound = InboundSpec {
            protocol,
            listen_port: 443,
            ss2022_server_key: Some(keys::generate_ss2022_key()),
            tls: (protocol == Protocol::VlessTls).then(|| files.clone()),
            reality: None,
        };
        let mut times = Vec::with_capacity(reps);
        let mut bytes = 0;
        for _ in 0..reps {
            let t = Instant::now();
            let rendered = SingBox
                .render(&inbound, inbound.listen_port, &all, &marks, &api)
                .map_err(|e| anyhow!("render: {e}"))?;
            times.push(ms(t.elapsed()));
            bytes = rendered.iter().map(|f| f.contents.len()).sum();
        }
        out.insert(protocol.as_str().to_owned(), json!({"median_ms": crate::median(&times), "config_bytes": bytes}));
    }
    Ok(json!({"users": users, "reps": reps, "by_protocol": out}))
}
