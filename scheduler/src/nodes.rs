//! The node table a plan works on: each data-plane node with the number of
//! active users placed on it, updated as the plan adds and removes, so one
//! plan spreads the users it places.

use std::cmp::Ordering;

use vpn_storage::model::{DataplaneNode, NodeHealth, Placement, Schedule, UserStatus};
use vpn_storage::state::State;
use vpn_storage::types::NodeId;

/// The ranking weight of a node without a capacity limit (capacity 0): it
/// fills like a node that takes this many users. Only ranks; never a limit.
pub(crate) const UNLIMITED_WEIGHT: u64 = 1000;

/// What a placement means for its user now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The node is gone or down: it serves nobody.
    Dead,
    /// The node is ready but draining: the user must move off it.
    Draining { serving: bool },
    /// Counts toward the user's replicas (ready, schedulable or cordoned).
    Valid { node: usize, serving: bool },
}

pub(crate) struct Nodes<'a> {
    /// In id order (the state's map order), so index order is id order.
    records: Vec<&'a DataplaneNode>,
    ids: Vec<NodeId>,
    /// Active users placed on each node, as the plan goes.
    users: Vec<u64>,
}

impl<'a> Nodes<'a> {
    /// The nodes of `state` with the active users placed on each.
    pub(crate) fn new(state: &'a State) -> Self {
        let records: Vec<&DataplaneNode> = state.dataplane_nodes.values().collect();
        let ids = records.iter().map(|n| n.id).collect();
        let mut nodes = Self { records, ids, users: Vec::new() };
        nodes.users = vec![0; nodes.ids.len()];
        for user in state.users.values().filter(|u| u.status == UserStatus::Active) {
            for p in &user.placements {
                if let Some(i) = nodes.index(p.node) {
                    nodes.users[i] += 1;
                }
            }
        }
        nodes
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn id(&self, node: usize) -> NodeId {
        self.ids[node]
    }

    pub(crate) fn index(&self, id: NodeId) -> Option<usize> {
        self.ids.binary_search(&id).ok()
    }

    pub(crate) fn record(&self, node: usize) -> &'a DataplaneNode {
        self.records[node]
    }

    pub(crate) fn slot(&self, p: &Placement) -> Slot {
        let Some(i) = self.index(p.node) else { return Slot::Dead };
        let record = self.records[i];
        if record.health != NodeHealth::Ready {
            return Slot::Dead;
        }
        let serving = record.applied_generation >= p.since_generation;
        match record.schedule {
            Schedule::Draining => Slot::Draining { serving },
            Schedule::Schedulable | Schedule::Cordoned => Slot::Valid { node: i, serving },
        }
    }

    /// Whether the node may take one more user (capacity 0: no limit).
    pub(crate) fn has_room(&self, node: usize) -> bool {
        let capacity = self.records[node].capacity;
        capacity == 0 || self.users[node] < u64::from(capacity)
    }

    /// Orders two nodes by users per unit of capacity, then by id.
    pub(crate) fn cmp_load(&self, a: usize, b: usize) -> Ordering {
        let (wa, wb) = (u128::from(self.weight(a)), u128::from(self.weight(b)));
        (u128::from(self.users[a]) * wb).cmp(&(u128::from(self.users[b]) * wa)).then(self.ids[a].cmp(&self.ids[b]))
    }

    pub(crate) fn add_user(&mut self, node: usize) {
        self.users[node] += 1;
    }

    pub(crate) fn remove_user(&mut self, id: NodeId) {
        if let Some(i) = self.index(id) {
            self.users[i] = self.users[i].saturating_sub(1);
        }
    }

    fn weight(&self, node: usize) -> u64 {
        match self.records[node].capacity {
            0 => UNLIMITED_WEIGHT,
            c => u64::from(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpn_storage::model::User;

    fn node(id: NodeId, capacity: u32) -> DataplaneNode {
        let mut n = DataplaneNode::new(id, format!("n{id}"), Vec::new());
        n.capacity = capacity;
        n
    }

    #[test]
    fn load_is_relative_to_capacity_and_ties_go_to_the_lower_id() {
        let mut state = State::default();
        for n in [node(3, 10), node(1, 0), node(2, 10)] {
            state.dataplane_nodes.insert(n.id, n);
        }
        let mut alice = User::new("alice".into(), 0);
        alice.placements = vec![Placement { node: 3, since_generation: 1 }];
        state.users.insert(alice.name.clone(), alice);
        let mut nodes = Nodes::new(&state);
        let [one, two, three] = [0, 1, 2];
        assert_eq!(nodes.cmp_load(one, two), Ordering::Less, "empty nodes tie; the lower id first");
        assert_eq!(nodes.cmp_load(three, two), Ordering::Greater);
        for _ in 0..100 {
            nodes.add_user(one);
        }
        // 100 users of weight 1000 (unlimited) equal 1 user of capacity 10.
        assert_eq!(nodes.cmp_load(one, three), Ordering::Less, "equal load, lower id");
        nodes.add_user(one);
        assert_eq!(nodes.cmp_load(one, three), Ordering::Greater);
        assert!(nodes.has_room(one));
    }

    #[test]
    fn slots_follow_health_maintenance_and_the_applied_generation() {
        let mut state = State::default();
        let mut down = node(1, 0);
        down.health = NodeHealth::Down;
        let mut draining = node(2, 0);
        draining.schedule = Schedule::Draining;
        draining.applied_generation = 5;
        let mut cordoned = node(3, 0);
        cordoned.schedule = Schedule::Cordoned;
        cordoned.applied_generation = 4;
        for n in [down, draining, cordoned] {
            state.dataplane_nodes.insert(n.id, n);
        }
        let nodes = Nodes::new(&state);
        let at = |node, since_generation| nodes.slot(&Placement { node, since_generation });
        assert_eq!(at(1, 0), Slot::Dead);
        assert_eq!(at(9, 0), Slot::Dead, "a gone node");
        assert_eq!(at(2, 5), Slot::Draining { serving: true });
        assert_eq!(at(3, 5), Slot::Valid { node: 2, serving: false });
        assert_eq!(at(3, 4), Slot::Valid { node: 2, serving: true });
    }
}
