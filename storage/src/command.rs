//! Commands replicated through the log, their responses, and the pure,
//! deterministic function that applies one to the state.

use serde::{Deserialize, Serialize};

use crate::model::{DataplaneNode, MemberRecord, User, UserStatus};
use crate::state::State;
use crate::types::NodeId;

/// A write, fully formed by the proposer (ids, keys and timestamps included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateUser(User),
    UpdateUser {
        name: String,
        status: Option<UserStatus>,
    },
    DeleteUser {
        name: String,
    },
    /// Records the data-dir identity of a member; the first record for an id wins.
    RegisterMember(MemberRecord),
    /// Forgets a removed member's identity (so its id may be used again on
    /// purpose) and its data-plane record, if it had one.
    ForgetMember {
        id: NodeId,
    },
    /// Records what a data-plane node offers (upsert). The stored applied
    /// generation is kept: only the node's reports move it.
    RegisterDataplaneNode(DataplaneNode),
    /// A data-plane node's engines applied the state up to `generation`.
    ReportApplied {
        node: NodeId,
        generation: u64,
    },
    /// Several independent proposals in one log entry (see `proposer`): each
    /// is applied in order, as if it had its own entry.
    Batch(Vec<Command>),
}

/// The result of applying a [`Command`]. Refusals are results, not errors: the
/// entry is committed either way and every replica refuses it the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    User(User),
    Deleted,
    MemberRegistered,
    MemberForgotten,
    DataplaneNode(DataplaneNode),
    AppliedRecorded,
    Refused(Refusal),
    /// The response of a blank or membership entry.
    None,
    /// One response per command of a [`Command::Batch`], in order.
    Batch(Vec<CommandResponse>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} not found")]
    UserNotFound(String),
    #[error("node id {id} already belongs to another data dir (incarnation {existing}): run `vpnctl member remove {id}`, then start the node under a new --id")]
    IncarnationConflict { id: NodeId, existing: uuid::Uuid },
    #[error("node {0} is not registered as a data-plane node: start it with --dataplane")]
    NotADataplaneNode(NodeId),
}

