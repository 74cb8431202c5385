//! `fuzz_grpc_raft`: the requests of the internal Raft service, which any
//! member (or, without TLS, anything that reaches the port) can send. The
//! payload inside each message (the binary entries, the JSON vote or
//! command) is mutated too, under a correct protobuf framing, so the
//! service's own decoders see it.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tonic::Request;
use vpn_fuzzkit::{bytes, mutate, mutation, Mutation};
use vpn_pki::{Principal, Role};
use vpn_proto::internal::{HeartbeatRequest, RaftBinary, RaftPayload, ReadIndexRequest, TimeoutNowRequest};
use vpn_storage::command::Command;
use vpn_storage::model::{DataplaneNode, InboundRecord, MemberRecord, Protocol, User};
use vpn_storage::types::{Entry, SnapshotMeta, TypeConfig};
use vpn_storage::wire;

use super::agent::heartbeat;
use super::{case, decoded, messages, text, user_name};
use crate::raft::service::{decode, decode_binary, may_propose};

messages!(RaftRequest {
    AppendEntries(RaftBinary),
    InstallSnapshot(RaftBinary),
    Vote(RaftPayload),
    Propose(RaftPayload),
    ReadIndex(ReadIndexRequest),
    TimeoutNow(TimeoutNowRequest),
    Heartbeat(HeartbeatRequest),
});

fn small() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..5, 1 => any::<u64>()]
}

fn log_id() -> impl Strategy<Value = LogId<u64>> {
    (small(), small(), small()).prop_map(|(term, node, index)| LogId::new(CommittedLeaderId::new(term, node), index))
}

fn vote() -> impl Strategy<Value = Vote<u64>> {
    (small(), small(), any::<bool>()).prop_map(|(term, node, committed)| {
        if committed {
            Vote::new_committed(term, node)
        } else {
            Vote::new(term, node)
        }
    })
}

fn command() -> impl Strategy<Value = Command> {
    let member = (small(), text(), any::<u128>()).prop_map(|(id, addr, incarnation)| {
        Command::RegisterMember(MemberRecord { id, addr, incarnation: uuid::Uuid::from_u128(incarnation) })
    });
    let inbound =
        (prop::sample::select(Protocol::ALL.to_vec()), any::<u16>()).prop_map(|(p, port)| InboundRecord::new(p, port));
    let node = (small(), text(), vec(inbound, 0..3))
        .prop_map(|(id, host, inbounds)| Command::RegisterDataplaneNode(DataplaneNode::new(id, host, inbounds)));
    let user = (user_name(), any::<i64>()).prop_map(|(name, at)| {
        // Fresh ids and keys are random: the name and time are what vary here.
        let mut user = User::new(name, at);
        user.id = uuid::Uuid::nil();
        user.credentials.vless_uuid = uuid::Uuid::nil();
        user.sub_token.clear();
        Command::CreateUser(user)
    });
    let simple = prop_oneof![member, node, user, user_name().prop_map(|name| Command::DeleteUser { name })].boxed();
    prop_oneof![4 => simple.clone(), 1 => vec(simple, 0..3).prop_map(Command::Batch)]
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    let payload = prop_oneof![Just(EntryPayload::Blank), command().prop_map(EntryPayload::Normal)];
    (log_id(), vec(payload, 0..3)).prop_map(|(first, payloads)| {
        let at = |i: usize| LogId::new(first.leader_id, first.index.wrapping_add(i as u64));
        payloads.into_iter().enumerate().map(|(i, payload)| Entry { log_id: at(i), payload }).collect()
    })
}

/// The inner payload's bytes and their mutations (none, most of the time).
fn inner(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let changes: BoxedStrategy<Vec<Mutation>> = prop_oneof![2 => Just(Vec::new()), 1 => vec(mutation(), 1..4)].boxed();
    prop_oneof![4 => (valid, changes).prop_map(|(b, m)| mutate(&b, &m)), 1 => bytes(120)]
}

