//! One test per placement rule, driven through `plan` and the storage
//! crate's `apply`, with nodes reporting generations applied in between.

mod common;

use common::*;
use vpn_scheduler::{plan, Policy};
use vpn_storage::command::Move;
use vpn_storage::model::{NodeHealth, Placement, Schedule, UserStatus};
use vpn_storage::types::NodeId;

fn policy(replicas: usize) -> Policy {
    Policy { replicas, ..Policy::default() }
}

fn names(moves: &[Move]) -> Vec<&str> {
    moves.iter().map(|m| m.user.as_str()).collect()
}

#[test]
fn one_plan_places_everyone_evenly() {
    let people = users("u", 30);
    let mut s = state(vec![node(1, 0, &[]), node(2, 0, &[]), node(3, 0, &[])], &refs(&people));
    let moves = step(&mut s, &policy(2));
    assert_eq!(moves.len(), 30);
    for name in &people {
        let on = placed(&s, name);
        assert_eq!(on.len(), 2, "{name}: {on:?}");
        assert_ne!(on[0], on[1]);
    }
    assert_eq!(counts(&s).into_values().collect::<Vec<_>>(), vec![20, 20, 20]);
    nodes_apply(&mut s);
    assert!(plan(&s, &policy(2)).is_empty(), "a converged state plans nothing");
}

#[test]
fn failover_replaces_a_down_node_in_the_same_move() {
    let people = users("u", 12);
    let mut s = state(vec![node(1, 0, &[]), node(2, 0, &[]), node(3, 0, &[])], &refs(&people));
    converge(&mut s, &policy(2));
    let on_one: Vec<String> = people.iter().filter(|n| placed(&s, n).contains(&1)).cloned().collect();
    assert_eq!(on_one.len(), 8);
    set_health(&mut s, 1, NodeHealth::Down);
    let moves = step(&mut s, &policy(2));
    assert_eq!(names(&moves), refs(&on_one));
    for m in &moves {
        assert_eq!(m.remove, vec![1]);
        assert_eq!(m.add.len(), 1);
        assert_ne!(m.add[0], 1);
    }
    for name in &people {
        assert_eq!(placed(&s, name).len(), 2, "{name} has two replicas again");
    }
}

#[test]
fn a_down_node_serves_nobody_even_without_a_replacement() {
    let mut s = state(vec![node(1, 0, &[])], &["alice"]);
    converge(&mut s, &policy(1));
    set_health(&mut s, 1, NodeHealth::Down);
    let moves = step(&mut s, &policy(1));
    assert_eq!(moves, vec![Move { user: "alice".into(), add: vec![], remove: vec![1] }]);
    assert!(plan(&s, &policy(1)).is_empty(), "nowhere to go until a node is eligible");
    set_health(&mut s, 1, NodeHealth::Ready);
    assert_eq!(step(&mut s, &policy(1)), vec![Move { user: "alice".into(), add: vec![1], remove: vec![] }]);
}

#[test]
fn placements_on_gone_nodes_are_replaced() {
    let mut s = state(vec![node(1, 0, &[]), node(2, 0, &[])], &["alice"]);
    s.users.get_mut("alice").expect("alice").placements = vec![Placement { node: 9, since_generation: 1 }];
    let moves = plan(&s, &policy(1));
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!((moves[0].add.len(), moves[0].remove.as_slice()), (1, &[9][..]), "one live node for the gone one");
}

#[test]
fn cordoned_nodes_keep_their_users_and_get_no_new_ones() {
    let people = users("u", 4);
    let mut s = state(vec![node(1, 0, &[]), node(2, 0, &[])], &refs(&people));
    converge(&mut s, &policy(1));
    let before = counts(&s);
    set_schedule(&mut s, 1, Schedule::Cordoned);
    assert!(plan(&s, &policy(1)).is_empty(), "cordoning moves nobody");
    for name in ["v1", "v2", "v3"] {
        add_user(&mut s, name, &[]);
    }
    converge(&mut s, &policy(1));
    assert_eq!(counts(&s)[&1], before[&1]);
    assert_eq!(counts(&s)[&2], before[&2] + 3);
}

