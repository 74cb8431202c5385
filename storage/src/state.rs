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

    /// The users a data-plane node serves: the active users placed on it.
    pub fn users_on(&self, node: NodeId) -> impl Iterator<Item = &User> {
        self.users.values().filter(move |u| u.status == UserStatus::Active && u.placed_on(node))
    }

    /// How many users are placed on each data-plane node (active or not).
    pub fn placement_counts(&self) -> BTreeMap<NodeId, u64> {
        let mut counts: BTreeMap<NodeId, u64> = self.dataplane_nodes.keys().map(|id| (*id, 0)).collect();
        for p in self.users.values().flat_map(|u| &u.placements) {
            *counts.entry(p.node).or_default() += 1;
        }
        counts
    }

    /// The data-plane nodes that serve `user` (the same rule as
    /// [`State::users_on`]), in node id order.
    pub fn nodes_serving<'a>(&'a self, user: &'a User) -> impl Iterator<Item = &'a DataplaneNode> {
        let active = user.status == UserStatus::Active;
        self.dataplane_nodes.values().filter(move |n| active && user.placed_on(n.id))
    }

    /// The user a subscription token belongs to. A linear scan: a lookup per
    /// subscription fetch over every user is cheap next to the HTTP exchange.
    pub fn user_by_token(&self, token: &str) -> Option<&User> {
        if token.is_empty() {
            return None;
        }
        self.users.values().find(|u| u.sub_token == token)
    }
}