/// Applies one command. Pure: the outcome depends only on `state` and `cmd`.
/// Every change to what a data-plane node should serve bumps the generation.
pub fn apply(state: &mut State, cmd: &Command) -> CommandResponse {
    match cmd {
        Command::CreateUser(user) => {
            if state.users.contains_key(&user.name) {
                return CommandResponse::Refused(Refusal::UserExists(user.name.clone()));
            }
            state.users.insert(user.name.clone(), user.clone());
            state.generation += 1;
            CommandResponse::User(user.clone())
        }
        Command::UpdateUser { name, status } => match state.users.get_mut(name) {
            None => CommandResponse::Refused(Refusal::UserNotFound(name.clone())),
            Some(user) => {
                if let Some(status) = status.filter(|s| *s != user.status) {
                    user.status = status;
                    state.generation += 1;
                }
                CommandResponse::User(user.clone())
            }
        },
        Command::DeleteUser { name } => match state.users.remove(name) {
            None => CommandResponse::Refused(Refusal::UserNotFound(name.clone())),
            Some(_) => {
                state.generation += 1;
                CommandResponse::Deleted
            }
        },
        Command::RegisterMember(record) => match state.members.get(&record.id) {
            Some(existing) if existing.incarnation != record.incarnation => {
                CommandResponse::Refused(Refusal::IncarnationConflict { id: record.id, existing: existing.incarnation })
            }
            _ => {
                state.members.insert(record.id, record.clone());
                CommandResponse::MemberRegistered
            }
        },
        Command::ForgetMember { id } => {
            state.members.remove(id);
            if state.dataplane_nodes.remove(id).is_some() {
                state.generation += 1;
            }
            CommandResponse::MemberForgotten
        }
        Command::RegisterDataplaneNode(offer) => {
            let mut node = offer.clone();
            match state.dataplane_nodes.get(&offer.id) {
                Some(known) if known.same_offer(offer) => return CommandResponse::DataplaneNode(known.clone()),
                Some(known) => node.applied_generation = known.applied_generation,
                None => node.applied_generation = 0,
            }
            state.dataplane_nodes.insert(node.id, node.clone());
            state.generation += 1;
            CommandResponse::DataplaneNode(node)
        }
        Command::ReportApplied { node, generation } => match state.dataplane_nodes.get_mut(node) {
            None => CommandResponse::Refused(Refusal::NotADataplaneNode(*node)),
            Some(record) => {
                // Reports may arrive out of order (retries); never go back.
                record.applied_generation = record.applied_generation.max(*generation);
                CommandResponse::AppliedRecorded
            }
        },
        Command::Batch(cmds) => CommandResponse::Batch(cmds.iter().map(|c| apply(state, c)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{InboundRecord, Protocol};

    fn node(id: NodeId, port: u16) -> DataplaneNode {
        DataplaneNode {
            id,
            public_host: format!("node{id}.example.com"),
            inbounds: vec![InboundRecord::new(Protocol::VlessTls, port)],
            labels: BTreeMap::new(),
            capacity: 0,
            applied_generation: 0,
        }
    }

    fn apply_all(state: &mut State, cmds: &[Command]) -> Vec<CommandResponse> {
        cmds.iter().map(|c| apply(state, c)).collect()
    }

    #[test]
    fn user_changes_bump_the_generation_and_refusals_do_not() {
        let mut state = State::default();
        let alice = User::new("alice".into(), 0);
        apply_all(&mut state, &[Command::CreateUser(alice.clone())]);
        assert_eq!(state.generation, 1);
        apply_all(
            &mut state,
            &[
                Command::CreateUser(alice),
                Command::UpdateUser { name: "alice".into(), status: Some(UserStatus::Active) },
                Command::UpdateUser { name: "alice".into(), status: None },
                Command::DeleteUser { name: "bob".into() },
            ],
        );
        assert_eq!(state.generation, 1, "refusals and no-op updates change nothing");
        apply_all(&mut state, &[Command::UpdateUser { name: "alice".into(), status: Some(UserStatus::Disabled) }]);
        assert_eq!(state.generation, 2);
        apply_all(&mut state, &[Command::DeleteUser { name: "alice".into() }]);
        assert_eq!(state.generation, 3);
    }

    #[test]
    fn registering_upserts_and_keeps_the_applied_generation() {
        let mut state = State::default();
        assert_eq!(
            apply(&mut state, &Command::RegisterDataplaneNode(node(4, 443))),
            CommandResponse::DataplaneNode(node(4, 443))
        );
        assert_eq!(state.generation, 1);
        assert_eq!(
            apply(&mut state, &Command::ReportApplied { node: 4, generation: 1 }),
            CommandResponse::AppliedRecorded
        );
        assert_eq!(state.generation, 1, "a report changes nothing a node serves");

        // The same offer again (a restarted agent) is a no-op.
        let mut again = node(4, 443);
        again.applied_generation = 0;
        apply(&mut state, &Command::RegisterDataplaneNode(again));
        assert_eq!(state.generation, 1);
        assert_eq!(state.dataplane_nodes[&4].applied_generation, 1);

        // A changed offer bumps the generation and keeps the applied one.
        apply(&mut state, &Command::RegisterDataplaneNode(node(4, 8443)));
        assert_eq!(state.generation, 2);
        assert_eq!(state.dataplane_nodes[&4].inbounds[0].port, 8443);
        assert_eq!(state.dataplane_nodes[&4].applied_generation, 1);
    }

    #[test]
    fn reports_never_go_back_and_need_a_registered_node() {
        let mut state = State::default();
        assert_eq!(
            apply(&mut state, &Command::ReportApplied { node: 9, generation: 3 }),
            CommandResponse::Refused(Refusal::NotADataplaneNode(9))
        );
        apply(&mut state, &Command::RegisterDataplaneNode(node(9, 443)));
        apply(&mut state, &Command::ReportApplied { node: 9, generation: 5 });
        apply(&mut state, &Command::ReportApplied { node: 9, generation: 2 });
        assert_eq!(state.dataplane_nodes[&9].applied_generation, 5);
    }

    #[test]
    fn a_batch_applies_like_its_commands_one_by_one() {
        let cmds = vec![
            Command::CreateUser(User::new("ann".into(), 1)),
            Command::CreateUser(User::new("ann".into(), 2)),
            Command::UpdateUser { name: "ann".into(), status: Some(UserStatus::Disabled) },
            Command::DeleteUser { name: "zed".into() },
        ];
        let (mut one_by_one, mut batched) = (State::default(), State::default());
        let expected = apply_all(&mut one_by_one, &cmds);
        assert_eq!(apply(&mut batched, &Command::Batch(cmds)), CommandResponse::Batch(expected));
        assert_eq!(batched, one_by_one);
    }

    #[test]
    fn forgetting_a_member_drops_its_dataplane_record() {
        let mut state = State::default();
        apply(&mut state, &Command::RegisterDataplaneNode(node(5, 443)));
        apply(&mut state, &Command::ForgetMember { id: 5 });
        assert!(state.dataplane_nodes.is_empty());
        assert_eq!(state.generation, 2);
        apply(&mut state, &Command::ForgetMember { id: 5 });
        assert_eq!(state.generation, 2);
    }
}