#[test]
fn draining_makes_before_it_breaks() {
    let people = users("u", 6);
    let mut s = state(vec![node(1, 0, &[]), node(2, 0, &[]), node(3, 0, &[])], &refs(&people));
    converge(&mut s, &policy(2));
    let on_one: Vec<String> = people.iter().filter(|n| placed(&s, n).contains(&1)).cloned().collect();
    set_schedule(&mut s, 1, Schedule::Draining);

    // Round 1: the replacement is added, the draining placement kept.
    let moves = step(&mut s, &policy(2));
    assert_eq!(names(&moves), refs(&on_one));
    assert!(moves.iter().all(|m| m.add.len() == 1 && m.remove.is_empty()), "{moves:?}");
    // Round 2: the new placements are not serving yet, so nothing moves.
    assert!(plan(&s, &policy(2)).is_empty());
    // One node applies; users waiting on the other still wait.
    let generation = s.generation;
    s.dataplane_nodes.get_mut(&2).expect("node 2").applied_generation = generation;
    for m in step(&mut s, &policy(2)) {
        assert_eq!((m.add.as_slice(), m.remove.as_slice()), (&[][..], &[1][..]), "{m:?}");
        assert!(placed(&s, &m.user).contains(&2), "{} left node 1 only once node 2 served it", m.user);
    }
    // Round 3: every node applied; the rest leave the draining node.
    converge(&mut s, &policy(2));
    assert_eq!(counts(&s)[&1], 0, "node 1 is drained");
    for name in &people {
        let user = &s.users[name];
        assert_eq!(user.placements.len(), 2);
        assert_eq!(serving(&s, user), 2);
    }
}

#[test]
fn a_draining_node_keeps_users_that_have_nowhere_else_to_go() {
    let mut s = state(vec![node(1, 0, &[])], &["alice"]);
    converge(&mut s, &policy(1));
    set_schedule(&mut s, 1, Schedule::Draining);
    assert!(plan(&s, &policy(1)).is_empty(), "alice stays where she is served");
    apply_node(&mut s, node(2, 0, &[]));
    assert_eq!(step(&mut s, &policy(1)), vec![Move { user: "alice".into(), add: vec![2], remove: vec![] }]);
    nodes_apply(&mut s);
    assert_eq!(step(&mut s, &policy(1)), vec![Move { user: "alice".into(), add: vec![], remove: vec![1] }]);
}

#[test]
fn a_returning_node_gets_no_users_moved_back() {
    let people = users("u", 30);
    let mut s = state(vec![node(1, 0, &[]), node(2, 0, &[]), node(3, 0, &[])], &refs(&people));
    converge(&mut s, &policy(1));
    set_health(&mut s, 3, NodeHealth::Down);
    converge(&mut s, &policy(1));
    set_health(&mut s, 3, NodeHealth::Ready);
    assert!(plan(&s, &policy(1)).is_empty(), "stickiness: no rebalancing");
    assert_eq!(counts(&s)[&3], 0);
    add_user(&mut s, "newcomer", &[]);
    assert_eq!(step(&mut s, &policy(1))[0].add, vec![3], "new users go to the least loaded node");
}

#[test]
fn constraints_limit_users_to_matching_nodes() {
    let mut s = state(
        vec![
            node(1, 0, &[("region", "eu")]),
            node(2, 0, &[("region", "us")]),
            node(3, 0, &[("region", "eu"), ("tier", "gold")]),
        ],
        &[],
    );
    add_user(&mut s, "eu", &[("region", "eu")]);
    add_user(&mut s, "gold", &[("tier", "gold")]);
    add_user(&mut s, "asia", &[("region", "asia")]);
    converge(&mut s, &policy(2));
    assert_eq!(placed(&s, "eu"), vec![1, 3]);
    assert_eq!(placed(&s, "gold"), vec![3], "one matching node: one replica");
    assert_eq!(placed(&s, "asia"), Vec::<u64>::new(), "no matching node: unplaced, no moves");
}

#[test]
fn capacity_limits_a_node_and_zero_means_no_limit() {
    let people = users("u", 10);
    let mut s = state(vec![node(1, 2, &[]), node(2, 4, &[])], &refs(&people));
    converge(&mut s, &policy(1));
    assert_eq!(counts(&s).into_values().collect::<Vec<_>>(), vec![2, 4], "both full, in proportion");
    assert_eq!(people.iter().filter(|n| placed(&s, n).is_empty()).count(), 4, "the rest wait for room");
    assert!(plan(&s, &policy(1)).is_empty(), "full nodes plan nothing more");

    // Load is relative to capacity: 1 user of 2 weighs like 500 on an unlimited node.
    let mut s = state(vec![node(1, 2, &[]), node(2, 0, &[])], &refs(&people));
    converge(&mut s, &policy(1));
    assert_eq!(counts(&s).into_values().collect::<Vec<_>>(), vec![1, 9]);
}

#[test]
fn replicas_shrink_to_the_healthy_nodes_and_grow_back() {
    let mut s = state(vec![node(1, 0, &[]), node(2, 0, &[]), node(3, 0, &[])], &["alice"]);
    set_health(&mut s, 3, NodeHealth::Down);
    converge(&mut s, &policy(3));
    assert_eq!(sorted(placed(&s, "alice")), vec![1, 2]);
    set_health(&mut s, 3, NodeHealth::Ready);
    assert_eq!(step(&mut s, &policy(3)), vec![Move { user: "alice".into(), add: vec![3], remove: vec![] }]);
}

