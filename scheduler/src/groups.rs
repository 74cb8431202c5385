//! The nodes each distinct user constraint may be placed on. Users share a
//! handful of constraints, so matching labels once per constraint (not once
//! per user) keeps a plan linear in the users.

use std::collections::BTreeMap;

use vpn_storage::model::{NodeHealth, Schedule};

use crate::nodes::Nodes;

pub(crate) type Constraint = BTreeMap<String, String>;

/// The nodes a constraint allows new placements on, before capacity.
pub(crate) struct Group {
    /// Ready, schedulable nodes whose labels hold the constraint, in id order.
    pub(crate) nodes: Vec<usize>,
    /// `open[i]`: node `i` is in `nodes` and had room when the plan started.
    open: Vec<bool>,
    /// How many nodes are open.
    pub(crate) open_count: usize,
}

impl Group {
    /// Whether the node was open to this group when the plan started.
    pub(crate) fn was_open(&self, node: usize) -> bool {
        self.open[node]
    }
}

#[derive(Default)]
pub(crate) struct Groups<'a> {
    by_constraint: BTreeMap<&'a Constraint, usize>,
    groups: Vec<Group>,
}

impl<'a> Groups<'a> {
    /// The group of `constraint`, built on first use from the nodes' current
    /// counts (so call it before the plan changes any).
    pub(crate) fn of(&mut self, constraint: &'a Constraint, nodes: &Nodes) -> usize {
        if let Some(&g) = self.by_constraint.get(constraint) {
            return g;
        }
        let matching: Vec<usize> = (0..nodes.len())
            .filter(|&i| {
                let n = nodes.record(i);
                n.health == NodeHealth::Ready
                    && n.schedule == Schedule::Schedulable
                    && constraint.iter().all(|(k, v)| n.labels.get(k) == Some(v))
            })
            .collect();
        let mut open = vec![false; nodes.len()];
        for &i in &matching {
            open[i] = nodes.has_room(i);
        }
        let open_count = open.iter().filter(|o| **o).count();
        self.groups.push(Group { nodes: matching, open, open_count });
        self.by_constraint.insert(constraint, self.groups.len() - 1);
        self.groups.len() - 1
    }

    pub(crate) fn get(&self, g: usize) -> &Group {
        &self.groups[g]
    }
}
