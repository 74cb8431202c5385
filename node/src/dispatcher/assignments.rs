//! The assignments of the data-plane nodes watched through this
//! control-plane node, as its copy of the state says, rebuilt as the state
//! moves and published to the watch streams of the agents connected here.
//! Nodes nobody watches here cost nothing.
//!
//! A node's assignment changes only when the state stamps it with a new
//! [`assigned_generation`](vpn_storage::model::DataplaneNode::assigned_generation),
//! so a write that touches no watched node (a user created but not yet
//! placed, traffic recorded) costs one pass over the watched nodes, and only
//! a write that moves some watched node's users costs a pass over the users,
//! which rebuilds just the nodes it moved. Rebuilds are spaced by at least
//! [`COALESCE`] and by a multiple of the last one's duration, so a burst of
//! placements (a bulk import, a failover) costs a bounded share of a core.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use vpn_proto::internal::{AssignedUser, Assignment};
use vpn_storage::model::UserStatus;
use vpn_storage::state::State;
use vpn_storage::types::NodeId;

use crate::node::Node;

/// Shortest time between two rebuilds: a burst of writes costs one pass.
const COALESCE: Duration = Duration::from_millis(20);
/// After a rebuild that took `d`, the next waits at least `d` times this.
const PAUSE_PER_PASS: u32 = 4;

/// Each watched data-plane node's current assignment.
pub type Table = HashMap<NodeId, Arc<Assignment>>;

/// The published table; cheap to clone.
#[derive(Clone)]
pub struct Assignments {
    table: watch::Receiver<Arc<Table>>,
    interest: Arc<Interest>,
}

/// Which nodes are watched here, and how many times each.
#[derive(Default)]
struct Interest {
    watched: Mutex<HashMap<NodeId, usize>>,
    /// Bumped by every change of `watched`: a cheap "did it change" check.
    version: AtomicU64,
    changed: Notify,
}

impl Interest {
    fn edit(&self, edit: impl FnOnce(&mut HashMap<NodeId, usize>)) {
        edit(&mut self.watched.lock().unwrap_or_else(PoisonError::into_inner));
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    fn watched(&self) -> BTreeSet<NodeId> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner).keys().copied().collect()
    }
}

/// Keeps node `id` in the table while it lives (one watch stream).
pub struct Watching {
    id: NodeId,
    interest: Arc<Interest>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.interest.edit(|watched| {
            if let Some(n) = watched.get_mut(&self.id) {
                *n -= 1;
                if *n == 0 {
                    watched.remove(&self.id);
                }
            }
        });
    }
}

impl Assignments {
    /// Starts following `node`'s state; stops when `stop` turns true.
    pub fn start(node: Arc<Node>, stop: watch::Receiver<bool>) -> Self {
        let (tx, table) = watch::channel(Arc::new(Table::new()));
        let interest = Arc::new(Interest::default());
        tokio::spawn(follow(node, tx, interest.clone(), stop));
        Self { table, interest }
    }

    /// Node `id`'s assignment from now on: a receiver that sees every new
    /// table (which holds the node from the next rebuild on), and the guard
    /// that keeps it there.
    pub fn watch(&self, id: NodeId) -> (Watching, watch::Receiver<Arc<Table>>) {
        self.interest.edit(|watched| *watched.entry(id).or_default() += 1);
        self.interest.changed.notify_one();
        (Watching { id, interest: self.interest.clone() }, self.table.clone())
    }
}

async fn follow(
    node: Arc<Node>,
    tx: watch::Sender<Arc<Table>>,
    interest: Arc<Interest>,
    mut stop: watch::Receiver<bool>,
) {
    let mut raft = node.raft.metrics();
    // (state generation, interest version) last looked at, and the watched set then.
    let (mut seen, mut watched) = ((u64::MAX, u64::MAX), BTreeSet::new());
    loop {
        tokio::select! {
            changed = raft.changed() => if changed.is_err() { return },
            () = interest.changed.notified() => {}
            _ = stop.changed() => return,
        }
        raft.borrow_and_update();
        let now = (node.state.read(|s| s.generation), interest.version.load(Ordering::Relaxed));
        if now == seen {
            continue;
        }
        if now.1 != seen.1 {
            watched = interest.watched();
        }
        seen = now;
        let started = Instant::now();
        let current = tx.borrow().clone();
        let Sorted { mut kept, moved } = node.state.read(|s| sort_out(s, &current, &watched));
        if moved.is_empty() && kept.len() == current.len() {
            continue;
        }
        if !moved.is_empty() {
            // A pass over every user takes milliseconds at 100k: off the async workers.
            let state = node.state.clone();
            match tokio::task::spawn_blocking(move || state.read(|s| assign(s, &moved))).await {
                Ok(assigned) => kept.extend(assigned),
                Err(e) => {
                    tracing::error!("rebuilding assignments failed: {e}");
                    seen.0 = u64::MAX;
                    tokio::time::sleep(COALESCE).await;
                    continue;
                }
            }
        }
        tx.send_replace(Arc::new(kept));
        tokio::time::sleep(COALESCE.max(started.elapsed() * PAUSE_PER_PASS)).await;
    }
}

