//! Commands replicated through the log, their responses, and the pure,
//! deterministic function that applies one to the state.

use serde::{Deserialize, Serialize};

use crate::model::{MemberRecord, User, UserStatus};
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
    /// Forgets a removed member's identity so its id may be used again on purpose.
    ForgetMember {
        id: NodeId,
    },
}

/// The result of applying a [`Command`]. Refusals are results, not errors: the
/// entry is committed either way and every replica refuses it the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    User(User),
    Deleted,
    MemberRegistered,
    MemberForgotten,
    Refused(Refusal),
    /// The response of a blank or membership entry.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} not found")]
    UserNotFound(String),
    #[error("node id {id} already belongs to another data dir (incarnation {existing}): run `vpnctl member remove {id}`, then start the node under a new --id")]
    IncarnationConflict { id: NodeId, existing: uuid::Uuid },
}

/// Applies one command. Pure: the outcome depends only on `state` and `cmd`.
pub fn apply(state: &mut State, cmd: &Command) -> CommandResponse {
    match cmd {
        Command::CreateUser(user) => {
            if state.users.contains_key(&user.name) {
                return CommandResponse::Refused(Refusal::UserExists(user.name.clone()));
            }
            state.users.insert(user.name.clone(), user.clone());
            CommandResponse::User(user.clone())
        }
        Command::UpdateUser { name, status } => match state.users.get_mut(name) {
            None => CommandResponse::Refused(Refusal::UserNotFound(name.clone())),
            Some(user) => {
                if let Some(status) = status {
                    user.status = *status;
                }
                CommandResponse::User(user.clone())
            }
        },
        Command::DeleteUser { name } => match state.users.remove(name) {
            None => CommandResponse::Refused(Refusal::UserNotFound(name.clone())),
            Some(_) => CommandResponse::Deleted,
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
            CommandResponse::MemberForgotten
        }
    }
}
