//! What the operator tunes about placement.

/// How many nodes serve each user, and how fast the plan may move users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Nodes each active user is placed on; fewer while fewer nodes are
    /// eligible. Values below 1 count as 1: an active user is always served.
    pub replicas: usize,
    /// Most moves (users) one plan returns. The executor plans about once per
    /// second, so this caps moves per second: a mass failover reaches the
    /// Raft log and the nodes' engine reloads in bounded steps.
    pub max_moves: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self { replicas: 2, max_moves: 2000 }
    }
}