#[test]
fn inactive_users_lose_their_placements_and_return_when_enabled() {
    let mut s = state(vec![node(1, 0, &[]), node(2, 0, &[])], &["alice", "bob"]);
    converge(&mut s, &policy(2));
    set_status(&mut s, "alice", UserStatus::Disabled);
    let moves = step(&mut s, &policy(2));
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!((moves[0].add.is_empty(), sorted(moves[0].remove.clone())), (true, vec![1, 2]));
    set_status(&mut s, "alice", UserStatus::Active);
    converge(&mut s, &policy(2));
    assert_eq!(sorted(placed(&s, "alice")), vec![1, 2]);
}

#[test]
fn extras_leave_the_most_loaded_nodes_and_keep_a_serving_one() {
    let people = users("u", 9);
    let mut s = state(vec![node(1, 0, &[]), node(2, 0, &[]), node(3, 0, &[])], &refs(&people));
    converge(&mut s, &policy(3));
    converge(&mut s, &policy(1));
    let loads: Vec<u64> = counts(&s).into_values().collect();
    assert_eq!(loads, vec![3, 3, 3], "removals keep the nodes balanced");

    // alice is served by node 1 (the most loaded) and not yet by node 2.
    let mut s = state(vec![node(1, 0, &[]), node(2, 0, &[])], &["alice", "bob"]);
    converge(&mut s, &policy(1));
    s.users.get_mut("bob").expect("bob").placements = vec![Placement { node: 1, since_generation: 1 }];
    let generation = s.generation + 1;
    s.users.get_mut("alice").expect("alice").placements =
        vec![Placement { node: 1, since_generation: 1 }, Placement { node: 2, since_generation: generation }];
    assert_eq!(plan(&s, &policy(1)), vec![Move { user: "alice".into(), add: vec![], remove: vec![2] }]);
}

#[test]
fn the_cap_takes_the_most_urgent_moves_first() {
    let mut s = state(vec![node(1, 0, &[]), node(2, 0, &[]), node(3, 0, &[]), node(4, 0, &[]), node(5, 0, &[])], &[]);
    set_schedule(&mut s, 4, Schedule::Draining);
    set_health(&mut s, 5, NodeHealth::Down);
    let on = |nodes: &[u64]| nodes.iter().map(|&node| Placement { node, since_generation: 1 }).collect::<Vec<_>>();
    for (name, nodes) in [
        ("a-extra", &[1, 2, 3][..]),
        ("b-inactive", &[1]),
        ("c-drain", &[1, 4]),
        ("d-under", &[2]),
        ("e-new", &[]),
        ("f-down", &[5]),
    ] {
        add_user(&mut s, name, &[]);
        s.users.get_mut(name).expect("just added").placements = on(nodes);
    }
    set_status(&mut s, "b-inactive", UserStatus::Disabled);
    nodes_apply(&mut s);

    let all = plan(&s, &Policy { replicas: 2, max_moves: 100 });
    assert_eq!(names(&all), ["e-new", "f-down", "d-under", "c-drain", "a-extra", "b-inactive"]);
    let capped = plan(&s, &Policy { replicas: 2, max_moves: 3 });
    assert_eq!(capped, all[..3].to_vec());
    assert!(plan(&s, &Policy { replicas: 2, max_moves: 0 }).is_empty());
}

#[test]
fn plans_are_deterministic() {
    let people = users("u", 50);
    let mut s = state(vec![node(4, 3, &[]), node(2, 0, &[]), node(7, 10, &[])], &refs(&people));
    converge(&mut s, &policy(2));
    set_health(&mut s, 2, NodeHealth::Down);
    let first = plan(&s, &policy(2));
    assert!(!first.is_empty());
    assert_eq!(first, plan(&s.clone(), &policy(2)));
    assert_eq!(first, plan(&s, &policy(2)));
}

fn refs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

fn apply_node(s: &mut vpn_storage::state::State, n: vpn_storage::model::DataplaneNode) {
    vpn_storage::command::apply(s, &vpn_storage::command::Command::RegisterDataplaneNode(n));
}

fn sorted(mut ids: Vec<NodeId>) -> Vec<NodeId> {
    ids.sort_unstable();
    ids
}

#[test]
fn replicas_spread_over_every_pair_of_nodes() {
    let names: Vec<String> = (0..60).map(|i| format!("u{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut s = state((1..=4).map(|id| node(id, 0, &[])).collect(), &names);
    converge(&mut s, &policy(2));
    let pairs: std::collections::BTreeSet<Vec<NodeId>> = names.iter().map(|n| sorted(placed(&s, n))).collect();
    assert_eq!(pairs.len(), 6, "all 6 pairs of 4 nodes hold someone: {pairs:?}");
}
