//! Benchmarks of the VPN control plane: the `loadgen` binary (a real 3-node
//! `vpnd` cluster against a real 3-member etcd, failover, startup, RSS) and,
//! in `benches/`, criterion benches of the state machine, key generation, the
//! scheduler and the per-request cost of authentication and authorization.
//!
//! Layout:
//! - [`proc`]: spawned child processes (killed on drop), free loopback ports, RSS.
//! - [`http`]: a tiny HTTP/1.1 GET for `/readyz` and etcd's `/health`.
//! - [`vpnd`]: a local `vpnd` cluster of real processes, leader lookup.
//! - [`etcd`]: a local etcd cluster, the generated etcd KV client.
//! - [`load`]: the generator loop shared by both systems, and latency stats.
//! - [`writers`]: what one write is, for `vpnd` (CreateUser) and etcd (Put),
//!   and the credential each sends under `--auth`.
//! - [`compare`]: both systems level by level, with ratios.
//! - [`compare_tls`]: `throughput --tls`: `vpnd` and etcd under mutual TLS, and
//!   `vpnd`'s TLS overhead against its own `--insecure` run.
//! - [`compare_auth`]: `throughput --tls --auth`: `vpnd` writers proving
//!   themselves with an API token and with a client certificate bound to a
//!   role, against etcd with `auth enable` ([`etcd_auth`]: its user and role).
//! - [`tls`]: a throwaway CA and the member and client certificates of a run.
//! - [`failover`]: kill -9 of the leader under a writer, time to the next ack.
//! - [`fleet`]: `loadgen fleet`: 1,000 simulated data-plane agents (the real
//!   agent protocol over mutual TLS) against a 3-node control plane.
//! - [`single`]: one node: startup to `/readyz` with 10k users, idle RSS.
//! - [`refusals`]: what an ALREADY_EXISTS costs next to a create and a linearizable read.
//! - [`report`]: the printed tables.
//! - [`criterion_summary`]: criterion's saved results as ratios to their baselines.
//! - [`propagation`], [`reconcile_scale`]: the `propagation` binary: CreateUser
//!   ack -> first connection through a real engine, and a node with 10,000 users.
//! - [`handoff`]: the `handoff` binary: a node's generations, memory, CPU,
//!   dropped sessions and accounting error under a churn of VLESS changes.

pub mod compare;
pub mod compare_auth;
pub mod compare_tls;
pub mod criterion_summary;
pub mod etcd;
pub mod etcd_auth;
pub mod failover;
pub mod fleet;
pub mod handoff;
pub mod http;
pub mod load;
pub mod proc;
pub mod propagation;
pub mod reconcile_scale;
pub mod refusals;
pub mod report;
pub mod single;
pub mod tls;
pub mod vpnd;
pub mod writers;

/// The generated etcd v3 client (package `etcdserverpb`).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

use std::time::Duration;

/// Milliseconds as a float, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median of `values` (the lower middle for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n => v[(n - 1) / 2],
    }
}
