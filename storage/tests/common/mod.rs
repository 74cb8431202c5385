//! Helpers shared by the integration tests: entries and reading the state.

#![allow(dead_code)] // each test binary uses a different subset

use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership};
use vpn_storage::command::Command;
use vpn_storage::state::State;
use vpn_storage::types::{Entry, NodeId};
use vpn_storage::StateMachineStore;

pub fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

pub fn blank(index: u64) -> Entry {
    Entry { log_id: log_id(1, index), payload: EntryPayload::Blank }
}

pub fn normal(index: u64, cmd: Command) -> Entry {
    Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(cmd) }
}

pub fn membership(index: u64, voters: &[NodeId]) -> Entry {
    let voters = voters.iter().copied().collect();
    Entry { log_id: log_id(1, index), payload: EntryPayload::Membership(Membership::new(vec![voters], None)) }
}

pub fn state_of(sm: &StateMachineStore) -> State {
    sm.reader().read(State::clone)
}
