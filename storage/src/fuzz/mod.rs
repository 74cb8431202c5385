//! Fuzz targets of the storage decoders (see `vpn-fuzzkit`): the Raft log's
//! segment files, the binary Raft RPCs, and the snapshot file.
//!
//! Layout:
//! - this file: generators of valid values (commands, entries, votes, states).
//! - `wal`: `fuzz_wal_segments`, segments replayed as the store opens.
//! - `wire`: `fuzz_wire_append_entries` and `fuzz_wire_install_snapshot`.
//! - `snapshot`: `fuzz_snapshot_file`, the file and the state it carries.

mod snapshot;
mod wal;
mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use openraft::{BasicNode, CommittedLeaderId, EntryPayload, Membership};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use uuid::Uuid;

use crate::command::{self, Command, LimitsChange, Move, TrafficReport, UserUsage};
use crate::model::{
    Credentials, DataplaneNode, InboundRecord, Limits, MemberRecord, Placement, Protocol, ResetPeriod, User, UserStatus,
};
use crate::state::State;
use crate::trust::{JoinRole, JoinToken, TrustCommand};
use crate::types::{Entry, LogId, StoredMembership, Vote};

/// A scratch directory for targets that decode files: in memory (`/dev/shm`)
/// where there is one, so a million cases cost no disk syncs.
fn scratch_dir() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    let in_memory = shm.is_dir().then(|| tempfile::Builder::new().prefix("vpn-fuzz").tempdir_in(&shm).ok()).flatten();
    in_memory.unwrap_or_else(|| tempfile::tempdir().expect("a temp dir"))
}

/// Names: valid ones, and what a confused or hostile writer might put there.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["alice", "bob", "carol", "d.e-f_9"]).prop_map(String::from),
        1 => prop::sample::select(vec!["", "Alice", "-x", "a b", "\u{0}", "é", "\u{202e}evil", "a/../b"]).prop_map(String::from),
        1 => "[a-z0-9._-]{60,70}",
        1 => any::<String>(),
    ]
}

fn at_ms() -> impl Strategy<Value = i64> {
    prop_oneof![4 => 0i64..4_000_000_000_000, 1 => Just(i64::MIN), 1 => Just(i64::MAX), 1 => any::<i64>()]
}

fn uuid() -> impl Strategy<Value = Uuid> {
    prop_oneof![3 => (0u128..4).prop_map(Uuid::from_u128), 1 => any::<u128>().prop_map(Uuid::from_u128)]
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map("[a-z/._-]{1,8}", "[a-zA-Z0-9]{0,8}", 0..3)
}

fn user() -> impl Strategy<Value = User> {
    (
        (name(), uuid(), uuid(), "[A-Za-z0-9+/]{22}==", at_ms(), prop::sample::select(UserStatus::ALL.to_vec())),
        (at_ms(), any::<u64>(), prop::sample::select(ResetPeriod::ALL.to_vec()), any::<u64>()),
        ("[A-Za-z0-9_-]{0,32}", labels(), vec((0u64..5, any::<u64>()), 0..3)),
    )
        .prop_map(
            |(
                (name, id, vless_uuid, ss2022_key, created_at_ms, status),
                (expires_at_ms, data_limit_bytes, reset, used_bytes),
                (sub_token, constraint, placed),
            )| User {
                id,
                name,
                status,
                created_at_ms,
                credentials: Credentials { vless_uuid, ss2022_key },
                limits: Limits { expires_at_ms, data_limit_bytes, reset },
                used_bytes,
                period_start_ms: created_at_ms,
                sub_token,
                constraint,
                placements: placed
                    .into_iter()
                    .map(|(node, since_generation)| Placement { node, since_generation })
                    .collect(),
            },
        )
}

fn dataplane_node() -> impl Strategy<Value = DataplaneNode> {
    let inbound = (prop::sample::select(Protocol::ALL.to_vec()), any::<u16>(), option::of("[a-zA-Z0-9=]{0,12}"))
        .prop_map(|(protocol, port, param)| {
            let mut inbound = InboundRecord::new(protocol, port);
            inbound.ss2022_server_key = param.clone();
            inbound.tls_server_name = param.clone();
            inbound.reality_public_key = param;
            inbound
        });
    (0u64..5, ".{0,12}", vec(inbound, 0..3), labels(), any::<u32>()).prop_map(
        |(id, host, inbounds, labels, capacity)| {
            let mut node = DataplaneNode::new(id, host, inbounds);
            node.labels = labels;
            node.capacity = capacity;
            node
        },
    )
}

