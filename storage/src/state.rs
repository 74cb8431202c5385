//! The state every replica holds after applying the log: what snapshots carry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{MemberRecord, User};
use crate::types::{LogId, NodeId, StoredMembership};

/// The applied state. Users are keyed by name (names are unique), so listing
/// in name order is a range scan and a page token is the last name returned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub users: BTreeMap<String, User>,
    pub members: BTreeMap<NodeId, MemberRecord>,
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
}
