//! Fixtures shared by the rule and property tests: states built through the
//! storage crate's own `apply`, and helpers that play the executor and the
//! nodes (plan, propose, apply, report applied).

#![allow(dead_code)] // each test crate uses its own subset

use std::collections::BTreeMap;

use vpn_scheduler::{plan, Policy};
use vpn_storage::command::{apply, Command, Move};
use vpn_storage::model::{DataplaneNode, NodeHealth, Schedule, User, UserStatus};
use vpn_storage::state::State;
use vpn_storage::types::NodeId;

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn node(id: NodeId, capacity: u32, pairs: &[(&str, &str)]) -> DataplaneNode {
    let mut n = DataplaneNode::new(id, format!("node{id}.example.com"), Vec::new());
    n.capacity = capacity;
    n.labels = labels(pairs);
    n
}

/// A state with these nodes (ready, schedulable) and active users.
pub fn state(nodes: Vec<DataplaneNode>, users: &[&str]) -> State {
    let mut state = State::default();
    for n in nodes {
        apply(&mut state, &Command::RegisterDataplaneNode(n));
    }
    for name in users {
        add_user(&mut state, name, &[]);
    }
    state
}

pub fn add_user(state: &mut State, name: &str, constraint: &[(&str, &str)]) {
    let mut user = User::new(name.to_string(), 0);
    user.constraint = labels(constraint);
    apply(state, &Command::CreateUser(user));
}

pub fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

pub fn set_health(state: &mut State, node: NodeId, health: NodeHealth) {
    apply(state, &Command::SetNodeHealth { node, health, engine_error: None });
}

pub fn set_schedule(state: &mut State, node: NodeId, schedule: Schedule) {
    apply(state, &Command::SetNodeSchedule { node, schedule });
}

pub fn set_status(state: &mut State, name: &str, status: UserStatus) {
    let update =
        Command::UpdateUser { name: name.to_string(), status: Some(status), limits: Default::default(), at_ms: 0 };
    apply(state, &update);
}

/// Every ready node reports the current generation applied.
pub fn nodes_apply(state: &mut State) {
    let generation = state.generation;
    let ready: Vec<NodeId> = state.dataplane_nodes.values().filter(|n| n.is_ready()).map(|n| n.id).collect();
    for node in ready {
        apply(state, &Command::ReportApplied { node, generation });
    }
}

/// One executor pass: plan and apply the moves.
pub fn step(state: &mut State, policy: &Policy) -> Vec<Move> {
    let moves = plan(state, policy);
    if !moves.is_empty() {
        apply(state, &Command::Place(moves.clone()));
    }
    moves
}

/// Plans, applies and lets the nodes apply until a plan has no moves;
/// returns how many plans had moves.
pub fn converge(state: &mut State, policy: &Policy) -> usize {
    for round in 0..1000 {
        nodes_apply(state);
        if step(state, policy).is_empty() {
            return round;
        }
    }
    panic!("no convergence in 1000 plans");
}

/// The nodes a user is placed on, in placement order.
pub fn placed(state: &State, name: &str) -> Vec<NodeId> {
    state.users.get(name).map(|u| u.placements.iter().map(|p| p.node).collect()).unwrap_or_default()
}

/// Placements per node (every node listed, zeros included).
pub fn counts(state: &State) -> BTreeMap<NodeId, u64> {
    state.placement_counts()
}

/// How many placements of the user a node has applied (serving) and that are on ready nodes.
pub fn serving(state: &State, user: &User) -> usize {
    user.placements
        .iter()
        .filter(|p| {
            state
                .dataplane_nodes
                .get(&p.node)
                .is_some_and(|n| n.is_ready() && n.applied_generation >= p.since_generation)
        })
        .count()
}
