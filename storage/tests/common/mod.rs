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

/// Opens the sled db of a data dir the test just closed. sled lets go of its
/// lock file a moment after the last handle drops, so retry briefly.
pub fn reopen_sled(data_dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(data_dir.join("raft")) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("sled: {e}"),
        }
    }
}
