//! Properties over random clusters: the plan is iterated with the storage
//! crate's `apply` (nodes reporting generations applied in between, some a
//! round late) until it has nothing to do, and every step and the end state
//! are checked against the rules.
//!
//! *Eligible for a user*: ready, schedulable, labels hold its constraint,
//! room left (capacity 0: no limit). *Valid*: on a ready node that is not
//! draining. After convergence every active user has exactly
//! `min(replicas, valid + eligible nodes not holding it)` valid placements.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use vpn_scheduler::{plan, Policy};
use vpn_storage::command::{apply, Command, Move};
use vpn_storage::model::{DataplaneNode, NodeHealth, Placement, Schedule, User, UserStatus};
use vpn_storage::state::State;
use vpn_storage::types::NodeId;

use common::{labels, nodes_apply, serving};

/// The generation random states start at.
const GENERATION: u64 = 10;
/// A node id no state has: placements on it are on a gone node.
const GONE: NodeId = 1000;
const CONSTRAINTS: [&[(&str, &str)]; 5] =
    [&[], &[("region", "eu")], &[("region", "us")], &[("tier", "gold")], &[("region", "eu"), ("tier", "gold")]];

#[derive(Clone, Debug)]
struct NodeSpec {
    ready: bool,
    schedule: Schedule,
    capacity: u32,
    region: Option<&'static str>,
    gold: bool,
    applied: u64,
    lagging: bool,
}

#[derive(Clone, Debug)]
struct UserSpec {
    status: UserStatus,
    constraint: usize,
    /// (node position, a position past the nodes meaning a gone node; since generation)
    placements: Vec<(usize, u64)>,
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    let schedule =
        prop_oneof![4 => Just(Schedule::Schedulable), 1 => Just(Schedule::Cordoned), 1 => Just(Schedule::Draining)];
    let region = prop_oneof![Just(None), Just(Some("eu")), Just(Some("us"))];
    (prop::bool::weighted(0.8), schedule, 0..6u32, region, any::<bool>(), 0..=GENERATION, prop::bool::weighted(0.3))
        .prop_map(|(ready, schedule, capacity, region, gold, applied, lagging)| NodeSpec {
            ready,
            schedule,
            capacity,
            region,
            gold,
            applied,
            lagging,
        })
}

fn user_spec(nodes: usize) -> impl Strategy<Value = UserSpec> {
    let status = prop_oneof![
        7 => Just(UserStatus::Active),
        1 => Just(UserStatus::Disabled),
        1 => Just(UserStatus::Limited),
        1 => Just(UserStatus::Expired),
    ];
    let placements = prop::collection::vec((0..=nodes, 1..=GENERATION), 0..4);
    (status, 0..CONSTRAINTS.len(), placements).prop_map(|(status, constraint, placements)| UserSpec {
        status,
        constraint,
        placements,
    })
}

fn cluster() -> impl Strategy<Value = (Vec<NodeSpec>, Vec<UserSpec>)> {
    prop::collection::vec(node_spec(), 1..7)
        .prop_flat_map(|nodes| (Just(nodes.clone()), prop::collection::vec(user_spec(nodes.len()), 0..40)))
}

/// Node ids with gaps, so positions and ids differ.
fn node_id(position: usize) -> NodeId {
    1 + 3 * position as NodeId
}

fn build(nodes: &[NodeSpec], users: &[UserSpec]) -> State {
    let mut state = State::default();
    state.generation = GENERATION;
    for (i, spec) in nodes.iter().enumerate() {
        let mut n = DataplaneNode::new(node_id(i), format!("n{i}"), Vec::new());
        n.health = if spec.ready { NodeHealth::Ready } else { NodeHealth::Down };
        n.schedule = spec.schedule;
        n.capacity = spec.capacity;
        n.applied_generation = spec.applied;
        if let Some(region) = spec.region {
            n.labels.insert("region".into(), region.into());
        }
        if spec.gold {
            n.labels.insert("tier".into(), "gold".into());
        }
        state.dataplane_nodes.insert(n.id, n);
    }
    for (i, spec) in users.iter().enumerate() {
        let mut user = User::new(format!("u{i:02}"), 0);
        user.status = spec.status;
        user.constraint = labels(CONSTRAINTS[spec.constraint]);
        for &(position, since_generation) in &spec.placements {
            let node = if position < nodes.len() { node_id(position) } else { GONE };
            if !user.placed_on(node) {
                user.placements.push(Placement { node, since_generation });
            }
        }
        state.users.insert(user.name.clone(), user);
    }
    state
}

