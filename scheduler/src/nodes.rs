//! The node table a plan works on: each data-plane node with the number of
//! active users placed on it, updated as the plan adds and removes, so one
//! plan spreads the users it places.

use vpn_storage::model::{DataplaneNode, NodeHealth, Placement, Schedule};
use vpn_storage::state::State;
use vpn_storage::types::NodeId;

/// The ranking weight of a node without a capacity limit (capacity 0): it
/// fills like a node that takes this many users. Only ranks; never a limit.
const UNLIMITED_WEIGHT: u64 = 1000;

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

/// One node as the plan sees it, kept compact because every user's
/// placements are looked up here.
struct Node {
    id: NodeId,
    health: NodeHealth,
    schedule: Schedule,
    applied_generation: u64,
    /// Most users the node takes (`u64::MAX`: no limit).
    limit: u64,
    /// Ranking weight: the capacity, or [`UNLIMITED_WEIGHT`].
    weight: u64,
    /// Active users placed on the node, as the plan goes.
    users: u64,
}

pub(crate) struct Nodes<'a> {
    /// In id order (the state's map order), so index order is id order.
    records: Vec<&'a DataplaneNode>,
    nodes: Vec<Node>,
}

impl<'a> Nodes<'a> {
    /// The nodes of `state`, with no users counted yet (see [`Nodes::count`]).
    pub(crate) fn new(state: &'a State) -> Self {
        let records: Vec<&DataplaneNode> = state.dataplane_nodes.values().collect();
        let nodes = records
            .iter()
            .map(|n| Node {
                id: n.id,
                health: n.health,
                schedule: n.schedule,
                applied_generation: n.applied_generation,
                limit: if n.capacity == 0 { u64::MAX } else { u64::from(n.capacity) },
                weight: if n.capacity == 0 { UNLIMITED_WEIGHT } else { u64::from(n.capacity) },
                users: 0,
            })
            .collect();
        Self { records, nodes }
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn id(&self, node: usize) -> NodeId {
        self.nodes[node].id
    }

    pub(crate) fn index(&self, id: NodeId) -> Option<usize> {
        self.nodes.binary_search_by_key(&id, |n| n.id).ok()
    }

    pub(crate) fn record(&self, node: usize) -> &'a DataplaneNode {
        self.records[node]
    }

    pub(crate) fn slot(&self, p: &Placement) -> Slot {
        match self.index(p.node) {
            Some(i) => self.slot_at(i, p),
            None => Slot::Dead,
        }
    }

    /// Counts an active user's placement toward its node's load, and says
    /// what it means for the user.
    pub(crate) fn count(&mut self, p: &Placement) -> Slot {
        match self.index(p.node) {
            Some(i) => {
                self.nodes[i].users += 1;
                self.slot_at(i, p)
            }
            None => Slot::Dead,
        }
    }

    fn slot_at(&self, i: usize, p: &Placement) -> Slot {
        let n = &self.nodes[i];
        if n.health != NodeHealth::Ready {
            return Slot::Dead;
        }
        let serving = n.applied_generation >= p.since_generation;
        match n.schedule {
            Schedule::Draining => Slot::Draining { serving },
            Schedule::Schedulable | Schedule::Cordoned => Slot::Valid { node: i, serving },
        }
    }

    /// Whether the node may take one more user (capacity 0: no limit).
    pub(crate) fn has_room(&self, node: usize) -> bool {
        self.nodes[node].users < self.nodes[node].limit
    }

    /// Whether node `a` has fewer users per unit of capacity than `b`; on a
    /// tie, the order `salt` (one per user, see [`user_salt`]) gives the
    /// pair. A per-user tie order spreads each user's replicas over all
    /// pairs of nodes (rendezvous hashing): with one fixed order users would
    /// land on fixed pairs, and a pair's joint failure would leave its users
    /// with no replica, while its partner took none of a dead node's users.
    pub(crate) fn lighter(&self, a: usize, b: usize, salt: u64) -> bool {
        let (a, b) = (&self.nodes[a], &self.nodes[b]);
        let (left, right) = (u128::from(a.users) * u128::from(b.weight), u128::from(b.users) * u128::from(a.weight));
        left < right || (left == right && (mix(salt ^ a.id), a.id) < (mix(salt ^ b.id), b.id))
    }

    pub(crate) fn add_user(&mut self, node: usize) {
        self.nodes[node].users += 1;
    }

    pub(crate) fn remove_user(&mut self, id: NodeId) {
        if let Some(i) = self.index(id) {
            self.nodes[i].users = self.nodes[i].users.saturating_sub(1);
        }
    }
}

/// A user's tie-break salt: FNV-1a of the name (stable across builds and replicas).
pub(crate) fn user_salt(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// splitmix64's finalizer: spreads close inputs (node ids) apart.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, capacity: u32) -> DataplaneNode {
        let mut n = DataplaneNode::new(id, format!("n{id}"), Vec::new());
        n.capacity = capacity;
        n
    }

    #[test]
    fn load_is_relative_to_capacity_and_ties_follow_the_users_salt() {
        let mut state = State::default();
        for n in [node(3, 10), node(1, 0), node(2, 10)] {
            state.dataplane_nodes.insert(n.id, n);
        }
        let mut nodes = Nodes::new(&state);
        let [one, two, three] = [0, 1, 2];
        assert_eq!(
            nodes.count(&Placement { node: 3, since_generation: 1 }),
            Slot::Valid { node: three, serving: false }
        );
        // Empty nodes tie: exactly one of each pair is lighter, by the salt.
        let salt = user_salt("alice");
        assert!(nodes.lighter(one, two, salt) != nodes.lighter(two, one, salt));
        assert!(nodes.lighter(two, three, salt), "three holds a user");
        let firsts: std::collections::BTreeSet<bool> =
            (0..64).map(|i| nodes.lighter(one, two, user_salt(&format!("u{i}")))).collect();
        assert_eq!(firsts.len(), 2, "different users order tied nodes differently");
        for _ in 0..100 {
            nodes.add_user(one);
        }
        // 100 users of weight 1000 (unlimited) equal 1 user of capacity 10.
        assert!(nodes.lighter(one, three, salt) != nodes.lighter(three, one, salt), "equal load");
        nodes.add_user(one);
        assert!(nodes.lighter(three, one, salt));
        assert!(nodes.has_room(one));
    }

    #[test]
    fn slots_follow_health_maintenance_and_the_applied_generation() {
        let mut state = State::default();
        let mut down = node(1, 0);
        down.applied_generation = 1;
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
