//! What a refusal costs. ALREADY_EXISTS for a taken name comes from the
//! replicated apply (a Raft write: append, fdatasync on a majority, apply),
//! no longer from a look at the leader's own copy, which an isolated leader
//! answered from stale state. Measured on one 3-node cluster, at concurrency
//! 1 against the leader, in the same run: creates of new names (the
//! baseline), creates of a taken name, and linearizable reads (a read-index
//! round, what a barrier before a refusal would cost).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tonic::Code;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::{CreateUserRequest, GetUserRequest};

use crate::load::Latency;
use crate::vpnd::{channel, find_leader};

/// Runs `ops` of each kind against the leader of `endpoints`.
pub async fn run(endpoints: &[String], ops: usize, run_id: &str) -> Result<Value> {
    let leader = find_leader(endpoints).await?;
    let mut users = UsersClient::new(channel(&endpoints[leader.index]).await?);
    let name = |i: usize| format!("{run_id}-r{i}");
    let taken = format!("{run_id}-taken");
    users.create_user(CreateUserRequest { name: taken.clone(), ..Default::default() }).await?;

    let mut created = Vec::with_capacity(ops);
    let mut refused = Vec::with_capacity(ops);
    let mut read = Vec::with_capacity(ops);
    // Interleaved, so a slow moment of the machine hits every kind alike.
    for i in 0..ops {
        let started = Instant::now();
        users.create_user(CreateUserRequest { name: name(i), ..Default::default() }).await?;
        created.push(micros(started.elapsed()));

        let started = Instant::now();
        match users.create_user(CreateUserRequest { name: taken.clone(), ..Default::default() }).await {
            Err(s) if s.code() == Code::AlreadyExists => refused.push(micros(started.elapsed())),
            other => bail!("a create of a taken name answered {other:?}"),
        }

        let started = Instant::now();
        users.get_user(GetUserRequest { name: taken.clone(), consistency: 0 }).await?;
        read.push(micros(started.elapsed()));
    }
    let (created, refused, read) =
        (Latency::from_samples(created), Latency::from_samples(refused), Latency::from_samples(read));
    println!("\nconcurrency 1, {ops} of each, against the leader (us):");
    println!("{:<34} {:>8} {:>8} {:>8}", "", "p50", "p99", "mean");
    for (what, l) in [
        ("create (new name: a Raft write)", &created),
        ("create of a taken name (refused)", &refused),
        ("linearizable get (read index)", &read),
    ] {
        println!("{what:<34} {:>8} {:>8} {:>8}", l.p50_us, l.p99_us, l.mean_us);
    }
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    println!(
        "refused / created: p50 {:.2}x, p99 {:.2}x",
        ratio(refused.p50_us, created.p50_us),
        ratio(refused.p99_us, created.p99_us)
    );
    let latency = |l: &Latency| json!({ "p50_us": l.p50_us, "p99_us": l.p99_us, "mean_us": l.mean_us });
    Ok(json!({
        "ops": ops,
        "create_new": latency(&created),
        "create_taken": latency(&refused),
        "get_linearizable": latency(&read),
    }))
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}