fn lagging(nodes: &[NodeSpec]) -> BTreeSet<NodeId> {
    (0..nodes.len()).filter(|&i| nodes[i].lagging).map(node_id).collect()
}

fn active_on(state: &State, node: NodeId) -> u64 {
    state.users.values().filter(|u| u.status == UserStatus::Active && u.placed_on(node)).count() as u64
}

fn has_room(state: &State, n: &DataplaneNode) -> bool {
    n.capacity == 0 || active_on(state, n.id) < u64::from(n.capacity)
}

fn may_take(n: &DataplaneNode, user: &User) -> bool {
    n.is_ready()
        && n.schedule == Schedule::Schedulable
        && user.constraint.iter().all(|(k, v)| n.labels.get(k) == Some(v))
}

fn is_valid(state: &State, p: &Placement) -> bool {
    state.dataplane_nodes.get(&p.node).is_some_and(|n| n.is_ready() && n.schedule != Schedule::Draining)
}

/// Checks one plan against `before`, applies it, and checks the result.
fn check_step(state: &mut State, policy: &Policy, moves: &[Move]) -> Result<(), TestCaseError> {
    prop_assert!(moves.len() <= policy.max_moves);
    let names: BTreeSet<&str> = moves.iter().map(|m| m.user.as_str()).collect();
    prop_assert_eq!(names.len(), moves.len(), "one move per user");
    let before = state.clone();
    for m in moves {
        let user = &before.users[&m.user];
        for add in &m.add {
            let node = &before.dataplane_nodes[add];
            prop_assert!(user.status == UserStatus::Active, "{} is not active", m.user);
            prop_assert!(may_take(node, user), "{} added on ineligible node {}", m.user, add);
            prop_assert!(!user.placed_on(*add));
        }
        prop_assert!(m.remove.iter().all(|r| user.placed_on(*r)));
    }
    apply(state, &Command::Place(moves.to_vec()));
    for id in moves.iter().flat_map(|m| &m.add).collect::<BTreeSet<_>>() {
        let node = &state.dataplane_nodes[id];
        prop_assert!(
            node.capacity == 0 || active_on(state, *id) <= u64::from(node.capacity),
            "node {} over capacity",
            id
        );
    }
    for (name, user) in &before.users {
        if user.status == UserStatus::Active && serving(&before, user) > 0 {
            prop_assert!(serving(state, &state.users[name]) > 0, "{} lost its last serving placement", name);
        }
    }
    Ok(())
}

/// Iterates plan + apply, nodes applying (lagging ones every other round),
/// until a plan has no moves after every ready node applied.
fn run(state: &mut State, policy: &Policy, lagging: &BTreeSet<NodeId>) -> Result<(), TestCaseError> {
    for round in 0..20 * (state.users.len() + 5) {
        let moves = plan(state, policy);
        prop_assert_eq!(&moves, &plan(&state.clone(), policy), "plans are deterministic");
        let settled = state.dataplane_nodes.values().all(|n| !n.is_ready() || n.applied_generation >= state.generation);
        if moves.is_empty() && settled {
            return Ok(());
        }
        check_step(state, policy, &moves)?;
        let generation = state.generation;
        let reporting: Vec<NodeId> = state
            .dataplane_nodes
            .values()
            .filter(|n| n.is_ready() && (round % 2 == 1 || !lagging.contains(&n.id)))
            .map(|n| n.id)
            .collect();
        for node in reporting {
            apply(state, &Command::ReportApplied { node, generation });
        }
    }
    Err(TestCaseError::fail("no convergence"))
}

