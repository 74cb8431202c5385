//! The state every replica holds after applying the log: what snapshots carry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{DataplaneNode, MemberRecord, User, UserStatus};
use crate::types::{LogId, NodeId, StoredMembership};

/// The applied state. Users are keyed by name (names are unique), so listing
/// in name order is a range scan and a page token is the last name returned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub users: BTreeMap<String, User>,
    pub members: BTreeMap<NodeId, MemberRecord>,
    #[serde(default)]
    pub dataplane_nodes: BTreeMap<NodeId, DataplaneNode>,
    /// Grows with every applied change to what any data-plane node should
    /// serve (users, node offers); nodes report the generation they applied.
    #[serde(default)]
    pub generation: u64,
}

impl State {
    /// Up to `limit` users with names strictly after `after`, in name order.
    pub fn users_after(&self, after: Option<&str>, limit: usize) -> Vec<User> {
        use std::ops::Bound;
        let start = match after {
            Some(name) => Bound::Excluded(name.to_owned()),
            None => Bound::Unbounded,
        };
        self.users.range((start, Bound::Unbounded)).take(limit).map(|(_, u)| u.clone()).collect()
    }

    /// The users a data-plane node serves. Until placement exists every
    /// active user is placed on every data-plane node.
    pub fn users_on(&self, node: NodeId) -> impl Iterator<Item = &User> {
        let placed = self.dataplane_nodes.contains_key(&node);
        self.users.values().filter(move |u| placed && u.status == UserStatus::Active)
    }

    /// The data-plane nodes that serve `user` (the same rule as [`State::users_on`]).
    pub fn nodes_serving<'a>(&'a self, user: &User) -> impl Iterator<Item = &'a DataplaneNode> {
        let active = user.status == UserStatus::Active;
        self.dataplane_nodes.values().filter(move |_| active)
    }
}