fn simple_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        user().prop_map(Command::CreateUser),
        (name(), option::of(prop::sample::select(UserStatus::ALL.to_vec())), option::of(at_ms()), at_ms()).prop_map(
            |(name, status, expires_at_ms, at_ms)| Command::UpdateUser {
                name,
                status,
                limits: LimitsChange { expires_at_ms, ..LimitsChange::default() },
                at_ms,
            }
        ),
        name().prop_map(|name| Command::DeleteUser { name }),
        (name(), "[A-Za-z0-9_-]{0,32}").prop_map(|(name, token)| Command::RotateToken { name, token }),
        (vec(name(), 0..3), at_ms()).prop_map(|(names, at_ms)| Command::Reevaluate { names, at_ms }),
        vec((name(), vec(0u64..5, 0..3), vec(0u64..5, 0..2)), 0..3).prop_map(|moves| Command::Place(
            moves.into_iter().map(|(user, add, remove)| Move { user, add, remove }).collect()
        )),
        (0u64..5, ".{0,12}", uuid()).prop_map(|(id, addr, incarnation)| Command::RegisterMember(MemberRecord {
            id,
            addr,
            incarnation
        })),
        dataplane_node().prop_map(Command::RegisterDataplaneNode),
        (0u64..5, any::<u64>()).prop_map(|(node, generation)| Command::ReportApplied { node, generation }),
        (0u64..5, vec((any::<u64>(), vec((name(), uuid(), any::<u64>()), 0..3)), 0..3), at_ms()).prop_map(
            |(node, reports, at_ms)| Command::RecordTraffic {
                node,
                reports: reports
                    .into_iter()
                    .map(|(seq, usage)| TrafficReport {
                        seq,
                        usage: usage.into_iter().map(|(name, id, bytes)| UserUsage { name, id, bytes }).collect(),
                    })
                    .collect(),
                at_ms,
            }
        ),
        ("[a-f0-9]{0,8}", "[a-f0-9]{0,64}", any::<bool>(), at_ms(), at_ms(), any::<u32>()).prop_map(
            |(id, secret_sha256, control, created_at_ms, expires_at_ms, uses_left)| {
                let role = if control { JoinRole::Controlplane } else { JoinRole::Dataplane };
                let token = JoinToken { id, secret_sha256, role, created_at_ms, expires_at_ms, uses_left };
                Command::Trust(TrustCommand::CreateJoinToken(token))
            }
        ),
        ("[a-f0-9]{0,8}", "[a-f0-9]{0,64}", 0u64..5, at_ms()).prop_map(|(id, secret_sha256, node, at_ms)| {
            Command::Trust(TrustCommand::RedeemJoinToken { id, secret_sha256, node, at_ms })
        }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![6 => simple_command(), 1 => vec(simple_command(), 0..4).prop_map(Command::Batch)]
}

fn term_or_node() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..5, 1 => Just(u64::MAX), 1 => any::<u64>()]
}

fn log_id() -> impl Strategy<Value = LogId> {
    (term_or_node(), term_or_node(), prop_oneof![8 => 0u64..1000, 1 => any::<u64>()])
        .prop_map(|(term, node, index)| LogId::new(CommittedLeaderId::new(term, node), index))
}

fn vote() -> impl Strategy<Value = Vote> {
    (term_or_node(), term_or_node(), any::<bool>()).prop_map(|(term, node, committed)| {
        if committed {
            Vote::new_committed(term, node)
        } else {
            Vote::new(term, node)
        }
    })
}

fn membership() -> impl Strategy<Value = Membership<u64, BasicNode>> {
    vec(btree_map(0u64..6, ".{0,12}", 1..4), 1..3).prop_map(|configs| {
        let nodes: BTreeMap<u64, BasicNode> =
            configs.iter().flat_map(|c| c.iter().map(|(id, addr)| (*id, BasicNode::new(addr)))).collect();
        let voters = configs.iter().map(|c| c.keys().copied().collect::<BTreeSet<u64>>()).collect();
        Membership::new(voters, nodes)
    })
}

fn payload() -> impl Strategy<Value = EntryPayload<crate::types::TypeConfig>> {
    prop_oneof![
        1 => Just(EntryPayload::Blank),
        6 => command().prop_map(EntryPayload::Normal),
        1 => membership().prop_map(EntryPayload::Membership),
    ]
}

/// Entries with consecutive indices from a random start, in one term.
fn entries(max: usize) -> impl Strategy<Value = Vec<Entry>> {
    (1u64..4, 0u64..3, 0u64..1000, vec(payload(), 0..=max)).prop_map(|(term, node, start, payloads)| {
        let at = |i: usize| LogId::new(CommittedLeaderId::new(term, node), start + i as u64);
        payloads.into_iter().enumerate().map(|(i, payload)| Entry { log_id: at(i), payload }).collect()
    })
}

fn stored_membership() -> impl Strategy<Value = StoredMembership> {
    (option::of(log_id()), membership()).prop_map(|(id, m)| StoredMembership::new(id, m))
}

/// A state made the way replicas make it: commands applied in order.
fn state() -> impl Strategy<Value = State> {
    vec(command(), 0..8).prop_map(|cmds| {
        let mut state = State::default();
        for cmd in &cmds {
            command::apply(&mut state, cmd);
        }
        state
    })
}
