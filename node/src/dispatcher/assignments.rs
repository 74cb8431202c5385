//! Every data-plane node's assignment as this control-plane node's copy of
//! the state says, rebuilt as the state moves and published to the watch
//! streams of the agents connected here.
//!
//! A node's assignment changes only when the state stamps it with a new
//! [`assigned_generation`](vpn_storage::model::DataplaneNode::assigned_generation),
//! so a write that touches no node (a user created but not yet placed,
//! traffic recorded) costs one pass over the nodes, and only a write that
//! moves some node's users costs a pass over the users, which rebuilds just
//! the nodes it moved.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vpn_proto::internal::{AssignedUser, Assignment};
use vpn_storage::model::UserStatus;
use vpn_storage::state::State;
use vpn_storage::types::NodeId;

use crate::node::Node;

/// Shortest time between two rebuilds: a burst of writes costs one pass.
const COALESCE: Duration = Duration::from_millis(20);

/// Each registered data-plane node's current assignment.
pub type Table = HashMap<NodeId, Arc<Assignment>>;

/// The published table; cheap to clone.
#[derive(Clone)]
pub struct Assignments {
    table: watch::Receiver<Arc<Table>>,
}

impl Assignments {
    /// Starts following `node`'s state; stops when `stop` turns true.
    pub fn start(node: Arc<Node>, stop: watch::Receiver<bool>) -> Self {
        let first = Arc::new(node.state.read(|s| rebuild(s, &Table::new())));
        let (tx, table) = watch::channel(first);
        tokio::spawn(follow(node, tx, stop));
        Self { table }
    }

    /// A receiver that sees every new table.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Table>> {
        self.table.clone()
    }

    /// Node `id`'s assignment as published now.
    pub fn get(&self, id: NodeId) -> Option<Arc<Assignment>> {
        self.table.borrow().get(&id).cloned()
    }
}

async fn follow(node: Arc<Node>, tx: watch::Sender<Arc<Table>>, mut stop: watch::Receiver<bool>) {
    let mut raft = node.raft.metrics();
    let mut seen = node.state.read(|s| s.generation);
    loop {
        tokio::select! {
            changed = raft.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
        raft.borrow_and_update();
        let generation = node.state.read(|s| s.generation);
        if generation == seen {
            continue;
        }
        seen = generation;
        let current = tx.borrow().clone();
        let next = node.state.read(|s| rebuild(s, &current));
        if next != *current {
            tx.send_replace(Arc::new(next));
        }
        tokio::time::sleep(COALESCE).await;
    }
}

/// The table for `state`, reusing `current`'s entry of every node whose
/// assigned generation did not move.
fn rebuild(state: &State, current: &Table) -> Table {
    let mut table = Table::with_capacity(state.dataplane_nodes.len());
    let mut moved: HashMap<NodeId, Vec<AssignedUser>> = HashMap::new();
    for node in state.dataplane_nodes.values() {
        match current.get(&node.id) {
            Some(a) if a.generation == node.assigned_generation => {
                table.insert(node.id, a.clone());
            }
            _ => {
                moved.insert(node.id, Vec::new());
            }
        }
    }
    if !moved.is_empty() {
        for user in state.users.values().filter(|u| u.status == UserStatus::Active) {
            for node in user.placed_nodes() {
                if let Some(users) = moved.get_mut(&node) {
                    users.push(AssignedUser {
                        name: user.name.clone(),
                        id: user.id.to_string(),
                        vless_uuid: user.credentials.vless_uuid.to_string(),
                        ss2022_key: user.credentials.ss2022_key.clone(),
                    });
                }
            }
        }
    }
    for (id, users) in moved {
        let generation = state.dataplane_nodes.get(&id).map_or(0, |n| n.assigned_generation);
        table.insert(id, Arc::new(Assignment { generation, users }));
    }
    table
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
        let table = rebuild(&state, &Table::new());
        assert_eq!(names(&table, 7), ["alice", "carol"]);
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
        let before = rebuild(&state, &Table::new());

        apply(&mut state, &Command::CreateUser(User::new("carol".into(), 0)));
        let unplaced = rebuild(&state, &before);
        assert!(Arc::ptr_eq(&unplaced[&7], &before[&7]) && Arc::ptr_eq(&unplaced[&8], &before[&8]));

        apply(&mut state, &Command::DeleteUser { name: "bob".into() });
        let after = rebuild(&state, &before);
        assert!(Arc::ptr_eq(&after[&7], &before[&7]), "node 7 kept its assignment");
        assert!(names(&after, 8).is_empty(), "bob left node 8");
        assert!(after[&8].generation > before[&8].generation);
    }
}