fn request() -> impl Strategy<Value = RaftRequest> {
    let append = (vote(), option::of(log_id()), option::of(log_id()), entries()).prop_map(
        |(vote, prev_log_id, leader_commit, entries)| {
            let req = AppendEntriesRequest::<TypeConfig> { vote, prev_log_id, leader_commit, entries };
            wire::encode_append_entries(&req).expect("encodes")
        },
    );
    let snapshot = (vote(), option::of(log_id()), "[a-z0-9-]{0,12}", any::<u64>(), bytes(32), any::<bool>()).prop_map(
        |(vote, last_log_id, snapshot_id, offset, data, done)| {
            let meta = SnapshotMeta { last_log_id, last_membership: Default::default(), snapshot_id };
            let req = InstallSnapshotRequest::<TypeConfig> { vote, meta, offset, data, done };
            wire::encode_install_snapshot(&req).expect("encodes")
        },
    );
    let vote_json = (vote(), option::of(log_id()))
        .prop_map(|(vote, last)| serde_json::to_vec(&VoteRequest::new(vote, last)).expect("encodes"));
    let command_json = command().prop_map(|cmd| serde_json::to_vec(&cmd).expect("encodes"));
    prop_oneof![
        inner(append).prop_map(|data| RaftRequest::AppendEntries(RaftBinary { data })),
        inner(snapshot).prop_map(|data| RaftRequest::InstallSnapshot(RaftBinary { data })),
        inner(vote_json).prop_map(|json| RaftRequest::Vote(RaftPayload { json })),
        inner(command_json).prop_map(|json| RaftRequest::Propose(RaftPayload { json })),
        Just(RaftRequest::ReadIndex(ReadIndexRequest {})),
        Just(RaftRequest::TimeoutNow(TimeoutNowRequest {})),
        heartbeat().prop_map(RaftRequest::Heartbeat),
    ]
}

/// The service refuses what does not decode with INVALID_ARGUMENT, naming the field.
fn refused(status: &tonic::Status, field: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
    prop_assert!(status.message().starts_with(field), "{status:?}");
    Ok(())
}

/// What a JSON payload decodes to must encode and decode as itself.
fn json_round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_vec(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T = serde_json::from_slice(&json).map_err(|e| TestCaseError::fail(format!("{e}: {value:?}")))?;
    prop_assert_eq!(&back, value);
    Ok(())
}

fn check(request: RaftRequest) -> Result<(), TestCaseError> {
    match request {
        RaftRequest::AppendEntries(binary) => match decode_binary(binary, wire::decode_append_entries) {
            Ok(rpc) => {
                let again = wire::encode_append_entries(&rpc).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let back = wire::decode_append_entries(&again).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!((back.vote, back.entries), (rpc.vote, rpc.entries));
                Ok(())
            }
            Err(status) => refused(&status, "data"),
        },
        RaftRequest::InstallSnapshot(binary) => match decode_binary(binary, wire::decode_install_snapshot) {
            Ok(rpc) => {
                let again = wire::encode_install_snapshot(&rpc).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let back = wire::decode_install_snapshot(&again).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(back, rpc);
                Ok(())
            }
            Err(status) => refused(&status, "data"),
        },
        RaftRequest::Vote(payload) => match decode::<VoteRequest<u64>>(Request::new(payload)) {
            Ok(rpc) => json_round_trip(&rpc),
            Err(status) => refused(&status, "payload"),
        },
        RaftRequest::Propose(payload) => match decode::<Command>(Request::new(payload)) {
            Ok(cmd) => {
                json_round_trip(&cmd)?;
                let member = Principal::Node { id: 1, role: Role::ControlPlane };
                match may_propose(&member, &cmd) {
                    Ok(()) => {
                        prop_assert!(matches!(cmd, Command::RegisterMember(_) | Command::RegisterDataplaneNode(_)))
                    }
                    Err(status) => prop_assert_eq!(status.code(), tonic::Code::PermissionDenied),
                }
                Ok(())
            }
            Err(status) => refused(&status, "payload"),
        },
        RaftRequest::Heartbeat(req) => super::agent::check_heartbeat(&req),
        RaftRequest::ReadIndex(_) | RaftRequest::TimeoutNow(_) => Ok(()),
    }
}

#[test]
fn fuzz_grpc_raft() {
    vpn_fuzzkit::run("grpc_raft", file!(), case(request()), |case| match decoded(&case)? {
        Some(request) => check(request),
        None => Ok(()),
    });
}