/// The watched nodes of `state`, sorted out against the published table.
struct Sorted {
    /// Nodes whose assigned generation did not move: their published entry.
    kept: Table,
    /// Nodes new to the table or whose assigned generation moved.
    moved: BTreeSet<NodeId>,
}

/// One pass over the watched nodes (not the users).
fn sort_out(state: &State, current: &Table, watched: &BTreeSet<NodeId>) -> Sorted {
    let mut sorted = Sorted { kept: Table::with_capacity(watched.len()), moved: BTreeSet::new() };
    for node in watched.iter().filter_map(|id| state.dataplane_nodes.get(id)) {
        match current.get(&node.id) {
            Some(a) if a.generation == node.assigned_generation => {
                sorted.kept.insert(node.id, a.clone());
            }
            _ => {
                sorted.moved.insert(node.id);
            }
        }
    }
    sorted
}

/// The assignments of the `moved` nodes: one pass over the users.
fn assign(state: &State, moved: &BTreeSet<NodeId>) -> Table {
    let mut users: HashMap<NodeId, Vec<AssignedUser>> = moved.iter().map(|id| (*id, Vec::new())).collect();
    for user in state.users.values().filter(|u| u.status == UserStatus::Active) {
        for node in user.placed_nodes() {
            if let Some(users) = users.get_mut(&node) {
                users.push(AssignedUser {
                    name: user.name.clone(),
                    id: user.id.to_string(),
                    vless_uuid: user.credentials.vless_uuid.to_string(),
                    ss2022_key: user.credentials.ss2022_key.clone(),
                });
            }
        }
    }
    users
        .into_iter()
        .filter_map(|(id, users)| {
            let generation = state.dataplane_nodes.get(&id)?.assigned_generation;
            Some((id, Arc::new(Assignment { generation, users })))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use vpn_storage::command::{apply, Command, Move};
    use vpn_storage::model::{DataplaneNode, User};

    use super::*;

    fn register(state: &mut State, id: NodeId) {
        apply(state, &Command::RegisterDataplaneNode(DataplaneNode::new(id, "h".into(), Vec::new())));
    }

    fn place(state: &mut State, user: &str, node: NodeId) {
        apply(state, &Command::Place(vec![Move { user: user.into(), add: vec![node], remove: vec![] }]));
    }

    /// What `follow` publishes for `state` after `current`.
    fn rebuild(state: &State, current: &Table, watched: &BTreeSet<NodeId>) -> Table {
        let Sorted { mut kept, moved } = sort_out(state, current, watched);
        kept.extend(assign(state, &moved));
        kept
    }

    fn both() -> BTreeSet<NodeId> {
        BTreeSet::from([7, 8])
    }

    fn names(table: &Table, id: NodeId) -> Vec<String> {
        table[&id].users.iter().map(|u| u.name.clone()).collect()
    }

    #[test]
    fn each_node_gets_its_own_active_users_only() {
        let mut state = State::default();
        register(&mut state, 7);
        register(&mut state, 8);
        for name in ["alice", "bob", "carol"] {
            apply(&mut state, &Command::CreateUser(User::new(name.into(), 0)));
        }
        place(&mut state, "alice", 7);
        place(&mut state, "bob", 8);
        place(&mut state, "carol", 7);
        let table = rebuild(&state, &Table::new(), &both());
        assert_eq!(names(&table, 7), ["alice", "carol"]);
        let only_8 = rebuild(&state, &Table::new(), &BTreeSet::from([8, 9]));
        assert_eq!((only_8.len(), names(&only_8, 8)), (1, vec!["bob".to_owned()]), "watched and registered only");
        assert_eq!(names(&table, 8), ["bob"]);
        let alice = &state.users["alice"];
        let assigned = &table[&7].users[0];
        assert_eq!(assigned.vless_uuid, alice.credentials.vless_uuid.to_string());
        assert_eq!(assigned.ss2022_key, alice.credentials.ss2022_key);
        assert_eq!(table[&7].generation, state.dataplane_nodes[&7].assigned_generation);
    }

    #[test]
    fn a_change_rebuilds_only_the_nodes_it_moved() {
        let mut state = State::default();
        register(&mut state, 7);
        register(&mut state, 8);
        apply(&mut state, &Command::CreateUser(User::new("alice".into(), 0)));
        apply(&mut state, &Command::CreateUser(User::new("bob".into(), 0)));
        place(&mut state, "alice", 7);
        place(&mut state, "bob", 8);
        let before = rebuild(&state, &Table::new(), &both());

        apply(&mut state, &Command::CreateUser(User::new("carol".into(), 0)));
        let unplaced = rebuild(&state, &before, &both());
        assert!(Arc::ptr_eq(&unplaced[&7], &before[&7]) && Arc::ptr_eq(&unplaced[&8], &before[&8]));

        apply(&mut state, &Command::DeleteUser { name: "bob".into() });
        let after = rebuild(&state, &before, &both());
        assert!(Arc::ptr_eq(&after[&7], &before[&7]), "node 7 kept its assignment");
        assert!(names(&after, 8).is_empty(), "bob left node 8");
        assert!(after[&8].generation > before[&8].generation);
    }
}
