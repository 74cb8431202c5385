//! Data-plane liveness as the leader sees it: the time of each node's last
//! heartbeat, in memory only. What reaches the replicated state is the change
//! of a node's health (ready <-> down) and of its engine error.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use vpn_storage::command::Command;
use vpn_storage::model::NodeHealth;
use vpn_storage::state::State;
use vpn_storage::types::NodeId;

#[derive(Default)]
pub struct Liveness {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Start of this node's current leadership: the grace period's start.
    grace_from: Option<Instant>,
    seen: HashMap<NodeId, Heard>,
    /// When this leadership first saw a node it never heard: a node that
    /// registers late gets its own full grace period before its first heartbeat.
    first_judged: HashMap<NodeId, Instant>,
}

struct Heard {
    at: Instant,
    engine_error: Option<String>,
}

impl Liveness {
    /// Forgets every heartbeat and starts a new grace period (a new leadership).
    pub fn restart_grace(&self) {
        self.restart_grace_at(Instant::now());
    }

    fn restart_grace_at(&self, now: Instant) {
        let mut inner = self.lock();
        inner.grace_from = Some(now);
        inner.seen.clear();
        inner.first_judged.clear();
    }

    pub fn heard(&self, node: NodeId, engine_error: Option<String>) {
        self.heard_at(node, engine_error, Instant::now());
    }

    fn heard_at(&self, node: NodeId, engine_error: Option<String>, now: Instant) {
        self.lock().seen.insert(node, Heard { at: now, engine_error });
    }

    /// The health changes to write: a ready node silent for `down_after`
    /// (counted from the later of its last heartbeat and the grace start)
    /// goes down; a down node heard again is ready; a changed engine error is
    /// recorded.
    pub fn judge(&self, state: &State, down_after: Duration) -> Vec<Command> {
        self.judge_at(state, down_after, Instant::now())
    }

    fn judge_at(&self, state: &State, down_after: Duration, now: Instant) -> Vec<Command> {
        let mut inner = self.lock();
        let Some(grace_from) = inner.grace_from else { return Vec::new() };
        let mut changes = Vec::new();
        for node in state.dataplane_nodes.values() {
            let first_judged = *inner.first_judged.entry(node.id).or_insert(now);
            let heard = inner.seen.get(&node.id);
            let last = heard.map_or(first_judged.max(grace_from), |h| h.at.max(grace_from));
            let silent = now.saturating_duration_since(last) > down_after;
            let engine_error = heard.map_or_else(|| node.engine_error.clone(), |h| h.engine_error.clone());
            let health = match (node.health, silent, heard.is_some()) {
                (NodeHealth::Ready, true, _) => NodeHealth::Down,
                (NodeHealth::Down, false, true) => NodeHealth::Ready,
                (current, ..) => current,
            };
            if health != node.health || engine_error != node.engine_error {
                changes.push(Command::SetNodeHealth { node: node.id, health, engine_error });
            }
        }
        changes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use vpn_storage::command::apply;
    use vpn_storage::model::{DataplaneNode, InboundRecord, Protocol};

    use super::*;

    const DOWN_AFTER: Duration = Duration::from_secs(5);

    fn state(ids: &[NodeId]) -> State {
        let mut s = State::default();
        for id in ids {
            let node = DataplaneNode::new(*id, "h".into(), vec![InboundRecord::new(Protocol::VlessTls, 443)]);
            apply(&mut s, &Command::RegisterDataplaneNode(node));
        }
        s
    }

    fn step(l: &Liveness, s: &mut State, now: Instant) -> Vec<(NodeId, NodeHealth)> {
        let changes = l.judge_at(s, DOWN_AFTER, now);
        changes.iter().for_each(|c| drop(apply(s, c)));
        changes
            .into_iter()
            .filter_map(|c| match c {
                Command::SetNodeHealth { node, health, .. } => Some((node, health)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn silence_past_down_after_marks_down_and_a_heartbeat_brings_it_back() {
        let (l, mut s, t0) = (Liveness::default(), state(&[4, 5]), Instant::now());
        assert!(step(&l, &mut s, t0).is_empty(), "not leading yet: nothing judged");
        l.restart_grace_at(t0);
        assert!(step(&l, &mut s, t0).is_empty(), "the leader judges every 200 ms from its start");
        l.heard_at(4, None, t0 + Duration::from_secs(4));
        assert!(step(&l, &mut s, t0 + Duration::from_secs(5)).is_empty(), "within the grace period");
        assert_eq!(step(&l, &mut s, t0 + Duration::from_secs(6)), [(5, NodeHealth::Down)]);
        assert_eq!(step(&l, &mut s, t0 + Duration::from_secs(10)), [(4, NodeHealth::Down)]);
        l.heard_at(5, None, t0 + Duration::from_secs(11));
        assert_eq!(step(&l, &mut s, t0 + Duration::from_secs(11)), [(5, NodeHealth::Ready)]);
        assert!(step(&l, &mut s, t0 + Duration::from_secs(12)).is_empty(), "written only on change");
    }

    #[test]
    fn a_new_leadership_gives_every_node_a_full_grace_period() {
        let (l, mut s, t0) = (Liveness::default(), state(&[4]), Instant::now());
        l.restart_grace_at(t0);
        // The previous leader heard node 4 long ago; this one just started.
        l.restart_grace_at(t0 + Duration::from_secs(60));
        assert!(step(&l, &mut s, t0 + Duration::from_secs(60)).is_empty());
        assert!(step(&l, &mut s, t0 + Duration::from_secs(64)).is_empty());
        assert_eq!(step(&l, &mut s, t0 + Duration::from_secs(66)), [(4, NodeHealth::Down)]);
    }

    #[test]
    fn a_node_registered_late_gets_a_full_grace_period_too() {
        let (l, mut s, t0) = (Liveness::default(), state(&[4]), Instant::now());
        l.restart_grace_at(t0);
        l.heard_at(4, None, t0);
        let late = state(&[4, 5]).dataplane_nodes[&5].clone();
        apply(&mut s, &Command::RegisterDataplaneNode(late));
        assert!(step(&l, &mut s, t0 + Duration::from_secs(3)).is_empty());
        l.heard_at(4, None, t0 + Duration::from_secs(7));
        assert!(step(&l, &mut s, t0 + Duration::from_secs(7)).is_empty(), "node 5 registered at 3 s");
        assert_eq!(step(&l, &mut s, t0 + Duration::from_secs(9)), [(5, NodeHealth::Down)]);
    }

    #[test]
    fn an_engine_error_is_recorded_on_change_only() {
        let (l, mut s, t0) = (Liveness::default(), state(&[4]), Instant::now());
        l.restart_grace_at(t0);
        l.heard_at(4, Some("engine shadowsocks-2022 exited".into()), t0);
        assert_eq!(l.judge_at(&s, DOWN_AFTER, t0).len(), 1);
        step(&l, &mut s, t0);
        assert_eq!(s.dataplane_nodes[&4].engine_error.as_deref(), Some("engine shadowsocks-2022 exited"));
        assert!(l.judge_at(&s, DOWN_AFTER, t0).is_empty());
    }
}
