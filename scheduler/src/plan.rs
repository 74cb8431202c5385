//! The plan: one pass over every user counts the nodes' loads and picks out
//! the users that may need a move (no allocation per user), those are
//! triaged into urgency classes, then their moves are decided class by
//! class, most urgent first, until the cap.
//!
//! A user's *target* is `min(replicas, valid placements + eligible nodes not
//! holding it)`: as many replicas as the policy asks for, or as nodes can
//! take it. Eligible nodes are ready, schedulable, carry the user's
//! constraint labels and have room.

use std::cmp::Ordering;

use vpn_storage::command::Move;
use vpn_storage::model::{User, UserStatus};
use vpn_storage::state::State;
use vpn_storage::types::NodeId;

use crate::groups::{Group, Groups};
use crate::nodes::{user_salt, Nodes, Slot};
use crate::policy::Policy;

/// Why a user needs a move, most urgent first. Moves go out in this order,
/// by user name within a class, so the cap defers the least urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Urgency {
    /// Nothing serves the user, and a node can take it.
    Failover,
    /// Below its target even counting placements on draining nodes.
    UnderReplicated,
    /// Replacements for placements on draining nodes, or their removal.
    Drain,
    /// Removals only: inactive users, dead placements nothing can replace, extras.
    Removal,
}

const CLASSES: usize = 4;

/// What one pass over a user's placements found.
#[derive(Default)]
struct Tally {
    valid: usize,
    serving: usize,
    serving_valid: usize,
    draining: usize,
    dead: usize,
    /// Valid placements on nodes the user's group had open at the start.
    held_open: usize,
}

/// The moves that bring `state` closer to `policy`, most urgent first, at
/// most `policy.max_moves` of them, one per user. Pure: the same state gives
/// the same moves.
pub fn plan(state: &State, policy: &Policy) -> Vec<Move> {
    let replicas = policy.replicas.max(1);
    let mut nodes = Nodes::new(state);
    let suspects: Vec<&User> = state.users.values().filter(|u| count_and_suspect(u, replicas, &mut nodes)).collect();
    let mut groups = Groups::default();
    let mut due: [Vec<(&User, Option<usize>)>; CLASSES] = Default::default();
    for user in suspects {
        if let Some((urgency, group)) = triage(user, replicas, &nodes, &mut groups) {
            due[urgency as usize].push((user, group));
        }
    }
    let mut moves = Vec::new();
    for (user, group) in due.into_iter().flatten() {
        if moves.len() >= policy.max_moves {
            break;
        }
        let decided = match group {
            Some(g) => decide(user, groups.get(g), replicas, &mut nodes),
            None => evict(user),
        };
        moves.extend(decided);
    }
    moves
}

/// Counts an active user toward its nodes' loads and tells whether it may
/// need a move: anything but exactly `replicas` valid placements. One pass
/// over every user; the loads are complete only after it, so the precise
/// [`triage`] runs on the suspects afterwards.
fn count_and_suspect(user: &User, replicas: usize, nodes: &mut Nodes) -> bool {
    if user.status != UserStatus::Active {
        return !user.placements.is_empty();
    }
    let mut valid = 0;
    let mut other = false;
    for p in &user.placements {
        match nodes.count(p) {
            Slot::Valid { .. } => valid += 1,
            Slot::Dead | Slot::Draining { .. } => other = true,
        }
    }
    other || valid != replicas
}

/// Whether the user needs a move, and how urgently; the group is `None` for
/// users that are not active. Reads the loads as the state has them.
fn triage<'a>(
    user: &'a User,
    replicas: usize,
    nodes: &Nodes,
    groups: &mut Groups<'a>,
) -> Option<(Urgency, Option<usize>)> {
    if user.status != UserStatus::Active {
        return (!user.placements.is_empty()).then_some((Urgency::Removal, None));
    }
    let g = groups.of(&user.constraint, nodes);
    let group = groups.get(g);
    let mut t = Tally::default();
    for p in &user.placements {
        match nodes.slot(p) {
            Slot::Dead => t.dead += 1,
            Slot::Draining { serving } => {
                t.draining += 1;
                t.serving += usize::from(serving);
            }
            Slot::Valid { node, serving } => {
                t.valid += 1;
                t.serving += usize::from(serving);
                t.serving_valid += usize::from(serving);
                t.held_open += usize::from(group.was_open(node));
            }
        }
    }
    let target = replicas.min(t.valid + group.open_count.saturating_sub(t.held_open));
    let adds = t.valid < target;
    let drained = t.draining > 0 && t.serving_valid >= target.max(1);
    let urgency = if adds && t.serving == 0 {
        Urgency::Failover
    } else if adds && t.valid + t.draining < target {
        Urgency::UnderReplicated
    } else if adds || drained {
        Urgency::Drain
    } else if t.dead > 0 || t.valid > replicas {
        Urgency::Removal
    } else {
        return None;
    };
    Some((urgency, Some(g)))
}

