//! The scheduler's plan on a large cluster: 100,000 active users on 50 ready
//! nodes, two replicas, one plan allowed to move everyone.
//!
//! - `initial`: plan from empty placements (everyone placed in one plan).
//! - `steady`: plan on the converged state, no moves: what the leader pays
//!   every second.
//! - `failover`: plan right after one node went down (its users' replacements).
//! - `baseline_clone_placements`: one pass over all users cloning their
//!   placements, the floor for anything that looks at every user's placements.
//!
//! `loadgen criterion-summary` prints each as a ratio to the baseline.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vpn_scheduler::{plan, Policy};
use vpn_storage::command::{apply, Command};
use vpn_storage::model::{DataplaneNode, NodeHealth, User};
use vpn_storage::state::State;

const USERS: usize = 100_000;
const NODES: u64 = 50;
const POLICY: Policy = Policy { replicas: 2, max_moves: USERS };

fn empty_cluster() -> State {
    let mut state = State::default();
    for id in 1..=NODES {
        apply(&mut state, &Command::RegisterDataplaneNode(DataplaneNode::new(id, format!("node{id}"), Vec::new())));
    }
    for i in 0..USERS {
        let user = User::new(format!("user-{i:06}"), 0);
        state.users.insert(user.name.clone(), user);
    }
    state
}

/// Applies one plan and lets every node report it applied.
fn place(state: &mut State) -> usize {
    let moves = plan(state, &POLICY);
    let count = moves.len();
    apply(state, &Command::Place(moves));
    let generation = state.generation;
    for node in state.dataplane_nodes.values_mut() {
        node.applied_generation = generation;
    }
    count
}

fn scheduler(c: &mut Criterion) {
    let empty = empty_cluster();
    let mut converged = empty.clone();
    let placed = place(&mut converged);
    assert!(plan(&converged, &POLICY).is_empty(), "one plan places everyone");
    let mut failover = converged.clone();
    apply(&mut failover, &Command::SetNodeHealth { node: 1, health: NodeHealth::Down, engine_error: None });
    let replaced = plan(&failover, &POLICY).len();
    println!("scheduler: {USERS} users on {NODES} nodes; initial plan moves {placed} users, failover of node 1 moves {replaced}");

    let mut g = c.benchmark_group("scheduler_plan_100k_users_50_nodes");
    g.sample_size(10);
    g.throughput(Throughput::Elements(USERS as u64));
    g.bench_function("initial", |b| b.iter(|| plan(black_box(&empty), &POLICY)));
    g.bench_function("steady", |b| b.iter(|| plan(black_box(&converged), &POLICY)));
    g.bench_function("failover", |b| b.iter(|| plan(black_box(&failover), &POLICY)));
    g.bench_function("baseline_clone_placements", |b| {
        b.iter(|| black_box(&converged).users.values().map(|u| u.placements.clone()).collect::<Vec<_>>())
    });
    g.finish();
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