fn check_converged(state: &State, policy: &Policy) -> Result<(), TestCaseError> {
    for (name, user) in &state.users {
        if user.status != UserStatus::Active {
            prop_assert!(user.placements.is_empty(), "inactive {} still placed", name);
            continue;
        }
        prop_assert!(user.placements.iter().all(|p| state.dataplane_nodes.get(&p.node).is_some_and(|n| n.is_ready())));
        let valid = user.placements.iter().filter(|p| is_valid(state, p)).count();
        let open =
            state.dataplane_nodes.values().filter(|n| may_take(n, user) && has_room(state, n) && !user.placed_on(n.id));
        let target = policy.replicas.min(valid + open.count());
        prop_assert_eq!(valid, target, "{} has {} valid placements", name, valid);
        if valid < user.placements.len() {
            prop_assert_eq!(valid, 0, "{} kept a draining placement with somewhere else to go", name);
        }
    }
    Ok(())
}

fn eligible_counts(state: &State) -> BTreeMap<NodeId, u64> {
    let eligible = state.dataplane_nodes.values().filter(|n| n.is_ready() && n.schedule == Schedule::Schedulable);
    eligible.map(|n| (n.id, active_on(state, n.id))).collect()
}

proptest! {
    #[test]
    fn plans_keep_the_rules_until_they_converge_and_through_a_drain(
        (nodes, users) in cluster(),
        replicas in 1..4usize,
        max_moves in 1..30usize,
        drained in any::<prop::sample::Index>(),
    ) {
        let policy = Policy { replicas, max_moves };
        let lagging = lagging(&nodes);
        let mut state = build(&nodes, &users);
        run(&mut state, &policy, &lagging)?;
        check_converged(&state, &policy)?;

        let node = node_id(drained.index(nodes.len()));
        apply(&mut state, &Command::SetNodeSchedule { node, schedule: Schedule::Draining });
        run(&mut state, &policy, &lagging)?;
        check_converged(&state, &policy)?;
    }

    #[test]
    fn uniform_capacities_stay_within_one_user(
        nodes in prop::collection::vec(node_spec(), 1..8),
        capacity in 0..12u32,
        users in 0..80usize,
        replicas in 1..4usize,
        max_moves in 1..100usize,
    ) {
        let nodes: Vec<NodeSpec> = nodes.into_iter().map(|n| NodeSpec { capacity, applied: 0, ..n }).collect();
        let specs = vec![UserSpec { status: UserStatus::Active, constraint: 0, placements: Vec::new() }; users];
        let mut state = build(&nodes, &specs);
        let policy = Policy { replicas, max_moves };
        run(&mut state, &policy, &BTreeSet::new())?;
        let counts = eligible_counts(&state);
        if let (Some(max), Some(min)) = (counts.values().max(), counts.values().min()) {
            prop_assert!(max - min <= 1, "unbalanced: {:?}", counts);
        }
    }

    /// With capacities c (weight w = c, or 1000 for no limit) and one replica:
    /// no node is more than one user ahead of a node that still has room,
    /// relative to capacity: `(users_i - 1) / w_i <= users_j / w_j`.
    #[test]
    fn weighted_capacities_stay_within_one_user_per_unit_of_capacity(
        nodes in prop::collection::vec(node_spec(), 1..8),
        users in 0..150usize,
        max_moves in 1..200usize,
    ) {
        let specs = vec![UserSpec { status: UserStatus::Active, constraint: 0, placements: Vec::new() }; users];
        let mut state = build(&nodes, &specs);
        nodes_apply(&mut state);
        run(&mut state, &Policy { replicas: 1, max_moves }, &BTreeSet::new())?;
        let counts = eligible_counts(&state);
        let weight = |id: &NodeId| match state.dataplane_nodes[id].capacity { 0 => 1000, c => u64::from(c) };
        for (i, &users_i) in counts.iter().filter(|(_, users)| **users > 0) {
            for (j, &users_j) in &counts {
                if has_room(&state, &state.dataplane_nodes[j]) {
                    prop_assert!((users_i - 1) * weight(j) <= users_j * weight(i), "{} vs {}: {:?}", i, j, counts);
                }
            }
        }
    }
}