/// A user that is not active is served nowhere.
fn evict(user: &User) -> Option<Move> {
    let remove: Vec<NodeId> = user.placements.iter().map(|p| p.node).collect();
    (!remove.is_empty()).then(|| Move { user: user.name.clone(), add: Vec::new(), remove })
}

/// The move of an active user, with the counts as the plan has left them:
/// drop dead placements, top up to the target on the least loaded eligible
/// nodes, drop extras, and leave draining nodes once enough others serve.
fn decide(user: &User, group: &Group, replicas: usize, nodes: &mut Nodes) -> Option<Move> {
    let mut remove = Vec::new();
    let mut valid = 0;
    let mut draining = false;
    for p in &user.placements {
        match nodes.slot(p) {
            Slot::Dead => remove.push(p.node),
            Slot::Draining { .. } => draining = true,
            Slot::Valid { .. } => valid += 1,
        }
    }
    let mut add = Vec::new();
    if valid < replicas {
        for node in lightest(user, group, replicas - valid, nodes) {
            nodes.add_user(node);
            add.push(nodes.id(node));
        }
    }
    let target = replicas.min(valid + add.len());
    if valid > replicas {
        drop_extras(user, valid - replicas, nodes, &mut remove);
    }
    // Make-before-break: only serving placements elsewhere let a draining
    // one go, and never the last one that serves.
    if draining {
        let serving_kept = user
            .placements
            .iter()
            .filter(|p| matches!(nodes.slot(p), Slot::Valid { serving: true, .. }) && !remove.contains(&p.node))
            .count();
        if serving_kept >= target.max(1) {
            let drained = user.placements.iter().filter(|p| matches!(nodes.slot(p), Slot::Draining { .. }));
            remove.extend(drained.map(|p| p.node));
        }
    }
    for &id in &remove {
        nodes.remove_user(id);
    }
    (!add.is_empty() || !remove.is_empty()).then(|| Move { user: user.name.clone(), add, remove })
}

/// The `k` least loaded nodes of the group that have room and do not hold
/// the user, in one scan: taking them one by one would pick the same ones,
/// as adding a user changes only the load of the node that got it.
fn lightest(user: &User, group: &Group, k: usize, nodes: &Nodes) -> Vec<usize> {
    let salt = user_salt(&user.name);
    let mut best: Vec<usize> = Vec::with_capacity(k);
    for &i in &group.nodes {
        if !nodes.has_room(i) || user.placed_on(nodes.id(i)) {
            continue;
        }
        // Most nodes lose to the heaviest of the best so far: one comparison.
        if best.len() == k && !nodes.lighter(i, best[k - 1], salt) {
            continue;
        }
        best.truncate(k - 1);
        let mut at = best.len();
        while at > 0 && nodes.lighter(i, best[at - 1], salt) {
            at -= 1;
        }
        best.insert(at, i);
    }
    best
}

/// Picks `excess` valid placements to drop: those not serving yet first
/// (dropping them moves no client and keeps one that serves), then the most
/// loaded nodes, the higher id on ties.
fn drop_extras(user: &User, excess: usize, nodes: &Nodes, remove: &mut Vec<NodeId>) {
    let mut valid: Vec<(bool, usize)> = user
        .placements
        .iter()
        .filter_map(|p| match nodes.slot(p) {
            Slot::Valid { node, serving } => Some((serving, node)),
            _ => None,
        })
        .collect();
    let salt = user_salt(&user.name);
    let heavier_first = |a: usize, b: usize| if nodes.lighter(b, a, salt) { Ordering::Less } else { Ordering::Greater };
    valid.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| heavier_first(a.1, b.1)));
    remove.extend(valid.iter().take(excess).map(|&(_, node)| nodes.id(node)));
}
