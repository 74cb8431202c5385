//! What every simulated agent holds, as its assignment stream last said, and
//! who holds each user: the fleet's view that the measurements read.
//!
//! Each assignment replaces the agent's whole set; the tracker applies only
//! the difference to the per-user index, so a message costs a pass over the
//! users it carries. A *probe* records when each agent first received one
//! named user (propagation is timed from those instants).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use vpn_proto::internal::Assignment;

/// An agent's place in the fleet (0-based, dense).
pub type AgentIx = u32;

#[derive(Default)]
struct Held {
    users: HashSet<String>,
    first_at: Option<Instant>,
}

/// The fleet-wide view; guard it with a mutex and keep the sections short.
pub struct Tracker {
    agents: Vec<Held>,
    holders: HashMap<String, Vec<AgentIx>>,
    /// User -> (agent, when it first held the user).
    probes: HashMap<String, Vec<(AgentIx, Instant)>>,
}

/// Totals over the fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Agents that received at least one assignment (possibly empty).
    pub with_assignment: usize,
    /// Agents whose current assignment holds at least one user.
    pub with_users: usize,
    /// Placements: the sum of the assignments' sizes.
    pub placements: usize,
    /// Distinct users held by at least one agent.
    pub users: usize,
    /// Distinct users held by at least `replicas` agents.
    pub fully_replicated: usize,
    pub min_per_agent: usize,
    pub max_per_agent: usize,
}

impl Tracker {
    pub fn new(agents: usize) -> Self {
        Self { agents: (0..agents).map(|_| Held::default()).collect(), holders: HashMap::new(), probes: HashMap::new() }
    }

    /// Agent `ix` received `a` at `at`.
    pub fn update(&mut self, ix: AgentIx, a: &Assignment, at: Instant) {
        let Some(held) = self.agents.get_mut(ix as usize) else { return };
        held.first_at.get_or_insert(at);
        let next: HashSet<String> = a.users.iter().map(|u| u.name.clone()).collect();
        for gone in held.users.difference(&next) {
            if let Some(list) = self.holders.get_mut(gone) {
                list.retain(|h| *h != ix);
                if list.is_empty() {
                    self.holders.remove(gone);
                }
            }
        }
        for new in next.difference(&held.users) {
            self.holders.entry(new.clone()).or_default().push(ix);
            if let Some(arrivals) = self.probes.get_mut(new) {
                if !arrivals.iter().any(|(h, _)| *h == ix) {
                    arrivals.push((ix, at));
                }
            }
        }
        held.users = next;
    }

    /// Agent `ix` stopped: what it held no longer counts anywhere.
    pub fn forget(&mut self, ix: AgentIx, at: Instant) {
        let empty = Assignment::default();
        self.update(ix, &empty, at);
        if let Some(held) = self.agents.get_mut(ix as usize) {
            held.first_at = None;
        }
    }

    /// Starts recording who receives `user`, and when (call before creating it).
    pub fn probe(&mut self, user: &str) {
        self.probes.insert(user.to_owned(), Vec::new());
    }

    /// The arrivals recorded for a probed user, in order; stops the probe.
    pub fn take_probe(&mut self, user: &str) -> Vec<(AgentIx, Instant)> {
        self.probes.remove(user).unwrap_or_default()
    }

    /// How many agents have received a probed user so far.
    pub fn probe_count(&self, user: &str) -> usize {
        self.probes.get(user).map_or(0, Vec::len)
    }

    /// The users agent `ix` holds now.
    pub fn held_by(&self, ix: AgentIx) -> Vec<String> {
        self.agents.get(ix as usize).map(|h| h.users.iter().cloned().collect()).unwrap_or_default()
    }

    /// How many agents other than `except` hold `user` now.
    pub fn holders_except(&self, user: &str, except: AgentIx) -> usize {
        self.holders.get(user).map_or(0, |l| l.iter().filter(|h| **h != except).count())
    }

    /// The agent holding the most users (the lowest index on a tie).
    pub fn busiest(&self) -> Option<(AgentIx, usize)> {
        let mut best: Option<(AgentIx, usize)> = None;
        for (ix, held) in self.agents.iter().enumerate() {
            if best.is_none_or(|(_, n)| held.users.len() > n) {
                best = Some((ix as AgentIx, held.users.len()));
            }
        }
        best.filter(|(_, n)| *n > 0)
    }

    /// When each agent received its first assignment, for those that did.
    pub fn first_arrivals(&self) -> Vec<Instant> {
        self.agents.iter().filter_map(|h| h.first_at).collect()
    }

    pub fn summary(&self, replicas: usize) -> Summary {
        let sizes: Vec<usize> = self.agents.iter().filter(|h| h.first_at.is_some()).map(|h| h.users.len()).collect();
        Summary {
            with_assignment: sizes.len(),
            with_users: sizes.iter().filter(|n| **n > 0).count(),
            placements: sizes.iter().sum(),
            users: self.holders.len(),
            fully_replicated: self.holders.values().filter(|l| l.len() >= replicas).count(),
            min_per_agent: sizes.iter().copied().min().unwrap_or(0),
            max_per_agent: sizes.iter().copied().max().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vpn_proto::internal::AssignedUser;

    use super::*;

    fn assignment(generation: u64, names: &[&str]) -> Assignment {
        let users =
            names.iter().map(|n| AssignedUser { name: (*n).to_owned(), ..Default::default() }).collect::<Vec<_>>();
        Assignment { generation, users }
    }

    #[test]
    fn holders_follow_each_agents_latest_assignment() {
        let (mut t, now) = (Tracker::new(3), Instant::now());
        t.update(0, &assignment(5, &["a", "b"]), now);
        t.update(1, &assignment(6, &["b", "c"]), now);
        assert_eq!(
            t.summary(2),
            Summary {
                with_assignment: 2,
                with_users: 2,
                placements: 4,
                users: 3,
                fully_replicated: 1,
                min_per_agent: 2,
                max_per_agent: 2
            }
        );
        t.update(0, &assignment(7, &["a", "c"]), now);
        assert_eq!(t.holders_except("b", 9), 1);
        assert_eq!(t.holders_except("c", 1), 1);
        t.forget(1, now);
        assert_eq!(t.holders_except("b", 9), 0);
        assert_eq!(t.summary(2).users, 2);
        assert_eq!(t.busiest(), Some((0, 2)));
    }

    #[test]
    fn a_probe_records_each_agents_first_arrival_only() {
        let (mut t, t0) = (Tracker::new(2), Instant::now());
        t.probe("new");
        t.update(1, &assignment(1, &["x"]), t0);
        assert_eq!(t.probe_count("new"), 0);
        let t1 = t0 + Duration::from_millis(5);
        t.update(1, &assignment(2, &["x", "new"]), t1);
        t.update(1, &assignment(3, &["new"]), t1 + Duration::from_millis(5));
        t.update(0, &assignment(1, &["new"]), t1 + Duration::from_millis(9));
        assert_eq!(t.take_probe("new"), vec![(1, t1), (0, t1 + Duration::from_millis(9))]);
        assert_eq!(t.probe_count("new"), 0, "taken");
    }

    #[test]
    fn the_busiest_agent_needs_users() {
        let mut t = Tracker::new(2);
        assert_eq!(t.busiest(), None);
        t.update(1, &assignment(1, &[]), Instant::now());
        assert_eq!(t.busiest(), None);
    }
}
